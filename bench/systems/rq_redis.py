"""RQ on Redis: its default worker (``rq worker``: one process, one job at a time, forking a
work horse per job). RQ has no threads; this is its nearest equivalent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq import Queue

from systems.base import REDIS_URL, System, bin_path, record, record_latency, record_sleep


def noop(uid: str, n: int) -> None:
    record(uid, n)


def sleep(uid: str, n: int) -> None:
    record_sleep(uid, n)


def latency(uid: str, sent: float) -> None:
    record_latency(uid, sent)


FUNCS = {"noop": noop, "sleep": sleep, "latency": latency}


class RQ(System):
    name = "rq"
    concurrency = "1 process, 1 job at a time (fork per job; RQ has no threads)"
    bulk_api = "Queue.enqueue_many(x 1000)"
    notes = "default rq.Worker forks a work horse per job; INFO log lines per job"

    def __init__(self) -> None:
        self.connection = Redis.from_url(REDIS_URL)
        self.queue = Queue("default", connection=self.connection)

    def send(self, task: str, *args: Any) -> None:
        self.queue.enqueue(FUNCS[task], *args)

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        func = FUNCS[task]
        self.queue.enqueue_many([Queue.prepare_data(func, args=tuple(args)) for args in arg_list])

    def worker_command(self) -> list[str]:
        return [bin_path("rq"), "worker", "--url", REDIS_URL, "default"]

    def close(self) -> None:
        self.connection.close()


def system() -> System:
    return RQ()
