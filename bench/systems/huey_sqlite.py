"""Huey's SqliteHuey (a fresh file per run): ``huey_consumer -k thread -w 8``; it polls the table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huey import SqliteHuey

from systems.base import System, bin_path, record, record_latency, record_sleep

huey = SqliteHuey("bench", filename=str(Path(os.environ.get("BENCH_TMP", ".")) / "huey-bench.db"))


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


class HueySQLite(System):
    name = "huey"
    backend = "sqlite"
    concurrency = "1 process x 8 threads (-k thread -w 8)"
    bulk_api = None
    notes = "SqliteHuey defaults (polls every 0.1-10 s when idle, backoff 1.15)"

    def send(self, task: str, *args: Any) -> None:
        TASKS[task](*args)

    def worker_command(self) -> list[str]:
        return [bin_path("huey_consumer"), "systems.huey_sqlite.huey", "-k", "thread", "-w", "8"]


def system() -> System:
    return HueySQLite()
