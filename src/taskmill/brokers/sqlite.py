"""sqlite:/// — the embedded default broker, safe across processes on one machine.

WAL journal, ``BEGIN IMMEDIATE`` for every write, a busy timeout and ``synchronous=FULL`` for every
write a promise rests on (a send, an operator's retry or purge; set ``?synchronous=normal`` in the
URL to trade the last of those on power loss for speed). A worker's acks, leases, retries and dead
letters commit without waiting for the disk: losing them only delivers a message again. The schema
is in ``sqlite_schema.sql`` beside this module. Times are this machine's clock, which every
process on it shares.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskmill.brokers.base import DELIVERY_LIMIT_TEXT, Broker, DeadLetter, Delivery, Failure, QueueStats, Record
from taskmill.errors import LeaseLost
from taskmill.message import now_ms
from taskmill.sqlite_db import Database, path_from_url

__all__ = ["SQLiteBroker", "path_from_url"]

_SCHEMA = (Path(__file__).with_name("sqlite_schema.sql")).read_text()
_FAST_POLL = 0.001  # s between looks for other processes' commits right after activity
_BACKOFF = 100  # the look interval grows to 1/100 of the time since the last fetch (10 ms after 1 s)
_FETCH = (
    "SELECT seq, id, queue, priority, deliveries, token, body FROM taskmill_messages INDEXED BY taskmill_messages_fetch"
    " WHERE queue = ? AND available_at <= ? ORDER BY priority DESC, seq LIMIT ?"
)


class SQLiteBroker(Broker):
    """Messages as rows in one SQLite file; leases are token + expiry columns."""

    def __init__(self, url: str, *, max_deliveries: int = 25, busy_timeout: float = 30.0) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        self._database = Database(url, _SCHEMA, busy_timeout=busy_timeout)
        self.path = self._database.path
        self._write = self._database.write
        self._read = self._database.read
        self._active_at = 0.0  # monotonic time this instance last fetched something: waits poll fast after it

    @property
    def location(self) -> str:
        return f"sqlite:///{self.path}"

    def publish(self, records: Sequence[Record]) -> None:
        now = now_ms()
        rows = [(r.id, r.queue, r.priority, now + max(r.delay_ms, 0), r.body) for r in records]
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO taskmill_messages (id, queue, priority, available_at, body)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT OR IGNORE INTO taskmill_queues (name) VALUES (?)", [(q,) for q in {r[1] for r in rows}]
            )

    def fetch(self, queues: Sequence[str], limit: int, lease_ms: int) -> list[Delivery]:
        return self.ack_and_fetch((), queues, limit, lease_ms)[1]

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, lease_ms: int
    ) -> tuple[list[Delivery], list[Delivery]]:
        if not acks and (limit <= 0 or not queues):
            return [], []
        with self._write(durable=False) as db:
            lost = self._ack(db, acks)
            fetched = self._fetch(db, queues, limit, lease_ms) if limit > 0 and queues else []
        if fetched:
            self._active_at = time.monotonic()
        return lost, fetched

    def _fetch(self, db: sqlite3.Connection, queues: Sequence[str], limit: int, lease_ms: int) -> list[Delivery]:
        out: list[Delivery] = []
        now = now_ms()
        nonce = os.urandom(12).hex()  # this call's fencing nonce; each token adds its position
        while len(out) < limit:
            rows: list[Any] = []
            for queue in dict.fromkeys(queues):  # each queue's index in order, merged: no sort of every due row
                rows.extend(db.execute(_FETCH, (queue, now, limit - len(out))).fetchall())
            if len(queues) > 1:
                rows.sort(key=lambda row: (-row[3], row[0]))
                del rows[limit - len(out) :]
            buried = 0
            for seq, message_id, queue, priority, deliveries, held_by, body in rows:
                if held_by is not None and deliveries >= self.max_deliveries:
                    failure = Failure("delivery_limit", error_message=DELIVERY_LIMIT_TEXT)
                    self._bury(db, seq, failure)
                    self._buried.append(
                        DeadLetter(
                            message_id,
                            queue,
                            _as_bytes(body),
                            priority,
                            failure.reason,
                            "",
                            DELIVERY_LIMIT_TEXT,
                            "",
                            deliveries,
                            now,
                        )
                    )
                    buried += 1
                    continue
                token = f"{nonce}.{len(out)}"
                db.execute(
                    "UPDATE taskmill_messages SET deliveries = deliveries + 1, token = ?, available_at = ?"
                    " WHERE seq = ?",
                    (token, now + lease_ms, seq),
                )
                out.append(Delivery(message_id, queue, _as_bytes(body), priority, deliveries + 1, token))
            if not buried:  # nothing more is due, or the batch is full
                break
        return out

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Commits through this connection wake the waiter at once; other processes' commits are
        looked for every millisecond right after activity, backing off to every 10 ms when quiet."""
        mark = self._database.change_mark()  # before the look, so a commit in between still wakes us
        marks = ",".join("?" * len(queues))
        soonest = self._read(f"SELECT MIN(available_at) FROM taskmill_messages WHERE queue IN ({marks})", queues)[0][0]
        if soonest is not None:
            timeout = min(timeout, max(soonest - now_ms(), 0) / 1000)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            quiet = time.monotonic() - self._active_at
            step = min(remaining, max(_FAST_POLL, quiet / _BACKOFF))
            if self._database.wait_for_commit(step, since=mark):
                return

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        with self._write(durable=False) as db:
            return self._ack(db, deliveries)

    @staticmethod
    def _ack(db: sqlite3.Connection, deliveries: Sequence[Delivery]) -> list[Delivery]:
        lost = []
        for delivery in deliveries:
            cursor = db.execute(
                "DELETE FROM taskmill_messages WHERE id = ? AND token = ?", (delivery.id, delivery.token)
            )
            if cursor.rowcount == 0:
                lost.append(delivery)
        return lost

    def extend(self, deliveries: Sequence[Delivery], lease_ms: int) -> list[Delivery]:
        lost = []
        with self._write(durable=False) as db:
            until = now_ms() + lease_ms
            for delivery in deliveries:
                cursor = db.execute(
                    "UPDATE taskmill_messages SET available_at = ? WHERE id = ? AND token = ?",
                    (until, delivery.id, delivery.token),
                )
                if cursor.rowcount == 0:
                    lost.append(delivery)
        return lost

    def retry(self, delivery: Delivery, delay_ms: int) -> None:
        with self._write(durable=False) as db:
            cursor = db.execute(
                "UPDATE taskmill_messages SET token = NULL, available_at = ? WHERE id = ? AND token = ?",
                (now_ms() + max(delay_ms, 0), delivery.id, delivery.token),
            )
            if cursor.rowcount == 0:
                raise LeaseLost(f"message {delivery.id} is leased to another delivery; retry refused")

    def release(self, deliveries: Sequence[Delivery]) -> None:
        with self._write(durable=False) as db:
            now = now_ms()
            db.executemany(
                "UPDATE taskmill_messages SET token = NULL, available_at = ?, deliveries = deliveries - 1"
                " WHERE id = ? AND token = ?",
                [(now, d.id, d.token) for d in deliveries],
            )

    def dead_letter(self, delivery: Delivery, failure: Failure) -> None:
        with self._write(durable=False) as db:
            row = db.execute(
                "SELECT seq FROM taskmill_messages WHERE id = ? AND token = ?", (delivery.id, delivery.token)
            ).fetchone()
            if row is None:
                raise LeaseLost(f"message {delivery.id} is leased to another delivery; dead-letter refused")
            self._bury(db, row[0], failure)

    @staticmethod
    def _bury(db: sqlite3.Connection, seq: int, failure: Failure) -> None:
        db.execute(
            "INSERT OR REPLACE INTO taskmill_dead (id, queue, priority, body, reason, error_type,"
            " error_message, traceback, deliveries, dead_at)"
            " SELECT id, queue, priority, body, ?, ?, ?, ?, deliveries, ? FROM taskmill_messages WHERE seq = ?",
            (failure.reason, failure.error_type, failure.error_message, failure.traceback, now_ms(), seq),
        )
        db.execute("DELETE FROM taskmill_messages WHERE seq = ?", (seq,))

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        now = now_ms()
        names = [r[0] for r in self._read("SELECT name FROM taskmill_queues")] if queues is None else queues
        counts = {name: [0, 0, 0, 0] for name in names}
        for queue, ready, delayed, in_flight in self._read(
            "SELECT queue, SUM(available_at <= ?), SUM(token IS NULL AND available_at > ?),"
            " SUM(token IS NOT NULL AND available_at > ?) FROM taskmill_messages GROUP BY queue",
            (now, now, now),
        ):
            if queue in counts:
                counts[queue][:3] = [ready, delayed, in_flight]
        for queue, dead in self._read("SELECT queue, COUNT(*) FROM taskmill_dead GROUP BY queue"):
            if queue in counts:
                counts[queue][3] = dead
        return [QueueStats(name, *counts[name]) for name in sorted(counts)]

    def purge(self, queue: str) -> int:
        with self._write() as db:
            return db.execute(
                "DELETE FROM taskmill_messages WHERE queue = ? AND (token IS NULL OR available_at <= ?)",
                (queue, now_ms()),
            ).rowcount

    def dead_letters(self, queue: str | None = None, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        where, params = _dead_filter(None, queue)
        rows = self._read(
            "SELECT id, queue, body, priority, reason, error_type, error_message, traceback, deliveries,"
            f" dead_at FROM taskmill_dead {where} ORDER BY dead_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [DeadLetter(r[0], r[1], _as_bytes(r[2]), *r[3:]) for r in rows]

    def retry_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        where, params = _dead_filter(ids, queue)
        where += (" AND " if where else "WHERE ") + "id NOT IN (SELECT id FROM taskmill_messages)"
        with self._write() as db:
            moved = [r[0] for r in db.execute(f"SELECT id FROM taskmill_dead {where}", params).fetchall()]
            db.executemany(
                "INSERT INTO taskmill_messages (id, queue, priority, available_at, body)"
                " SELECT id, queue, priority, ?, body FROM taskmill_dead WHERE id = ?",
                [(now_ms(), message_id) for message_id in moved],
            )
            db.executemany("DELETE FROM taskmill_dead WHERE id = ?", [(message_id,) for message_id in moved])
        return len(moved)

    def purge_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        where, params = _dead_filter(ids, queue)
        with self._write() as db:
            return db.execute(f"DELETE FROM taskmill_dead {where}", params).rowcount

    def close(self) -> None:
        self._database.close()


def _as_bytes(body: bytes | str) -> bytes:
    """Bodies are BLOBs; a row written by hand as TEXT still reaches the worker (and its checks)."""
    return body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)


def _dead_filter(ids: Sequence[str] | None, queue: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if ids is not None:
        clauses.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
        params.extend(ids)
    if queue is not None:
        clauses.append("queue = ?")
        params.append(queue)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params
