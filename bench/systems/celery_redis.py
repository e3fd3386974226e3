"""Celery on Redis: ``celery worker -P threads -c 8`` (or ``-P prefork -c 2``), default settings
except that results are ignored (no result backend is configured for any system)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from celery import Celery, group

from systems.base import REDIS_URL, System, bin_path, record, record_latency, record_sleep

POOL = os.environ.get("BENCH_POOL", "threads")

app = Celery("bench", broker=REDIS_URL)
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True


@app.task(name="noop")
def noop(uid: str, n: int) -> None:
    record(uid, n)


@app.task(name="sleep")
def sleep(uid: str, n: int) -> None:
    record_sleep(uid, n)


@app.task(name="latency")
def latency(uid: str, sent: float) -> None:
    record_latency(uid, sent)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency}


class CeleryRedis(System):
    name = "celery"
    concurrency = "1 process x 8 threads (-P threads -c 8)" if POOL == "threads" else "prefork -c 2 (3 processes)"
    bulk_api = "group(...).apply_async() x 1000"
    notes = "acks on receipt by default (at-most-once); default WARNING log level"

    def send(self, task: str, *args: Any) -> None:
        TASKS[task].delay(*args)

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        group(TASKS[task].s(*args) for args in arg_list).apply_async()

    def worker_command(self) -> list[str]:
        pool = ["-P", "threads", "-c", "8"] if POOL == "threads" else ["-P", "prefork", "-c", "2"]
        return [bin_path("celery"), "-A", "systems.celery_redis", "worker", *pool]

    def close(self) -> None:
        app.close()


def system() -> System:
    return CeleryRedis()
