"""taskmill on Redis: ``taskmill worker --processes P --threads 8`` (defaults otherwise, so INFO logs)."""

from __future__ import annotations

import os

from systems.base import REDIS_URL, System
from systems.taskmill_common import TaskmillSystem, bench_app

PROCESSES = int(os.environ.get("BENCH_PROCESSES", "1"))
NOTES = "at-least-once (ack after run, leases); default INFO log line per message"

app, ACTORS = bench_app(REDIS_URL)


def system() -> System:
    return TaskmillSystem("taskmill_redis", app, ACTORS, "redis", NOTES, PROCESSES)
