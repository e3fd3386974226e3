"""Procrastinate on PostgreSQL: ``procrastinate worker --concurrency 8`` (one process; sync tasks run
in threads, at most 8 at once), its own schema ``procrastinate_bench`` in database ``test``
(dropped before every run and created anew, tables applied by the producer before any figure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import procrastinate

from systems.base import System, bin_path, record, record_latency, record_sleep
from systems.servers import APPLICATION_NAME, POSTGRES_URL, PROCRASTINATE_SCHEMA, postgres_connect

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=POSTGRES_URL,
        kwargs={"options": f"-c search_path={PROCRASTINATE_SCHEMA}", "application_name": APPLICATION_NAME},
    )
)


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
PARAMS = {"noop": ("uid", "n"), "sleep": ("uid", "n"), "latency": ("uid", "sent")}  # defer takes keywords only


class Procrastinate(System):
    name = "procrastinate"
    backend = "postgres"
    concurrency = "1 process, 8 concurrent jobs (--concurrency 8; sync tasks in threads)"
    bulk_api = "task.batch_defer(... x 1000)"
    notes = "default INFO log level (two lines per job); finished jobs stay in the table (delete_jobs=never)"

    def __init__(self) -> None:
        with postgres_connect() as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{PROCRASTINATE_SCHEMA}"')
        app.open()
        with postgres_connect() as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (f"{PROCRASTINATE_SCHEMA}.procrastinate_jobs",)).fetchone()
        if not exists or exists[0] is None:
            app.schema_manager.apply_schema()

    def send(self, task: str, *args: Any) -> None:
        TASKS[task].defer(**dict(zip(PARAMS[task], args, strict=True)))

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        names = PARAMS[task]
        TASKS[task].batch_defer(*(dict(zip(names, args, strict=True)) for args in arg_list))

    def worker_command(self) -> list[str]:
        return [bin_path("procrastinate"), "--app=systems.procrastinate_postgres.app", "worker", "--concurrency", "8"]

    def close(self) -> None:
        app.close()


def system() -> System:
    return Procrastinate()
