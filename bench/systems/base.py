"""The one interface every benchmarked system implements, and the task bodies they all share.

A system module (``systems/<name>_<backend>.py``) defines its tasks at import time (the worker
imports the same module) and a ``system()`` function returning a :class:`System`. Every task body
calls :func:`record` or :func:`record_latency` below, so the bookkeeping costs every system the
same: one pipelined round trip to Redis db 14 per message (SADD of the message's unique id, INCR
of the execution counter), plus one extra command for the first and the last message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

# Bookkeeping keys (in the bench database, wiped by FLUSHDB between runs).
IDS = "bench:ids"  # SET of unique ids that ran
EXECS = "bench:execs"  # INCR per execution (duplicates included)
FIRST = "bench:first"  # time.time() when the first message finished
DONE = "bench:done"  # LIST: time.time() pushed when execution number n finished
LATENCY = "bench:latency"  # LIST of start - send seconds

_clients: list[Any] = []
_clients_lock = threading.Lock()


def redis_client() -> Any:
    """The driver's redis-py client, one per process (it is thread-safe and pools connections).

    Created under a lock: with a lock-free cache, eight worker threads starting at once could each
    build a client, and the losers' garbage collection closes the connections of their pools while
    a pipeline still uses one (EBADF in the task, counted as a lost or duplicated message).
    """
    if not _clients:
        with _clients_lock:
            if not _clients:
                import redis

                _clients.append(redis.Redis.from_url(REDIS_URL, socket_timeout=120))  # above every BLPOP timeout
    return _clients[0]


class _Tally:
    """The task bodies' own connection to the bench database, one socket per thread, commands packed
    and replies parsed by hiredis (which every Redis system here has installed).

    Not redis-py: a system that does not use redis-py itself (taskmill, which speaks RESP on its own,
    and every RabbitMQ, PostgreSQL and SQLite system) would otherwise be charged its ~22 MB of
    imports in the idle-RSS figure, by the instrument rather than by the system. It is also cheaper
    per message, and equally so for every system.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn[2] != os.getpid():
            import socket
            from urllib.parse import urlsplit

            import hiredis

            parts = urlsplit(REDIS_URL)
            sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=120)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = self._local.conn = (sock, hiredis.Reader(), os.getpid(), hiredis.pack_command)
            self.run(("SELECT", parts.path.strip("/") or "0"))
        return conn

    def run(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` in one write; their replies (an error reply raises)."""
        sock, reader, _, pack = self._connection()
        sock.sendall(b"".join(pack(c) for c in commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = reader.gets()
            if reply is False:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("Redis closed the bench's connection")
                reader.feed(data)
            elif isinstance(reply, Exception):
                raise reply
            else:
                replies.append(reply)
        return replies


_tally = _Tally()


def record(uid: str, n: int) -> None:
    """What every drained message does: mark its id, count the execution, signal first and last."""
    _, count = _tally.run(("SADD", IDS, uid), ("INCR", EXECS))
    if count == 1:
        _tally.run(("SET", FIRST, repr(time.time())))
    if count == n:
        _tally.run(("RPUSH", DONE, repr(time.time())))


def record_sleep(uid: str, n: int) -> None:
    """The I/O-bound task: 10 ms of sleep, then the same bookkeeping."""
    time.sleep(0.01)
    record(uid, n)


def record_latency(uid: str, sent: float) -> None:
    """The latency task: start time minus send time, then the same id/execution bookkeeping."""
    started = time.time()
    _tally.run(("SADD", IDS, uid), ("INCR", EXECS), ("RPUSH", LATENCY, repr(started - sent)))


class System:
    """One system under test, as the driver sees it. Subclasses fill in the four methods."""

    #: product name, as in the tables ("taskmill", "dramatiq", ...)
    name = "?"
    #: "redis" or "sqlite"
    backend = "redis"
    #: how the worker runs ("1 process x 8 threads", ...)
    concurrency = ""
    #: the batch API used for bulk enqueue, or None when the system has none (reported as N/A)
    bulk_api: str | None = None
    #: anything a reader must know to read the figures (delivery semantics, defaults used)
    notes = ""

    def send(self, task: str, *args: Any) -> None:
        """Send one message for ``task`` ("noop", "sleep" or "latency") with positional args."""
        raise NotImplementedError

    def send_sequential(self, task: str, arg_list: Iterable[Sequence[Any]]) -> None:
        """Send messages one at a time (async systems override this to await each in one loop)."""
        for args in arg_list:
            self.send(task, *args)

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        """Send a batch with the system's batch API (only when ``bulk_api`` is set)."""
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        """The command line that starts one worker (cwd is bench/, PYTHONPATH includes bench/)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the producer's connections."""


def bin_path(name: str) -> str:
    """A console script installed beside the running interpreter (bench/.venv/bin/NAME)."""
    import sys
    from pathlib import Path

    return str(Path(sys.executable).with_name(name))
