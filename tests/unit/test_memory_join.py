"""memory:// for users' own tests: join() waits for a drained queue and re-raises actor errors."""

from __future__ import annotations

import pytest

from taskmill import App, Worker
from taskmill.brokers.memory import MemoryBroker


def make() -> tuple[App, MemoryBroker]:
    app = App("memory://")
    assert isinstance(app.broker, MemoryBroker)
    return app, app.broker


def test_join_returns_once_the_queue_is_drained() -> None:
    app, broker = make()
    done: list[int] = []

    @app.actor
    def job(n: int) -> None:
        done.append(n)

    for n in range(20):
        job.send(n)
    worker = Worker(app, threads=4)
    worker.start()
    broker.join("default", timeout=5)
    worker.stop(grace=5)
    assert sorted(done) == list(range(20))


def test_join_reraises_the_actors_error_when_it_is_dead_lettered() -> None:
    app, broker = make()

    @app.actor(max_retries=0)
    def fail() -> None:
        raise LookupError("not there")

    fail.send()
    worker = Worker(app, threads=1)
    worker.start()
    with pytest.raises(LookupError, match="not there"):
        broker.join("default", timeout=5)
    worker.stop(grace=5)


def test_join_without_fail_fast_just_waits() -> None:
    app, broker = make()

    @app.actor(max_retries=0)
    def fail() -> None:
        raise LookupError("not there")

    fail.send()
    worker = Worker(app, threads=1)
    worker.start()
    broker.join("default", timeout=5, fail_fast=False)
    worker.stop(grace=5)
    assert broker.dead_letters()[0].error_type == "LookupError"


def test_join_times_out_without_a_worker() -> None:
    app, broker = make()

    @app.actor
    def job() -> None: ...

    job.send()
    with pytest.raises(TimeoutError):
        broker.join("default", timeout=0.2)
