"""Actors for the integration tests; worker processes import this module as ``ledger_app``.

Each actor records its executions in the ledger named by ``TASKMILL_TEST_LEDGER``. How long
``record`` works comes from ``TASKMILL_TEST_TASK_MS`` ("10" or a range "5-20"), read per call, so a
follow-up worker can run the same actor fast; ``crash`` exits with ``TASKMILL_TEST_CRASH_CODE`` (default 1).
"""

from __future__ import annotations

import os
import random
import time

import ledger

from taskmill import App

TASK_MS_ENV = "TASKMILL_TEST_TASK_MS"
CRASH_CODE_ENV = "TASKMILL_TEST_CRASH_CODE"  # the exit code of ``crash`` (default 1), read per call


def task_seconds() -> float:
    """The duration ``record`` sleeps, from the environment."""
    low, _, high = os.environ.get(TASK_MS_ENV, "10").partition("-")
    return random.uniform(float(low), float(high or low)) / 1000


def make_app(broker_url: str | None = None) -> App:
    """An App with this module's actors; the worker uses the module-level one, tests build their own."""
    app = App(broker_url)

    @app.actor
    def record(key: str) -> None:
        with ledger.execution(key):
            time.sleep(task_seconds())

    @app.actor(queue="poison")
    def crash(key: str) -> None:
        with ledger.execution(key):
            os._exit(int(os.environ.get(CRASH_CODE_ENV, "1")))

    @app.actor(max_retries=1, min_backoff=0, max_backoff=0)  # an immediate retry keeps --burst runs exact
    def digest(key: str, payload: str, mode: str) -> int:
        with ledger.execution(key) as attempt:
            if mode == "bad":
                raise ValueError("digest rejects this kind of input")
            if mode == "flaky" and attempt == 1:
                raise RuntimeError("transient failure, try again")
            return len(payload)

    @app.actor(store_results=True)
    def square(key: str, n: int) -> int:
        with ledger.execution(key):
            time.sleep(task_seconds())
            return n * n

    @app.actor
    def increment(n: int) -> int:
        return n + 1

    @app.actor
    def group_done(key: str) -> None:
        with ledger.execution(key):
            pass

    return app


app = make_app()
