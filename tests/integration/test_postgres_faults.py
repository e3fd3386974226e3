"""F1, F7/F8 and transactional enqueue on PostgreSQL: worker SIGKILL, the server itself killed and restarted
under a steady producer, and a rolled-back application transaction.

Every test runs on a private PostgreSQL cluster this module initdb's and starts on a free loopback port (``fsync=on``,
so a committed transaction survives the server's death), each test in a schema of its own (``?schema=tmfault_<hex>``,
dropped afterwards). The shared server on 5432 is never restarted: without a private cluster (no PostgreSQL binaries,
no ``postgres`` OS user to run them as root), the tests that do not restart the server fall back to it, and the
restart test is skipped, or fails when ``CI=true``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import ledger_app
import pytest
from harness import (
    Outage,
    PostgresServer,
    SteadyProducer,
    WorkerProcess,
    Workers,
    assert_clean,
    new_key,
    no_server,
    record_messages,
    sigkill_chaos,
    thread_crashes,
    totals,
    wait_all_completed,
    wait_completed,
    wait_drained,
    wait_until,
)
from ledger import Ledger

from taskmill import App

pytestmark = pytest.mark.slow

SHARED_URL = "postgresql://postgres@127.0.0.1:5432/test"  # never restarted here: other suites use it
DATABASE = "test"


@dataclass
class Cluster:
    """The module's private cluster, or why there is none."""

    server: PostgresServer | None
    problem: str = ""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A private PostgreSQL cluster for this module, with database ``test``; killed and removed when the module ends."""
    try:
        import psycopg  # the broker needs it too
    except ImportError:
        no_server("the psycopg package is not installed: pip install -e '.[dev]'")
    server: PostgresServer | None = None
    try:
        server = PostgresServer()
        server.start()
        server.create_database(DATABASE)
    except (OSError, subprocess.CalledProcessError, AssertionError, psycopg.Error) as exc:
        log = server.log()[-2000:] if server is not None else ""
        if server is not None:
            server.stop()
        yield Cluster(None, f"no private PostgreSQL cluster: {exc}\n{log}".rstrip())
        return
    try:
        yield Cluster(server)
    finally:
        server.stop()


@pytest.fixture
def pg_server(cluster: Cluster) -> PostgresServer:
    """The private cluster, for tests that kill it (restarted first if a test left it down)."""
    if cluster.server is None:
        no_server(cluster.problem)
    cluster.server.ensure_running()
    return cluster.server


@pytest.fixture
def broker_url(cluster: Cluster) -> Iterator[str]:
    """This test's own schema on the private cluster (or, without one, on the shared server); dropped afterwards."""
    import psycopg

    if cluster.server is not None:
        cluster.server.ensure_running()
        database = cluster.server.url(DATABASE)
    else:
        database = SHARED_URL
        try:
            psycopg.connect(database, connect_timeout=2).close()
        except psycopg.OperationalError as exc:
            no_server(f"{cluster.problem}; and no PostgreSQL server at {database}: {exc}")
    schema = f"tmfault_{uuid.uuid4().hex}"
    yield f"{database}?schema={schema}"
    if cluster.server is not None:
        cluster.server.ensure_running()
    with psycopg.connect(database, connect_timeout=5, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def conninfo_and_schema(url: str) -> tuple[str, str]:
    """The libpq URL and the schema name of a broker URL."""
    conninfo, _, query = url.partition("?")
    return conninfo, query.removeprefix("schema=")


# -- F1: SIGKILL worker children mid-task ------------------------------------------------------
@pytest.mark.timeout(60)
def test_sigkilled_children_lose_nothing_on_postgres(workers: Workers, ledger: Ledger, producer: App) -> None:
    sigkill_chaos(workers, ledger, producer, "postgres")


# -- F7/F8: the server SIGKILLed and restarted under a steady producer -------------------------
SENDS = 500
SEND_PAUSE_S = 0.006
KILL_AFTER_OK = 200
OUTAGE_S = 1.5
SENDER_POOL_TIMEOUT_S = 0.5
FLOOD_LIMIT = 20
IDLE_QUEUE = "idle"  # served by a worker of its own, so one worker is surely idle (in broker.wait) at the kill
# What a worker logs while PostgreSQL is down: the fetch loop, heartbeats, failed acks, and psycopg_pool's reconnects.
OUTAGE_LINE = re.compile(
    r"broker unavailable|PostgreSQL unavailable|no PostgreSQL connection free|error connecting in|heartbeat failed"
    r"|ack of \d+ messages failed",
    re.IGNORECASE,
)


def outage_lines(worker: WorkerProcess) -> list[str]:
    """The worker's log lines about an unreachable broker (the F8 log-flood measure)."""
    return [line for line in worker.output().splitlines() if OUTAGE_LINE.search(line)]


@pytest.mark.timeout(90)
def test_busy_and_idle_workers_ride_out_a_postgres_kill_and_restart(
    workers: Workers,
    ledger: Ledger,
    producer: App,
    pg_server: PostgresServer,
    broker_url: str,
    request: pytest.FixtureRequest,
) -> None:
    env = {"TASKMILL_LEASE_SECONDS": "2", "TASKMILL_TEST_TASK_MS": "5"}
    busy = workers.worker(processes=1, threads=4, env=env)
    idle = workers.worker("--queues", IDLE_QUEUE, processes=1, threads=1, env=env)
    busy_children, idle_children = busy.wait_children(1), idle.wait_children(1)
    busy.wait_for_output("worker process started")
    idle.wait_for_output("worker process started")
    # Its own App, whose sends give up waiting for a connection well within the outage: they fail typed, not slowly.
    sender_app = ledger_app.make_app(f"{broker_url}&pool_timeout={SENDER_POOL_TIMEOUT_S}")
    request.addfinalizer(sender_app.close)
    sender = SteadyProducer(sender_app, ledger.path, sends=SENDS, pause=SEND_PAUSE_S)
    sender.start()
    wait_until(lambda: len(sender.ok) >= KILL_AFTER_OK, 30, f"{KILL_AFTER_OK} OK sends")
    wait_completed(ledger, KILL_AFTER_OK // 2, 20)

    leased_before_kill = totals(producer).in_flight
    killed_at = time.time()
    pg_server.kill()
    wait_until(lambda: time.time() - killed_at >= OUTAGE_S, 10, "the outage to last")  # fault duration
    up_at = pg_server.start()
    (idle_key,) = ledger.enqueue(producer, record_messages(producer, 1, queue=IDLE_QUEUE))

    sender.join(60)
    assert sender.other_errors == [], "a send failed with an error other than BrokerUnavailable"
    said = sorted({message.split("\n")[0][:90] for message in sender.unavailable_messages})
    wait_all_completed(ledger, {key for key, _ in sender.ok} | {idle_key}, 30, busy, idle)
    outage = Outage.measure(ledger, sender, idle_key, killed_at, up_at)
    busy_flood, idle_flood = outage_lines(busy), outage_lines(idle)
    print(
        f"\nF7 postgres: {outage.figures()} sends={SENDS} ok={len(sender.ok)} outage_s={up_at - killed_at:.3f}"
        f" leased_before_kill={leased_before_kill}"
        f" outage_log_lines busy={len(busy_flood)} idle={len(idle_flood)} broker_unavailable_said={said}"
    )
    outage.assert_nothing_lost()
    assert outage.idle_run.pid in idle_children
    assert (busy.children(), idle.children()) == (busy_children, idle_children), "a worker process was restarted"
    assert (thread_crashes(busy), thread_crashes(idle)) == ([], [])
    assert len(busy_flood) <= FLOOD_LIMIT, "\n".join(busy_flood)
    assert len(idle_flood) <= FLOOD_LIMIT, "\n".join(idle_flood)
    assert wait_drained(producer, 15).dead == 0

    for worker in (busy, idle):
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 0


# -- Transactional enqueue: a message exists only if the application's transaction commits ---------
class OrderFailed(Exception):
    """The application's own failure, which rolls its transaction back."""


@pytest.mark.timeout(60)
def test_a_rolled_back_transaction_leaves_no_message_and_a_committed_one_runs_in_a_worker(
    workers: Workers, ledger: Ledger, producer: App, broker_url: str
) -> None:
    import psycopg

    conninfo, schema = conninfo_and_schema(broker_url)
    producer.broker.stats()  # opening the broker migrates the schema
    worker = workers.worker(processes=1, threads=2, env={"TASKMILL_TEST_TASK_MS": "5"})
    worker.wait_for_output("worker process started")
    record = producer.get_actor("record")
    rolled_back, committed = new_key(), new_key()

    def place_order(conn: psycopg.Connection[tuple[object, ...]], key: str, *, fail: bool) -> None:
        """The application's unit of work: its own row and the message, in one transaction."""
        with conn.transaction(), producer.transaction(conn):
            conn.execute(f"INSERT INTO {schema}.orders (id) VALUES (%s)", (key,))
            producer.enqueue([record.message_with_options(args=(key,), message_id=key)])
            invisible = totals(producer)  # through the broker's own pool: another session
            assert (invisible.ready, invisible.in_flight) == (0, 0), "a message is visible before its commit"
            if fail:
                raise OrderFailed(key)

    def stored() -> tuple[list[str], list[str]]:
        with psycopg.connect(conninfo, autocommit=True) as observer:
            orders = observer.execute(f"SELECT id FROM {schema}.orders").fetchall()
            messages = observer.execute(f"SELECT id FROM {schema}.messages").fetchall()
        return [r[0] for r in orders], [r[0] for r in messages]

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema}.orders (id text PRIMARY KEY)")
        with pytest.raises(OrderFailed):
            place_order(conn, rolled_back, fail=True)
        assert stored() == ([], []), "the rolled-back transaction left a row behind"
        place_order(conn, committed, fail=False)  # the same connection, usable again after the rollback
        committed_at = time.time()
        ledger.record_enqueued([committed])

    wait_all_completed(ledger, 1, 20, worker)
    (run,) = ledger.executions()
    wait_drained(producer)
    report = ledger.check()
    print(f"\ntransactional enqueue postgres: {report.summary()} commit_to_start_s={run.started - committed_at:.3f}")
    assert_clean(report)
    assert (run.id, run.attempt, report.dup) == (committed, 1, 0)
    assert rolled_back not in {e.id for e in ledger.executions()}
    assert stored() == ([committed], [])
    assert totals(producer).dead == 0

    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
