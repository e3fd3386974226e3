"""Taskiq on Redis streams (taskiq-redis RedisStreamBroker, which acks): ``taskiq worker --workers 1
--max-threadpool-threads 8 --max-async-tasks 8``. The tasks are plain functions, which taskiq runs
on its thread pool, so the same blocking bookkeeping code runs as for the other systems."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from taskiq_redis import RedisStreamBroker

from systems.base import REDIS_URL, System, bin_path, record, record_latency, record_sleep

broker = RedisStreamBroker(url=REDIS_URL, consumer_id="0")


@broker.task(task_name="noop")
def noop(uid: str, n: int) -> None:
    record(uid, n)


@broker.task(task_name="sleep")
def sleep(uid: str, n: int) -> None:
    record_sleep(uid, n)


@broker.task(task_name="latency")
def latency(uid: str, sent: float) -> None:
    record_latency(uid, sent)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency}


class Taskiq(System):
    name = "taskiq"
    concurrency = "1 process, 8 pool threads (--workers 1 --max-threadpool-threads 8 --max-async-tasks 8)"
    bulk_api = None
    notes = "async producer (awaited kiq per message); acks after the task (streams)"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(broker.startup())

    def send(self, task: str, *args: Any) -> None:
        self.loop.run_until_complete(TASKS[task].kiq(*args))

    def send_sequential(self, task: str, arg_list: Iterable[Sequence[Any]]) -> None:
        async def go() -> None:
            kiq = TASKS[task].kiq
            for args in arg_list:
                await kiq(*args)

        self.loop.run_until_complete(go())

    def worker_command(self) -> list[str]:
        return [
            bin_path("taskiq"),
            "worker",
            "systems.taskiq_redis:broker",
            "--workers",
            "1",
            "--max-threadpool-threads",
            "8",
            "--max-async-tasks",
            "8",
        ]

    def close(self) -> None:
        self.loop.run_until_complete(broker.shutdown())
        self.loop.close()


def system() -> System:
    return Taskiq()
