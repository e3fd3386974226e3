"""taskmill on Redis: ``taskmill worker --processes P --threads 8`` (defaults otherwise, so INFO logs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import taskmill
from systems.base import REDIS_URL, System, bin_path, record, record_latency, record_sleep

PROCESSES = int(os.environ.get("BENCH_PROCESSES", "1"))

app = taskmill.App(REDIS_URL)


@app.actor
def noop(uid: str, n: int) -> None:
    record(uid, n)


@app.actor
def sleep(uid: str, n: int) -> None:
    record_sleep(uid, n)


@app.actor
def latency(uid: str, sent: float) -> None:
    record_latency(uid, sent)


ACTORS = {"noop": noop, "sleep": sleep, "latency": latency}


class Taskmill(System):
    name = "taskmill"
    backend = "redis"
    concurrency = f"{PROCESSES} process{'es' if PROCESSES > 1 else ''} x 8 threads"
    bulk_api = "app.enqueue([actor.message(...) x 1000])"
    notes = "at-least-once (ack after run, leases); default INFO log line per message"

    def __init__(self, module: str = "systems.taskmill_redis") -> None:
        self.module = module

    def send(self, task: str, *args: Any) -> None:
        ACTORS[task].send(*args)

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        actor = ACTORS[task]
        app.enqueue([actor.message(*args) for args in arg_list])

    def worker_command(self) -> list[str]:
        return [
            bin_path("taskmill"),
            "worker",
            f"{self.module}:app",
            "--processes",
            str(PROCESSES),
            "--threads",
            "8",
        ]

    def close(self) -> None:
        app.close()


def system() -> System:
    return Taskmill()
