"""What RabbitMQ does in place of the contract's time leases, plus its own options and errors.

A RabbitMQ delivery is held for as long as the connection that received it lives; the holders here
are real processes, killed with SIGKILL while they hold a message, as a crashed worker would be.
Both queue types run: classic (priorities, our own delivery count) and quorum (RabbitMQ's count).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from taskmill import App, Worker
from taskmill.brokers import Broker, Delivery, Failure, Record, open_broker
from taskmill.brokers.rabbitmq import RabbitMQBroker
from taskmill.errors import BrokerError, BrokerUnavailable, ConfigurationError, InvalidOptionError, LeaseLost
from taskmill.message import new_message_id

T = TypeVar("T")
MAX_DELIVERIES = 3
HOLDER = """
import sys, time
from taskmill.brokers import open_broker
broker = open_broker(sys.argv[1], max_deliveries={max_deliveries})
while not (deliveries := broker.fetch(["default"], 1, 30_000)):
    time.sleep(0.01)
print(deliveries[0].id, deliveries[0].deliveries, flush=True)
time.sleep(60)
"""


@pytest.fixture(params=["classic", "quorum"])
def url(request: pytest.FixtureRequest, rabbitmq_test_url: str) -> str:
    return rabbitmq_test_url.replace("queue_type=classic", f"queue_type={request.param}")


@pytest.fixture
def broker(url: str) -> Iterator[Broker]:
    instance = open_broker(url, max_deliveries=MAX_DELIVERIES)
    yield instance
    instance.close()


def hold_and_die(url: str) -> tuple[str, int]:
    """Run a consumer process that fetches one message, then SIGKILL it; (id, deliveries) it saw."""
    code = HOLDER.format(max_deliveries=MAX_DELIVERIES)
    with subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None
        line = holder.stdout.readline().split()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
    assert line, "the holder fetched nothing"
    return line[0], int(line[1])


def wait_for(probe: Callable[[], T], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


def publish_apart(url: str, records: list[Record]) -> None:
    """Publish ``records`` one by one from a broker of their own (a consumer that published looks
    for its own messages on the loop, not in its buffer)."""
    publisher = open_broker(url)
    try:
        for record in records:
            publisher.publish([record])
    finally:
        publisher.close()


def test_a_killed_holders_message_comes_back_at_once_counted(broker: Broker, url: str) -> None:
    record = Record(new_message_id(), "default", b"body")
    broker.publish([record])
    assert hold_and_die(url) == (record.id, 1)
    started = time.monotonic()
    deliveries = wait_for(lambda: broker.fetch(["default"], 1, 30_000))
    assert time.monotonic() - started < 2.0  # no lease to wait out: the closed connection returned it
    assert [(d.id, d.body, d.deliveries) for d in deliveries] == [(record.id, b"body", 2)]
    assert broker.ack(deliveries) == []


def test_a_message_that_keeps_killing_its_holder_is_buried_as_delivery_limit(broker: Broker, url: str) -> None:
    record = Record(new_message_id(), "default", b"poison")
    healthy = Record(new_message_id(), "default", b"healthy")
    broker.publish([record])
    for attempt in range(1, MAX_DELIVERIES + 1):
        assert hold_and_die(url) == (record.id, attempt)
    broker.publish([healthy])
    deliveries = wait_for(lambda: broker.fetch(["default"], 5, 30_000))
    assert [d.id for d in deliveries] == [healthy.id]  # the poison message did not come back
    buried = wait_for(broker.take_buried)  # the fetching instance buried it as it arrived
    assert [(b.id, b.reason, b.deliveries) for b in buried] == [(record.id, "delivery_limit", MAX_DELIVERIES)]
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.body) == (record.id, "delivery_limit", b"poison")


def test_a_dead_letter_report_that_raises_gives_back_what_its_fetch_received(
    broker: Broker, url: str, monkeypatch: pytest.MonkeyPatch, failing_dead_letter_reports: None
) -> None:
    """A fetch hands out a message and the dead letter the broker made as the one before it
    arrived. If the report of the dead letter raises, the message is given back now: RabbitMQ has
    no lease to run out, so otherwise the worker's connection would hold it until the worker
    stops. The worker goes on."""
    app = App(broker=broker)
    ran: list[int] = []

    @app.actor
    def work(n: int) -> None:
        ran.append(n)

    poison = work.send(0)
    for attempt in range(1, MAX_DELIVERIES + 1):
        assert hold_and_die(url) == (poison.id, attempt)
    wait_for(lambda: broker.stats(["default"])[0].ready == 1)  # RabbitMQ saw the last holder die
    after = work.send(1)
    # This instance receives both before the worker's first fetch: the poison is buried as it
    # arrives (its ack frees the credit that brings the next), and 1 waits in the buffer.
    broker.wait(["default"], 10)
    assert [dead.id for dead in broker._buried] == [poison.id]
    given_back: list[str] = []
    release = broker.release

    def recording_release(deliveries: Sequence[Delivery]) -> None:
        given_back.extend(d.id for d in deliveries)
        release(deliveries)

    monkeypatch.setattr(broker, "release", recording_release)
    worker = Worker(app, threads=2)
    try:
        worker.start()
        wait_for(lambda: ran == [1])
        assert given_back == [after.id]
        work.send(2)
        wait_for(lambda: ran == [1, 2])
    finally:
        worker.stop(grace=5)
    assert [(d.id, d.reason) for d in broker.dead_letters()] == [(poison.id, "delivery_limit")]


def test_a_holder_whose_connection_closed_cannot_settle(url: str) -> None:
    first = RabbitMQBroker(url, max_deliveries=MAX_DELIVERIES)
    second = RabbitMQBroker(url, max_deliveries=MAX_DELIVERIES)
    try:
        first.publish([Record(new_message_id(), "default", b"x")])
        [stale] = wait_for(lambda: first.fetch(["default"], 1, 30_000))
        first.call(first._connection.close())  # the connection is gone: RabbitMQ has the message back
        current = wait_for(lambda: second.fetch(["default"], 1, 30_000))
        assert first.extend([stale], 30_000) == [stale]
        assert first.ack([stale]) == [stale]
        with pytest.raises(LeaseLost):
            first.retry(stale, 0)
        with pytest.raises(LeaseLost):
            first.dead_letter(stale, Failure("failed"))
        assert second.ack(current) == []
        assert second.dead_letters() == []
    finally:
        first.close()
        second.close()


def test_a_long_delay_does_not_hold_back_a_shorter_one_sent_after_it(broker: Broker) -> None:
    long, short = (
        Record(new_message_id(), "default", b"long", 0, 5_000),
        Record(new_message_id(), "default", b"s", 0, 300),
    )
    broker.publish([long])
    broker.publish([short])
    sent = time.monotonic()
    deliveries = wait_for(lambda: broker.fetch(["default"], 5, 30_000))
    assert [d.id for d in deliveries] == [short.id]
    assert 0.3 <= time.monotonic() - sent < 1.3
    assert broker.stats(["default"])[0].delayed == 1


def test_closing_the_broker_gives_back_what_it_received_uncounted(broker: Broker, url: str) -> None:
    records = [Record(new_message_id(), "default", b"x") for _ in range(3)]
    broker.publish(records)
    fetched = broker.fetch(["default"], 1, 30_000)  # may have received more than it handed out
    broker.release(fetched)
    broker.close()
    other = open_broker(url, max_deliveries=MAX_DELIVERIES)
    try:
        again: list[Delivery] = []
        while len(again) < 3:
            again += wait_for(lambda: other.fetch(["default"], 3, 30_000))
        assert sorted(d.id for d in again) == sorted(r.id for r in records)
        counted = sorted(d.deliveries for d in again)
        if "quorum" in url:  # a delivery in transit as the quorum consumer was cancelled comes back counted
            assert counted in ([1, 1, 1], [1, 1, 2])
        else:
            assert counted == [1, 1, 1]
    finally:
        other.close()


ACK_THEN_DIE = """
import os, sys, time
from taskmill.brokers import open_broker
broker = open_broker(sys.argv[1])
while not (first := broker.fetch(["a", "b"], 1, 30_000)):
    time.sleep(0.01)
time.sleep(0.3)  # the other queue's message reaches the buffer too (a quorum queue's QoS is per consumer)
_, then = broker.ack_and_fetch(first, ["a", "b"], 1, 30_000)
print(first[0].id, len(then), flush=True)
os._exit(0)  # as a process killed while it runs the next message
"""


def test_a_fetch_returns_only_once_its_acks_are_on_their_way(url: str) -> None:
    records = [Record(new_message_id(), "a", b"x"), Record(new_message_id(), "b", b"x")]
    publish_apart(url, records)
    done = subprocess.run([sys.executable, "-c", ACK_THEN_DIE, url], capture_output=True, text=True, check=True)
    acked, started = done.stdout.split()
    assert started == "1"
    other = open_broker(url, max_deliveries=MAX_DELIVERIES)
    try:
        back = wait_for(lambda: other.fetch(["a", "b"], 2, 30_000))
        time.sleep(0.3)  # the acked one, had its ack not left, would be back by now too
        back += other.fetch(["a", "b"], 2, 30_000)
        assert [d.id for d in back] == [r.id for r in records if r.id != acked]
    finally:
        other.close()


def test_acks_that_cannot_be_queued_in_time_drop_the_connection_and_strand_nothing(url: str) -> None:
    records = [Record(new_message_id(), "a", b"x"), Record(new_message_id(), "b", b"x")]
    broker = open_broker(f"{url}&timeout=0.3", max_deliveries=MAX_DELIVERIES)
    assert isinstance(broker, RabbitMQBroker)
    try:
        for record in records:
            broker.publish([record])
        first = wait_for(lambda: broker.fetch(["a", "b"], 1, 30_000))
        time.sleep(0.3)  # on quorum queues the other one is pushed too, and waits in the buffer
        acker, ack = broker._acks, broker._acks.ack

        async def stalled(*args: Any, **kwargs: Any) -> Any:  # as a connection RabbitMQ blocked (an alarm)
            await asyncio.sleep(1.5)
            return await ack(*args, **kwargs)

        acker.ack = stalled  # type: ignore[method-assign]
        try:
            with pytest.raises(BrokerUnavailable):
                broker.ack_and_fetch(first, ["a", "b"], 1, 30_000)
        finally:
            acker.ack = ack  # type: ignore[method-assign]
        back: list[Delivery] = []  # the connection was dropped: both come back, none is left unreachable
        deadline = time.monotonic() + 10
        while len(back) < 2 and time.monotonic() < deadline:
            back += broker.fetch(["a", "b"], 2, 30_000)
            time.sleep(0.05)
        assert sorted(d.id for d in back) == sorted(r.id for r in records)
    finally:
        broker.close()


def test_a_forked_child_cannot_take_what_its_parent_received(url: str) -> None:
    publish_apart(url, [Record(new_message_id(), "a", b"x"), Record(new_message_id(), "b", b"x")])
    broker = open_broker(url, max_deliveries=MAX_DELIVERIES)
    try:
        wait_for(lambda: broker.fetch(["a", "b"], 1, 30_000))
        time.sleep(0.3)  # on quorum queues the other one waits in the parent's buffer
        pid = os.fork()
        if pid == 0:  # pragma: no cover -- the child reports through its exit code, whatever happens
            code = 2
            try:
                code = 0
                calls = (
                    lambda: broker.fetch(["a", "b"], 1, 30_000),
                    lambda: broker.ack_and_fetch([], ["a", "b"], 1, 1),
                )
                for call in calls:
                    try:
                        call()
                        code = 1
                    except BrokerError:
                        pass
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child took a delivery its parent holds"
        assert len(wait_for(lambda: broker.fetch(["a", "b"], 1, 30_000))) == 1  # still the parent's to run
    finally:
        broker.close()


def test_acks_sent_with_a_fetch_are_settled_when_the_broker_closes(broker: Broker, url: str) -> None:
    broker.publish([Record(new_message_id(), "default", b"x") for _ in range(4)])
    held: list[Delivery] = []
    while len(held) < 4:
        held += wait_for(lambda: broker.fetch(["default"], 4, 30_000))
    assert broker.ack_and_fetch(held, ["default"], 4, 30_000) == ([], [])
    broker.close()
    other = open_broker(url, max_deliveries=MAX_DELIVERIES)
    try:
        time.sleep(0.3)  # a message given back by the close would be pushed by now
        assert other.fetch(["default"], 4, 30_000) == []
        assert [(s.ready, s.in_flight) for s in other.stats(["default"])] == [(0, 0)]
    finally:
        other.close()


def test_a_fetch_after_acks_takes_the_message_pushed_for_their_credit(broker: Broker) -> None:
    broker.publish([Record(new_message_id(), "default", b"x") for _ in range(3)])
    first = wait_for(lambda: broker.fetch(["default"], 1, 30_000))
    lost, taken = broker.ack_and_fetch(first, ["default"], 1, 30_000)  # the QoS held one: the ack frees it
    assert lost == []
    assert len(taken) == 1
    assert taken[0].id != first[0].id
    assert broker.ack(taken) == []


@pytest.mark.parametrize(
    ("query", "problem"),
    [("queue_type=stream", "queue_type"), ("prefix=a.b", "prefix"), ("timeout=soon", "timeout")],
)
def test_a_bad_url_option_is_a_configuration_error(query: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        open_broker(f"amqp://guest:guest@127.0.0.1:5672/?{query}")


def test_names_and_delays_rabbitmq_cannot_carry_are_refused_before_any_io(broker: Broker) -> None:
    with pytest.raises(ConfigurationError, match="too long"):
        broker.publish([Record(new_message_id(), "q" * 250, b"x")])
    with pytest.raises(InvalidOptionError, match="longer than RabbitMQ delays reach"):
        broker.publish([Record(new_message_id(), "default", b"x", 0, 10**12)])


def test_no_server_is_broker_unavailable() -> None:
    broker = open_broker("amqp://guest:guest@127.0.0.1:1/?timeout=2")
    try:
        with pytest.raises(BrokerUnavailable):
            broker.publish([Record(new_message_id(), "default", b"x")])
    finally:
        broker.close()


def test_a_vhost_in_the_url_keeps_its_messages_apart(url: str) -> None:
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        if os.environ.get("CI") == "true":  # CI must never skip: .ci/run installs RabbitMQ
            pytest.fail("rabbitmqctl is not installed")
        pytest.skip("rabbitmqctl is not installed")
    vhost = f"tmtest-{new_message_id()}"
    subprocess.run([rabbitmqctl, "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            [rabbitmqctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True, capture_output=True
        )
        inside = open_broker(url.replace("5672/?", f"5672/{vhost}?"), max_deliveries=MAX_DELIVERIES)
        outside = open_broker(url, max_deliveries=MAX_DELIVERIES)
        try:
            record = Record(new_message_id(), "default", b"in the vhost")
            inside.publish([record])
            assert outside.fetch(["default"], 5, 30_000) == []
            deliveries = wait_for(lambda: inside.fetch(["default"], 5, 30_000))
            assert [d.id for d in deliveries] == [record.id]
        finally:
            inside.close()
            outside.close()
    finally:
        subprocess.run([rabbitmqctl, "delete_vhost", vhost], check=True, capture_output=True)


def test_a_queue_declared_with_other_arguments_is_a_configuration_error_and_the_broker_carries_on(url: str) -> None:
    broker = RabbitMQBroker(url, max_deliveries=MAX_DELIVERIES)
    try:

        async def declare_plain() -> None:  # as another tool would have: no priority, no dead-letter exchange
            await broker.connect()
            channel = await broker._connection.channel()
            await channel.declare_queue(broker.names.queue("taken"), durable=True)
            await channel.close()

        broker.call(declare_plain())
        with pytest.raises(ConfigurationError, match="other arguments"):
            broker.publish([Record(new_message_id(), "taken", b"x")])
        record = Record(new_message_id(), "default", b"fine")  # the refused declaration closed only a channel
        broker.publish([record])
        deliveries = wait_for(lambda: broker.fetch(["default"], 5, 30_000))
        assert [d.id for d in deliveries] == [record.id]
    finally:
        broker.close()
        delete = RabbitMQBroker(url)
        try:

            async def drop() -> None:
                await delete.connect()
                await delete.channel.queue_delete(delete.names.queue("taken"))

            delete.call(drop())
        finally:
            delete.close()


def fetch_n(broker: Broker, n: int, timeout: float = 10.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += broker.fetch(["default"], n - len(got), 30_000)
    return got


def test_acks_out_of_order_settle_exactly_the_acked_messages(url: str) -> None:
    # Acks of a run of the lowest delivery tags go out as one frame ("multiple"); a message still
    # held below or inside that run must not be settled with it.
    first = open_broker(url, max_deliveries=MAX_DELIVERIES)
    records = [Record(new_message_id(), "default", f"m{i}".encode()) for i in range(6)]
    first.publish(records)
    held = fetch_n(first, 6)
    assert sorted(d.id for d in held) == sorted(r.id for r in records)
    kept = [held[2], held[5]]
    assert first.ack([held[4], held[0], held[3], held[1]]) == []
    first.close()  # the two kept ones go back to RabbitMQ, unsettled
    second = open_broker(url, max_deliveries=MAX_DELIVERIES)
    try:
        back = fetch_n(second, 2)
        assert sorted(d.id for d in back) == sorted(d.id for d in kept)
        assert second.ack(back) == []
        extra = Record(new_message_id(), "default", b"after")
        second.publish([extra])
        (after,) = fetch_n(second, 1)  # the channel survived the acks: no double ack closed it
        assert after.id == extra.id
        assert second.ack([after]) == []
        assert fetch_n(second, 1, timeout=1.0) == []
    finally:
        second.close()


def test_the_broker_runs_its_loop_on_uvloop_where_it_is_installed(broker: RabbitMQBroker) -> None:
    import uvloop  # the amqp extra installs it (except on Windows and PyPy)

    assert isinstance(broker.loop, uvloop.Loop)


def test_without_uvloop_the_broker_runs_on_asyncio_s_own_loop(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed: its import fails
    plain = open_broker(url, max_deliveries=MAX_DELIVERIES)
    try:
        assert isinstance(plain, RabbitMQBroker)
        assert type(plain.loop).__module__.startswith("asyncio")
        records = [Record(new_message_id(), "default", f"m{i}".encode(), priority=i) for i in range(3)]
        plain.publish(records)
        held = fetch_n(plain, 3)
        assert sorted(d.body for d in held) == [b"m0", b"m1", b"m2"]
        assert plain.ack(held) == []
        assert fetch_n(plain, 1, timeout=0.5) == []
    finally:
        plain.close()
