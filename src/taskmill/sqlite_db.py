"""The SQLite connection the embedded broker and result store share: WAL, ``BEGIN IMMEDIATE`` for
every write, a busy timeout, typed errors, and a cheap way to notice commits by other processes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from taskmill.errors import BrokerError, BrokerUnavailable, ConfigurationError

__all__ = ["Database", "path_from_url"]

_SYNCHRONOUS = {"off", "normal", "full", "extra"}
_POLL_SECONDS = 0.01  # how often a waiter looks for commits by other connections


def path_from_url(url: str) -> Path:
    """The file a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL names, made absolute."""
    parts = urlsplit(url)
    raw = parts.path[1:] if url.startswith("sqlite:///") else parts.netloc + parts.path
    if not raw:
        raise ConfigurationError(f"sqlite URL {url!r} names no file; use sqlite:///path/to.db")
    return Path(raw).expanduser().resolve()


class Database:
    """One connection shared by a process's threads, with the schema applied on open.

    ``synchronous`` is the level of a durable write (``write()``). A write whose loss on power
    failure only puts the database back to an earlier state that promises nothing more (a worker's
    ack, lease or retry: the message is delivered again) asks for ``durable=False`` and commits at
    ``NORMAL`` at most, without waiting for the disk. WAL keeps commits in order, so a lost commit
    takes every later one with it, and a durable commit's sync makes every earlier one durable too.
    """

    def __init__(self, url: str, schema: str, *, busy_timeout: float = 30.0) -> None:
        self.path = path_from_url(url)
        synchronous = parse_qs(urlsplit(url).query).get("synchronous", ["full"])[-1].lower()
        if synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(f"synchronous={synchronous!r}; choose one of {sorted(_SYNCHRONOUS)}")
        self._level = synchronous  # the connection's setting now
        self._durable = synchronous
        self._lazy = "normal" if synchronous in ("full", "extra") else synchronous
        self._lock = threading.RLock()
        self._local = threading.Condition()  # wakes waiters on commits made through this connection
        self._commits = 0  # counts those commits, so a waiter cannot miss one that just happened
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
        except (sqlite3.Error, OSError) as exc:
            raise BrokerUnavailable(f"cannot open SQLite database at {self.path}: {exc}") from exc

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed on success; waiters are woken.
        ``durable=False``: see the class docstring."""
        with self._lock, _translated():
            level = self._durable if durable else self._lazy
            if level != self._level:
                self._db.execute(f"PRAGMA synchronous={level}")
                self._level = level
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (disk full, I/O error) leaves it open too
                    self._db.execute("ROLLBACK")
                raise
        with self._local:
            self._commits += 1
            self._local.notify_all()

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one query outside any write transaction."""
        with self._lock, _translated():
            return self._db.execute(sql, params).fetchall()

    def change_mark(self) -> tuple[int, int]:
        """A snapshot to wait from: commits through this connection, and SQLite's data_version
        (which changes on other connections' commits only)."""
        return self._commits, self.read("PRAGMA data_version")[0][0]

    def wait_for_commit(self, timeout: float, since: tuple[int, int] | None = None) -> bool:
        """Block up to ``timeout`` s until any connection commits after ``since`` (default: now)."""
        deadline = time.monotonic() + timeout
        commits, version = since or self.change_mark()
        while (remaining := deadline - time.monotonic()) > 0:
            with self._local:
                if self._commits != commits or self._local.wait(min(remaining, _POLL_SECONDS)):
                    return True
            if self.read("PRAGMA data_version")[0][0] != version:
                return True
        return False

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


@contextmanager
def _translated() -> Iterator[None]:
    """SQLite's own errors become taskmill's typed ones."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise BrokerUnavailable(f"SQLite database unavailable: {exc}") from exc
    except sqlite3.Error as exc:
        raise BrokerError(f"SQLite database error: {exc}") from exc
