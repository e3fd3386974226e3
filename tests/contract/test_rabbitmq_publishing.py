"""RabbitMQ publishing: a single message goes out on the caller's own thread (a pooled pika connection),
a batch or a queue's first message through the broker's event loop. What users rely on either way:
every confirmed send arrives once, from any number of threads and from forked children, and a refused
publish is a typed error after which the broker carries on.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskmill.brokers import Broker, Delivery, Record, open_broker
from taskmill.brokers.rabbitmq import RabbitMQBroker
from taskmill.errors import BrokerError, BrokerUnavailable, ConfigurationError, InvalidOptionError
from taskmill.message import new_message_id


@pytest.fixture(params=["classic", "quorum"])
def url(request: pytest.FixtureRequest, rabbitmq_test_url: str) -> str:
    return rabbitmq_test_url.replace("queue_type=classic", f"queue_type={request.param}")


@pytest.fixture
def broker(url: str) -> Iterator[RabbitMQBroker]:
    instance = RabbitMQBroker(url)
    yield instance
    instance.close()


def drain(broker: Broker, n: int, queue: str = "default", timeout: float = 20.0) -> list[Delivery]:
    """Fetch and ack until ``n`` deliveries came (or the time is up); then one more look for extras."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        batch = broker.fetch([queue], 50, 30_000)
        assert broker.ack(batch) == []
        got += batch
    time.sleep(0.2)
    extra = broker.fetch([queue], 50, 30_000)
    assert broker.ack(extra) == []
    return got + extra


def one(queue: str = "default", body: bytes = b"x", delay_ms: int = 0) -> Record:
    return Record(new_message_id(), queue, body, 0, delay_ms)


def test_sends_from_many_threads_each_arrive_once(broker: RabbitMQBroker) -> None:
    broker.publish([one()])  # the queue's first message declares it (on the loop)
    sent: list[str] = []
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            for _ in range(40):
                record = one()
                broker.publish([record])
                sent.append(record.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    got = drain(broker, len(sent) + 1)
    ids = [delivery.id for delivery in got]
    assert len(ids) == len(set(ids)) == len(sent) + 1
    assert set(sent) <= set(ids)


def test_single_sends_keep_their_priority_delay_and_body(broker: RabbitMQBroker, url: str) -> None:
    broker.publish([one()])
    assert drain(broker, 1)
    low, high = Record(new_message_id(), "default", b"low", 0), Record(new_message_id(), "default", b"high", 9)
    later = one(body=b"later", delay_ms=300)
    broker.publish([later])  # the first delayed message declares the delay levels, on the loop
    broker.publish([one(body=b"later too", delay_ms=300)])  # on this thread
    broker.publish([low])
    broker.publish([high])
    got = drain(broker, 4)
    assert sorted(delivery.body for delivery in got) == sorted([b"low", b"high", b"later", b"later too"])
    now = [delivery for delivery in got if delivery.body in (b"low", b"high")]
    if "quorum" not in url:  # RabbitMQ 3.x quorum queues have no priorities
        assert [delivery.body for delivery in now] == [b"high", b"low"]
    assert all(delivery.deliveries == 1 for delivery in got)


def test_a_forked_child_publishes_on_a_connection_of_its_own(broker: RabbitMQBroker) -> None:
    first, second, from_child = one(body=b"before"), one(body=b"after"), one(body=b"child")
    broker.publish([one()])
    broker.publish([first])  # leaves a pooled connection behind
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        code = 1
        try:
            broker.publish([from_child])
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    broker.publish([second])  # the parent's pooled connection still works
    got = {delivery.body for delivery in drain(broker, 4)}
    assert {b"before", b"after", b"child"} <= got


def test_a_queue_deleted_by_hand_is_declared_again_by_the_next_send(broker: RabbitMQBroker) -> None:
    broker.publish([one()])
    broker.publish([one()])
    assert len(drain(broker, 2)) == 2

    async def delete() -> None:  # as an operator would, by hand
        await broker.connect()
        await broker.channel.queue_delete(broker.names.queue("default"))

    broker.call(delete())
    kept = one(body=b"kept")
    broker.publish([kept])  # returned unqueued on the pika path, then declared and sent again on the loop
    assert [delivery.id for delivery in drain(broker, 1)] == [kept.id]  # and the worker consumes it again
    later = one(body=b"later")
    broker.publish([later])
    assert [delivery.id for delivery in drain(broker, 1)] == [later.id]


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("amqp://guest:guest@127.0.0.1:99999/", ConfigurationError),
        ("amqp://guest:guest@127.0.0.1:port/", ConfigurationError),
    ],
)
def test_a_bad_url_is_a_configuration_error_before_any_io(url: str, error: type[Exception]) -> None:
    with pytest.raises(error, match="RabbitMQ URL"):
        open_broker(url)


def test_a_message_id_rabbitmq_cannot_carry_is_refused_before_any_io(broker: RabbitMQBroker) -> None:
    broker.publish([one()])
    for batch in ([Record("é" * 200, "default", b"x")], [one(), Record("é" * 200, "default", b"x")]):
        with pytest.raises(InvalidOptionError, match="255 bytes"):
            broker.publish(batch)
    assert drain(broker, 1)  # only the first one went out


def test_a_closed_broker_refuses_sends_with_a_typed_error(url: str) -> None:
    broker = RabbitMQBroker(url)
    broker.publish([one()])
    broker.close()
    for batch in ([one()], [one(), one()]):
        with pytest.raises(BrokerError, match="closed"):
            broker.publish(batch)


def test_a_missing_tls_file_is_a_configuration_error_before_any_io(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="TLS files"):
        open_broker(f"amqps://guest:guest@127.0.0.1:1/?cafile={tmp_path / 'no-such-ca.pem'}")


def test_no_server_is_broker_unavailable_on_the_callers_thread() -> None:
    broker = RabbitMQBroker("amqp://guest:guest@127.0.0.1:1/?timeout=2")
    try:
        broker.topology._done.add(("main", "default"))  # as if declared: the send goes straight to pika
        with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1\b"):
            broker.publish([one()])
    finally:
        broker.close()


class Proxy:
    """A TCP proxy on loopback in front of RabbitMQ that can stop forwarding (a server that stopped
    answering but keeps its connections) or cut every connection (a reset)."""

    def __init__(self) -> None:
        self.frozen = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", 5672))
                self._pairs.append((client, server))
                threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
                threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.02)
                sink.sendall(data)

    def cut(self) -> None:
        for pair in self._pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
        self._pairs.clear()

    def close(self) -> None:
        self.cut()
        self._listener.close()


def test_a_server_that_stops_answering_fails_a_send_within_the_timeout(rabbitmq_test_url: str) -> None:
    proxy = Proxy()
    url = rabbitmq_test_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}") + "&timeout=1&heartbeat=0"
    broker = RabbitMQBroker(url)
    try:
        broker.publish([one()])  # declared (on the loop)
        broker.publish([one()])  # a pooled pika connection
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="no publisher confirm within 1 s"):
            broker.publish([one()])
        assert time.monotonic() - started < 5  # 1 s, and no wait for a Close that cannot come
    finally:
        proxy.frozen.clear()
        proxy.close()
        broker.close()


def test_after_a_reset_at_most_one_send_fails(rabbitmq_test_url: str) -> None:
    """A connection-level error empties the pool: the other idle connections died with it."""
    proxy = Proxy()
    broker = RabbitMQBroker(rabbitmq_test_url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}"))
    try:
        broker.publish([one()])
        barrier = threading.Barrier(4)

        def send() -> None:
            barrier.wait()
            broker.publish([one()])

        threads = [threading.Thread(target=send) for _ in range(4)]  # four pooled connections
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(broker.publishers._idle) >= 2
        proxy.cut()
        failed = 0
        for _ in range(4):
            try:
                broker.publish([one()])
            except BrokerUnavailable:
                failed += 1
        assert failed <= 1
    finally:
        proxy.close()
        broker.close()
