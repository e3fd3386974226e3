"""postgresql:// and postgres:// — the result store in PostgreSQL, in the broker's schema.

Values, counters and locks are rows of ``{schema}.kv``; sets live in ``{schema}.set_members``: one header
row per set (member ``''``) whose ``expires_at`` is the whole set's, and one row per member (stored as
``'.' || member``, so no member is mistaken for the header) that never expires on its own. Renewing a set
then rewrites one row, not all of them.

Every time is the database's clock (``now()``), so all clients agree on expiry; an expired row (or set)
reads as absent, and each ``put`` sweeps a batch of them. ``put`` notifies ``{schema}_results`` with the key
in the same transaction, which is what ``wait`` sleeps on. A set's writers take a transaction-scoped
advisory lock on its key, so an ``add`` sees every member added before it.
"""

from __future__ import annotations

import hashlib
import time

from taskmill.postgres_db import Database, Listener
from taskmill.results.base import Store

__all__ = ["PostgresStore"]

_SWEEP_BATCH = 100  # expired rows deleted per put, so the tables stay small without a cron
# wait() looks again at least this often even without a notification: one sent while the listening
# connection was down reached nobody, and a half-open connection never says it is down.
_RECHECK_S = 5.0
_EXPIRY = "now() + %(ttl_ms)s * interval '1 millisecond'"
_SET_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%(schema)s), hashtext(%(key)s))"
# What each put sweeps, a batch at a time, as (table, a query for the ctids of the rows ``t`` to delete).
_SWEEPS = (
    ("kv", "SELECT t.ctid FROM {schema}.kv t WHERE t.expires_at <= now()"),
    (  # the members of expired sets: a member's row never expires on its own, its set's header does
        "set_members",
        (
            "SELECT t.ctid FROM {schema}.set_members h JOIN {schema}.set_members t ON t.key = h.key"
            " WHERE h.member = '' AND h.expires_at <= now() AND t.member <> ''"
        ),
    ),
    (  # then the headers of expired sets that have no member left
        "set_members",
        (
            "SELECT t.ctid FROM {schema}.set_members t WHERE t.member = '' AND t.expires_at <= now()"
            " AND NOT EXISTS (SELECT FROM {schema}.set_members m WHERE m.key = t.key AND m.member <> '')"
        ),
    ),
)


def _payload(key: str) -> str:
    # A NOTIFY payload must stay under 8000 bytes: a long key is announced by its digest.
    return key if len(key.encode()) <= 1000 else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class PostgresStore(Store):
    """Rows with an expiry column; upserts with ``ON CONFLICT`` make each step atomic."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._db = Database(url)
        # A channel name is at most 63 bytes; a long schema name is cut (waiters just wake for more keys).
        self._listener = Listener(self._db.conninfo, f"{self._db.schema[:50]}_results")

    def put(self, key: str, value: bytes, ttl_ms: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms``, wake whoever waits for it, sweep expired rows."""
        with self._db.transaction() as conn, conn.pipeline():
            conn.execute(
                self._db.sql(
                    "INSERT INTO {schema}.kv (key, kind, value, expires_at)"
                    f" VALUES (%(key)s, 'value', %(value)s, {_EXPIRY}) ON CONFLICT (key) DO UPDATE SET"
                    " kind = excluded.kind, value = excluded.value, expires_at = excluded.expires_at"
                ),
                {"key": key, "value": value, "ttl_ms": ttl_ms},
            )
            # SKIP LOCKED: a sweep never waits for a row, so it cannot deadlock with writers or other sweeps.
            for table, rows in _SWEEPS:
                conn.execute(
                    self._db.sql(
                        f"DELETE FROM {{schema}}.{table} WHERE ctid = ANY(ARRAY({rows}"
                        f" LIMIT {_SWEEP_BATCH} FOR UPDATE OF t SKIP LOCKED))"
                    )
                )
            conn.execute("SELECT pg_notify(%s, %s)", (self._listener.channel, _payload(key)))  # sent on commit

    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when absent or expired."""
        rows = self._db.execute(
            "SELECT value FROM {schema}.kv WHERE key = %s AND kind = 'value' AND expires_at > now()", (key,)
        )
        return bytes(rows[0][0]) if rows else None

    def wait(self, key: str, timeout: float) -> bytes | None:
        """Block up to ``timeout`` seconds until ``key`` has a value, woken by ``put``'s notification."""
        deadline = time.monotonic() + timeout
        with self._listener.watch(_payload(key)) as notified:  # LISTEN first: a put after the look wakes us
            while True:
                value = self.get(key)
                remaining = deadline - time.monotonic()
                if value is not None or remaining <= 0:
                    return value
                notified(min(remaining, _RECHECK_S))

    def delete(self, key: str) -> bool:
        """Remove ``key`` whatever its kind; True if something live was there."""
        with self._db.transaction() as conn, conn.pipeline():
            conn.execute(_SET_LOCK, {"schema": self._db.schema, "key": key})
            found = conn.execute(
                self._db.sql(
                    "WITH kv AS (DELETE FROM {schema}.kv WHERE key = %(key)s RETURNING expires_at > now() AS live),"
                    " sets AS (DELETE FROM {schema}.set_members WHERE key = %(key)s"
                    " RETURNING member = '' AND expires_at > now() AS live)"
                    " SELECT EXISTS (SELECT FROM kv WHERE live) OR EXISTS (SELECT FROM sets WHERE live)"
                ),
                {"key": key},
            )
        return bool(found.fetchall()[0][0])

    def add(self, key: str, member: str, ttl_ms: int) -> tuple[bool, int]:
        """Add ``member`` to the set ``key`` and renew the whole set's TTL; (whether it was new, the set's size)."""
        params = {"schema": self._db.schema, "key": key, "member": "." + member, "ttl_ms": ttl_ms}
        # One round trip for the four statements, so the set's lock is held briefly.
        with self._db.transaction() as conn, conn.pipeline():
            conn.execute(_SET_LOCK, params)  # one writer per set at a time
            conn.execute(  # an expired set's rows: it starts again empty
                self._db.sql(
                    "DELETE FROM {schema}.set_members WHERE key = %(key)s AND NOT EXISTS (SELECT FROM"
                    " {schema}.set_members WHERE key = %(key)s AND member = '' AND expires_at > now())"
                ),
                params,
            )
            added = conn.execute(  # renews the header; returns the member's row only if it is new
                self._db.sql(
                    "INSERT INTO {schema}.set_members (key, member, expires_at)"
                    f" VALUES (%(key)s, '', {_EXPIRY}), (%(key)s, %(member)s, 'infinity')"
                    " ON CONFLICT (key, member) DO UPDATE SET expires_at = excluded.expires_at"
                    " WHERE set_members.member = '' RETURNING member"
                ),
                params,
            )
            size = conn.execute(
                self._db.sql("SELECT count(*) FROM {schema}.set_members WHERE key = %(key)s AND member <> ''"), params
            )
        return len(added.fetchall()) == 2, int(size.fetchall()[0][0])

    def incr(self, key: str, amount: int, ttl_ms: int) -> int:
        """Add ``amount`` to the counter ``key`` (absent or expired counts as 0), renew its TTL; the total."""
        # kv.value is bytea: a counter keeps its total as decimal text, any size (numeric).
        row = self._db.execute(
            f"INSERT INTO {{schema}}.kv (key, kind, value, expires_at) VALUES (%(key)s, 'counter', %(text)s, {_EXPIRY})"
            " ON CONFLICT (key) DO UPDATE SET value = CASE WHEN kv.expires_at <= now() OR kv.kind <> 'counter'"
            " THEN excluded.value"
            " ELSE convert_to((convert_from(kv.value, 'UTF8')::numeric + %(amount)s::numeric)::text, 'UTF8') END,"
            " kind = 'counter', expires_at = excluded.expires_at RETURNING value",
            {"key": key, "text": str(amount).encode(), "amount": amount, "ttl_ms": ttl_ms},
        )
        return int(bytes(row[0][0]))

    def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew the lock ``key`` for ``owner`` for ``ttl_ms``; False if another owner holds it."""
        rows = self._db.execute(
            f"INSERT INTO {{schema}}.kv (key, kind, value, expires_at) VALUES (%(key)s, 'lock', %(owner)s, {_EXPIRY})"
            " ON CONFLICT (key) DO UPDATE SET kind = 'lock', value = excluded.value, expires_at = excluded.expires_at"
            " WHERE kv.expires_at <= now() OR (kv.kind = 'lock' AND kv.value = excluded.value) RETURNING true",
            {"key": key, "owner": owner.encode(), "ttl_ms": ttl_ms},
        )
        return bool(rows)

    def release(self, key: str, owner: str) -> bool:
        """Release the lock if ``owner`` holds it; True if it did."""
        rows = self._db.execute(
            "DELETE FROM {schema}.kv WHERE key = %s AND kind = 'lock' AND value = %s AND expires_at > now()"
            " RETURNING true",
            (key, owner.encode()),
        )
        return bool(rows)

    def close(self) -> None:
        """Close the listening connection and the pool."""
        self._listener.close()
        self._db.close()
