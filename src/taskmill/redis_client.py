"""The Redis client the Redis broker and result store share: RESP2 over a socket, each reply parsed
by hiredis, idle connections pooled per client, a bounded retry for dropped connections, and
every failure raised as taskmill's own typed error.

Why not redis-py: taskmill uses a dozen commands, and redis-py costs every worker process ~22 MB
to import (it loads asyncio, ssl, email and its cluster and observability layers) and about 45 µs
of Python per round trip, a third of a whole ``send`` on loopback. hiredis, the parser redis-py
itself uses, does the part worth a library.

URL: ``redis://[[user]:password@]host[:port][/db][?prefix=taskmill&socket_timeout=10]``, and
``rediss://`` for TLS (``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_check_hostname``).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from taskmill.errors import BrokerError, BrokerUnavailable, ConfigurationError

try:
    import hiredis
except ImportError:  # pragma: no cover -- the [redis] extra installs it
    hiredis = None  # type: ignore[assignment]

__all__ = ["RedisClient", "Script", "Subscription", "connect"]

BACKOFF_S = (0.1, 0.2, 0.4)  # the waits before the 2nd, 3rd and 4th try of a command
_IDLE_CHECK_S = 1.0  # a connection idle this long is checked for a close by the server before reuse
_TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_NOT_READY = ("LOADING", "MASTERDOWN")  # error replies of a server that is starting or lost its primary
_OPTIONS = {"prefix", "dead_retention", "socket_timeout", "socket_connect_timeout", "db", *_TLS_OPTIONS}


def connect(url: str) -> tuple[RedisClient, str]:
    """A client for ``url`` and the key prefix it names (default ``taskmill``)."""
    if hiredis is None:
        raise ConfigurationError("redis:// needs the hiredis package: pip install 'taskmill[redis]'")
    client = RedisClient(url)
    return client, client.prefix


class RedisClient:
    """Thread-safe: each command takes an idle connection (or opens one) and gives it back after."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - _OPTIONS)
        if unknown:
            raise ConfigurationError(f"unknown Redis URL option(s) {', '.join(unknown)}; known: {sorted(_OPTIONS)}")
        self.prefix = query.get("prefix") or "taskmill"
        if "{" in self.prefix or "}" in self.prefix:
            raise ConfigurationError(f"prefix={self.prefix!r}: use a prefix without braces")
        try:
            self.host = parts.hostname or "localhost"
            self.port = parts.port or 6379
            self.db = int(query.get("db") or parts.path.strip("/") or 0)
            self.timeout = float(query.get("socket_timeout", 10))
            self.connect_timeout = float(query.get("socket_connect_timeout", 5))
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL: {exc}") from None
        if not (0 < self.timeout < math.inf and 0 < self.connect_timeout < math.inf):
            raise ConfigurationError("socket_timeout and socket_connect_timeout must be positive numbers of seconds")
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self._tls: Any = _tls_context(query) if parts.scheme == "rediss" else None
        setup: list[tuple[Any, ...]] = []
        if self.password:  # an empty one (an unset variable in the URL, say) means none, as in redis-py
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        self._setup = (b"".join(hiredis.pack_command(c) for c in setup), len(setup))
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.location = f"{parts.scheme}://{host}:{self.port}/{self.db}"
        self._idle: list[Connection] = []  # list.append/pop are atomic: no lock on the hot path
        self._pid = os.getpid()
        self._closed = False

    # -- commands ------------------------------------------------------------------------------
    def call(self, *args: Any) -> Any:
        """Run one command and return its reply (an error reply raises ``BrokerError``)."""
        return _checked(self._roundtrip(hiredis.pack_command(args), 1)[0])

    def call_once(self, *args: Any) -> Any:
        """``call`` with no second try: a connection error or timeout raises ``BrokerUnavailable`` at
        once, so the caller knows a reply may have been lost (a ``BLPOP`` that popped, say)."""
        return _checked(self._roundtrip(hiredis.pack_command(args), 1, retry=False)[0])

    def pipeline(self, commands: Sequence[tuple[Any, ...]], *, transaction: bool = False) -> list[Any]:
        """Send ``commands`` in one write and return their replies in order (in MULTI/EXEC when
        ``transaction``); the first error reply raises ``BrokerError`` after every reply is read."""
        payload = b"".join(hiredis.pack_command(c) for c in commands)
        if transaction:
            payload = b"*1\r\n$5\r\nMULTI\r\n" + payload + b"*1\r\n$4\r\nEXEC\r\n"
            replies = self._roundtrip(payload, len(commands) + 2)
            for reply in replies:
                _checked(reply)
            return [_checked(reply) for reply in replies[-1]]
        return [_checked(reply) for reply in self._roundtrip(payload, len(commands))]

    def script(self, source: str) -> Script:
        """A Lua script run by its SHA1 (``EVALSHA``), sent whole once when the server lacks it."""
        return Script(self, source)

    def subscription(self) -> Subscription:
        """A Pub/Sub connection of its own (a subscribed connection can run no other command)."""
        return Subscription(self)

    def close(self) -> None:
        """Close the idle connections; one in use is closed when it is given back."""
        self._closed = True
        self._drop_idle()

    # -- connections ---------------------------------------------------------------------------
    def open(self) -> Connection:
        """A new connection, authenticated and on the URL's database (OSError when it fails)."""
        if self._closed:
            raise BrokerError("the Redis client is closed")
        conn = Connection(self)
        payload, count = self._setup
        if count:
            try:
                conn.sock.sendall(payload)
                replies = conn.read(count)
            except BaseException:
                conn.close()
                raise
            for reply in replies:
                if isinstance(reply, hiredis.ReplyError):
                    conn.close()
                    raise BrokerError(f"Redis refused the connection's setup: {reply}")
        return conn

    def _take(self) -> Connection:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
            self._idle, self._pid = [], os.getpid()
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return self.open()
            if time.monotonic() - conn.used < _IDLE_CHECK_S or conn.alive():
                return conn
            conn.close()

    def _give(self, conn: Connection) -> None:
        if self._closed or conn.pid != self._pid:
            conn.close()
            return
        conn.used = time.monotonic()
        self._idle.append(conn)

    def _roundtrip(self, payload: bytes, count: int, *, retry: bool = True) -> list[Any]:
        """Write ``payload`` and read ``count`` replies, trying up to 3 more times on a connection
        error or timeout (a retried command may have run: every caller's command is idempotent
        or, like a fetch, safe to repeat)."""
        for attempt in range(len(BACKOFF_S) + 1):
            conn = None
            try:
                conn = self._take()
                conn.sock.sendall(payload)
                replies = conn.read(count)
            except (OSError, hiredis.ProtocolError) as exc:
                if conn is not None:
                    conn.close()
                self._drop_idle()  # the server restarted or the network broke: the rest are dead too
                self.back_off(attempt if retry else len(BACKOFF_S), exc)
                continue
            except BaseException:
                if conn is not None:
                    conn.close()  # interrupted mid-reply: what is left on it would answer the next command
                raise
            self._give(conn)
            return replies
        raise AssertionError("unreachable")

    def back_off(self, attempt: int, exc: BaseException) -> None:
        """Wait before try ``attempt + 2`` of something that failed with ``exc``; after the last, raise."""
        if attempt == len(BACKOFF_S) or self._closed:
            raise BrokerUnavailable(f"Redis unavailable at {self.location}: {_describe(exc)}") from exc
        time.sleep(BACKOFF_S[attempt])

    def _drop_idle(self) -> None:
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:
                break


class Connection:
    """One socket and its reply parser."""

    __slots__ = ("pid", "reader", "sock", "used")

    def __init__(self, client: RedisClient) -> None:
        sock = socket.create_connection((client.host, client.port), timeout=client.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if client._tls is not None:
                sock = client._tls.wrap_socket(sock, server_hostname=client.host)
            sock.settimeout(client.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.reader = hiredis.Reader()
        self.pid = os.getpid()
        self.used = time.monotonic()

    def read(self, count: int) -> list[Any]:
        """The next ``count`` replies, an error reply as a ``hiredis.ReplyError`` value; raises
        ``_NotReady`` (an OSError) when the first says the server cannot serve yet."""
        replies: list[Any] = []
        reader = self.reader
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:  # RESP2 has no booleans: False means "not all of it has arrived"
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                reader.feed(data)
            else:
                replies.append(reply)
        if replies and isinstance(replies[0], hiredis.ReplyError) and str(replies[0]).startswith(_NOT_READY):
            raise _NotReady(str(replies[0]))  # e.g. still loading its data: as if it were down
        return replies

    def alive(self) -> bool:
        """False if the server closed it (or sent something unasked) while it was idle."""
        try:
            poller = select.poll()  # not select.select: it fails on descriptors past 1023
            poller.register(self.sock, select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Script:
    """A Lua script, called as ``script(keys, args)``. Its SHA1 comes from the server (``SCRIPT
    LOAD`` on the first call) rather than from hashlib, which would load OpenSSL's libcrypto, ~3.7 MB
    in every worker process."""

    __slots__ = ("client", "sha", "source")

    def __init__(self, client: RedisClient, source: str) -> None:
        self.client = client
        self.source = source
        self.sha: str | None = None

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self.sha is None:
            self.sha = self.client.call("SCRIPT", "LOAD", self.source).decode()
        reply = self.client._roundtrip(hiredis.pack_command(("EVALSHA", self.sha, len(keys), *keys, *args)), 1)[0]
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # EVAL runs it and caches it: later calls find it by its SHA1 again
            reply = self.client._roundtrip(hiredis.pack_command(("EVAL", self.source, len(keys), *keys, *args)), 1)[0]
        return _checked(reply)


class Subscription:
    """Pub/Sub on a connection of its own. After the connection drops, the next ``get`` reconnects
    (with the client's retry schedule), subscribes again and answers ``"reconnected"``: whatever
    was published meanwhile reached nobody, so the caller should look for itself. A forked child
    does the same rather than share its parent's socket."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.channels: set[str] = set()
        self._conn: Connection | None = None

    def subscribe(self, *channels: str) -> None:
        """Subscribe to more channels; each confirmation arrives later as a ``"subscribe"``."""
        self.channels.update(channels)
        if self._usable():
            try:
                self._send(channels)
                return
            except OSError:
                self._reset()
        self._connect()  # subscribes to every channel, these included

    def get(self, timeout: float) -> str | None:
        """Block up to ``timeout`` seconds for the next event: ``"message"``, ``"subscribe"``,
        ``"reconnected"``, or None when nothing came. An error reply (a user without access to
        the channel, say) raises ``BrokerError``."""
        if not self._usable():
            self._connect()
            return "reconnected"
        conn = self._conn
        assert conn is not None
        try:
            reply = conn.reader.gets()
            while reply is False:
                conn.sock.settimeout(max(timeout, 0.0))
                try:
                    data = conn.sock.recv(65536)
                except (BlockingIOError, TimeoutError):
                    return None
                except OSError as exc:
                    if type(exc).__name__ == "SSLWantReadError":  # TLS, non-blocking, nothing whole yet
                        return None
                    raise
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                conn.reader.feed(data)
                reply = conn.reader.gets()
        except (OSError, hiredis.ProtocolError):
            self._reset()
            self._connect()
            return "reconnected"
        if isinstance(reply, hiredis.ReplyError):
            self._reset()  # whether the subscription stands is unknown: start afresh next time
            raise BrokerError(f"Redis refused the subscription: {reply}")
        kind = reply[0]
        return kind.decode() if isinstance(kind, bytes) else str(kind)

    def _usable(self) -> bool:
        if self._conn is not None and self._conn.pid != os.getpid():
            self._reset()  # the parent's socket: closing our copy of it leaves the parent's open
        return self._conn is not None

    def _connect(self) -> None:
        for attempt in range(len(BACKOFF_S) + 1):
            try:
                self._conn = self.client.open()
                if self.channels:
                    self._send(self.channels)
                return
            except (OSError, hiredis.ProtocolError) as exc:
                self._reset()
                self.client.back_off(attempt, exc)

    def _send(self, channels: Any) -> None:
        assert self._conn is not None
        self._conn.sock.settimeout(self.client.timeout)
        self._conn.sock.sendall(hiredis.pack_command(("SUBSCRIBE", *channels)))

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._reset()


class _NotReady(ConnectionError):
    """An error reply that means "try again soon", handled like a dropped connection."""


def _checked(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise BrokerError(f"Redis error: {reply}")
    return reply


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _tls_context(query: dict[str, str]) -> Any:
    import ssl

    try:
        context = ssl.create_default_context(cafile=query.get("ssl_ca_certs") or None)
        if query.get("ssl_certfile"):
            context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile") or None)
    except (OSError, ssl.SSLError) as exc:  # a missing file, or one that holds no certificate
        raise ConfigurationError(f"bad TLS files in the Redis URL: {exc}") from None
    reqs = query.get("ssl_cert_reqs", "required").lower()
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    if reqs not in modes:
        raise ConfigurationError(f"ssl_cert_reqs={reqs!r}: use none, optional or required")
    check = query.get("ssl_check_hostname", "true" if reqs == "required" else "false").lower()
    context.check_hostname = check in ("1", "true", "yes")
    try:
        context.verify_mode = modes[reqs]
    except ValueError as exc:  # ssl_check_hostname=true with ssl_cert_reqs=none
        raise ConfigurationError(f"bad TLS options: {exc}") from None
    return context
