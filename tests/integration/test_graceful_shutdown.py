"""F5 on SQLite: SIGTERM finishes in-flight work and keeps the rest; a second SIGTERM stops hard, losing nothing."""

from __future__ import annotations

import signal

import pytest
from harness import Workers, is_alive, record_messages, totals, wait_drained, wait_until
from ledger import Ledger

from taskmill import App

FAST = {"TASKMILL_TEST_TASK_MS": "5"}


def drain_with_burst_worker(workers: Workers) -> None:
    burst = workers.worker("--burst", processes=1, threads=4, env=FAST)
    assert burst.wait(30) == 0, burst.output()


@pytest.mark.slow
def test_sigterm_finishes_in_flight_work_and_leaves_the_rest_ready(
    workers: Workers, ledger: Ledger, producer: App
) -> None:
    ids = ledger.enqueue(producer, record_messages(producer, 8))
    worker = workers.worker("--grace", "20", threads=2, env={"TASKMILL_TEST_TASK_MS": "1000"})
    wait_until(lambda: len(ledger.running()) == 2, 20, "two messages in flight")

    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output()

    assert ledger.running() == [], "an in-flight message was cut short"
    completed = ledger.completed_count()
    assert 2 <= completed < len(ids)
    counts = totals(producer)
    assert (counts.ready, counts.delayed, counts.in_flight, counts.dead) == (len(ids) - completed, 0, 0, 0)

    drain_with_burst_worker(workers)
    report = ledger.check()
    assert (report.lost, report.unexpected, report.dup) == (frozenset(), frozenset(), 0), report.summary()
    wait_drained(producer)


@pytest.mark.slow
def test_second_sigterm_stops_at_once_and_gives_in_flight_messages_back(
    workers: Workers, ledger: Ledger, producer: App
) -> None:
    ids = ledger.enqueue(producer, record_messages(producer, 6))
    slow = {"TASKMILL_TEST_TASK_MS": "30000", "TASKMILL_LEASE_SECONDS": "60"}
    worker = workers.worker("--grace", "30", threads=2, env=slow)
    wait_until(lambda: len(ledger.running()) == 2, 20, "two messages in flight")
    (child,) = worker.children()

    worker.signal(signal.SIGTERM)
    worker.wait_for_output("stopping: finishing in-flight work")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0, worker.output()
    assert not is_alive(child)

    counts = totals(producer)
    assert (counts.ready, counts.delayed, counts.in_flight, counts.dead) == (len(ids), 0, 0, 0)

    drain_with_burst_worker(workers)
    report = ledger.check(killed_pids={child})
    assert (report.lost, report.unexpected, report.unexplained) == (frozenset(), frozenset(), ()), report.summary()
    assert report.dup == 2, report.summary()
    wait_drained(producer)


@pytest.mark.slow
def test_children_of_a_killed_supervisor_finish_in_flight_work_and_exit(
    workers: Workers, ledger: Ledger, producer: App
) -> None:
    ids = ledger.enqueue(producer, record_messages(producer, 12))
    worker = workers.worker("--grace", "20", processes=2, threads=2, env={"TASKMILL_TEST_TASK_MS": "1000"})
    wait_until(lambda: len(ledger.running()) == 4, 20, "four messages in flight")
    children = worker.children()

    worker.signal(signal.SIGKILL)
    worker.wait(5)
    wait_until(lambda: not any(is_alive(pid) for pid in children), 20, "the orphaned children to exit")

    assert ledger.running() == [], "an in-flight message was cut short"
    completed = ledger.completed_count()
    counts = totals(producer)
    assert (counts.ready, counts.delayed, counts.in_flight, counts.dead) == (len(ids) - completed, 0, 0, 0)

    drain_with_burst_worker(workers)
    report = ledger.check()
    assert (report.lost, report.unexpected, report.dup) == (frozenset(), frozenset(), 0), report.summary()
