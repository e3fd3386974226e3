"""The RabbitMQ broker's dealings with the AMQP client (aio-pika on aiormq) itself.

- ``import_aio_pika`` imports the client, or says how to install it.
- ``open_channel`` opens a channel; when the connection closes meanwhile, aiormq raises a bare
  ``RuntimeError``, which becomes a ``ConnectionError`` (so the broker reports BrokerUnavailable).
- ``open_connection`` opens a connection and its two channels, and closes the connection again if
  any step fails. aio-pika closes a connection nobody closed from ``Connection.__del__``, with
  ``asyncio.ensure_future(self.close())`` in whichever thread drops the last reference: after a
  failed connect that is the caller's thread (the exception's traceback holds it), where there is
  no event loop, so the ``close()`` coroutine is never awaited (a RuntimeWarning per failed
  connect, and an unclosed socket when a channel failed to open).
- ``DeliveryTags`` keeps the consuming channel's delivery tags, to ack a run of them in one frame.
- ``quiet_client_repeats`` leaves out the lines aiormq logs for each failed connect (an ERROR per
  attempt) and each dropped connection (an ERROR, then a WARNING with a chained traceback of ~20
  lines). The broker raises ``BrokerUnavailable`` for both, carrying the same reason, and the
  worker logs that once per outage, with capped backoff; with the client's lines, one broker
  restart wrote 12-30 lines per worker process. Its other lines (a blocked connection, a missed
  heartbeat) are kept.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from taskmill.errors import ConfigurationError

__all__ = ["DeliveryTags", "import_aio_pika", "open_channel", "open_connection", "quiet_client_repeats"]

_REPEATS = (
    "error when creating transport",
    "Cancelling cause reader exited abnormally",
    "Unexpected connection close from remote",
)


def import_aio_pika() -> Any:
    """The aio-pika module, or ConfigurationError saying how to install it."""
    try:
        import aio_pika
    except ImportError:
        raise ConfigurationError("amqp:// needs the aio-pika package: pip install 'taskmill[amqp]'") from None
    return aio_pika


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
    except RuntimeError as exc:
        if connection.is_closed:
            raise ConnectionError(f"the connection closed while a channel opened ({exc})") from exc
        raise


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
        self._above.add(tag)
        while self._contiguous + 1 in self._above:
            self._contiguous += 1
            self._above.discard(self._contiguous)

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


def _not_a_repeat(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(_REPEATS))


def quiet_client_repeats() -> None:
    """Filter aiormq's per-attempt connection lines (once per process)."""
    client = logging.getLogger("aiormq.connection")
    if _not_a_repeat not in client.filters:
        client.addFilter(_not_a_repeat)
