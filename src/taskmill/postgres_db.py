"""The PostgreSQL connection the PostgreSQL broker and result store share: a psycopg pool, the
schema's numbered migrations (``postgres_sql/NNN_*.sql``, applied once under an advisory lock),
LISTEN/NOTIFY waits (``Listener``), and psycopg's errors turned into taskmill's typed ones.

URL: ``postgresql://user:password@host:port/dbname?schema=taskmill&pool_size=10&pool_timeout=10``;
any other query option (``sslmode``, ``application_name``...) goes to libpq unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from taskmill.errors import BrokerError, BrokerUnavailable, ConfigurationError

__all__ = ["Database", "Listener", "import_psycopg", "migrate", "translated"]

_MIGRATIONS = Path(__file__).with_name("postgres_sql")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_LOCK = 0x7461736B6D696C6C  # "taskmill": one advisory lock id for every migrating process


def import_psycopg() -> Any:
    """The psycopg module; ConfigurationError when it is not installed."""
    return _import()[0]


def _import() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise ConfigurationError("postgresql:// needs psycopg: pip install 'taskmill[postgres]'") from None
    return psycopg, psycopg_pool


@contextmanager
def translated(on_error: Callable[[], None] | None = None) -> Iterator[None]:
    """psycopg's connection errors (and a pool that stays exhausted) become BrokerUnavailable."""
    psycopg, psycopg_pool = _import()
    try:
        yield
    except psycopg_pool.PoolTimeout as exc:
        if on_error is not None:
            on_error()
        raise BrokerUnavailable(f"PostgreSQL unreachable, or its pool exhausted, within pool_timeout: {exc}") from exc
    except psycopg.OperationalError as exc:
        if on_error is not None:
            on_error()
        raise BrokerUnavailable(f"PostgreSQL unavailable: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        if on_error is not None:
            on_error()
        raise BrokerError(f"PostgreSQL error: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    """psycopg's messages span lines (DETAIL, HINT); one line keeps the log one record per line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Database:
    """A pool of connections to one database, with the taskmill schema migrated on open."""

    def __init__(self, url: str) -> None:
        psycopg, psycopg_pool = _import()
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.schema = query.pop("schema", "taskmill")
        if not _SCHEMA_NAME.match(self.schema):
            raise ConfigurationError(f"schema={self.schema!r}: use lower-case letters, digits and _")
        auto_migrate = query.pop("auto_migrate", "true").lower() not in {"0", "false", "no", "off"}
        try:
            pool_size = int(query.pop("pool_size", "10"))
            pool_timeout = float(query.pop("pool_timeout", "10"))
        except ValueError:
            raise ConfigurationError("pool_size and pool_timeout must be numbers") from None
        self.conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query, quote_via=quote)))
        try:
            psycopg.conninfo.conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"bad PostgreSQL URL: {_first_line(exc)}") from None
        self.connection_class = psycopg.Connection
        self.channel = f"{self.schema[:50]}_changes"  # NOTIFY channel names stop at 63 bytes
        with translated():
            self.pool = psycopg_pool.ConnectionPool(
                self.conninfo,
                min_size=1,
                max_size=max(pool_size, 1),
                timeout=pool_timeout,
                kwargs={"autocommit": True},
                open=True,
                check=psycopg_pool.ConnectionPool.check_connection,
                reconnect_timeout=5.0,  # keep retrying a lost server at short intervals, not for minutes
            )
            self.behind: str | None = None  # why the schema is too old to use (auto_migrate=false)
            gap = self.migration_gap()
            if gap and auto_migrate:
                migrate(self)
            else:
                self.behind = gap
        self._psycopg = psycopg

    def migration_gap(self) -> str | None:
        """Why the schema lacks migrations this version ships, or None when it is up to date."""
        latest = max(int(p.name[:3]) for p in _MIGRATIONS.glob("[0-9][0-9][0-9]_*.sql"))
        with translated(), self.pool.connection() as conn:
            found = conn.execute("SELECT to_regclass(%s)", (f"{self.schema}.migrations",)).fetchone()
            rows = (
                conn.execute(self.sql("SELECT max(version) FROM {schema}.migrations")).fetchone() if found[0] else None
            )
        version = rows[0] if rows and rows[0] is not None else 0
        if version >= latest:
            return None
        return f"schema {self.schema!r} is at migration {version}, taskmill needs {latest}: run `taskmill db migrate`"

    def sql(self, text: str) -> str:
        """SQL with ``{schema}`` replaced by the (validated) schema name."""
        return text.replace("{schema}", self.schema)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A connection from the pool inside one transaction (committed on success)."""
        if self.behind:
            self.behind = self.migration_gap()  # someone may have migrated meanwhile
            if self.behind:
                raise ConfigurationError(self.behind)
        with translated(), self.pool.connection() as conn, conn.transaction():
            yield conn

    def execute(self, text: str, params: Any = None) -> list[Any]:
        """Run one statement in its own transaction; its rows (or [] when it returns none)."""
        with self.transaction() as conn:
            cursor = conn.execute(self.sql(text), params)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.close()


class Listener:
    """NOTIFYs on one channel for any number of waiting threads, over one LISTEN connection of its own.

    No thread of its own either: a waiter that finds nobody reading the connection reads it for everyone
    (until its own timeout or the first notification), then wakes the others, one of which takes over.
    """

    def __init__(self, conninfo: str, channel: str) -> None:
        self._psycopg = _import()[0]
        self._conninfo = conninfo
        self.channel = channel
        self._cond = threading.Condition()
        self._conn: Any = None
        self._busy = False  # a thread is connecting or reading, outside the condition's lock
        self._closed = False
        self._count = 0  # rounds of connecting or reading so far: what a waiter's mark counts
        self._lost = 0  # _count when the connection was last made or lost: every waiter looks again
        self._latest: dict[str, int] = {}  # payload being watched -> _count when it was last notified
        self._watchers: collections.Counter[str] = collections.Counter()

    @contextmanager
    def watch(self, payload: str) -> Iterator[Callable[[float], None]]:
        """Once inside, LISTEN is in place: look at the data, then call ``wait(timeout)``. It returns when
        ``payload`` was notified since the block began or ``wait`` last returned, when the connection was
        made or lost again (a notification may have been missed: look again), or after ``timeout`` s."""
        self._serve(lambda: self._conn is not None, None)
        with self._cond:
            self._watchers[payload] += 1
            mark = self._count

        def wait(timeout: float) -> None:
            nonlocal mark
            self._serve(lambda: max(self._latest.get(payload, 0), self._lost) > mark, time.monotonic() + timeout)
            with self._cond:
                mark = self._count

        try:
            yield wait
        finally:
            with self._cond:
                self._watchers[payload] -= 1
                if not self._watchers[payload]:
                    del self._watchers[payload]
                    self._latest.pop(payload, None)

    def _serve(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Until ``done()`` or the deadline: wait while another thread reads, else connect or read."""
        with self._cond:
            while not done():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                if self._closed:
                    raise BrokerUnavailable("the PostgreSQL listener is closed")
                if self._busy:
                    self._cond.wait(remaining)
                    continue
                self._busy = True
                conn: Any = self._conn
                payloads: list[str] = []
                self._cond.release()
                try:
                    conn, payloads = self._connect_or_read(conn, remaining)
                finally:
                    self._cond.acquire()
                    self._settle(conn, payloads)

    def _connect_or_read(self, conn: Any, timeout: float | None) -> tuple[Any, list[str]]:
        """A new listening connection (errors raised, typed), or the payloads read from this one. A read that
        fails closes the connection and returns no payload: the waiters look again, and the next one connects."""
        if conn is not None:
            try:
                return conn, [note.payload for note in conn.notifies(timeout=timeout, stop_after=1)]
            except self._psycopg.Error:
                self._close(conn)
                return None, []
        with translated():
            conn = self._psycopg.connect(self._conninfo, autocommit=True)
            try:
                conn.execute(f'LISTEN "{self.channel}"')
            except BaseException:
                self._close(conn)
                raise
            return conn, []

    def _settle(self, conn: Any, payloads: list[str]) -> None:
        """After connecting or reading (under the lock): record what happened, wake every waiter."""
        self._busy = False
        self._count += 1
        if conn is not None and conn.closed:
            conn = None
        if conn is not self._conn:  # made or lost: a notification may have been missed
            self._conn, self._lost = conn, self._count
        for payload in payloads:
            if payload in self._watchers:
                self._latest[payload] = self._count
        if self._closed:
            self._close(self._conn)
            self._conn = None
        self._cond.notify_all()

    @staticmethod
    def _close(conn: Any) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Close the connection, at once or when the thread reading it returns."""
        with self._cond:
            self._closed = True
            if not self._busy:
                self._close(self._conn)
                self._conn = None


def migrate(database: Database) -> list[str]:
    """Apply the migrations the schema lacks, in order, once across processes; returns their names."""
    applied: list[str] = []
    with database.pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(database.sql("CREATE SCHEMA IF NOT EXISTS {schema}"))
        conn.execute(
            database.sql(
                "CREATE TABLE IF NOT EXISTS {schema}.migrations"
                " (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        done = {row[0] for row in conn.execute(database.sql("SELECT version FROM {schema}.migrations")).fetchall()}
        for path in sorted(_MIGRATIONS.glob("[0-9][0-9][0-9]_*.sql")):
            version = int(path.name[:3])
            if version in done:
                continue
            conn.execute(database.sql(path.read_text()))
            conn.execute(
                database.sql("INSERT INTO {schema}.migrations (version, name) VALUES (%s, %s)"), (version, path.name)
            )
            applied.append(path.name)
    database.behind = None
    return applied
