"""F1, F3, F7/F8 and F17 on Redis: worker SIGKILL, a SIGSTOPped lease holder, Redis itself killed
and restarted (AOF on), and a process-killing message.

Every test here runs on a private ``redis-server`` this module starts on a free loopback port (with
``appendfsync always``, so an acknowledged write survives a SIGKILL of the server), each test under
a key prefix of its own. The shared ``producer`` and ``workers`` fixtures use it through the
``broker_url`` override below.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from harness import (
    REDIS_SERVER,
    Outage,
    RedisServer,
    SteadyProducer,
    WorkerProcess,
    Workers,
    assert_clean,
    is_alive,
    new_key,
    no_server,
    record_messages,
    sigkill_chaos,
    totals,
    wait_all_completed,
    wait_completed,
    wait_drained,
    wait_until,
)
from ledger import Ledger, Report

from taskmill import App

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (AOF, fsync always) for this module; killed when the module ends."""
    if shutil.which(REDIS_SERVER) is None:
        no_server(f"{REDIS_SERVER} is not installed")
    try:
        import redis  # noqa: F401 -- the broker needs it
    except ImportError:
        no_server("the redis package is not installed: pip install -e '.[dev]'")
    with RedisServer(tmp_path_factory.mktemp("redis-server")) as server:
        yield server


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    """This test's own key prefix on the private server (restarted first if a test left it down)."""
    redis_server.ensure_running()
    return redis_server.url(f"tmfault-{uuid.uuid4().hex}")


def prefix_keys(server: RedisServer, url: str) -> set[str]:
    """Every key under the URL's prefix, read straight from Redis (not through the broker)."""
    import redis

    prefix = url.rsplit("prefix=", 1)[1]
    with redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5) as client:
        return {key.decode() for key in client.scan_iter(match=f"{prefix}:*", count=1000)}


def figures(report: Report) -> str:
    """The checker's counts, for runs whose duplicates are judged by a fault window rather than by killed pids."""
    return (
        f"enqueued={report.enqueued} completed={report.completed} lost={len(report.lost)} dup={report.dup}"
        f" unexpected={len(report.unexpected)}"
    )


# -- F1: SIGKILL worker children mid-task ------------------------------------------------------
@pytest.mark.timeout(60)
def test_sigkilled_children_lose_nothing_on_redis(workers: Workers, ledger: Ledger, producer: App) -> None:
    sigkill_chaos(workers, ledger, producer, "redis")


# -- F3: a SIGSTOPped holder loses its lease; its late ack is refused ---------------------------
LEASE_S = 1.0
SLOW_TASK_MS = "2000"


@pytest.mark.timeout(60)
def test_sigstopped_holder_loses_its_lease_and_its_late_ack_is_refused(
    workers: Workers, ledger: Ledger, producer: App, redis_server: RedisServer, broker_url: str
) -> None:
    lease = {"TASKMILL_LEASE_SECONDS": str(LEASE_S)}
    (key,) = ledger.enqueue(producer, record_messages(producer, 1))
    stale = workers.worker(processes=1, threads=1, env={**lease, "TASKMILL_TEST_TASK_MS": SLOW_TASK_MS})
    (stale_pid,) = stale.wait_children(1)
    wait_until(lambda: [e for e in ledger.running() if e.pid == stale_pid], 20, "the message to start")

    os.kill(stale_pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        fresh = workers.worker(processes=1, threads=1, env={**lease, "TASKMILL_TEST_TASK_MS": "200"})
        (fresh_pid,) = fresh.wait_children(1)
        wait_until(
            lambda: [e for e in ledger.executions() if e.pid == fresh_pid and e.ended is not None],
            20,
            "the message to run again on the second worker",
        )
        assert wait_drained(producer).dead == 0  # the re-run is acked while the stale holder is still stopped
        # Fault duration, not an assertion: keep the holder stopped for 3x its lease in all.
        wait_until(lambda: time.monotonic() - stopped_at >= 3 * LEASE_S, 10, "3x the lease to pass")
    finally:
        os.kill(stale_pid, signal.SIGCONT)

    stale.wait_for_output(f"message {key}: lease lost before its ack")
    wait_until(lambda: all(e.ended is not None for e in ledger.executions()), 10, "the stale run to end")

    first, second = ledger.executions()
    assert (first.id, first.attempt, first.pid) == (key, 1, stale_pid)
    assert (second.id, second.attempt, second.pid) == (key, 2, fresh_pid)
    assert first.ended is not None
    assert second.ended is not None
    assert first.started < second.started < first.ended, "the re-run began while the stopped holder still had it"
    assert second.ended < first.ended, "the re-run finished (and was acked) before the stale holder woke"

    report = ledger.check(killed_pids={stale_pid})
    print(f"\nF3 redis: {report.summary()} stale_completions_refused=1/1")
    assert_clean(report)
    assert (report.executions, report.dup, report.unexplained) == (2, 1, ()), report.summary()
    counts = totals(producer)
    assert (counts.ready, counts.delayed, counts.in_flight, counts.dead) == (0, 0, 0, 0)
    assert producer.broker.dead_letters() == []
    prefix = broker_url.rsplit("prefix=", 1)[1]
    # The message's body, meta and lease are gone: only the queue registry and the sequence remain,
    # beside the parking of the workers still running (their park keys and the queues' waiters).
    parking = {k for k in prefix_keys(redis_server, broker_url) if k.endswith(":waiters") or f"{prefix}:park:" in k}
    assert prefix_keys(redis_server, broker_url) - parking == {f"{prefix}:queues", f"{prefix}:seq"}

    # No error loop: the woken worker logged the refusal a bounded number of times, kept its process,
    # and still works (the second worker is stopped first, so the follow-up can only run on it).
    fresh.signal(signal.SIGTERM)
    assert fresh.wait(15) == 0
    (follow_up,) = ledger.enqueue(producer, record_messages(producer, 1))
    wait_until(
        lambda: [e for e in ledger.executions() if e.id == follow_up and e.ended is not None],
        20,
        "the follow-up message to complete on the woken worker",
    )
    assert [e.pid for e in ledger.executions() if e.id == follow_up] == [stale_pid]
    assert stale.children() == [stale_pid]
    wait_drained(producer)
    output = stale.output()
    assert output.count("lease lost") <= 2, output
    assert output.count("Traceback") == 0, output

    stale.signal(signal.SIGTERM)
    assert stale.wait(15) == 0


# -- F7/F8: Redis SIGKILLed and restarted under a steady producer ------------------------------
SENDS = 1000
SEND_PAUSE_S = 0.004
KILL_AFTER_OK = 300
OUTAGE_S = 1.5
FLOOD_LIMIT = 20
IDLE_QUEUE = "idle"  # served by a worker of its own, so one worker is surely idle (in broker.wait) at the kill


def unavailable_lines(worker: WorkerProcess) -> list[str]:
    """The worker's log lines about an unreachable broker (the F8 log-flood measure)."""
    return [line for line in worker.output().splitlines() if "broker unavailable" in line.lower()]


@pytest.mark.timeout(90)
def test_busy_and_idle_workers_ride_out_a_redis_kill_and_restart(
    workers: Workers, ledger: Ledger, producer: App, redis_server: RedisServer
) -> None:
    env = {"TASKMILL_LEASE_SECONDS": "2", "TASKMILL_TEST_TASK_MS": "5"}
    busy = workers.worker(processes=1, threads=4, env=env)
    idle = workers.worker("--queues", IDLE_QUEUE, processes=1, threads=1, env=env)
    busy_children, idle_children = busy.wait_children(1), idle.wait_children(1)
    busy.wait_for_output("worker process started")
    idle.wait_for_output("worker process started")
    sender = SteadyProducer(producer, ledger.path, sends=SENDS, pause=SEND_PAUSE_S)
    sender.start()
    wait_until(lambda: len(sender.ok) >= KILL_AFTER_OK, 30, f"{KILL_AFTER_OK} OK sends")
    wait_completed(ledger, KILL_AFTER_OK // 2, 20)

    leased_before_kill = totals(producer).in_flight
    killed_at = time.time()
    redis_server.kill()
    wait_until(lambda: time.time() - killed_at >= OUTAGE_S, 10, "the outage to last")  # fault duration
    up_at = redis_server.start()
    (idle_key,) = ledger.enqueue(producer, record_messages(producer, 1, queue=IDLE_QUEUE))

    sender.join(60)
    assert sender.other_errors == [], "a send failed with an untyped error"
    wait_all_completed(ledger, {key for key, _ in sender.ok} | {idle_key}, 30, busy, idle)
    outage = Outage.measure(ledger, sender, idle_key, killed_at, up_at)
    busy_flood, idle_flood = unavailable_lines(busy), unavailable_lines(idle)
    print(
        f"\nF7 redis: {outage.figures()} sends={SENDS} ok={len(sender.ok)} leased_before_kill={leased_before_kill}"
        f" dup_ids={[d.id for d in outage.report.duplicates][:5]}"
        f" unavailable_log_lines busy={len(busy_flood)} idle={len(idle_flood)}"
    )
    outage.assert_nothing_lost()
    assert outage.idle_run.pid in idle_children
    assert (busy.children(), idle.children()) == (busy_children, idle_children), "a worker process was restarted"
    assert len(busy_flood) <= FLOOD_LIMIT, "\n".join(busy_flood)
    assert len(idle_flood) <= FLOOD_LIMIT, "\n".join(idle_flood)
    assert wait_drained(producer, 15).dead == 0

    for worker in (busy, idle):
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 0


QUICK_RESTARTS = 10
QUICK_OUTAGE_S = 0.05  # shorter than the Redis client's own retry window, so a call in flight spans the restart
OK_BETWEEN_RESTARTS = 50


@pytest.mark.timeout(90)
def test_sends_across_quick_redis_restarts_fail_typed_and_every_ok_send_survives(
    workers: Workers, ledger: Ledger, producer: App, redis_server: RedisServer
) -> None:
    sender = SteadyProducer(producer, ledger.path, sends=SENDS, pause=SEND_PAUSE_S)
    sender.start()

    def sent_ok(at_least: int) -> bool:
        return len(sender.ok) >= at_least

    def lasted(since: float) -> bool:
        return time.time() - since >= QUICK_OUTAGE_S

    for _ in range(QUICK_RESTARTS):
        target = len(sender.ok) + OK_BETWEEN_RESTARTS
        wait_until(functools.partial(sent_ok, target), 30, f"{target} OK sends")
        killed_at = time.time()
        redis_server.kill()
        wait_until(functools.partial(lasted, killed_at), 5, "the outage to last")  # fault duration
        redis_server.start()
    sender.join(60)
    failed_ids = {key for key, _ in sender.unavailable}
    print(
        f"\nF7 redis x{QUICK_RESTARTS} quick restarts: sends={SENDS} ok={len(sender.ok)}"
        f" broker_unavailable={len(sender.unavailable)} untyped={len(sender.other_errors)}"
        f" {sorted(set(sender.other_errors))[:3]}"
    )
    assert sender.other_errors == [], "sends failed with errors other than BrokerUnavailable"
    stored = totals(producer).ready  # no worker yet: everything sent is still queued
    assert len(sender.ok) <= stored <= len(sender.ok) + len(failed_ids), (
        f"{stored} messages stored for {len(sender.ok)} OK sends and {len(failed_ids)} failed ones"
    )

    drain = workers.worker("--burst", processes=1, threads=4, env={"TASKMILL_TEST_TASK_MS": "1"})
    assert drain.wait(60) == 0, drain.output()[-3000:]
    report = ledger.check()
    print(f"F7 redis quick restarts: {figures(report)} failed_but_landed={len(report.unexpected & failed_ids)}")
    assert report.lost == frozenset(), report.summary()
    assert report.unexpected - failed_ids == frozenset(), report.summary()
    assert report.dup == 0, report.summary()
    assert wait_drained(producer).dead == 0


# -- F17: a process-killing message is dead-lettered after max_deliveries ----------------------
HEALTHY = 200


@pytest.mark.timeout(60)
def test_process_killing_message_is_dead_lettered_after_max_deliveries_on_redis(
    workers: Workers, ledger: Ledger, producer: App
) -> None:
    poison = new_key()
    crash = producer.get_actor("crash")
    ledger.enqueue(producer, [crash.message_with_options(args=(poison,), message_id=poison)])
    ledger.enqueue(producer, record_messages(producer, HEALTHY))
    env = {"TASKMILL_LEASE_SECONDS": "1", "TASKMILL_MAX_DELIVERIES": "3", "TASKMILL_TEST_TASK_MS": "10"}
    worker = workers.worker(processes=2, threads=1, env=env)

    wait_until(producer.broker.dead_letters, 40, "the poison message in the dead-letter queue")
    wait_completed(ledger, HEALTHY, 30)
    dead = producer.broker.dead_letters()
    assert [(d.id, d.queue, d.reason, d.deliveries) for d in dead] == [(poison, "poison", "delivery_limit", 3)]
    poison_runs = [e for e in ledger.executions() if e.id == poison]
    assert [e.attempt for e in poison_runs] == [1, 2, 3]
    assert all(e.ended is None for e in poison_runs)
    crashed = {e.pid for e in poison_runs}
    assert not any(is_alive(pid) for pid in crashed)

    report = ledger.check(killed_pids=crashed, dead_letter_ids={poison})
    print(f"\nF17 redis: {report.summary()} poison_deliveries={dead[0].deliveries}")
    assert_clean(report)
    assert report.completed == HEALTHY
    assert [d.id for d in report.duplicates] == [poison], report.summary()  # no healthy message ran twice
    counts = wait_drained(producer)
    assert counts.dead == 1
    assert worker.output().count("exited with code 1; restarting it") == 3

    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
