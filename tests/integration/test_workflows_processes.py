"""Results, pipelines and groups across real worker processes on SQLite, with SIGKILLs mid-group."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from harness import Workers, new_key, wait_completed, wait_until
from ledger import Ledger

from taskmill import App, group, pipeline

MEMBERS = 1000


def test_results_and_pipelines_come_back_from_worker_processes(workers: Workers, producer: App) -> None:
    square, increment = producer.get_actor("square"), producer.get_actor("increment")
    workers.worker(processes=2, threads=2, env={"TASKMILL_TEST_TASK_MS": "1"})
    assert square.send(new_key(), 7).result(timeout=30) == 49
    assert pipeline([square.message(new_key(), 3), increment.message()]).run().result(timeout=30) == 10
    members = [square.message(new_key(), n) for n in range(20)] + [square.message(new_key(), 2) | increment.message()]
    assert group(members).run().results(timeout=30) == [n * n for n in range(20)] + [5]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_group_of_a_thousand_fires_its_callback_once_despite_sigkills(
    workers: Workers, ledger: Ledger, producer: App
) -> None:
    square, group_done = producer.get_actor("square"), producer.get_actor("group_done")
    callback_key = f"callback-{new_key()}"
    g = group([square.message(new_key(), n) for n in range(MEMBERS)], on_complete=group_done.message(callback_key))
    worker = workers.worker(
        processes=2, threads=4, env={"TASKMILL_LEASE_SECONDS": "2", "TASKMILL_TEST_TASK_MS": "5-15"}
    )
    worker.wait_children(2)
    g.run()
    killed: list[int] = []
    for _ in range(2):
        wait_completed(ledger, ledger.completed_count() + 100, 30)
        children = worker.wait_children(2, without=killed)
        busy = {e.pid for e in ledger.running()} & set(children)
        victim = random.choice(sorted(busy or children))
        assert ledger.completed_count() < MEMBERS, "the group finished before the kill; slow the actor down"
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
    assert g.results(timeout=90) == [n * n for n in range(MEMBERS)]
    wait_until(lambda: any(e.id == callback_key for e in ledger.executions()), 30, "the group's callback")
    time.sleep(3)  # longer than a lease: a duplicate callback would have run by now
    assert [e.id for e in ledger.executions()].count(callback_key) == 1
    assert worker.output().count("exited with code -9; restarting it") == 2
