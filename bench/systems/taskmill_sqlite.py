"""taskmill on its embedded SQLite broker (a fresh file per run; synchronous from BENCH_SYNCHRONOUS)."""

from __future__ import annotations

import os
from pathlib import Path

from systems.base import System
from systems.taskmill_common import TaskmillSystem, bench_app

SYNCHRONOUS = os.environ.get("BENCH_SYNCHRONOUS", "full")
_PATH = Path(os.environ.get("BENCH_TMP", ".")) / "taskmill-bench.db"
URL = f"sqlite:///{_PATH}" + ("" if SYNCHRONOUS == "full" else f"?synchronous={SYNCHRONOUS}")
NOTES = f"synchronous={SYNCHRONOUS.upper()}{' (the default)' if SYNCHRONOUS == 'full' else ''}, WAL"

app, ACTORS = bench_app(URL)


def system() -> System:
    return TaskmillSystem("taskmill_sqlite", app, ACTORS, "sqlite", NOTES)
