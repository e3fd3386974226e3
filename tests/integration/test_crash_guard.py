"""F17 on SQLite: a message that kills its worker process is dead-lettered after max_deliveries; the rest flows."""

from __future__ import annotations

import signal

import pytest
from harness import Workers, new_key, record_messages, totals, wait_completed, wait_drained, wait_until
from ledger import Ledger

from taskmill import App

HEALTHY = 100
CRASH_ENV = {
    "TASKMILL_LEASE_SECONDS": "1",
    "TASKMILL_MAX_DELIVERIES": "3",
    "TASKMILL_TEST_TASK_MS": "10",
}


def send_poison_among_healthy(ledger: Ledger, producer: App) -> str:
    poison = new_key()
    crash = producer.get_actor("crash")
    ledger.enqueue(producer, [crash.message_with_options(args=(poison,), message_id=poison)])
    ledger.enqueue(producer, record_messages(producer, HEALTHY))
    return poison


def assert_poison_dead_lettered_and_healthy_completed(ledger: Ledger, producer: App, poison: str) -> None:
    dead = producer.broker.dead_letters()
    assert [(d.id, d.queue, d.reason, d.deliveries) for d in dead] == [(poison, "poison", "delivery_limit", 3)]
    assert [e.attempt for e in ledger.executions() if e.id == poison] == [1, 2, 3]
    report = ledger.check(dead_letter_ids={poison})
    assert (report.lost, report.unexpected, report.completed) == (frozenset(), frozenset(), HEALTHY), report.summary()
    wait_drained(producer)


@pytest.mark.slow
def test_worker_dead_letters_a_process_killing_message_after_max_deliveries(
    workers: Workers, ledger: Ledger, producer: App
) -> None:
    poison = send_poison_among_healthy(ledger, producer)
    worker = workers.worker(processes=2, threads=1, env=CRASH_ENV)
    wait_until(producer.broker.dead_letters, 30, "the poison message in the dead-letter queue")
    wait_completed(ledger, HEALTHY, 30)
    assert_poison_dead_lettered_and_healthy_completed(ledger, producer, poison)
    assert worker.output().count("exited with code 1; restarting it") == 3
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


@pytest.mark.slow
def test_burst_worker_dead_letters_a_process_killing_message_after_max_deliveries(
    workers: Workers, ledger: Ledger, producer: App
) -> None:
    poison = send_poison_among_healthy(ledger, producer)
    worker = workers.worker("--burst", processes=2, threads=1, env=CRASH_ENV)
    assert worker.wait(60) == 0, worker.output()
    left = totals(producer)
    assert left.ready + left.in_flight == 0, f"--burst exited 0 leaving a message its crashed children held: {left}"
    assert_poison_dead_lettered_and_healthy_completed(ledger, producer, poison)
