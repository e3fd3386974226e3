"""F1, F7/F8 and F17 on RabbitMQ: worker SIGKILL, the broker taken away under a steady producer (``rabbitmqctl
stop_app``/``start_app``, and the whole node SIGKILLed and booted again), and a process-killing message.

Every test runs on a private RabbitMQ node this module boots (its own node name, ports, data directory and Erlang
cookie; see ``harness.RabbitMQServer``), each test under a name prefix of its own (``?prefix=tmfault-<hex>``). The
shared server on 5672 is never touched: others run tests against it. Without the RabbitMQ scripts the tests are
skipped, or fail when ``CI=true``. Most cases run on classic and on quorum queues (``?queue_type=quorum``).

RabbitMQ has no time leases: a delivery is held while the connection that received it lives, so a killed worker's
messages come back at once, and ``stats()`` cannot count unacked messages (``in_flight`` is 0). So the in-flight
figures come from the ledger (what a killed process had started, or finished just before its death), and each test
ends by reading the node's own counts (``rabbitmqctl list_queues``): nothing ready, nothing unacked.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ledger_app
import pytest
from harness import (
    ACK_MARGIN_S,
    Outage,
    RabbitMQServer,
    SteadyProducer,
    WorkerProcess,
    Workers,
    assert_clean,
    is_alive,
    make_ca,
    make_certificates,
    new_key,
    no_server,
    record_messages,
    thread_crashes,
    wait_all_completed,
    wait_completed,
    wait_drained,
    wait_until,
)
from ledger import Execution, Ledger

from taskmill import App
from taskmill.brokers import Record, open_broker
from taskmill.brokers.rabbitmq_topology import Names
from taskmill.errors import BrokerUnavailable

pytestmark = pytest.mark.slow

BOTH = pytest.mark.parametrize("queue_type", ["classic", "quorum"])


@dataclass
class Node:
    """The module's private node, or why there is none."""

    server: RabbitMQServer | None
    problem: str = ""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A private RabbitMQ node for this module; killed when the module ends."""
    try:
        import aio_pika  # noqa: F401 -- the broker needs it
    except ImportError:
        no_server("the aio-pika package is not installed: pip install -e '.[dev]'")
    server: RabbitMQServer | None = None
    try:
        certificates = make_certificates(tmp_path_factory.mktemp("tls"))
        server = RabbitMQServer(tmp_path_factory.mktemp("rabbitmq"), tls=certificates)
        server.start()
    except (OSError, AssertionError) as exc:
        log = server.log()[-2000:] if server is not None else ""
        if server is not None:
            server.stop()
        yield Node(None, f"no private RabbitMQ node: {exc}\n{log}".rstrip())
        return
    try:
        yield Node(server)
    finally:
        server.stop()


@pytest.fixture
def rabbit(node: Node) -> RabbitMQServer:
    """The private node, its application running (started again if a test left it stopped)."""
    if node.server is None:
        no_server(node.problem)
    node.server.ensure_running()
    return node.server


@pytest.fixture
def queue_type() -> str:
    """The queue type of a test that is not parametrized over both."""
    return "classic"


@pytest.fixture
def broker_url(rabbit: RabbitMQServer, queue_type: str) -> str:
    """This test's own name prefix on the private node, with its queue type."""
    return rabbit.url(f"prefix=tmfault-{uuid.uuid4().hex}&queue_type={queue_type}")


def prefix_of(url: str) -> str:
    return url.split("prefix=", 1)[1].split("&", 1)[0]


def node_counts(rabbit: RabbitMQServer, url: str) -> tuple[int, int]:
    """(ready, unacked) summed over the main queues of the URL's prefix, from ``rabbitmqctl list_queues``."""
    main = Names(prefix_of(url)).queue("")
    rows = [counts for name, counts in rabbit.queue_counts().items() if name.startswith(main)]
    return sum(r for r, _ in rows), sum(u for _, u in rows)


def wait_node_empty(rabbit: RabbitMQServer, url: str) -> None:
    """Block until the node itself holds no ready or unacked message of the test (its counts lag a little)."""
    wait_until(lambda: node_counts(rabbit, url) == (0, 0), 15, "no ready or unacked message on the node", 0.3)


def log_lines(worker: WorkerProcess, since: int = 0) -> list[str]:
    """Every line the worker wrote from character offset ``since`` on, except INFO lines: the F8 log-flood measure
    (taskmill's warnings, and the AMQP client's errors and tracebacks)."""
    return [line for line in worker.output()[since:].splitlines() if line.strip() and " INFO " not in line]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


# -- F1: SIGKILL worker children mid-task ------------------------------------------------------
KILL_MESSAGES = 1000
KILLS = 3
KILL_THREADS = 4


@dataclass(frozen=True)
class Kill:
    pid: int
    at: float  # time.time() just before the signal


def in_flight_at(kill: Kill, runs: list[Execution]) -> list[Execution]:
    """The victim's executions whose ack may not have been sent when it died: unfinished, or finished just before."""
    return [e for e in runs if e.pid == kill.pid and (e.ended is None or e.ended >= kill.at - ACK_MARGIN_S)]


@BOTH
@pytest.mark.timeout(60)
def test_sigkilled_children_lose_nothing_on_rabbitmq(
    workers: Workers, ledger: Ledger, producer: App, rabbit: RabbitMQServer, broker_url: str, queue_type: str
) -> None:
    ledger.enqueue(producer, record_messages(producer, KILL_MESSAGES))
    worker = workers.worker("--grace", "10", processes=2, threads=KILL_THREADS, env={"TASKMILL_TEST_TASK_MS": "20-40"})
    worker.wait_children(2)
    wait_completed(ledger, 20, 20)

    kills: list[Kill] = []
    for _ in range(KILLS):
        children = worker.wait_children(2, without=[k.pid for k in kills])
        busy = {e.pid for e in ledger.running()} & set(children)
        victim = random.choice(sorted(busy or children))
        assert ledger.completed_count() < KILL_MESSAGES, "the run finished before every kill; slow the actor down"
        kills.append(Kill(victim, time.time()))
        os.kill(victim, signal.SIGKILL)
        worker.wait_children(2, without=[k.pid for k in kills])
        wait_completed(ledger, min(ledger.completed_count() + 30, KILL_MESSAGES), 20)

    wait_all_completed(ledger, KILL_MESSAGES, 40, worker)
    killed = [k.pid for k in kills]
    report = ledger.check(killed_pids=killed)
    runs = ledger.executions()
    windows = [in_flight_at(k, runs) for k in kills]
    running_at_kills = [sum(e.ended is None for e in window) for window in windows]
    in_flight_ids = {e.id for window in windows for e in window}
    outside = [d.id for d in report.duplicates if d.id not in in_flight_ids]
    # Runs on a victim that had finished and still ran again: it died between the actor's end and its ack.
    ended_unacked = [
        first.id
        for d in report.duplicates
        for first, then in itertools.pairwise(d.executions)
        if first.pid in killed and first.ended is not None and then.started > first.ended
    ]
    # How soon a message the victim was running started again elsewhere: RabbitMQ returns it when the connection
    # drops (there is no lease to wait out).
    rerun_s = [
        min(e.started for e in runs if e.id == cut.id and e.started > cut.started) - kill.at
        for kill, window in zip(kills, windows, strict=True)
        for cut in window
        if cut.ended is None
    ]
    print(
        f"\nF1 rabbitmq {queue_type}: {report.summary()} kills={len(kills)} running_at_kills={running_at_kills}"
        f" in_flight_bound={[len(w) for w in windows]} dup_of_ended_runs={len(ended_unacked)}"
        f" redelivery_p50_s={percentile(rerun_s, 0.5):.3f} redelivery_max_s={max(rerun_s, default=float('nan')):.3f}"
    )
    assert_clean(report)
    assert report.unexplained == (), report.summary()
    assert outside == [], f"duplicates of messages no killed process had in flight: {outside[:10]}"
    assert report.dup <= sum(len(w) for w in windows), report.summary()
    assert report.completed == KILL_MESSAGES
    assert wait_drained(producer).dead == 0
    wait_node_empty(rabbit, broker_url)
    assert worker.output().count("exited with code -9; restarting it") == KILLS
    assert thread_crashes(worker) == []

    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0


# -- F7/F8: the broker stopped and started under a steady producer --------------------------------
SEND_CAP = 10_000  # the sender stops once enough sends succeeded after the restart; this only bounds it
SEND_PAUSE_S = 0.004
STOP_AFTER_OK = 200
OK_AFTER_RESTART = 200
OUTAGE_S = 1.5
SENDER_TIMEOUT_S = 2  # the sender's ?timeout=: a publish waiting on a dying connection gives up within 3x this
FLOOD_LIMIT = 20
IDLE_QUEUE = "idle"  # served by a worker of its own, so one worker is surely idle (in broker.wait) at the fault


def break_and_mend(rabbit: RabbitMQServer, fault: str) -> tuple[float, float]:
    """Take the broker away (``stop_app``: the application stops, the node stays; ``kill``: SIGKILL the whole node,
    no shutdown at all) for at least ``OUTAGE_S``, then bring it back; (down_at, up_at) as ``time.time()``."""
    down_at = time.time()
    if fault == "stop_app":
        rabbit.stop_app()
    else:
        rabbit.kill()
    wait_until(lambda: time.time() - down_at >= OUTAGE_S, 10, "the outage to last")  # fault duration
    up_at = rabbit.start_app() if fault == "stop_app" else rabbit.start()
    return down_at, up_at


@pytest.mark.parametrize(("queue_type", "fault"), [("classic", "stop_app"), ("quorum", "stop_app"), ("quorum", "kill")])
@pytest.mark.timeout(90)
def test_busy_and_idle_workers_ride_out_a_rabbitmq_outage(
    workers: Workers,
    ledger: Ledger,
    producer: App,
    rabbit: RabbitMQServer,
    broker_url: str,
    queue_type: str,
    fault: str,
    request: pytest.FixtureRequest,
) -> None:
    env = {"TASKMILL_TEST_TASK_MS": "5"}
    busy = workers.worker(processes=1, threads=4, env=env)
    idle = workers.worker("--queues", IDLE_QUEUE, processes=1, threads=1, env=env)
    busy_children, idle_children = busy.wait_children(1), idle.wait_children(1)
    busy.wait_for_output("worker process started")
    idle.wait_for_output("worker process started")
    sender_app = ledger_app.make_app(f"{broker_url}&timeout={SENDER_TIMEOUT_S}")
    request.addfinalizer(sender_app.close)
    sender = SteadyProducer(sender_app, ledger.path, sends=SEND_CAP, pause=SEND_PAUSE_S)
    sender.start()
    wait_until(lambda: len(sender.ok) >= STOP_AFTER_OK, 30, f"{STOP_AFTER_OK} OK sends")
    wait_completed(ledger, STOP_AFTER_OK // 2, 20)

    marks = len(busy.output()), len(idle.output())
    down_at, up_at = break_and_mend(rabbit, fault)
    (idle_key,) = ledger.enqueue(producer, record_messages(producer, 1, queue=IDLE_QUEUE))
    wait_until(
        lambda: sum(t >= up_at for _, t in sender.ok) >= OK_AFTER_RESTART, 30, f"{OK_AFTER_RESTART} OK sends again"
    )
    sender.stop()
    sender.join(30)
    assert sender.other_errors == [], "a send failed with an error other than BrokerUnavailable"
    said = sorted({message.split("\n")[0][:90] for message in sender.unavailable_messages})
    wait_all_completed(ledger, {key for key, _ in sender.ok} | {idle_key}, 30, busy, idle)
    outage = Outage.measure(ledger, sender, idle_key, down_at, up_at)
    busy_flood, idle_flood = log_lines(busy, marks[0]), log_lines(idle, marks[1])
    print(
        f"\nF7 rabbitmq {queue_type} {fault}: {outage.figures()} ok_sends={len(sender.ok)}"
        f" outage_s={up_at - down_at:.3f} log_lines busy={len(busy_flood)} idle={len(idle_flood)}"
        f" broker_unavailable_said={said}"
    )
    outage.assert_nothing_lost()
    assert sender.unavailable, "no send failed: the outage did not overlap the sends"
    assert outage.idle_run.pid in idle_children
    assert (busy.children(), idle.children()) == (busy_children, idle_children), "a worker process was restarted"
    assert (thread_crashes(busy), thread_crashes(idle)) == ([], [])
    assert len(busy_flood) <= FLOOD_LIMIT, "\n".join(busy_flood)
    assert len(idle_flood) <= FLOOD_LIMIT, "\n".join(idle_flood)
    assert wait_drained(producer, 15).dead == 0
    wait_node_empty(rabbit, broker_url)

    for worker in (busy, idle):
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 0


# -- F17: a process-killing message is dead-lettered after max_deliveries ----------------------
HEALTHY = 200
MAX_DELIVERIES = 3
CRASH_CODE = 137  # what a process killed by the kernel's OOM killer reports through a shell


@BOTH
@pytest.mark.timeout(60)
def test_process_killing_message_is_dead_lettered_after_max_deliveries_on_rabbitmq(
    workers: Workers, ledger: Ledger, producer: App, rabbit: RabbitMQServer, broker_url: str, queue_type: str
) -> None:
    poison = new_key()
    crash = producer.get_actor("crash")
    ledger.enqueue(producer, [crash.message_with_options(args=(poison,), message_id=poison)])
    ledger.enqueue(producer, record_messages(producer, HEALTHY))
    env = {
        "TASKMILL_MAX_DELIVERIES": str(MAX_DELIVERIES),
        "TASKMILL_TEST_TASK_MS": "10",
        ledger_app.CRASH_CODE_ENV: str(CRASH_CODE),
    }
    worker = workers.worker(processes=2, threads=1, env=env)

    wait_until(producer.broker.dead_letters, 40, "the poison message in the dead-letter queue")
    wait_all_completed(ledger, HEALTHY, 30, worker)
    dead = producer.broker.dead_letters()
    assert [(d.id, d.queue, d.reason, d.deliveries) for d in dead] == [
        (poison, "poison", "delivery_limit", MAX_DELIVERIES)
    ]
    poison_runs = [e for e in ledger.executions() if e.id == poison]
    assert [e.attempt for e in poison_runs] == list(range(1, MAX_DELIVERIES + 1))
    assert all(e.ended is None for e in poison_runs)
    crashed = {e.pid for e in poison_runs}
    assert not any(is_alive(pid) for pid in crashed)

    report = ledger.check(killed_pids=crashed, dead_letter_ids={poison})
    print(f"\nF17 rabbitmq {queue_type}: {report.summary()} poison_deliveries={dead[0].deliveries}")
    assert_clean(report)
    assert report.completed == HEALTHY
    assert [d.id for d in report.duplicates] == [poison], report.summary()  # no healthy message ran twice
    counts = wait_drained(producer)
    assert counts.dead == 1
    wait_node_empty(rabbit, broker_url)
    assert worker.output().count(f"exited with code {CRASH_CODE}; restarting it") == MAX_DELIVERIES
    assert thread_crashes(worker) == []

    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0


def test_amqps_checks_the_servers_certificate(rabbit: RabbitMQServer, tmp_path: Path) -> None:
    """TLS: with the CA that signed the node's certificate a broker works; with another CA it is refused."""
    if not rabbit.tls_port:
        no_server("openssl is not installed, so the node has no TLS listener")
    ca = Path(rabbit.env["RABBITMQ_CONFIG_FILE"]).read_text().split("ssl_options.cacertfile = ")[1].split("\n")[0]
    url = f"amqps://guest:guest@localhost:{rabbit.tls_port}/?cafile={ca}&prefix=tls{uuid.uuid4().hex[:8]}"
    broker = open_broker(url)
    try:
        record = Record(uuid.uuid4().hex, "default", b"over TLS")
        broker.publish([record])
        deliveries = wait_until(lambda: broker.fetch(["default"], 1, 30_000), 10, "the message over TLS")
        assert [(d.id, d.body) for d in deliveries] == [(record.id, b"over TLS")]
        assert broker.ack(deliveries) == []
    finally:
        broker.close()
    other_ca, _ = make_ca(tmp_path, "some-other-ca")
    stranger = open_broker(f"amqps://guest:guest@localhost:{rabbit.tls_port}/?cafile={other_ca}&timeout=5")
    try:
        with pytest.raises(BrokerUnavailable):
            stranger.publish([Record(uuid.uuid4().hex, "default", b"x")])
    finally:
        stranger.close()


# -- the pooled publishing connections ------------------------------------------------------------
@BOTH
def test_sends_after_the_server_closed_every_connection_need_no_retry(rabbit: RabbitMQServer, broker_url: str) -> None:
    """Single sends go out on pooled pika connections; one the server closed while it sat idle (over a second)
    is noticed before the send, so the send itself does not fail (RabbitMQ closes connections for many reasons)."""
    broker = open_broker(broker_url)
    sent = [Record(uuid.uuid4().hex, "default", b"before") for _ in range(3)]
    try:
        for record in sent:  # the first declares the queue; the others leave a pooled connection
            broker.publish([record])
        rabbit.ctl("close_all_connections", "closed by the test")
        time.sleep(1.5)  # the Close frames reach the connections, idle long enough to be checked before reuse
        for body in (b"after", b"after again"):
            record = Record(uuid.uuid4().hex, "default", body)
            broker.publish([record])  # no BrokerUnavailable: a fresh connection, on the caller's thread too
            sent.append(record)
        got: list[str] = []
        deadline = time.monotonic() + 20
        while len(got) < len(sent) and time.monotonic() < deadline:
            deliveries = broker.fetch(["default"], 10, 30_000)
            assert broker.ack(deliveries) == []
            got += [delivery.id for delivery in deliveries]
        assert sorted(got) == sorted(record.id for record in sent)
    finally:
        broker.close()
