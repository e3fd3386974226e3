"""The worker over every broker: runs, retries, dead-letters, honours priority and keeps its leases."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskmill import App, Retry, Worker
from taskmill.brokers import Broker, Record
from taskmill.errors import BrokerError


@pytest.fixture
def app(broker: Broker) -> App:
    return App(broker=broker, lease_seconds=5)


@pytest.fixture
def start_worker(app: App) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def start(**kwargs: Any) -> Worker:
        worker = Worker(app, **kwargs)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(grace=5)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def dead_reasons(broker: Broker) -> list[str]:
    return [d.reason for d in broker.dead_letters()]


def test_messages_run_and_are_acked(app: App, start_worker: Callable[..., Worker]) -> None:
    done: list[int] = []

    @app.actor
    def record(n: int) -> None:
        done.append(n)

    for n in range(50):
        record.send(n)
    start_worker(threads=4)
    wait_for(lambda: len(done) == 50)
    wait_for(lambda: app.broker.stats()[0].in_flight == 0)
    assert sorted(done) == list(range(50))
    assert app.broker.stats()[0].ready == 0


def test_failing_actor_is_retried_then_dead_lettered_with_its_traceback(
    app: App, start_worker: Callable[..., Worker]
) -> None:
    attempts: list[int] = []

    @app.actor(max_retries=2, min_backoff=0.01, max_backoff=0.02)
    def explode() -> None:
        attempts.append(1)
        raise ValueError("boom")

    explode.send()
    start_worker(threads=1)
    wait_for(lambda: bool(app.broker.dead_letters()))
    [dead] = app.broker.dead_letters()
    assert len(attempts) == 3
    assert (dead.reason, dead.error_type, dead.error_message, dead.deliveries) == ("failed", "ValueError", "boom", 3)
    assert "Traceback" in dead.traceback
    assert 'raise ValueError("boom")' in dead.traceback


def test_throws_dead_letters_at_once(app: App, start_worker: Callable[..., Worker]) -> None:
    attempts: list[int] = []

    @app.actor(max_retries=5, throws=(KeyError,))
    def lookup() -> None:
        attempts.append(1)
        raise KeyError("missing")

    lookup.send()
    start_worker(threads=1)
    wait_for(lambda: bool(app.broker.dead_letters()))
    assert attempts == [1]


def test_retry_request_runs_again(app: App, start_worker: Callable[..., Worker]) -> None:
    attempts: list[float] = []

    @app.actor(max_retries=3)
    def poll() -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise Retry(delay=0.05)

    poll.send()
    start_worker(threads=1)
    wait_for(lambda: len(attempts) == 3 and app.broker.stats()[0].in_flight == 0)
    assert app.broker.dead_letters() == []


def test_bad_input_is_dead_lettered_and_the_worker_keeps_running(app: App, start_worker: Callable[..., Worker]) -> None:
    done: list[str] = []

    @app.actor
    def ok(tag: str) -> None:
        done.append(tag)

    app.broker.publish(
        [
            Record("garbage", "default", b"\xff\x00 not json"),
            Record("wrong-version", "default", b'{"v":9,"id":"wrong-version","actor":"ok","queue":"default"}'),
            Record("no-actor", "default", b'{"v":1,"id":"no-actor","actor":"nobody","queue":"default"}'),
            Record("bad-args", "default", b'{"v":1,"id":"bad-args","actor":"ok","queue":"default","args":[1,2]}'),
        ]
    )
    start_worker(threads=2)
    wait_for(lambda: len(app.broker.dead_letters()) == 4)
    ok.send("after")
    wait_for(lambda: done == ["after"])
    reasons = {d.id: d.reason for d in app.broker.dead_letters()}
    assert reasons == {
        "garbage": "decode_error",
        "wrong-version": "decode_error",
        "no-actor": "unknown_actor",
        "bad-args": "bad_arguments",
    }
    garbage = next(d for d in app.broker.dead_letters() if d.id == "garbage")
    assert garbage.body == b"\xff\x00 not json"


@pytest.mark.needs("priorities")
def test_priority_nine_behind_a_thousand_zeros_is_the_next_to_start(
    app: App, start_worker: Callable[..., Worker]
) -> None:
    gate = threading.Event()
    started: list[str] = []

    @app.actor
    def work(tag: str) -> None:
        started.append(tag)
        if tag == "first":
            gate.wait(10)

    work.send("first")
    start_worker(threads=1)
    wait_for(lambda: started == ["first"])
    app.enqueue([work.message("low") for _ in range(1000)])
    work.send_with_options(args=("urgent",), priority=9)
    gate.set()
    wait_for(lambda: len(started) >= 2)
    assert started[1] == "urgent"


def test_heartbeats_keep_a_long_task_leased(broker: Broker) -> None:
    app = App(broker=broker, lease_seconds=0.3)
    runs: list[int] = []

    @app.actor
    def slow() -> None:
        runs.append(1)
        time.sleep(1.2)

    slow.send()
    worker = Worker(app, threads=2)
    worker.start()
    try:
        wait_for(lambda: broker.stats()[0].in_flight == 0 and runs == [1])
        time.sleep(0.4)
        assert runs == [1]
        assert broker.dead_letters() == []
    finally:
        worker.stop(grace=5)


def test_sync_time_limit_interrupts_and_dead_letters(app: App, start_worker: Callable[..., Worker]) -> None:
    @app.actor(time_limit=0.2, max_retries=0)
    def spin() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pass

    spin.send()
    start_worker(threads=1)
    wait_for(lambda: bool(app.broker.dead_letters()))
    assert app.broker.dead_letters()[0].error_type == "TimeLimitExceeded"


def test_async_actors_run_on_the_event_loop_with_time_limits(app: App, start_worker: Callable[..., Worker]) -> None:
    import asyncio

    done: list[int] = []

    @app.actor
    async def fetch(n: int) -> None:
        await asyncio.sleep(0.01)
        done.append(n)

    @app.actor(time_limit=0.1, max_retries=0)
    async def hang() -> None:
        await asyncio.sleep(30)

    for n in range(20):
        fetch.send(n)
    hang.send()
    start_worker(threads=4)
    wait_for(lambda: len(done) == 20 and bool(app.broker.dead_letters()))
    assert app.broker.dead_letters()[0].error_type == "TimeLimitExceeded"


def test_delayed_message_waits_without_holding_a_worker(app: App, start_worker: Callable[..., Worker]) -> None:
    ran: list[float] = []

    @app.actor
    def later() -> None:
        ran.append(time.monotonic())

    sent = time.monotonic()
    later.send_with_options(delay=0.5)
    worker = start_worker(threads=1)
    time.sleep(0.2)
    assert ran == []
    assert worker.in_flight == 0
    wait_for(lambda: bool(ran), timeout=5)
    assert ran[0] - sent >= 0.49  # wire times are whole milliseconds


def test_graceful_stop_finishes_in_flight_work(app: App) -> None:
    finished: list[int] = []
    started = threading.Event()

    @app.actor
    def job(n: int) -> None:
        started.set()
        time.sleep(0.3)
        finished.append(n)

    for n in range(10):
        job.send(n)
    worker = Worker(app, threads=2)
    worker.start()
    started.wait(5)
    assert worker.stop(grace=5) is True
    stats = app.broker.stats()[0]
    assert stats.in_flight == 0
    assert len(finished) + stats.ready == 10


def test_burst_worker_exits_when_nothing_is_due(app: App) -> None:
    done: list[int] = []

    @app.actor
    def job(n: int) -> None:
        done.append(n)

    for n in range(5):
        job.send(n)
    job.send_with_options(args=(99,), delay=60)
    worker = Worker(app, threads=2, burst=True)
    worker.run()
    assert sorted(done) == list(range(5))
    assert app.broker.stats()[0].delayed == 1


def test_sys_exit_in_an_actor_is_an_error_not_a_lost_thread(app: App, start_worker: Callable[..., Worker]) -> None:
    import sys

    done: list[int] = []

    @app.actor(max_retries=0)
    def quit_now() -> None:
        sys.exit(3)

    @app.actor
    def fine(n: int) -> None:
        done.append(n)

    quit_now.send()
    start_worker(threads=1)
    wait_for(lambda: bool(app.broker.dead_letters()))
    assert app.broker.dead_letters()[0].error_type == "SystemExit"
    fine.send(1)
    wait_for(lambda: done == [1])


def test_a_body_over_the_payload_cap_is_dead_lettered_unread(broker: Broker) -> None:
    app = App(broker=broker, max_payload_bytes=100)
    broker.publish(
        [Record("big", "default", b'{"v":1,"id":"big","actor":"x","queue":"default","pad":"' + b"x" * 200 + b'"}')]
    )
    worker = Worker(app, threads=1)
    worker.start()
    try:
        wait_for(lambda: bool(broker.dead_letters()))
        assert broker.dead_letters()[0].reason == "payload_too_large"
    finally:
        worker.stop(grace=5)


def test_a_failing_after_process_hook_fails_the_attempt_which_is_retried_then_dead_lettered(broker: Broker) -> None:
    from taskmill import Message, Middleware

    class Broken(Middleware):
        def after_process(self, app: App, message: Message, *, result: Any, exception: BaseException | None) -> None:
            raise RuntimeError("result store down")

    app = App(broker=broker, middleware=[Broken()])
    runs: list[int] = []

    @app.actor(max_retries=2, min_backoff=0.01, max_backoff=0.02)
    def job() -> None:
        runs.append(1)

    job.send()
    worker = Worker(app, threads=1)
    worker.start()
    try:
        wait_for(lambda: bool(broker.dead_letters()))
    finally:
        worker.stop(grace=5)
    assert runs == [1, 1, 1]
    dead = broker.dead_letters()[0]
    assert (dead.error_type, dead.error_message) == ("RuntimeError", "result store down")


def test_time_limit_dead_letters_say_what_the_limit_was(app: App, start_worker: Callable[..., Worker]) -> None:
    @app.actor(time_limit=0.1, max_retries=0)
    def spin() -> None:
        while True:
            time.sleep(0.001)

    spin.send()
    start_worker(threads=1)
    wait_for(lambda: bool(app.broker.dead_letters()))
    assert "time_limit of 0.1 s" in app.broker.dead_letters()[0].error_message


def test_time_limits_racing_the_actors_return_never_wedge_the_worker(broker: Broker) -> None:
    import random

    app = App(broker=broker, lease_seconds=5)
    done: list[int] = []

    @app.actor(time_limit=0.02, max_retries=0)
    def close_call(n: int) -> None:
        deadline = time.monotonic() + random.uniform(0.015, 0.025)
        while time.monotonic() < deadline:
            pass
        done.append(n)

    app.enqueue([close_call.message(n) for n in range(150)])
    worker = Worker(app, threads=8)
    worker.start()
    try:
        # every message ran or was dead-lettered (counts of in-flight messages are not on every broker)
        wait_for(lambda: len(done) + len(broker.dead_letters(limit=1000)) >= 150, timeout=60)
    finally:
        assert worker.stop(grace=10) is True
    assert len(done) + len(broker.dead_letters(limit=1000)) >= 150


def test_system_exit_in_an_async_actor_does_not_stop_the_event_loop(
    app: App, start_worker: Callable[..., Worker]
) -> None:
    import sys

    done: list[int] = []

    @app.actor(max_retries=0)
    async def leave() -> None:
        sys.exit(3)

    @app.actor
    async def fine(n: int) -> None:
        done.append(n)

    leave.send()
    start_worker(threads=2)
    wait_for(lambda: bool(app.broker.dead_letters()))
    assert app.broker.dead_letters()[0].error_type == "SystemExit"
    fine.send(1)
    wait_for(lambda: done == [1])


def test_an_error_text_with_a_lone_surrogate_is_still_dead_lettered(
    app: App, start_worker: Callable[..., Worker]
) -> None:
    @app.actor(max_retries=0)
    def open_odd_file() -> None:
        name = b"caf\xe9".decode("utf-8", "surrogateescape")
        raise FileNotFoundError("no such file: " + name)

    open_odd_file.send()
    start_worker(threads=1)
    wait_for(lambda: bool(app.broker.dead_letters()))
    dead = app.broker.dead_letters()[0]
    assert (dead.reason, dead.error_type) == ("failed", "FileNotFoundError")
    assert "caf" in dead.error_message


def test_a_retry_when_that_raises_dead_letters_the_message(app: App, start_worker: Callable[..., Worker]) -> None:
    def broken(exc: BaseException, attempt: int) -> bool:
        raise RuntimeError("bug in retry_when")

    @app.actor(retry_when=broken)
    def job() -> None:
        raise ValueError("first problem")

    job.send()
    start_worker(threads=1)
    wait_for(lambda: bool(app.broker.dead_letters()))
    assert app.broker.dead_letters()[0].error_type == "ValueError"


def test_retry_accepts_a_timedelta(app: App, start_worker: Callable[..., Worker]) -> None:
    import datetime

    attempts: list[float] = []

    @app.actor(max_retries=1)
    def poll() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise Retry(delay=datetime.timedelta(milliseconds=300))

    poll.send()
    start_worker(threads=1)
    wait_for(lambda: len(attempts) == 2)
    assert attempts[1] - attempts[0] >= 0.29


def test_sends_to_an_idle_worker_keep_running_one_slot_at_a_time(app: App, start_worker: Callable[..., Worker]) -> None:
    """A message that wakes an idle worker runs on the thread that fetched it, which hands the fetch
    loop to a free thread: the loop must never be lost, and slots must hold."""
    running: list[int] = []
    most: list[int] = [0]
    done: list[int] = []
    lock = threading.Lock()

    @app.actor
    def slow(n: int) -> None:
        with lock:
            running.append(n)
            most[0] = max(most[0], len(running))
        time.sleep(0.05)
        with lock:
            running.remove(n)
            done.append(n)

    start_worker(threads=2)
    time.sleep(0.3)  # idle: the fetch loop waits on the broker
    for n in range(12):
        slow.send(n)
        time.sleep(0.01 if n % 3 else 0.2)  # now in bursts, now after the worker went idle again
    wait_for(lambda: len(done) == 12, timeout=20)
    assert sorted(done) == list(range(12))
    assert most[0] <= 2
    wait_for(lambda: app.broker.stats()[0].in_flight == 0)


def test_a_busy_worker_fetches_on_the_thread_that_frees_a_slot(app: App, start_worker: Callable[..., Worker]) -> None:
    """With every slot busy nobody waits to fetch: the thread that frees a slot acks and fetches the
    next message itself. A message holding one slot must not stall the backlog in the other, the
    acks must not wait for it, and a stop while every slot is busy returns once they finish."""
    gate = threading.Event()
    done: list[int] = []

    @app.actor
    def work(n: int) -> None:
        if n <= 0:
            gate.wait(10)
        done.append(n)

    work.send(0)
    worker = start_worker(threads=2)
    wait_for(lambda: worker.in_flight == 1)
    app.enqueue([work.message(n) for n in range(1, 41)])
    wait_for(lambda: len(done) == 40)
    assert sorted(done) == list(range(1, 41))
    wait_for(lambda: app.broker.stats()[0].in_flight <= 1)  # the 40 acked while 0 holds its slot (RabbitMQ: 0)
    work.send(-1)
    wait_for(lambda: worker.in_flight == 2)
    began = time.monotonic()
    threading.Timer(0.2, gate.set).start()
    assert worker.stop(grace=5) is True
    assert time.monotonic() - began < 4  # not the 5 s a stop waits for a fetch loop nobody runs
    assert sorted(done) == list(range(-1, 41))
    stats = app.broker.stats()[0]
    assert (stats.ready, stats.in_flight) == (0, 0)


class HoldTheRetryLine(logging.Handler):
    """Holds the thread that logs a retry (it has retried its message, and still holds its slot)
    until ``let_go`` is set; ``blocked`` says a thread is held."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked, self.let_go = threading.Event(), threading.Event()  # not `release`: Handler's lock

    def emit(self, record: logging.LogRecord) -> None:
        if "retry in" in record.getMessage():
            self.blocked.set()
            self.let_go.wait(10)


def retried_at_once_then_held(app: App, hold: HoldTheRetryLine, started: list[str]) -> Any:
    """An actor that asks for a retry with no delay, then (its second delivery) runs until released."""

    @app.actor
    def flaky() -> None:
        started.append("flaky")
        if started.count("flaky") == 1:
            raise Retry(delay=0)
        hold.let_go.wait(10)

    flaky.logger.addHandler(hold)
    return flaky


def test_a_message_retried_at_once_takes_a_slot_of_its_own_while_its_first_thread_settles(
    app: App, start_worker: Callable[..., Worker]
) -> None:
    """A retry with no delay makes the message ready again while the thread that ran it still
    settles it (here: logs the retry). Fetched again at once, the second delivery takes a slot of its
    own: the worker never holds more messages than it has threads."""
    hold, started = HoldTheRetryLine(), list[str]()
    flaky = retried_at_once_then_held(app, hold, started)

    @app.actor
    def other() -> None:
        started.append("other")

    try:
        flaky.send()
        worker = start_worker(threads=2)
        assert hold.blocked.wait(10)
        wait_for(lambda: started.count("flaky") == 2)  # the second delivery, fetched at once
        assert worker.in_flight == 2  # the first still holds its slot: the worker is full
        other.send()
        time.sleep(0.3)
        assert "other" not in started
        hold.let_go.set()
        wait_for(lambda: "other" in started)
        wait_for(lambda: worker.in_flight == 0)
        wait_for(lambda: app.broker.stats()[0].in_flight == 0)
    finally:
        hold.let_go.set()
        flaky.logger.removeHandler(hold)
    assert started == ["flaky", "flaky", "other"]


def test_a_heartbeat_while_a_retried_message_settles_reports_no_lost_lease(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """Once its thread has retried a message, the old delivery's lease is gone by design: heartbeats
    that come before the thread frees its slot neither renew it nor warn that it was lost."""
    app = App(broker=broker, lease_seconds=0.6)  # a heartbeat every 0.2 s
    hold, started = HoldTheRetryLine(), list[str]()
    flaky = retried_at_once_then_held(app, hold, started)
    caplog.set_level(logging.WARNING)
    worker = Worker(app, threads=2)
    try:
        flaky.send()
        worker.start()
        assert hold.blocked.wait(10)
        wait_for(lambda: len(started) == 2)
        time.sleep(0.7)  # three heartbeats or more while the first thread still holds its slot
        hold.let_go.set()
        wait_for(lambda: worker.in_flight == 0)
    finally:
        hold.let_go.set()
        worker.stop(grace=5)
        flaky.logger.removeHandler(hold)
    assert [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()] == []


@pytest.mark.needs("expiring_leases")
def test_a_dead_letter_report_that_raises_strands_nothing_its_fetch_leased(
    app: App, start_worker: Callable[..., Worker], failing_dead_letter_reports: None
) -> None:
    """The crash guard dead-letters a message inside a fetch, and the fetch loop reports it (a log
    line, the hooks). If the report raises, what that fetch leased runs now, not once its lease
    runs out, and the worker goes on."""
    ran: list[int] = []

    @app.actor
    def work(n: int) -> None:
        ran.append(n)

    work.send(0)  # its leases run out max_deliveries times: the next fetch dead-letters it
    for _ in range(app.broker.max_deliveries):
        wait_for(lambda: bool(app.broker.fetch(["default"], 1, 100)))
        time.sleep(0.15)
    work.send(1)
    start_worker(threads=2)
    wait_for(lambda: ran == [1], timeout=4)  # its lease is 5 s: not waited out
    work.send(2)
    wait_for(lambda: ran == [1, 2], timeout=4)
    assert dead_reasons(app.broker) == ["delivery_limit"]


def test_an_ack_that_failed_while_every_slot_filled_is_sent_again_at_once(
    app: App, start_worker: Callable[..., Worker]
) -> None:
    """A finished message's ack fails to send (a broker blip) just as the worker fills every slot
    with long messages: the ack must not wait for them (its lease is no longer renewed, so it would
    come back and run twice). The broker is real; only that one ack call is made to fail."""
    broker, gate = app.broker, threading.Event()
    acked: list[str] = []
    ack, ack_and_fetch = broker.ack, broker.ack_and_fetch
    failed: list[bool] = []

    def failing_ack(deliveries: list[Any]) -> Any:
        if not failed:
            failed.append(True)
            work.send("b")
            work.send("c")
            with contextlib.suppress(AssertionError):  # RabbitMQ delivers c only after a's ack: a holds prefetch
                wait_for(lambda: worker.in_flight == 2, timeout=2)  # both slots filled while this send fails
            raise BrokerError("connection reset (injected)")
        acked.extend(d.id for d in deliveries)
        return ack(deliveries)

    def recording_ack_and_fetch(deliveries: list[Any], *args: Any) -> Any:
        result = ack_and_fetch(deliveries, *args)
        acked.extend(d.id for d in deliveries)
        return result

    @app.actor
    def work(tag: str) -> None:
        if tag != "a":
            gate.wait(10)
        else:
            time.sleep(0.3)  # the fetch loop goes idle meanwhile: a's own thread acks it

    broker.ack, broker.ack_and_fetch = failing_ack, recording_ack_and_fetch  # type: ignore[method-assign,assignment]
    worker = start_worker(threads=2)
    time.sleep(0.3)  # idle: a finished message is acked by its own thread
    first = work.send("a")
    try:
        wait_for(lambda: first.id in acked, timeout=5)  # while b and c still hold both slots
        assert failed
        wait_for(lambda: worker.in_flight == 2)
    finally:
        gate.set()


def test_a_message_that_finishes_during_a_graceful_stop_is_acked_at_once(app: App) -> None:
    """Its lease is no longer renewed: an ack kept until the whole grace period ends could let the
    lease expire first, and the message run twice. The broker is real; its acks are only recorded."""
    gate, broker = threading.Event(), app.broker
    acked: list[str] = []
    ack, ack_and_fetch = broker.ack, broker.ack_and_fetch

    def recording_ack(deliveries: list[Any]) -> Any:
        acked.extend(d.id for d in deliveries)
        return ack(deliveries)

    def recording_ack_and_fetch(deliveries: list[Any], *args: Any) -> Any:
        acked.extend(d.id for d in deliveries)
        return ack_and_fetch(deliveries, *args)

    broker.ack, broker.ack_and_fetch = recording_ack, recording_ack_and_fetch  # type: ignore[method-assign,assignment]

    started: list[str] = []

    @app.actor
    def work(tag: str) -> None:
        started.append(tag)
        if tag == "long":
            gate.wait(10)
        else:
            time.sleep(0.3)

    long, short = work.send("long"), work.send("short")
    worker = Worker(app, threads=2)
    worker.start()
    wait_for(lambda: len(started) == 2)  # in flight is not enough: a stop gives back what has not started
    stopping = threading.Thread(target=worker.stop, kwargs={"grace": 10})
    stopping.start()
    try:
        wait_for(lambda: short.id in acked, timeout=5)  # while "long" still runs
        assert long.id not in acked
    finally:
        gate.set()
        stopping.join(10)
    assert long.id in acked
    assert app.broker.stats()[0].ready == 0


def test_stop_returns_only_once_a_worker_threads_ack_is_sent(app: App) -> None:
    """A message that finishes during a graceful stop is acked by its own thread; stop() must not
    return (and the process exit) while that ack is still on its way. The broker is real; its
    acks are only slowed down."""
    broker, started, ack = app.broker, threading.Event(), app.broker.ack
    sent: list[str] = []

    def slow_ack(deliveries: list[Any]) -> Any:
        time.sleep(0.5)
        result = ack(deliveries)
        sent.extend(d.id for d in deliveries)
        return result

    broker.ack = slow_ack  # type: ignore[method-assign,assignment]

    @app.actor
    def work() -> None:
        started.set()
        time.sleep(0.3)

    message = work.send()
    worker = Worker(app, threads=1)
    worker.start()
    assert started.wait(5)
    assert worker.stop(grace=5) is True
    assert message.id in sent
    assert app.broker.stats()[0].ready == 0
