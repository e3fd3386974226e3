"""taskmill on its embedded SQLite broker (a fresh file per run; synchronous from BENCH_SYNCHRONOUS)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import taskmill
from systems.base import System, bin_path, record, record_latency, record_sleep

SYNCHRONOUS = os.environ.get("BENCH_SYNCHRONOUS", "full")
_PATH = Path(os.environ.get("BENCH_TMP", ".")) / "taskmill-bench.db"
URL = f"sqlite:///{_PATH}" + ("" if SYNCHRONOUS == "full" else f"?synchronous={SYNCHRONOUS}")

app = taskmill.App(URL)


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


class TaskmillSQLite(System):
    name = "taskmill"
    backend = "sqlite"
    concurrency = "1 process x 8 threads"
    bulk_api = "app.enqueue([actor.message(...) x 1000])"
    notes = f"synchronous={SYNCHRONOUS.upper()}{' (the default)' if SYNCHRONOUS == 'full' else ''}, WAL"

    def send(self, task: str, *args: Any) -> None:
        ACTORS[task].send(*args)

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        app.enqueue([ACTORS[task].message(*args) for args in arg_list])

    def worker_command(self) -> list[str]:
        return [bin_path("taskmill"), "worker", "systems.taskmill_sqlite:app", "--processes", "1", "--threads", "8"]

    def close(self) -> None:
        app.close()


def system() -> System:
    return TaskmillSQLite()
