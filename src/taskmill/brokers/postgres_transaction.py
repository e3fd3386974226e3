"""Transactional enqueue on PostgreSQL: ``App.transaction(conn)`` for a psycopg Connection (``with``) or
AsyncConnection (``async with``). The broker's ``publish`` looks at ``TRANSACTION`` to find where to write."""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from taskmill.brokers.base import TRANSACTION, Record, Transaction
from taskmill.errors import ConfigurationError
from taskmill.postgres_db import import_psycopg

if TYPE_CHECKING:
    from taskmill.brokers.postgres import PostgresBroker

__all__ = ["Pending", "PostgresTransaction"]


class Pending:
    """The records sent inside one ``async with app.transaction(aconn)`` block, until it ends."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.closed = False

    def add(self, records: Sequence[Record]) -> None:
        if self.closed:  # a task started inside the block sent after the block ended: never drop it silently
            raise ConfigurationError(
                "a message was sent after its `async with app.transaction(...)` block ended (from a task started"
                " inside it?); send inside the block, or outside it without the transaction"
            )
        self.records.extend(records)


class PostgresTransaction(Transaction):
    """``with`` a psycopg Connection: sends write through it at once. ``async with`` a psycopg AsyncConnection:
    sends are checked at once and buffered, then written through it (awaited) when the block ends cleanly."""

    def __init__(self, broker: PostgresBroker, connection: Any) -> None:
        self._broker = broker
        self._connection = connection
        self._token: Token[tuple[Any, Any] | None] | None = None
        self._pending: Pending | None = None

    def __enter__(self) -> None:
        psycopg = import_psycopg()
        if isinstance(self._connection, psycopg.AsyncConnection):
            raise ConfigurationError("app.transaction(conn) got a psycopg.AsyncConnection: use `async with`")
        self._check(psycopg.Connection)
        self._token = TRANSACTION.set((self._broker, self._connection))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._leave()

    async def __aenter__(self) -> None:
        psycopg = import_psycopg()
        if isinstance(self._connection, psycopg.Connection):
            raise ConfigurationError("app.transaction(conn) got a sync psycopg.Connection: use `with`")
        self._check(psycopg.AsyncConnection)
        self._pending = Pending()
        self._token = TRANSACTION.set((self._broker, self._pending))

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pending = self._pending
        self._leave()
        if pending is not None:
            pending.closed = True
            if exc_type is None:  # on an error nothing is written; the application rolls its transaction back
                await self._broker.publish_async(self._connection, pending.records)

    def _check(self, expected: type) -> None:
        if self._token is not None:
            raise ConfigurationError("this app.transaction(...) block is already in use; call app.transaction again")
        if not isinstance(self._connection, expected):
            raise ConfigurationError(
                "app.transaction(conn) needs a psycopg.Connection (with `with`) or a psycopg.AsyncConnection"
                f" (with `async with`), not {type(self._connection).__name__}"
            )

    def _leave(self) -> None:
        if self._token is not None:
            TRANSACTION.reset(self._token)
            self._token = None
