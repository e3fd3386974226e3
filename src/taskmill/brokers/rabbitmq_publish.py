"""Publishing a copy of a message for the RabbitMQ broker: to its queue (or the delay level that
holds it until due) with taskmill's delivery count in a header, or to its dead queue with the
failure. Both wait for the publisher confirm on the broker's confirming channel."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from taskmill.brokers import rabbitmq_inspect as inspect
from taskmill.brokers.base import Failure, Record
from taskmill.brokers.rabbitmq_inspect import DELIVERED
from taskmill.brokers.rabbitmq_topology import delay_route, delay_units, tag

if TYPE_CHECKING:
    from taskmill.brokers.rabbitmq import RabbitMQBroker

__all__ = ["send", "send_dead"]


async def send(broker: RabbitMQBroker, record: Record, delivered: int, headers: dict[str, Any] | None = None) -> None:
    """Publish ``record`` as delivered ``delivered`` times so far."""
    message = broker.aio_pika.Message(
        record.body,
        message_id=record.id,
        priority=record.priority,
        delivery_mode=broker.aio_pika.DeliveryMode.PERSISTENT,
        headers={DELIVERED: delivered, **(headers or {})},
        timestamp=time.time(),
    )
    units = delay_units(record.delay_ms) if record.delay_ms > 0 else 0
    if units:
        level, key = delay_route(units, record.queue)
        exchange = await broker.channel.get_exchange(broker.names.level_exchange(level), ensure=False)
        await exchange.publish(message, key, timeout=broker.options.timeout)
    else:
        await broker.channel.default_exchange.publish(
            message, broker.names.queue(record.queue), timeout=broker.options.timeout
        )


async def send_dead(broker: RabbitMQBroker, record: Record, delivered: int, failure: Failure) -> None:
    """Publish ``record`` to its dead queue with ``failure``."""
    message = inspect.dead_message(broker.aio_pika, record, delivered, failure)
    await broker.topology.main(broker.channel, record.queue)
    exchange = await broker.channel.get_exchange(broker.names.dead_exchange, ensure=False)
    await exchange.publish(message, tag(record.queue), timeout=broker.options.timeout)
