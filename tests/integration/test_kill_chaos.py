"""F1 on SQLite: SIGKILL worker children mid-run; nothing is lost, duplicates only where a kill hit."""

from __future__ import annotations

import os
import random
import signal

import pytest
from harness import Workers, record_messages, totals, wait_completed, wait_drained
from ledger import Ledger

from taskmill import App

MESSAGES = 2000
KILLS = 5
THREADS = 4
GRACE = 10


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkilled_children_lose_nothing_and_duplicate_only_what_was_in_flight(
    workers: Workers, ledger: Ledger, producer: App
) -> None:
    ledger.enqueue(producer, record_messages(producer, MESSAGES))
    worker = workers.worker(
        "--grace",
        str(GRACE),
        processes=2,
        threads=THREADS,
        env={"TASKMILL_LEASE_SECONDS": "2", "TASKMILL_TEST_TASK_MS": "5-20"},
    )
    worker.wait_children(2)
    wait_completed(ledger, 50, 20)

    killed: list[int] = []
    in_flight_at_kills = 0
    for _ in range(KILLS):
        children = worker.wait_children(2)
        busy = {e.pid for e in ledger.running()} & set(children)
        victim = random.choice(sorted(busy or children))
        assert ledger.completed_count() < MESSAGES, "the run finished before every kill; slow the actor down"
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        in_flight_at_kills += totals(producer).in_flight  # the dead victim's leases stay counted until they expire
        worker.wait_children(2, without=killed)
        wait_completed(ledger, min(ledger.completed_count() + 20, MESSAGES), 20)

    wait_completed(ledger, MESSAGES, 40)
    report = ledger.check(killed_pids=killed)
    assert report.lost == frozenset(), report.summary()
    assert report.unexpected == frozenset(), report.summary()
    assert report.unexplained == (), report.summary()
    assert report.dup <= in_flight_at_kills, report.summary()
    assert report.completed == MESSAGES
    assert wait_drained(producer).dead == 0
    assert worker.output().count("exited with code -9; restarting it") == KILLS

    worker.signal(signal.SIGTERM)
    assert worker.wait(GRACE) == 0
