"""taskmill on PostgreSQL: ``taskmill worker --processes 1 --threads 8`` on the schema
``taskmill_bench`` of database ``test`` (dropped before every run, so each run migrates it anew)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import taskmill
from systems.base import System, bin_path, record, record_latency, record_sleep
from systems.servers import APPLICATION_NAME, POSTGRES_SCHEMA, POSTGRES_URL

URL = f"{POSTGRES_URL}?schema={POSTGRES_SCHEMA}&application_name={APPLICATION_NAME}"

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


class TaskmillPostgres(System):
    name = "taskmill"
    backend = "postgres"
    concurrency = "1 process x 8 threads"
    bulk_api = "app.enqueue([actor.message(...) x 1000])"
    notes = "at-least-once (ack after run, leases on the database clock); LISTEN/NOTIFY wakes idle workers"

    def send(self, task: str, *args: Any) -> None:
        ACTORS[task].send(*args)

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        app.enqueue([ACTORS[task].message(*args) for args in arg_list])

    def worker_command(self) -> list[str]:
        return [bin_path("taskmill"), "worker", "systems.taskmill_postgres:app", "--processes", "1", "--threads", "8"]

    def close(self) -> None:
        app.close()


def system() -> System:
    return TaskmillPostgres()
