"""Looking into RabbitMQ queues and operating on them: counts, purges, and the dead-letter queues.

AMQP can count a queue's ready messages but cannot list queues, count unacked messages or read
a message without taking it. So queue names come from the broker's registry queue; dead letters
are read by taking them on a channel of their own without acking, and putting back (by closing
that channel) all but the ones an operation removes; and ``in_flight`` is not known here (0).
Each of these runs on the broker's event loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from taskmill.brokers.base import DeadLetter, Failure, QueueStats, Record
from taskmill.brokers.rabbitmq_client import open_channel
from taskmill.brokers.rabbitmq_topology import LEVELS

if TYPE_CHECKING:
    from taskmill.brokers.rabbitmq import RabbitMQBroker

__all__ = ["dead_letters", "purge", "purge_dead", "retry_dead", "stats"]

_READ_LIMIT = 100_000  # messages read from one queue to list or select dead letters
DELIVERED = "x-taskmill-delivered"  # deliveries counted before this copy of a message was published
_TEXT_LIMIT = 16_000  # characters of an error message or traceback kept in a dead letter's headers


def header_text(headers: dict[str, Any], name: str) -> str:
    value = headers.get(name, "")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def header_int(headers: dict[str, Any], name: str) -> int:
    try:
        return int(headers.get(name) or 0)
    except (TypeError, ValueError):
        return 0


def dead_message(aio_pika: Any, record: Record, delivered: int, failure: Failure) -> Any:
    """The message a dead queue keeps: the body as it was, why it died in headers."""
    return aio_pika.Message(
        record.body,
        message_id=record.id,
        priority=record.priority,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=time.time(),
        headers={
            "x-taskmill-queue": record.queue,
            "x-taskmill-reason": failure.reason,
            "x-taskmill-error-type": failure.error_type[:_TEXT_LIMIT],
            "x-taskmill-error-message": failure.error_message[:_TEXT_LIMIT],
            "x-taskmill-traceback": failure.traceback[-_TEXT_LIMIT:],
            DELIVERED: delivered,
            "x-taskmill-dead-at": time.time_ns(),  # ns, so dead letters of one millisecond keep their order
        },
    )


def dead_letter_of(record: Record, deliveries: int, failure: Failure) -> DeadLetter:
    return DeadLetter(
        record.id, record.queue, record.body, record.priority, failure.reason, failure.error_type,
        failure.error_message, failure.traceback, deliveries, int(time.time() * 1000),
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _side_channel(broker: RabbitMQBroker) -> AsyncIterator[Any]:
    """A channel of its own; closing it puts back whatever it took and did not ack."""
    await broker.connect()
    channel = await open_channel(broker._connection, publisher_confirms=False)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            await channel.close()


async def _count(broker: RabbitMQBroker, name: str) -> int | None:
    """A queue's ready messages, or None when it does not exist."""
    async with _side_channel(broker) as channel:
        try:
            declared = await channel.declare_queue(name, passive=True)
        except broker.aio_pika.exceptions.ChannelNotFoundEntity:
            return None
        count: int = declared.declaration_result.message_count
        return count


async def _take_all(channel: Any, name: str) -> list[Any]:
    """Every message of a queue, taken unacked on ``channel`` (empty when the queue does not exist)."""
    try:
        queue = await channel.declare_queue(name, passive=True)
    except Exception:  # noqa: BLE001 -- a missing queue closes the channel; there is nothing to read
        return []
    taken: list[Any] = []
    while len(taken) < _READ_LIMIT and (message := await queue.get(no_ack=False, fail=False)) is not None:
        taken.append(message)
    return taken


async def register(broker: RabbitMQBroker, queue: str) -> None:
    """Add ``queue`` to the registry that stats() and dead_letters() read queue names from."""
    await broker.channel.declare_queue(broker.names.registry, durable=True)
    message = broker.aio_pika.Message(queue.encode(), delivery_mode=broker.aio_pika.DeliveryMode.PERSISTENT)
    await broker.channel.default_exchange.publish(message, broker.names.registry, timeout=broker.options.timeout)


async def known_queues(broker: RabbitMQBroker) -> list[str]:
    """The queue names in the registry, each once (duplicates are removed as they are read)."""
    names: set[str] = set()
    async with _side_channel(broker) as channel:
        for message in await _take_all(channel, broker.names.registry):
            name = message.body.decode()
            if name in names:
                await message.ack()
            names.add(name)
    return sorted(names)


async def _queues(broker: RabbitMQBroker, queues: Sequence[str] | None) -> list[str]:
    return sorted(set(queues)) if queues is not None else await known_queues(broker)


async def stats(broker: RabbitMQBroker, queues: Sequence[str] | None) -> list[QueueStats]:
    rows = []
    for queue in await _queues(broker, queues):
        ready = await _count(broker, broker.names.queue(queue))
        if ready is None:
            continue
        delayed = 0
        if await _count(broker, broker.names.level(queue, 0)) is not None:
            for n in range(LEVELS):
                delayed += await _count(broker, broker.names.level(queue, n)) or 0
        dead = await _count(broker, broker.names.dead(queue)) or 0
        rows.append(QueueStats(queue, ready=ready, delayed=delayed, in_flight=0, dead=dead))
    return rows


async def purge(broker: RabbitMQBroker, queue: str) -> int:
    names = [broker.names.queue(queue), *(broker.names.level(queue, n) for n in range(LEVELS))]
    purged = 0
    for name in names:
        if await _count(broker, name) is None:
            continue
        async with _side_channel(broker) as channel:
            amqp_queue = await channel.declare_queue(name, passive=True)
            result = await amqp_queue.purge()
            purged += result.message_count
    return purged


def dead_letter(message: Any, queue: str) -> DeadLetter:
    headers = dict(message.headers or {})
    return DeadLetter(
        id=message.message_id or "",
        queue=header_text(headers, "x-taskmill-queue") or queue,
        body=message.body,
        priority=message.priority or 0,
        reason=header_text(headers, "x-taskmill-reason") or "rejected",
        error_type=header_text(headers, "x-taskmill-error-type"),
        error_message=header_text(headers, "x-taskmill-error-message"),
        traceback=header_text(headers, "x-taskmill-traceback"),
        deliveries=header_int(headers, DELIVERED),
        dead_at_ms=header_int(headers, "x-taskmill-dead-at") // 1_000_000,
    )


async def dead_letters(broker: RabbitMQBroker, queue: str | None, limit: int, offset: int) -> list[DeadLetter]:
    found: list[tuple[int, DeadLetter]] = []
    async with _side_channel(broker) as channel:
        for name in await _queues(broker, None if queue is None else [queue]):
            messages = await _take_all(channel, broker.names.dead(name))
            found += [(header_int(dict(m.headers or {}), "x-taskmill-dead-at"), dead_letter(m, name)) for m in messages]
    found.sort(key=lambda entry: entry[0], reverse=True)
    return [dead for _, dead in found[offset : offset + limit]]


async def _select_dead(broker: RabbitMQBroker, ids: Sequence[str] | None, queue: str | None, requeue: bool) -> int:
    """Remove the chosen dead letters, first publishing each back to its queue when ``requeue``."""
    if ids is not None and not ids:
        return 0
    wanted = None if ids is None else set(ids)
    moved = 0
    async with _side_channel(broker) as channel:
        for name in await _queues(broker, None if queue is None else [queue]):
            for message in await _take_all(channel, broker.names.dead(name)):
                if wanted is not None and message.message_id not in wanted:
                    continue
                if requeue:
                    dead = dead_letter(message, name)
                    await broker._publish([(Record(dead.id, dead.queue, dead.body, dead.priority), 0)])
                await message.ack()
                moved += 1
    return moved


async def retry_dead(broker: RabbitMQBroker, ids: Sequence[str] | None, queue: str | None) -> int:
    return await _select_dead(broker, ids, queue, requeue=True)


async def purge_dead(broker: RabbitMQBroker, ids: Sequence[str] | None, queue: str | None) -> int:
    return await _select_dead(broker, ids, queue, requeue=False)
