"""The RabbitMQ broker's dealings with the AMQP client (aio-pika on aiormq) itself.

- ``open_connection`` opens a connection and its two channels, and closes the connection again if
  any step fails. aio-pika closes a connection nobody closed from ``Connection.__del__``, with
  ``asyncio.ensure_future(self.close())`` in whichever thread drops the last reference: after a
  failed connect that is the caller's thread (the exception's traceback holds it), where there is
  no event loop, so the ``close()`` coroutine is never awaited (a RuntimeWarning per failed
  connect, and an unclosed socket when a channel failed to open).
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

__all__ = ["open_connection", "quiet_client_repeats"]

_REPEATS = (
    "error when creating transport",
    "Cancelling cause reader exited abnormally",
    "Unexpected connection close from remote",
)


async def open_connection(aio_pika: Any, url: str, timeout: float) -> tuple[Any, Any, Any]:
    """(connection, a channel with publisher confirms, a channel without) on ``url``; nothing left open on failure."""
    connection = aio_pika.Connection(aio_pika.connection.make_url(url))
    try:
        await connection.connect(timeout=timeout)
        confirming = await connection.channel(publisher_confirms=True, on_return_raises=True)
        plain = await connection.channel(publisher_confirms=False)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection, confirming, plain


def _not_a_repeat(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(_REPEATS))


def quiet_client_repeats() -> None:
    """Filter aiormq's per-attempt connection lines (once per process)."""
    client = logging.getLogger("aiormq.connection")
    if _not_a_repeat not in client.filters:
        client.addFilter(_not_a_repeat)
