"""Results, pipelines, groups and callbacks, over every broker with its own result store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskmill import (
    App,
    ResultMissing,
    ResultTimeout,
    TaskFailed,
    Worker,
    group,
    pipeline,
)
from taskmill.brokers import Broker
from taskmill.results import open_store


@pytest.fixture
def app(broker: Broker, tmp_path: Any) -> Iterator[App]:
    store_url = "memory://" if broker.url.startswith("memory") else f"sqlite:///{tmp_path / 'results.db'}"
    app = App(broker=broker, results=open_store(store_url), lease_seconds=5)
    yield app
    app.store.close()


@pytest.fixture
def worker(app: App) -> Iterator[Callable[[], Worker]]:
    started: list[Worker] = []

    def start() -> Worker:
        w = Worker(app, threads=4)
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(grace=5)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_result_returns_the_return_value(app: App, worker: Callable[[], Worker]) -> None:
    @app.actor(store_results=True)
    def add(a: int, b: int) -> int:
        return a + b

    worker()
    assert add.send(2, 3).result(timeout=10) == 5


def test_async_result(app: App, worker: Callable[[], Worker]) -> None:
    import asyncio

    @app.actor(store_results=True)
    async def double(n: int) -> int:
        return n * 2

    worker()
    message = double.send(21)
    assert asyncio.run(message.result_async(timeout=10)) == 42


def test_failed_task_raises_task_failed_with_the_remote_type_and_message(
    app: App, worker: Callable[[], Worker]
) -> None:
    @app.actor(store_results=True, max_retries=1, min_backoff=0.01, max_backoff=0.02)
    def explode() -> None:
        raise KeyError("no such key")

    worker()
    with pytest.raises(TaskFailed) as failure:
        explode.send().result(timeout=10)
    assert failure.value.error_type == "KeyError"
    assert failure.value.error_message == "'no such key'"
    assert "Traceback" in failure.value.traceback


def test_result_not_ready_in_time_raises_result_timeout(app: App) -> None:
    @app.actor(store_results=True)
    def slow() -> None: ...

    with pytest.raises(ResultTimeout):
        slow.send().result(timeout=0.2)


def test_result_of_an_actor_that_keeps_none_raises_result_missing_at_once(app: App) -> None:
    @app.actor
    def plain() -> None: ...

    started = time.monotonic()
    with pytest.raises(ResultMissing, match="store_results=True"):
        plain.send().result(timeout=30)
    assert time.monotonic() - started < 5


def test_result_that_expired_raises_result_missing(broker: Broker) -> None:
    app = App(broker=broker, results=open_store("memory://"), result_ttl_seconds=0.2, store_results=True)

    @app.actor
    def value() -> int:
        return 1

    w = Worker(app, threads=1)
    w.start()
    try:
        message = value.send()
        assert message.result(timeout=10) == 1
        time.sleep(0.3)
        with pytest.raises(ResultMissing):
            message.result(timeout=0)
    finally:
        w.stop(grace=5)


def test_unencodable_result_is_a_task_failure(app: App, worker: Callable[[], Worker]) -> None:
    @app.actor(store_results=True)
    def make_set() -> set[int]:
        return {1}

    worker()
    with pytest.raises(TaskFailed, match="EncodeError"):
        make_set.send().result(timeout=10)


def test_pipeline_passes_each_result_to_the_next_step(app: App, worker: Callable[[], Worker]) -> None:
    @app.actor
    def add(a: int, b: int) -> int:
        return a + b

    @app.actor
    def square(n: int) -> int:
        return n * n

    @app.actor
    def constant() -> str:
        return "ignored input"

    worker()
    assert pipeline([add.message(1, 2), square.message()]).run().result(timeout=10) == 9
    chained = (add.message(1, 1) | add.message(10) | square.message()).run()
    assert chained.result(timeout=10) == 144
    ignoring = pipeline([add.message(1, 1), constant.message_with_options(pipe_ignore=True)]).run()
    assert ignoring.result(timeout=10) == "ignored input"


def test_a_failing_step_stops_the_pipeline_and_its_result_says_why(app: App, worker: Callable[[], Worker]) -> None:
    ran: list[str] = []

    @app.actor(max_retries=0)
    def fail(n: int) -> int:
        raise ValueError(f"bad {n}")

    @app.actor
    def after(n: int) -> None:
        ran.append("after")

    @app.actor
    def one() -> int:
        return 1

    worker()
    with pytest.raises(TaskFailed, match="ValueError"):
        pipeline([one.message(), fail.message(), after.message()]).run().result(timeout=10)
    assert ran == []


def test_group_results_come_back_in_order(app: App, worker: Callable[[], Worker]) -> None:
    @app.actor
    def square(n: int) -> int:
        time.sleep(0.001 * (10 - n))
        return n * n

    @app.actor
    def add(a: int, b: int) -> int:
        return a + b

    worker()
    members = [square.message(n) for n in range(10)] + [add.message(1, 2) | square.message()]
    assert group(members).run().results(timeout=10) == [n * n for n in range(10)] + [9]


def test_group_callback_fires_once_when_the_last_member_finishes(app: App, worker: Callable[[], Worker]) -> None:
    fired: list[str] = []
    lock = threading.Lock()

    @app.actor
    def member(n: int) -> int:
        return n

    @app.actor
    def done(tag: str) -> None:
        with lock:
            fired.append(tag)

    worker()
    g = group([member.message(n) for n in range(200)], on_complete=done.message("all")).run()
    g.wait(timeout=30)
    wait_for(lambda: fired == ["all"])
    time.sleep(0.3)
    assert fired == ["all"]


def test_group_with_a_failed_member_fires_on_failure(app: App, worker: Callable[[], Worker]) -> None:
    fired: list[str] = []

    @app.actor(max_retries=0)
    def member(n: int) -> int:
        if n == 3:
            raise RuntimeError("three")
        return n

    @app.actor
    def note(tag: str) -> None:
        fired.append(tag)

    worker()
    g = group(
        [member.message(n) for n in range(5)], on_complete=note.message("complete"), on_failure=note.message("failed")
    ).run()
    with pytest.raises(TaskFailed, match="three"):
        g.results(timeout=10)
    wait_for(lambda: fired == ["failed"])


def test_on_success_and_on_failure_callbacks(app: App, worker: Callable[[], Worker]) -> None:
    seen: list[Any] = []

    @app.actor
    def got_result(result: int) -> None:
        seen.append(("ok", result))

    @app.actor
    def got_error(error: dict[str, Any]) -> None:
        seen.append(("error", error["type"], error["message"], error["actor"]))

    @app.actor(on_success=got_result)
    def compute() -> int:
        return 7

    @app.actor(max_retries=0)
    def breaks() -> None:
        raise OSError("disk gone")

    worker()
    compute.send()
    breaks.send_with_options(on_failure=got_error)
    wait_for(lambda: len(seen) == 2)
    assert sorted(seen, key=str) == sorted([("ok", 7), ("error", "OSError", "disk gone", "breaks")], key=str)


def test_a_pipeline_whose_first_step_lacks_arguments_is_refused_at_run(app: App) -> None:
    from taskmill import ArgumentsError

    @app.actor
    def square(n: int) -> int:
        return n * n

    with pytest.raises(ArgumentsError):
        pipeline([square.message(), square.message()]).run()
    with pytest.raises(ArgumentsError):
        group([square.message()]).run()


def test_a_result_json_cannot_carry_fails_the_pipeline_at_that_step(app: App, worker: Callable[[], Worker]) -> None:
    ran: list[str] = []

    @app.actor
    def make_set() -> set[int]:
        return {1}

    @app.actor
    def after(value: object) -> None:
        ran.append("after")

    worker()
    with pytest.raises(TaskFailed, match="EncodeError"):
        (make_set.message() | after.message()).run().result(timeout=10)
    assert ran == []
    wait_for(lambda: bool(app.broker.dead_letters()))  # the result is recorded just before the broker moves it
    assert app.broker.dead_letters()[0].error_type == "EncodeError"


def test_a_group_member_whose_result_json_cannot_carry_fires_on_failure(app: App, worker: Callable[[], Worker]) -> None:
    fired: list[str] = []

    @app.actor
    def member(n: int) -> object:
        return {n} if n == 1 else n

    @app.actor
    def note(tag: str) -> None:
        fired.append(tag)

    worker()
    group([member.message(n) for n in range(3)], on_complete=note.message("ok"), on_failure=note.message("bad")).run()
    wait_for(lambda: fired == ["bad"])


def test_a_worker_without_the_actor_still_records_the_failure_for_the_producer(
    app: App, worker: Callable[[], Worker]
) -> None:
    producer = App(broker=app.broker, results=app.store)

    @producer.actor(store_results=True)
    def only_the_producer_knows() -> int:
        return 1

    worker()
    with pytest.raises(TaskFailed, match=r"unknown_actor|ActorNotFound"):
        only_the_producer_knows.send().result(timeout=10)


def test_callbacks_work_for_the_longest_message_ids(app: App, worker: Callable[[], Worker]) -> None:
    seen: list[int] = []

    @app.actor
    def got(result: int) -> None:
        seen.append(result)

    @app.actor(on_success=got)
    def compute() -> int:
        return 5

    worker()
    compute.send_with_options(message_id="x" * 200)
    wait_for(lambda: seen == [5])


def test_result_without_waiting_is_missing_until_done(app: App) -> None:
    @app.actor(store_results=True)
    def later() -> None: ...

    with pytest.raises(ResultMissing):
        later.send().result(timeout=0)


def test_enqueueing_a_message_with_partial_arguments_is_refused(app: App) -> None:
    from taskmill import ArgumentsError

    @app.actor
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(ArgumentsError):
        app.enqueue([add.message(1)])


@pytest.mark.needs("expiring_leases")
def test_a_message_the_crash_guard_buries_fails_its_result_and_its_group(
    app: App, worker: Callable[[], Worker]
) -> None:
    fired: list[str] = []

    @app.actor
    def member(n: int) -> int:
        return n

    @app.actor
    def note(tag: str) -> None:
        fired.append(tag)

    g = group([member.message(1)], on_complete=note.message("ok"), on_failure=note.message("bad")).run()
    for _ in range(app.broker.max_deliveries):  # a consumer that dies holding it, again and again
        wait_for(lambda: bool(app.broker.fetch([g.members[0].steps[0].queue], 1, 100)))
        time.sleep(0.15)
    worker()
    with pytest.raises(TaskFailed, match="delivery_limit"):
        g.results(timeout=10)
    wait_for(lambda: fired == ["bad"])
