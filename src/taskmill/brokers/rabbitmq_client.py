"""The RabbitMQ broker's dealings with the AMQP client (aio-pika on aiormq) itself.

- ``import_aio_pika`` imports the client, or says how to install it.
- ``new_loop`` makes the broker's event loop: uvloop's where it is installed (the ``amqp`` extra
  brings it, except on Windows and PyPy), asyncio's otherwise. Measured in-process
  (``bench/inprocess.py drain 10000|20000 amqp://...``, 6 alternated pairs): 2-9% less CPU per
  message, since the loop thread runs the client's frame parsing and every hand-off from the
  worker's threads.
- ``open_channel`` opens a channel; when the connection closes meanwhile, aiormq raises a bare
  ``RuntimeError``, which becomes a ``ConnectionError`` (so the broker reports BrokerUnavailable).
- ``open_connection`` opens a connection and its two channels, and closes the connection again if
  any step fails. aio-pika closes a connection nobody closed from ``Connection.__del__``, with
  ``asyncio.ensure_future(self.close())`` in whichever thread drops the last reference: after a
  failed connect that is the caller's thread (the exception's traceback holds it), where there is
  no event loop, so the ``close()`` coroutine is never awaited (a RuntimeWarning per failed
  connect, and an unclosed socket when a channel failed to open).
- ``arrivals`` lets deliveries already read off the socket reach the broker.
- ``Holdings`` keeps what the broker received: each delivery until settled, and those not yet
  handed out, best priority first.
- ``DeliveryTags`` keeps the consuming channel's delivery tags, to ack a run of them in one frame;
  ``Acker`` sends the acks, in the order they were decided.
- ``quiet_client_repeats`` leaves out the lines aiormq logs for each failed connect (an ERROR per
  attempt) and each dropped connection (an ERROR, then a WARNING with a chained traceback of ~20
  lines). The broker raises ``BrokerUnavailable`` for both, carrying the same reason, and the
  worker logs that once per outage, with capped backoff; with the client's lines, one broker
  restart wrote 12-30 lines per worker process. Its other lines (a blocked connection, a missed
  heartbeat) are kept. pika, which publishes single sends, logs 3-5 ERROR lines for each connection
  it loses and a WARNING for each returned message; every one of those failures reaches the caller
  as a typed error (or, for a returned message, is sent again), so pika's warnings and errors from
  its connection modules are left out too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from taskmill.brokers.base import Delivery
from taskmill.errors import ConfigurationError

__all__ = [
    "Acker",
    "DeliveryTags",
    "Holdings",
    "arrivals",
    "import_aio_pika",
    "new_loop",
    "open_channel",
    "open_connection",
    "quiet_client_repeats",
]

T = TypeVar("T")
_MAX_GAP = 10_000  # tags seen past one that never came: stop waiting for it, ack one by one

_REPEATS = (
    "error when creating transport",
    "Cancelling cause reader exited abnormally",
    "Unexpected connection close from remote",
)


async def arrivals() -> None:
    """Let deliveries already read off the socket reach the broker: each is a task, a few hops away."""
    for _ in range(20):
        await asyncio.sleep(0)


def import_aio_pika() -> Any:
    """The aio-pika module, or ConfigurationError saying how to install it."""
    try:
        import aio_pika
    except ImportError:
        raise ConfigurationError("amqp:// needs the aio-pika package: pip install 'taskmill[amqp]'") from None
    return aio_pika


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for the broker's thread: uvloop's if it imports, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def open_connection(aio_pika: Any, url: str, timeout: float) -> tuple[Any, Any, Any]:
    """(connection, a channel with publisher confirms, a channel without) on ``url``; nothing left open on failure."""
    connection = aio_pika.Connection(aio_pika.connection.make_url(url))
    try:
        await connection.connect(timeout=timeout)
        confirming = await open_channel(connection, publisher_confirms=True, on_return_raises=True)
        plain = await open_channel(connection, publisher_confirms=False)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection, confirming, plain


async def open_channel(connection: Any, **options: Any) -> Any:
    """A channel on ``connection``; ConnectionError if the connection closed while it opened."""
    try:
        return await connection.channel(**options)
    except RuntimeError as exc:  # aiormq's "<Connection ...> closed", aio-pika's "... closed channel"
        if connection.is_closed or "closed" in str(exc):  # is_closed stays False when the server dropped it
            raise ConnectionError(f"the connection closed while a channel opened ({exc})") from exc
        raise


class Holdings:
    """What one broker received: every delivery held until settled (token -> (channel, delivery
    tag)), and the ones not handed out yet, best priority first, then in arrival order. Any thread;
    ``lock`` is reentrant, so a caller may hold it across several calls."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[Any, int]] = {}
        self._buffer: list[tuple[int, int, Delivery]] = []
        self._order = itertools.count()
        self.lock = threading.Condition()

    def forget(self) -> None:
        """The connection is gone, and with it everything it held."""
        with self.lock:
            self.held.clear()
            self._buffer.clear()
            self.lock.notify_all()

    def started(self) -> int:
        """How many were handed out and are not settled yet."""
        return len(self.held) - len(self._buffer)

    def arrived(self, channel: Any, delivery_tag: int, delivery: Delivery) -> None:
        with self.lock:
            self.held[delivery.token] = (channel, delivery_tag)
            self._buffer.append((-delivery.priority, next(self._order), delivery))
            self.lock.notify_all()

    def take(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        with self.lock:
            self._buffer.sort()
            taken = [entry for entry in self._buffer if entry[2].queue in queues][:limit]
            for entry in taken:
                self._buffer.remove(entry)
            return [delivery for _, _, delivery in taken]

    def wait(self, queues: Sequence[str], timeout: float, gone: Callable[[], bool]) -> None:
        """Until one of ``queues`` has a delivery to hand out, ``gone()`` is true, or ``timeout`` passed."""
        with self.lock:
            self.lock.wait_for(lambda: any(entry[2].queue in queues for entry in self._buffer) or gone(), timeout)

    def claim(self, token: str) -> tuple[Any, int] | None:
        """Take ``token`` out of the held ones (None if not held), so nobody else settles it."""
        with self.lock:
            return self.held.pop(token, None)

    def restore(self, token: str, entry: tuple[Any, int]) -> None:
        with self.lock:
            self.held[token] = entry

    def unhanded(self) -> list[Delivery]:
        """Take every delivery not handed out yet (they stay held)."""
        with self.lock:
            deliveries = [delivery for _, _, delivery in self._buffer]
            self._buffer.clear()
            return deliveries


class DeliveryTags:
    """The delivery tags one channel gave us (1, 2, 3, ... in delivery order), for ``multiple`` acks.

    A multiple ack of tag t settles every unacked tag up to t on the channel, so it is safe only
    when each of them reached the broker's code (a delivery for a consumer just cancelled is
    dropped unseen by the client) and is settled or acked with t. Used on the loop thread only.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new channel numbers its deliveries from 1 again."""
        self._unsettled: set[int] = set()
        self._above: set[int] = set()  # arrived tags above ``_contiguous``
        self._contiguous = 0  # every tag up to this one arrived

    def arrived(self, tag: int) -> None:
        """A delivery reached us (call before any await, so no ack passes it)."""
        self._unsettled.add(tag)
        if self._contiguous < 0:
            return  # gave up on this channel (see below)
        self._above.add(tag)
        while self._contiguous + 1 in self._above:
            self._contiguous += 1
            self._above.discard(self._contiguous)
        if len(self._above) > _MAX_GAP:  # a tag never came: no multiple acks until the next channel
            self._above.clear()
            self._contiguous = -1

    def settled(self, tag: int) -> None:
        """Its ack is on its way."""
        self._unsettled.discard(tag)

    def run(self, tags: list[int]) -> int:
        """How many of ``tags`` (sorted, about to be acked) one multiple ack of the last may cover."""
        others = self._unsettled.difference(tags)
        limit = min(min(others, default=self._contiguous + 1) - 1, self._contiguous)
        count = 0
        while count < len(tags) and tags[count] <= limit:
            count += 1
        return count


class Acker:
    """Acks on the consuming channel. One lock orders them: the client's write queue is bounded,
    so queueing a frame may suspend, and a multiple ack decided later must not overtake a frame
    decided before it (a tag acked twice closes the channel). Frames are queued, not awaited."""

    def __init__(self, aio_pika: Any) -> None:
        self.tags = DeliveryTags()
        self.generation = 0
        self.errors = (aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError)
        self._lock: asyncio.Lock | None = None

    def reset(self, generation: int) -> None:
        """A new consuming channel (of the broker's ``generation``)."""
        self.tags.reset()
        self.generation = generation

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:  # made on the loop that uses it
            self._lock = asyncio.Lock()
        return self._lock

    async def ack(self, held: Sequence[tuple[int, Any, T]], generation: int) -> list[T]:
        """Ack (delivery tag, channel, item) entries; the items whose channel is gone."""
        lost: list[T] = []
        async with self._locked():
            ordered = sorted(held, key=lambda entry: entry[0])
            run = max(self.tags.run([tag for tag, _, _ in ordered]), 1)
            for group in [ordered[:run], *([entry] for entry in ordered[run:])]:
                if group and not await self._send(group[-1][1], [tag for tag, _, _ in group], generation):
                    lost.extend(item for _, _, item in group)  # RabbitMQ has them back
        return lost

    async def single(self, channel: Any, tag: int, generation: int) -> bool:
        """Ack one delivery; False if its channel is gone."""
        async with self._locked():
            return await self._send(channel, [tag], generation)

    async def _send(self, channel: Any, tags: list[int], generation: int) -> bool:
        try:
            await channel.basic_ack(tags[-1], multiple=len(tags) > 1, wait=False)
        except self.errors:
            return False
        if generation == self.generation:  # a new channel numbers from 1 again: leave its tags alone
            for tag in tags:
                self.tags.settled(tag)
        return True


def _not_a_repeat(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(_REPEATS))


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


_PIKA_LOGGERS = (
    "pika.adapters.blocking_connection",
    "pika.adapters.base_connection",
    "pika.adapters.utils.connection_workflow",
    "pika.adapters.utils.io_services_utils",
    "pika.connection",
)


def quiet_client_repeats() -> None:
    """Filter aiormq's per-attempt connection lines, and pika's failure lines (once per process)."""
    client = logging.getLogger("aiormq.connection")
    if _not_a_repeat not in client.filters:
        client.addFilter(_not_a_repeat)
    for name in _PIKA_LOGGERS:
        if _below_warning not in (logger := logging.getLogger(name)).filters:
            logger.addFilter(_below_warning)
