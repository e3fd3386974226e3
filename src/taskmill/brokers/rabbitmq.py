"""amqp:// and amqps:// — the RabbitMQ broker, on aio-pika, driven from one event-loop thread.

No time leases: a delivery is held while the connection that received it is open, and RabbitMQ
gives it back at once when that connection closes. A token names its connection, so a holder whose
connection is gone cannot settle; ``extend`` only reports such deliveries. Publishes are confirmed;
consumers are pushed at most as many messages as the worker has free slots (so priority holds);
delivery counts come from quorum queues' ``x-delivery-count`` or, on classic queues, from
re-publishing a redelivered message with its count raised; retries, releases and dead letters
publish a copy, then ack. docs/brokers.md tells the whole story; names, declarations and delay
levels are in ``rabbitmq_topology``, inspection and dead letters in ``rabbitmq_inspect``, acks
and the settling of deliveries in ``rabbitmq_settle``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from taskmill.brokers import rabbitmq_client as client
from taskmill.brokers import rabbitmq_inspect as inspect
from taskmill.brokers import rabbitmq_settle as settling
from taskmill.brokers.base import DELIVERY_LIMIT_TEXT, Broker, DeadLetter, Delivery, Failure, QueueStats, Record
from taskmill.brokers.rabbitmq_inspect import DELIVERED, header_int
from taskmill.brokers.rabbitmq_publish import Publishers, send, send_dead
from taskmill.brokers.rabbitmq_topology import Names, Topology, delay_units, parse_url
from taskmill.errors import BrokerError, BrokerUnavailable, ConfigurationError, InvalidOptionError

__all__ = ["RabbitMQBroker"]

T = TypeVar("T")


class RabbitMQBroker(Broker):
    """Durable queues on one RabbitMQ connection: a confirming publish channel and a consuming one."""

    leases_expire = False

    def __init__(self, url: str, *, max_deliveries: int = 25) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        self.aio_pika = client.import_aio_pika()
        client.quiet_client_repeats()  # the worker logs BrokerUnavailable instead, once per outage
        self.options = parse_url(url)
        self.names = Names(self.options.prefix)
        self.topology = Topology(self.names, self.options.queue_type)
        self.loop = client.new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="taskmill-amqp", daemon=True)
        self._thread.start()
        self._connection: Any = None
        self.channel: Any = None  # publisher confirms; declarations
        self._consumer: Any = None  # deliveries arrive here
        self._generation = 0
        self._holdings = client.Holdings()
        self._acks = client.Acker(self.aio_pika)  # on the consuming channel
        self._consuming: dict[str, tuple[Any, str]] = {}  # queue -> (the consuming aiormq channel, consumer tag)
        self._qos = 0
        self._limit = 1
        self._published = False
        self._connect_lock: asyncio.Lock | None = None
        self._settling: set[str] = set()  # tokens a retry, release or dead-letter is replacing
        self._pushed = asyncio.Event()  # set on the loop as each delivery reaches the buffer
        self.publishers = Publishers(self.options, self.names, self.location)

    @property
    def location(self) -> str:
        return self.options.amqp_url.split("@")[-1].split("?")[0]

    # -- the loop thread ----------------------------------------------------------------------
    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the broker's loop; AMQP failures become taskmill errors."""
        return self.result(self.start(coroutine))

    def start(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coroutine`` on the broker's loop; ``result`` waits for it."""
        try:
            self.running()
        except BrokerError:
            coroutine.close()
            raise
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def result(self, future: concurrent.futures.Future[T]) -> T:
        """What a coroutine ``start`` began returned; AMQP failures become taskmill errors."""
        exceptions = self.aio_pika.exceptions
        try:
            return future.result(self.options.timeout * 3)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerUnavailable(f"RabbitMQ at {self.location} did not answer in time") from None
        except exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(f"RabbitMQ refused a declaration (a queue with other arguments?): {exc}") from exc
        except (exceptions.DeliveryError, exceptions.ChannelNotFoundEntity) as exc:
            raise BrokerError(f"RabbitMQ did not take a message: {exc}") from exc
        except (TimeoutError, exceptions.AMQPError, exceptions.ChannelInvalidStateError, OSError) as exc:
            raise BrokerUnavailable(f"RabbitMQ at {self.location}: {type(exc).__name__}: {exc}") from exc

    def running(self) -> None:
        """BrokerError unless the loop thread runs: closed, or a forked child (threads do not survive a fork)."""
        if not self._thread.is_alive():
            raise BrokerError("the RabbitMQ broker is closed, or this process forked from the one that opened it")

    async def connect(self) -> None:
        """Open the connection and channels unless they are open; a new connection is a new generation."""
        if self._connection is not None and not self._connection.is_closed and not self.channel.is_closed:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._connection is not None and not self._connection.is_closed:
                if self.channel.is_closed:  # a refused declaration closes only the publishing channel
                    options = {"publisher_confirms": True, "on_return_raises": True}
                    self.channel = await client.open_channel(self._connection, **options)
                return
            opened = await client.open_connection(self.aio_pika, self.options.amqp_url, self.options.timeout)
            connection, self.channel, self._consumer = opened
            self._forget()
            connection.close_callbacks.add(self._closed)
            self._consumer.close_callbacks.add(self._closed)
            underlay = await self._consumer.get_underlay_channel()  # RabbitMQ cancels a deleted queue's consumer
            cancels: set[Any] = getattr(underlay, "on_consumer_cancel_callbacks", set())
            cancels.add(self._cancelled)
            self._connection = connection

    def _closed(self, *_: Any) -> None:
        """The connection (or the consuming channel) closed: what it held went back to RabbitMQ."""
        connection, self._connection = self._connection, None
        self._forget()
        if connection is not None and not connection.is_closed:
            self.loop.create_task(connection.close())

    def _cancelled(self, frame: Any) -> None:
        """RabbitMQ cancelled a consumer (its queue was deleted): declare and consume it again on the next fetch."""
        for queue, (_, consumer_tag) in list(self._consuming.items()):
            if consumer_tag == frame.consumer_tag:
                self._consuming.pop(queue, None)
                self.topology.reset()

    def _forget(self) -> None:
        with self._holdings.lock:  # ack_soon reads the generation with what it takes out of the held ones
            self._generation += 1
            self.topology.reset()
            self._consuming.clear()
            self._qos = 0
            self._acks.reset(self._generation)
            self._holdings.forget()

    # -- producing -----------------------------------------------------------------------------
    def publish(self, records: Sequence[Record]) -> None:
        if not records:
            return
        for record in records:  # typed errors before any I/O
            self.names.queue(record.queue)
            delay_units(record.delay_ms)
            if len(record.id.encode()) > 255:  # an AMQP short string
                raise InvalidOptionError(f"message id {record.id[:40]!r}...: over 255 bytes, too long for RabbitMQ")
        again, single = None, len(records) == 1 and self.topology.declared(records[0].queue, records[0].delay_ms > 0)
        if single and self.publishers.available:
            if self.publishers.publish(records[0]):  # on this thread (rabbitmq_publish says why)
                self._published = True
                return
            again = records[0].queue  # not queued: its queue or a delay exchange is gone (deleted by hand?)
        # a batch, pipelined on the loop, or a queue's first message, after its declarations
        self.call(self._publish([(record, 0) for record in records], again))

    async def _publish(self, copies: Sequence[tuple[Record, int]], again: str | None = None) -> None:
        await self.connect()
        if again is not None:  # declare it afresh; consume it afresh too (RabbitMQ may not cancel our consumer)
            self.topology.reset()
            channel, consumer_tag = self._consuming.pop(again, (None, ""))
            if channel is not None:
                with contextlib.suppress(*self._acks.errors):
                    await channel.basic_cancel(consumer_tag)
        for record, _ in copies:
            if await self.topology.main(self.channel, record.queue):
                await inspect.register(self, record.queue)
            if record.delay_ms > 0:
                await self.topology.delays(self.channel, record.queue)
        await asyncio.gather(*(send(self, record, delivered) for record, delivered in copies))
        self._published = True  # the next fetch looks for them even if it already has something

    # -- consuming -----------------------------------------------------------------------------
    async def _consume(self, queues: Sequence[str], limit: int) -> bool:
        """Consume ``queues`` with a QoS that lets RabbitMQ push at most ``limit`` more; True if more
        may now be pushed than before (a consumer started or the QoS grew)."""
        await self.connect()
        before = (self._qos, len(self._consuming))
        self._limit = max(limit, 1)
        if self.options.queue_type == "quorum":
            # quorum queues take only a per-consumer QoS, fixed when the consumer starts: it grows to
            # the largest limit asked for (a worker asks for its thread count first), per queue
            if self._limit > self._qos:
                await self._consumer.set_qos(prefetch_count=self._limit, global_=False)
                self._qos = self._limit
                for queue, (channel, consumer_tag) in list(self._consuming.items()):
                    await channel.basic_cancel(consumer_tag)
                    self._consuming.pop(queue, None)
        else:  # one channel-wide QoS across the queues: started but unsettled, plus free slots
            want = self._holdings.started() + self._limit
            if want != self._qos:
                await self._consumer.set_qos(prefetch_count=want, global_=True)
                self._qos = want
        for queue in queues:
            if queue not in self._consuming:
                if await self.topology.main(self.channel, queue):
                    await inspect.register(self, queue)
                name = self.names.queue(queue)
                await self._consumer.declare_queue(name, durable=True, arguments=self.topology.main_arguments(queue))
                generation = self._generation

                async def received(message: Any, queue: str = queue, generation: int = generation) -> None:
                    await self._received(message, queue, generation)

                # aiormq's own consumer: aio-pika's wrapper costs a task and a message object per delivery
                channel = await self._consumer.get_underlay_channel()
                consumer_tag = f"taskmill-{uuid.uuid4().hex}"
                await channel.basic_consume(name, received, consumer_tag=consumer_tag)
                if consumer_tag in getattr(channel, "consumers", (consumer_tag,)):  # not cancelled at once
                    self._consuming[queue] = (channel, consumer_tag)
        return self._qos > before[0] or len(self._consuming) > before[1]

    async def _received(self, message: Any, queue: str, generation: int) -> None:
        """One delivery (an aiormq ``DeliveredMessage``) from the consuming channel."""
        if generation != self._generation:
            return  # from a channel that is gone; RabbitMQ has it back already
        channel, delivery_tag = message.channel, message.delivery_tag
        self._acks.tags.arrived(delivery_tag)  # before any await: a multiple ack must not pass it
        properties = message.header.properties
        headers = dict(properties.headers or {})
        before = header_int(headers, DELIVERED)
        quorum = self.options.queue_type == "quorum"
        returned = header_int(headers, "x-delivery-count") if quorum else int(bool(message.redelivered))
        message_id = properties.message_id or f"amqp-{generation}-{delivery_tag}"
        record = Record(message_id, queue, message.body, min(max(properties.priority or 0, 0), 9))
        if returned:  # its holder died or vanished: count that delivery in the broker before anyone runs it
            lost = before + (returned if quorum else 1)
            if lost >= self.max_deliveries:
                failure = Failure("delivery_limit", "DeliveryLimit", DELIVERY_LIMIT_TEXT)
                await send_dead(self, record, lost, failure)
                await self._acks.single(channel, delivery_tag, generation)
                self._buried.append(inspect.dead_letter_of(record, lost, failure))
                return
            if not quorum:
                await send(self, record, lost)
                await self._acks.single(channel, delivery_tag, generation)
                return
        token = f"{generation}.{delivery_tag}"
        delivery = Delivery(message_id, queue, record.body, record.priority, before + returned + 1, token)
        self._holdings.arrived(channel, delivery_tag, delivery)
        self._pushed.set()

    def fetch(self, queues: Sequence[str], limit: int, lease_ms: int) -> list[Delivery]:
        return self._take_here(queues, limit) or self.call(self._fetch(queues, limit))

    def _take_here(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Take from the buffer on the caller's thread when a fetch would make no round trip."""
        with self._holdings.lock:
            return self._holdings.take(queues, limit) if self._served_here(queues, limit) else []

    def _served_here(self, queues: Sequence[str], limit: int) -> bool:
        """Whether the buffer can serve a fetch: every queue consumed, none of our own publishes to
        look for, and the QoS already right. BrokerError if the loop thread is gone (a forked child
        must not hand out what its parent received)."""
        self.running()
        with self._holdings.lock:
            if self._published or self._connection is None or any(q not in self._consuming for q in queues):
                return False
            if self.options.queue_type == "quorum":
                return self._qos >= max(limit, 1)  # a per-consumer QoS that only grows
            return self._qos == self._holdings.started() + max(limit, 1)

    async def _fetch(self, queues: Sequence[str], limit: int, waited: bool = False) -> list[Delivery]:
        look = await self._consume(queues, limit) or self._published  # just started, or our own messages
        taken = self._holdings.take(queues, limit)
        if len(taken) == limit or (taken and not look):
            return taken  # the rest is on its way, or not there: no round trip on a worker's busy path
        if not look and not waited:  # acks just sent free credit: the next push is usually a round trip away
            self._pushed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pushed.wait(), 0.002)
            if taken := self._holdings.take(queues, limit):
                return taken
        self._published = False
        # A passive declare on the consuming channel is a sync point: RabbitMQ writes the deliveries it
        # made before the reply ahead of it, and counts only the messages it has not delivered yet.
        waiting = 0
        for queue in queues:
            declared = await self._consumer.declare_queue(self.names.queue(queue), passive=True)
            waiting += declared.declaration_result.message_count
        await client.arrivals()
        taken += self._holdings.take(queues, limit - len(taken))
        expect = min(limit, len(taken) + waiting) if look else min(1, waiting)  # quorum queues push late
        deadline = time.monotonic() + 0.05
        while len(taken) < expect and time.monotonic() < deadline:  # on its way to us, or to another
            await asyncio.sleep(0.001)
            taken += self._holdings.take(queues, limit - len(taken))
        return taken

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, lease_ms: int
    ) -> tuple[list[Delivery], list[Delivery]]:
        lost, sending = settling.ack_soon(self, acks) if acks else ([], None)
        waited = sending is not None and self._served_here(queues, limit)
        if waited:  # the acks free credit: the push it brings is usually a round trip away
            self._holdings.wait(queues, 0.002, lambda: self._connection is None)  # the loop wakes us with it
        if sending is not None:  # queued before the next message starts: a crash then does not run them again
            failed: list[Delivery] = settling.acked(self, sending)
            lost += failed
        if taken := self._take_here(queues, limit):
            return lost, taken  # the busy and idle paths: no hop onto the loop for the fetch
        return lost, self.call(self._fetch(queues, limit, waited=waited))

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._connection is None or any(queue not in self._consuming for queue in queues):
            # only to start consuming: the QoS the last fetch set holds (acks free the slots they
            # return); redone from that fetch's limit, it counted what the fetch took twice
            self.call(self._consume(queues, self._limit))
        self._holdings.wait(queues, max(0.0, deadline - time.monotonic()), lambda: self._connection is None)

    # -- settling (rabbitmq_settle) -------------------------------------------------------------
    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        lost, sending = settling.ack_soon(self, deliveries) if deliveries else ([], None)
        return lost + settling.acked(self, sending) if sending is not None else lost

    def extend(self, deliveries: Sequence[Delivery], lease_ms: int) -> list[Delivery]:
        held = self._holdings.held
        return [d for d in deliveries if held.get(d.token) is None and d.token not in self._settling]

    def retry(self, delivery: Delivery, delay_ms: int) -> None:
        delay_units(delay_ms)
        self.call(settling.settle(self, delivery, send, delivery.deliveries, max(delay_ms, 0)))

    def release(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self.call(settling.release(self, deliveries))

    def dead_letter(self, delivery: Delivery, failure: Failure) -> None:
        dead = functools.partial(send_dead, failure=failure)
        self.call(settling.settle(self, delivery, dead, delivery.deliveries, 0))

    # -- inspecting and operating --------------------------------------------------------------
    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        return self.call(inspect.stats(self, queues))

    def purge(self, queue: str) -> int:
        return self.call(inspect.purge(self, queue))

    def dead_letters(self, queue: str | None = None, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return self.call(inspect.dead_letters(self, queue, limit, offset))

    def retry_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        return self.call(inspect.retry_dead(self, ids, queue))

    def purge_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        return self.call(inspect.purge_dead(self, ids, queue))

    def stop_consuming(self) -> None:
        self.call(self._stop_consuming())
        self.release(self._holdings.unhanded())  # uncounted, and not marked redelivered as a closed connection would

    def close(self) -> None:
        self.publishers.close()
        if self._thread.is_alive():
            with contextlib.suppress(BrokerError):
                self.stop_consuming()
            with contextlib.suppress(BrokerError):
                self.call(self._close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self.loop.close()

    async def _stop_consuming(self) -> None:
        """Cancel the consumers, so nothing more arrives while the buffer is given back."""
        consuming, self._consuming = self._consuming, {}
        if self._consumer is not None and not self._consumer.is_closed:
            for channel, consumer_tag in consuming.values():
                await channel.basic_cancel(consumer_tag)
        await client.arrivals()

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close_callbacks.discard(self._closed)
            self._consumer.close_callbacks.discard(self._closed)
            if not self._consumer.is_closed:
                with contextlib.suppress(Exception):  # its Close waits behind the ack frames still queued
                    await self._consumer.close()
            await connection.close()
