"""taskmill on PostgreSQL: ``taskmill worker --processes 1 --threads 8`` on the schema
``taskmill_bench`` of database ``test`` (dropped before every run, so each run migrates it anew)."""

from __future__ import annotations

from systems.base import System
from systems.servers import APPLICATION_NAME, POSTGRES_SCHEMA, POSTGRES_URL
from systems.taskmill_common import TaskmillSystem, bench_app

URL = f"{POSTGRES_URL}?schema={POSTGRES_SCHEMA}&application_name={APPLICATION_NAME}"
NOTES = "at-least-once (ack after run, leases on the database clock); LISTEN/NOTIFY wakes idle workers"

app, ACTORS = bench_app(URL)


def system() -> System:
    return TaskmillSystem("taskmill_postgres", app, ACTORS, "postgres", NOTES)
