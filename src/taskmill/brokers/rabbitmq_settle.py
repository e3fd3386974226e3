"""Settling deliveries for the RabbitMQ broker (``rabbitmq``), on its event loop unless said otherwise.

- ``ack_soon`` starts acks, and ``acked`` waits until their frames are queued on the consuming
  channel. In the worker's busy path ``ack_soon`` takes the deliveries out of the held ones on the
  caller's thread and starts the frames on the loop, so the fetch that follows counts their credit
  as free and waits for RabbitMQ's next push on the caller's thread; by the time the push comes the
  frames are long queued, so the caller does not wait for them on their own.
- ``settle`` replaces a delivery (a retry, a release or a dead letter): it publishes the copy,
  confirmed, then acks the delivery.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from taskmill.brokers.base import Delivery, Record
from taskmill.brokers.rabbitmq_publish import send
from taskmill.errors import BrokerUnavailable, LeaseLost

if TYPE_CHECKING:
    from taskmill.brokers.rabbitmq import RabbitMQBroker

__all__ = ["Sending", "ack_soon", "acked", "release", "settle"]

Sending = Future[list[Delivery]]  # acks on their way: the deliveries whose frames could not be sent


def ack_soon(broker: RabbitMQBroker, deliveries: Sequence[Delivery]) -> tuple[list[Delivery], Sending | None]:
    """(Any thread) Start acking ``deliveries`` on the loop: (those not held, as their connection is
    gone; a future of the others whose frames could not be sent, or None if there are no others)."""
    broker.running()
    with broker._holdings.lock:  # the generation these entries belong to: a reconnect changes it under this lock
        held = [(delivery, broker._holdings.held.pop(delivery.token, None)) for delivery in deliveries]
        generation = broker._generation
    entries = [(entry[1], entry[0], delivery) for delivery, entry in held if entry is not None]
    gone = [delivery for delivery, entry in held if entry is None]
    return gone, broker.start(broker._acks.ack(entries, generation)) if entries else None


def acked(broker: RabbitMQBroker, sending: Sending) -> list[Delivery]:
    """Wait for acks started on the loop; the ones whose connection is gone. When they cannot be
    queued in time the connection is dropped: RabbitMQ gives back what it held, whose acks may never
    leave, rather than count those slots as taken until a reconnect."""
    generation = broker._generation
    try:
        return broker.result(sending)
    except BrokerUnavailable:
        broker.loop.call_soon_threadsafe(_drop, broker, generation)
        raise


def _drop(broker: RabbitMQBroker, generation: int) -> None:
    if generation == broker._generation:  # not a connection opened since
        broker._closed()


async def release(broker: RabbitMQBroker, deliveries: Sequence[Delivery]) -> None:
    """Give ``deliveries`` back uncounted (those no longer held are skipped)."""
    for delivery in deliveries:
        with contextlib.suppress(LeaseLost):
            await settle(broker, delivery, send, delivery.deliveries - 1, 0)


async def settle(broker: RabbitMQBroker, delivery: Delivery, publish: Any, delivered: int, delay_ms: int) -> None:
    """Publish what replaces ``delivery`` (confirmed), then ack it; LeaseLost if not the holder.
    The delivery is claimed first, so a concurrent ack or settle of it cannot ack it twice."""
    if (held := broker._holdings.claim(delivery.token)) is None:
        raise LeaseLost(f"message {delivery.id} was received on a connection that is gone")
    generation = int(delivery.token.partition(".")[0])
    broker._settling.add(delivery.token)
    try:
        await broker.connect()
        record = Record(delivery.id, delivery.queue, delivery.body, delivery.priority, delay_ms)
        if delay_ms > 0:
            await broker.topology.delays(broker.channel, delivery.queue)
        await publish(broker, record, delivered)
    except BaseException:
        if generation == broker._generation:  # still held: the caller may try again
            broker._holdings.restore(delivery.token, held)
        raise
    finally:
        broker._settling.discard(delivery.token)
    broker._published = True
    await broker._acks.single(*held, generation)
