"""Publishing for the RabbitMQ broker: a copy of a message to its queue (or the delay level that holds
it until due) with taskmill's delivery count in a header, or to its dead queue with the failure.

Two paths, both waiting for the publisher confirm:

- ``send`` and ``send_dead`` run on the broker's event loop (aio-pika): batches, whose publishes
  are pipelined there, and whatever the loop publishes itself (retries, releases, recounts).
- ``Publishers`` sends one message from the caller's own thread, on a pika connection taken from a
  small pool. The hop onto the loop thread and back cost two thread wake-ups per ``send()``: a
  third of a confirmed publish's time on loopback (1.6 -> 1.1 ms), and 0.5 ms of the time from
  ``send()`` to the task's start (``bench/inprocess.py latency``).
  Each thread takes a connection of its own while it publishes (pika's blocking connections are not
  thread-safe). Idle ones wait in the pool; one idle over a second is checked for a close by the
  server before reuse, a connection-level failure empties the pool, and a forked child never
  reuses its parent's. Every blocking pika call is bounded by ``?timeout=`` (``_deadline``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from taskmill.brokers import rabbitmq_inspect as inspect
from taskmill.brokers.base import Failure, Record
from taskmill.brokers.rabbitmq_inspect import DELIVERED
from taskmill.brokers.rabbitmq_topology import Names, Options, delay_route, delay_units, tag
from taskmill.errors import BrokerError, BrokerUnavailable, ConfigurationError

if TYPE_CHECKING:
    from taskmill.brokers.rabbitmq import RabbitMQBroker

__all__ = ["Publishers", "parameters", "route", "send", "send_dead", "settings"]

_IDLE_KEEP = 8  # idle connections kept per broker; more are closed as they come back
_IDLE_CHECK_S = 1.0  # a connection idle this long is checked for a close by the server before reuse


def route(names: Names, record: Record) -> tuple[str, str]:
    """(exchange, routing key) for ``record``: its queue through the default exchange, or a delay level."""
    units = delay_units(record.delay_ms) if record.delay_ms > 0 else 0
    if units:
        level, key = delay_route(units, record.queue)
        return names.level_exchange(level), key
    return "", names.queue(record.queue)


async def send(broker: RabbitMQBroker, record: Record, delivered: int, headers: dict[str, Any] | None = None) -> None:
    """Publish ``record`` as delivered ``delivered`` times so far (on the broker's loop)."""
    message = broker.aio_pika.Message(
        record.body,
        message_id=record.id,
        priority=record.priority,
        delivery_mode=broker.aio_pika.DeliveryMode.PERSISTENT,
        headers={DELIVERED: delivered, **(headers or {})},
        timestamp=time.time(),
    )
    exchange_name, key = route(broker.names, record)
    if exchange_name:
        exchange = await broker.channel.get_exchange(exchange_name, ensure=False)
    else:
        exchange = broker.channel.default_exchange
    await exchange.publish(message, key, timeout=broker.options.timeout)


async def send_dead(broker: RabbitMQBroker, record: Record, delivered: int, failure: Failure) -> None:
    """Publish ``record`` to its dead queue with ``failure``."""
    message = inspect.dead_message(broker.aio_pika, record, delivered, failure)
    await broker.topology.main(broker.channel, record.queue)
    exchange = await broker.channel.get_exchange(broker.names.dead_exchange, ensure=False)
    await exchange.publish(message, tag(record.queue), timeout=broker.options.timeout)


class Publishers:
    """A pool of pika connections, each with one confirming channel, for publishing on the caller's thread."""

    def __init__(self, options: Options, names: Names, location: str) -> None:
        self.names = names
        self.location = location
        self._settings = settings(options)  # ConfigurationError now, not at the first publish
        self._timeout = options.timeout
        self._pika: Any = None
        self._parameters: Any = None
        self._idle: list[tuple[Any, Any, float]] = []  # (connection, channel, since), most recently used last
        self._lock = threading.Lock()
        self._closed = False
        _POOLS.add(self)

    @property
    def available(self) -> bool:
        """False without pika (an install that predates it): then every publish goes through the loop."""
        if self._pika is None:
            try:
                import pika
            except ImportError:
                return False
            try:
                self._parameters = parameters(pika, self._settings)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"RabbitMQ URL: {exc}") from exc
            self._pika = pika
        return True

    def publish(self, record: Record) -> bool:
        """Publish ``record`` (never delivered yet) and wait for RabbitMQ's confirm; False if nothing
        could take it (no queue, or no delay exchange: deleted by hand?), so it was not published."""
        if self._closed:
            raise BrokerError("the RabbitMQ broker is closed")
        pika = self._pika
        exchange, key = route(self.names, record)
        properties = pika.BasicProperties(
            message_id=record.id,
            priority=record.priority,
            delivery_mode=2,  # persistent
            headers={DELIVERED: 0},
            timestamp=int(time.time()),
        )
        connection, channel = self._take()
        errors = pika.exceptions
        try:
            with _deadline(connection, self._timeout, "no publisher confirm"):
                channel.basic_publish(exchange, key, record.body, properties, mandatory=True)
        except errors.UnroutableError:
            self._give_back(connection, channel)  # returned unqueued, and the channel is fine
            return False
        except errors.NackError as exc:
            self._give_back(connection, channel)
            raise BrokerError("RabbitMQ did not take a message (nack)") from exc
        except errors.ChannelClosedByBroker as exc:
            self._drop(connection)
            if exc.reply_code == 404:  # NOT_FOUND: the exchange
                return False
            raise BrokerError(f"RabbitMQ did not take a message: {exc.reply_text}") from exc
        except (errors.AMQPError, OSError) as exc:
            self._drop(connection, everything=True)  # the server went away: so, surely, did the idle ones
            raise BrokerUnavailable(f"RabbitMQ at {self.location}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._drop(connection)  # interrupted mid-publish: its state is unknown
            raise
        self._give_back(connection, channel)
        return True

    def close(self) -> None:
        """Close the idle connections, and the others as they come back; later publishes raise BrokerError."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._closed = True
        for connection, _, _ in idle:
            self._drop(connection)

    def after_fork(self) -> None:
        """In a forked child: the parent's connections are not ours (their sockets are shared), nor its lock."""
        self._lock = threading.Lock()
        self._idle = []

    # -- the pool ------------------------------------------------------------------------------
    def _take(self) -> tuple[Any, Any]:
        while True:
            with self._lock:
                if not self._idle:
                    break
                connection, channel, since = self._idle.pop()
            if time.monotonic() - since > _IDLE_CHECK_S:
                try:
                    with _deadline(connection, self._timeout, "no answer"):
                        connection.process_data_events(0)  # reads a close (or heartbeats) that came meanwhile
                except (self._pika.exceptions.AMQPError, OSError):
                    self._drop(connection)
                    continue
            if channel.is_open:
                return connection, channel
            self._drop(connection)
        return self._open()

    def _give_back(self, connection: Any, channel: Any) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _IDLE_KEEP:
                self._idle.append((connection, channel, time.monotonic()))
                return
        self._drop(connection)

    def _drop(self, connection: Any, *, everything: bool = False) -> None:
        """Close ``connection`` (with ``everything``, the idle ones too), waiting at most the timeout for each."""
        dropped = [connection]
        if everything:
            with self._lock:
                dropped += [entry[0] for entry in self._idle]
                self._idle = []
        for each in dropped:
            with contextlib.suppress(Exception), _deadline(each, self._timeout, "no answer to Close"):
                if each.is_open:
                    each.close()

    def _open(self) -> tuple[Any, Any]:
        errors = self._pika.exceptions
        try:
            connection = self._pika.BlockingConnection(self._parameters)
        except (errors.AMQPError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise BrokerUnavailable(f"RabbitMQ at {self.location}: {reason}") from exc
        try:
            with _deadline(connection, self._timeout, "no channel"):
                channel = connection.channel()
                channel.confirm_delivery()
        except (errors.AMQPError, OSError) as exc:
            self._drop(connection)
            raise BrokerUnavailable(f"RabbitMQ at {self.location}: {type(exc).__name__}: {exc}") from exc
        return connection, channel


_POOLS: weakref.WeakSet[Publishers] = weakref.WeakSet()


def _after_fork() -> None:
    for pool in list(_POOLS):
        pool.after_fork()


os.register_at_fork(after_in_child=_after_fork)


@contextlib.contextmanager
def _deadline(connection: Any, seconds: float, what: str) -> Iterator[None]:
    """End ``connection`` if the block waits on it longer than ``seconds``: a blocking pika call
    otherwise waits without limit for a server that stopped answering but keeps the TCP connection.
    pika's own heartbeat checker ends a connection with the same two calls."""
    impl = connection._impl

    def expire() -> None:
        error = sys.modules["pika"].exceptions.AMQPConnectionError(f"{what} within {seconds:g} s")
        impl._terminate_stream(error)

    timer = impl._adapter_call_later(seconds, expire)
    try:
        yield
    finally:
        impl._adapter_remove_timeout(timer)


def settings(options: Options) -> dict[str, Any]:
    """What pika needs to reach the server aio-pika reads from the same URL, read as aiormq reads
    it: server, vhost, user (or ``auth=external``), heartbeat (a number outside 0-65534 means 0)
    and TLS (``cafile``, ``capath``, ``cadata`` in base64, ``certfile``, ``keyfile``, ``no_verify_ssl``)."""
    parts = urlsplit(options.amqp_url)
    query = dict(parse_qsl(parts.query))
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"RabbitMQ URL: {exc}") from None
    try:
        heartbeat = int(query.get("heartbeat", "60"))
    except ValueError:
        heartbeat = 0
    tls = parts.scheme == "amqps"
    return {
        "host": parts.hostname or "localhost",
        "port": port or (5671 if tls else 5672),
        "virtual_host": unquote(parts.path[1:]).replace("%2F", "/") or "/",
        "user": (unquote(parts.username or "guest"), unquote(parts.password or "guest")),
        "external": query.get("auth", "plain").lower() == "external",
        "heartbeat": heartbeat if 0 <= heartbeat < 65535 else 0,
        "tls": _tls_context(query) if tls else None,
        "timeout": options.timeout,
    }


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    try:
        cadata = base64.b64decode(query["cadata"]) if query.get("cadata") else None
        context = ssl.create_default_context(cafile=query.get("cafile"), capath=query.get("capath"), cadata=cadata)
        if query.get("certfile"):
            context.load_cert_chain(query["certfile"], query.get("keyfile"))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(f"amqps:// TLS files: {exc}") from exc
    if query.get("no_verify_ssl", "0") != "0":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def parameters(pika: Any, given: dict[str, Any]) -> Any:
    """pika's connection parameters for ``settings()``."""
    tls = given["tls"]
    timeout = given["timeout"]
    return pika.ConnectionParameters(
        host=given["host"],
        port=given["port"],
        virtual_host=given["virtual_host"],
        credentials=pika.credentials.ExternalCredentials()
        if given["external"]
        else pika.PlainCredentials(*given["user"]),
        heartbeat=given["heartbeat"],
        ssl_options=None if tls is None else pika.SSLOptions(tls, server_hostname=given["host"]),
        connection_attempts=1,
        socket_timeout=timeout,
        stack_timeout=timeout,
        blocked_connection_timeout=timeout,
        client_properties={"connection_name": "taskmill publisher"},
    )
