"""Dramatiq on Redis: ``dramatiq --processes P --threads 8`` with its default middleware."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from systems.base import REDIS_URL, System, bin_path, record, record_latency, record_sleep

PROCESSES = int(os.environ.get("BENCH_PROCESSES", "1"))

broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop(uid: str, n: int) -> None:
    record(uid, n)


@dramatiq.actor(max_retries=0)
def sleep(uid: str, n: int) -> None:
    record_sleep(uid, n)


@dramatiq.actor(max_retries=0)
def latency(uid: str, sent: float) -> None:
    record_latency(uid, sent)


ACTORS = {"noop": noop, "sleep": sleep, "latency": latency}


class Dramatiq(System):
    name = "dramatiq"
    concurrency = f"{PROCESSES} process{'es' if PROCESSES > 1 else ''} x 8 threads"
    bulk_api = None  # broker.enqueue in a pipeline is not a public API
    notes = "at-least-once (acks after run); no per-message log line by default"

    def send(self, task: str, *args: Any) -> None:
        ACTORS[task].send(*args)

    def worker_command(self) -> list[str]:
        return [bin_path("dramatiq"), "systems.dramatiq_redis", "--processes", str(PROCESSES), "--threads", "8"]

    def close(self) -> None:
        broker.close()


def system() -> System:
    return Dramatiq()
