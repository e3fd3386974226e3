"""The broker contract for batches and idle waits: what the batched hot paths must keep (every backend)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from taskmill.brokers import Broker, Record
from taskmill.message import Message, new_message_id

LEASE_MS = 30_000
WAIT_S = 10.0  # a wait that must end early because of a publish: far longer than any wake-up takes


def rec(queue: str = "default", priority: int = 0, body: bytes | None = None, message_id: str | None = None) -> Record:
    message_id = message_id or new_message_id()
    if body is None:
        body = Message(actor="noop", queue=queue, priority=priority, id=message_id).encode()
    return Record(message_id, queue, body, priority)


@pytest.mark.needs("unique_ids")
def test_an_id_twice_in_one_publish_is_stored_once_with_its_first_body(broker: Broker) -> None:
    message_id = new_message_id()
    broker.publish([rec(body=b"first", message_id=message_id), rec(body=b"second", message_id=message_id)])
    deliveries = broker.fetch(["default"], 10, LEASE_MS)
    assert [(d.id, d.body) for d in deliveries] == [(message_id, b"first")]


def test_every_delivery_of_a_batch_fetch_has_a_token_of_its_own(broker: Broker) -> None:
    broker.publish([rec() for _ in range(20)])
    tokens: list[str] = []
    started = time.monotonic()
    while len(tokens) < 20:  # batches of 10, however a backend splits them
        assert time.monotonic() - started < WAIT_S, f"only {len(tokens)} of 20 records came"
        deliveries = broker.fetch(["default"], 10, LEASE_MS)
        tokens += [d.token for d in deliveries]
        assert broker.ack(deliveries) == []
    assert len(set(tokens)) == len(tokens) == 20


@pytest.mark.needs("expiring_leases")  # fencing tokens: a released-then-refetched delivery is stale
def test_a_batch_ack_across_queues_refuses_only_the_stale_delivery(broker: Broker) -> None:
    broker.publish([rec("alpha"), rec("beta"), rec("beta")])
    deliveries = broker.fetch(["alpha", "beta"], 10, LEASE_MS)
    assert len(deliveries) == 3
    stale = deliveries[1]
    broker.release([stale])
    [again] = broker.fetch(["beta"], 10, LEASE_MS)
    assert again.id == stale.id
    assert broker.ack(deliveries) == [stale]
    assert broker.ack([again]) == []
    assert broker.fetch(["alpha", "beta"], 10, LEASE_MS) == []


@pytest.mark.needs("order_across_queues")
def test_a_fetch_of_many_from_two_queues_hands_out_the_best_first(broker: Broker) -> None:
    published = [rec("alpha", 1), rec("beta", 5), rec("alpha", 5), rec("beta", 0), rec("alpha", 9)]
    broker.publish([r for r in published if r.queue == "alpha"])
    broker.publish([r for r in published if r.queue == "beta"])
    deliveries = broker.fetch(["alpha", "beta"], 3, LEASE_MS)
    assert [(d.queue, d.priority) for d in deliveries] == [("alpha", 9), ("alpha", 5), ("beta", 5)]


def test_a_wait_after_a_fetch_that_emptied_the_queue_ends_when_another_thread_publishes(broker: Broker) -> None:
    broker.wait(["default"], 0.05)  # an idle worker's first wait: subscribed from now on where that applies
    broker.publish([rec() for _ in range(3)])
    assert len(broker.fetch(["default"], 8, LEASE_MS)) == 3  # fewer than asked for: the queue is empty

    def publish_soon() -> None:
        time.sleep(0.2)
        broker.publish([rec()])

    with ThreadPoolExecutor(1) as pool:
        published = pool.submit(publish_soon)
        started = time.monotonic()
        while not broker.fetch(["default"], 8, LEASE_MS):  # a worker's loop: wait, then look
            assert time.monotonic() - started < WAIT_S, "the publish never ended the wait"
            broker.wait(["default"], WAIT_S)
        published.result()
