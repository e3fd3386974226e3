"""postgresql:// — the PostgreSQL broker: ``FOR UPDATE SKIP LOCKED`` fetches, leases and run-at
times on the database clock (``now()``), LISTEN/NOTIFY wake-ups, and transactional enqueue:

    with app.transaction(conn):          # conn: the application's own psycopg connection
        send_invoice.send(order_id)      # exists only if conn's transaction commits

    async with app.transaction(aconn):   # aconn: a psycopg AsyncConnection
        send_invoice.send(order_id)      # checked now, written through aconn when the block ends

The schema (``?schema=taskmill``) is created and migrated on first use (see postgres_db.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from taskmill.brokers.base import (
    DELIVERY_LIMIT_TEXT,
    TRANSACTION,
    Broker,
    DeadLetter,
    Delivery,
    Failure,
    QueueStats,
    Record,
    Transaction,
)
from taskmill.brokers.postgres_transaction import Pending, PostgresTransaction
from taskmill.errors import BrokerError, ConfigurationError, LeaseLost
from taskmill.postgres_db import Database, Listener, migrate, translated

__all__ = ["PostgresBroker"]

log = logging.getLogger("taskmill.brokers.postgres")

_HOUSEKEEPING_EVERY = 60.0  # seconds between sweeps of old dead letters, per broker instance
_DEAD_RETENTION_DAYS = 7

# One statement, so it is atomic on any connection (autocommit or not); the NOTIFY is delivered at commit.
_PUBLISH = """
WITH stored AS (
    INSERT INTO {schema}.messages (id, queue, priority, available_at, body)
    SELECT r.id, r.queue, r.priority, now() + r.delay_ms * interval '1 millisecond', r.body
    FROM unnest(%s::text[], %s::text[], %s::smallint[], %s::bigint[], %s::bytea[])
        AS r(id, queue, priority, delay_ms, body)
    ON CONFLICT (id) DO NOTHING
), named AS (
    INSERT INTO {schema}.queues (name) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING
)
SELECT pg_notify(%s, '')
"""
# Per queue, so each walks messages_order in its order and stops after the limit (with "queue = ANY"
# the planner took every due row from messages_due and sorted them: 24 ms with 20,000 queued, not 0.2).
_PICK = """
SELECT m.seq, m.id, m.queue, m.priority, m.deliveries, m.token, m.body
FROM unnest(%s::text[]) AS q(name) CROSS JOIN LATERAL (
    SELECT seq, id, queue, priority, deliveries, token, body FROM {schema}.messages
    WHERE queue = q.name AND available_at <= now()
    ORDER BY priority DESC, seq LIMIT %s FOR UPDATE SKIP LOCKED
) AS m
ORDER BY m.priority DESC, m.seq LIMIT %s
"""
_LEASE = """
UPDATE {schema}.messages SET deliveries = deliveries + 1, token = md5(random()::text || clock_timestamp()::text),
    available_at = now() + %s * interval '1 millisecond'
WHERE seq = ANY(%s) RETURNING id, queue, body, priority, deliveries, token
"""
_BURY = """
WITH gone AS (DELETE FROM {schema}.messages WHERE seq = ANY(%s) RETURNING *)
INSERT INTO {schema}.dead (id, queue, priority, body, reason, error_type, error_message, traceback, deliveries)
SELECT id, queue, priority, body, %s, %s, %s, %s, deliveries FROM gone
ON CONFLICT (id) DO UPDATE SET queue = excluded.queue, priority = excluded.priority, body = excluded.body,
    reason = excluded.reason, error_type = excluded.error_type, error_message = excluded.error_message,
    traceback = excluded.traceback, deliveries = excluded.deliveries, dead_at = clock_timestamp()
RETURNING id, queue, body, priority, deliveries, (extract(epoch FROM dead_at) * 1000)::bigint
"""
_ACK = """
DELETE FROM {schema}.messages m USING unnest(%s::text[], %s::text[]) AS h(id, token)
WHERE m.id = h.id AND m.token = h.token RETURNING m.id, m.token
"""
_HELD = "FROM unnest(%s::text[], %s::text[]) AS h(id, token) WHERE m.id = h.id AND m.token = h.token"


class PostgresBroker(Broker):
    """Messages as rows; leases are token + expiry columns on the database clock."""

    def __init__(self, url: str, *, max_deliveries: int = 25) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        self.db = Database(url)
        self._listener = Listener(self.db.conninfo, self.db.channel)
        self._next_housekeeping = 0.0

    @property
    def location(self) -> str:
        where = self.db.conninfo.split("?")[0].rsplit("@", 1)[-1]  # no credentials in banners and logs
        return f"postgresql://{where} (schema {self.db.schema})"

    def transaction(self, connection: Any) -> Transaction:
        return PostgresTransaction(self, connection)

    def publish(self, records: Sequence[Record]) -> None:
        if not records:
            return
        joined = TRANSACTION.get()
        if joined is not None and joined[0] is self:  # the caller's transaction: the messages exist only if it commits
            target = joined[1]
            if isinstance(target, Pending):
                target.add(records)
                return
            if not isinstance(target, self.db.connection_class):
                raise ConfigurationError("App.transaction needs a psycopg Connection in an open transaction")
            with translated():
                target.execute(self.db.sql(_PUBLISH), self._publish_params(records))
            return
        with self.db.transaction() as conn:
            conn.execute(self.db.sql(_PUBLISH), self._publish_params(records))

    async def publish_async(self, connection: Any, records: Sequence[Record]) -> None:
        """Write ``records`` through ``connection`` (a psycopg AsyncConnection), in its open transaction."""
        if records:
            with translated():
                await connection.execute(self.db.sql(_PUBLISH), self._publish_params(records))

    def _publish_params(self, records: Sequence[Record]) -> tuple[Any, ...]:
        return ([r.id for r in records], [r.queue for r in records], [r.priority for r in records],
                [max(r.delay_ms, 0) for r in records], [r.body for r in records],
                sorted({r.queue for r in records}), self.db.channel)  # fmt: skip

    def fetch(self, queues: Sequence[str], limit: int, lease_ms: int) -> list[Delivery]:
        return self.ack_and_fetch((), queues, limit, lease_ms)[1]

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        return self.ack_and_fetch(deliveries, (), 0, 0)[0] if deliveries else []

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, lease_ms: int
    ) -> tuple[list[Delivery], list[Delivery]]:
        lost: list[Delivery] = []
        fetched: list[Delivery] = []
        with self.db.transaction() as conn:
            if acks:
                done = {(r[0], r[1]) for r in conn.execute(self.db.sql(_ACK), _pairs(acks)).fetchall()}
                lost = [d for d in acks if (d.id, d.token) not in done]
            while queues and len(fetched) < limit:
                want = limit - len(fetched)
                rows = conn.execute(self.db.sql(_PICK), (list(queues), want, want)).fetchall()
                over = [r[0] for r in rows if r[5] is not None and r[4] >= self.max_deliveries]
                if over:
                    self._bury_limit(conn, over)
                keep = [r[0] for r in rows if r[0] not in set(over)]
                if keep:
                    leased = conn.execute(self.db.sql(_LEASE), (lease_ms, keep)).fetchall()
                    order = {r[1]: i for i, r in enumerate(rows)}
                    leased.sort(key=lambda r: order[r[0]])
                    fetched.extend(Delivery(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in leased)
                if not over:
                    break
        self._housekeeping()
        return lost, fetched

    def _bury_limit(self, conn: Any, seqs: list[int]) -> None:
        rows = conn.execute(self.db.sql(_BURY), (seqs, "delivery_limit", "", DELIVERY_LIMIT_TEXT, "")).fetchall()
        self._buried.extend(
            DeadLetter(r[0], r[1], bytes(r[2]), r[3], "delivery_limit", "", DELIVERY_LIMIT_TEXT, "", r[4], r[5])
            for r in rows
        )

    def _housekeeping(self) -> None:
        """Old dead letters go in small batches, so the tables stay small without a cron."""
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + _HOUSEKEEPING_EVERY
        try:
            self._sweep_dead()
        except BrokerError as exc:  # the fetch already committed: never fail it for housekeeping
            log.warning("dead-letter housekeeping failed (%s); it runs again later", exc)

    def _sweep_dead(self) -> None:
        self.db.execute(
            "DELETE FROM {schema}.dead WHERE id IN (SELECT id FROM {schema}.dead"
            " WHERE dead_at < now() - %s * interval '1 day' LIMIT 500)",
            (_DEAD_RETENTION_DAYS,),
        )

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        def due_in() -> float:
            rows = self.db.execute(
                "SELECT extract(epoch FROM min(available_at) - now()) FROM {schema}.messages WHERE queue = ANY(%s)",
                (list(queues),),
            )
            return -1.0 if rows[0][0] is None else max(float(rows[0][0]), 0.0)

        with self._listener.watch("") as wait:  # LISTEN is in place before the look: no commit slips by
            due = due_in()
            if due != 0.0:
                wait(timeout if due < 0 else min(timeout, due))

    def extend(self, deliveries: Sequence[Delivery], lease_ms: int) -> list[Delivery]:
        if not deliveries:
            return []
        rows = self.db.execute(
            f"UPDATE {{schema}}.messages m SET available_at = now() + %s * interval '1 millisecond' {_HELD}"
            " RETURNING m.id, m.token",
            (lease_ms, *_pairs(deliveries)),
        )
        kept = {(r[0], r[1]) for r in rows}
        return [d for d in deliveries if (d.id, d.token) not in kept]

    def retry(self, delivery: Delivery, delay_ms: int) -> None:
        rows = self._settle(
            "UPDATE {schema}.messages SET token = NULL, available_at = now() + %s * interval '1 millisecond'"
            " WHERE id = %s AND token = %s RETURNING id",
            (max(delay_ms, 0), delivery.id, delivery.token),
        )
        if not rows:
            raise LeaseLost(f"message {delivery.id} is leased to another delivery; retry refused")

    def release(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self._settle(
                f"UPDATE {{schema}}.messages m SET token = NULL, available_at = now(), deliveries = m.deliveries - 1"
                f" {_HELD} RETURNING m.id",
                _pairs(deliveries),
            )

    def _settle(self, statement: str, params: Any) -> list[Any]:
        with self.db.transaction() as conn:
            rows = conn.execute(self.db.sql(statement), params).fetchall()
            conn.execute("SELECT pg_notify(%s, '')", (self.db.channel,))
        return list(rows)

    def dead_letter(self, delivery: Delivery, failure: Failure) -> None:
        with self.db.transaction() as conn:
            row = conn.execute(
                self.db.sql("SELECT seq FROM {schema}.messages WHERE id = %s AND token = %s FOR UPDATE"),
                (delivery.id, delivery.token),
            ).fetchone()
            if row is None:
                raise LeaseLost(f"message {delivery.id} is leased to another delivery; dead-letter refused")
            fields = (failure.reason, failure.error_type, failure.error_message, failure.traceback)
            conn.execute(self.db.sql(_BURY), ([row[0]], *fields))

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        names = [r[0] for r in self.db.execute("SELECT name FROM {schema}.queues")] if queues is None else queues
        counts = {name: [0, 0, 0, 0] for name in names}
        for queue, ready, delayed, in_flight in self.db.execute(
            "SELECT queue, count(*) FILTER (WHERE available_at <= now()),"
            " count(*) FILTER (WHERE token IS NULL AND available_at > now()),"
            " count(*) FILTER (WHERE token IS NOT NULL AND available_at > now())"
            " FROM {schema}.messages GROUP BY queue"
        ):
            if queue in counts:
                counts[queue][:3] = [ready, delayed, in_flight]
        for queue, dead in self.db.execute("SELECT queue, count(*) FROM {schema}.dead GROUP BY queue"):
            if queue in counts:
                counts[queue][3] = dead
        return [QueueStats(name, *counts[name]) for name in sorted(counts)]

    def purge(self, queue: str) -> int:
        rows = self.db.execute(
            "DELETE FROM {schema}.messages WHERE queue = %s AND (token IS NULL OR available_at <= now()) RETURNING 1",
            (queue,),
        )
        return len(rows)

    def dead_letters(self, queue: str | None = None, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        rows = self.db.execute(
            "SELECT id, queue, body, priority, reason, error_type, error_message, traceback, deliveries,"
            " (extract(epoch FROM dead_at) * 1000)::bigint FROM {schema}.dead"
            " WHERE (%s::text IS NULL OR queue = %s) ORDER BY dead_at DESC, dead_seq DESC LIMIT %s OFFSET %s",
            (queue, queue, limit, offset),
        )
        return [DeadLetter(r[0], r[1], bytes(r[2]), *r[3:]) for r in rows]

    def retry_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        rows = self.db.execute(
            "WITH moved AS (DELETE FROM {schema}.dead d WHERE (%s::text[] IS NULL OR d.id = ANY(%s))"
            " AND (%s::text IS NULL OR d.queue = %s)"
            " AND NOT EXISTS (SELECT 1 FROM {schema}.messages m WHERE m.id = d.id) RETURNING d.*)"
            " INSERT INTO {schema}.messages (id, queue, priority, available_at, body)"
            " SELECT id, queue, priority, now(), body FROM moved RETURNING 1",
            _selection(ids, queue),
        )
        self.db.execute("SELECT pg_notify(%s, '')", (self.db.channel,))
        return len(rows)

    def purge_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        rows = self.db.execute(
            "DELETE FROM {schema}.dead WHERE (%s::text[] IS NULL OR id = ANY(%s))"
            " AND (%s::text IS NULL OR queue = %s) RETURNING 1",
            _selection(ids, queue),
        )
        return len(rows)

    def migrate(self) -> list[str]:
        with translated():
            return migrate(self.db)

    def close(self) -> None:
        self._listener.close()
        self.db.close()


def _pairs(deliveries: Sequence[Delivery]) -> tuple[list[str], list[str]]:
    return [d.id for d in deliveries], [d.token for d in deliveries]


def _selection(ids: Sequence[str] | None, queue: str | None) -> tuple[Any, ...]:
    chosen = None if ids is None else list(ids)
    return chosen, chosen, queue, queue
