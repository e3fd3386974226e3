"""RabbitMQ publishing: a single message goes out on the caller's own thread (a pooled pika connection),
a batch or a queue's first message through the broker's event loop. What users rely on either way:
every confirmed send arrives once, from any number of threads and from forked children, and a refused
publish is a typed error after which the broker carries on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskmill.brokers import Broker, Delivery, Record, open_broker
from taskmill.brokers.rabbitmq import RabbitMQBroker
from taskmill.errors import BrokerUnavailable, ConfigurationError
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


def test_a_bad_heartbeat_is_a_configuration_error_before_any_io() -> None:
    with pytest.raises(ConfigurationError, match="heartbeat"):
        open_broker("amqp://guest:guest@127.0.0.1:5672/?heartbeat=soon")


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
