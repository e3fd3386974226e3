"""Huey on Redis: ``huey_consumer -k thread -w 8`` (or ``-k process -w 2``), RedisHuey defaults
(blocking BRPOP dequeue)."""

from __future__ import annotations

import os
from typing import Any

from huey import RedisHuey

from systems.base import REDIS_URL, System, bin_path, record, record_latency, record_sleep

PROCESSES = int(os.environ.get("BENCH_PROCESSES", "1"))

huey = RedisHuey("bench", url=REDIS_URL)


@huey.task()
def noop(uid: str, n: int) -> None:
    record(uid, n)


@huey.task()
def sleep(uid: str, n: int) -> None:
    record_sleep(uid, n)


@huey.task()
def latency(uid: str, sent: float) -> None:
    record_latency(uid, sent)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency}


class Huey(System):
    name = "huey"
    concurrency = "1 process x 8 threads (-k thread -w 8)" if PROCESSES == 1 else "2 processes (-k process -w 2)"
    bulk_api = None  # task.map() enqueues one at a time
    notes = "acks on dequeue (at-most-once); INFO log lines per task"

    def send(self, task: str, *args: Any) -> None:
        TASKS[task](*args)

    def worker_command(self) -> list[str]:
        workers = ["-k", "thread", "-w", "8"] if PROCESSES == 1 else ["-k", "process", "-w", str(PROCESSES)]
        return [bin_path("huey_consumer"), "systems.huey_redis.huey", *workers]


def system() -> System:
    return Huey()
