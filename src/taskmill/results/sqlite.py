"""sqlite:/// — the result store in a SQLite file (by default the broker's own file)."""

from __future__ import annotations

import time
from pathlib import Path

from taskmill.message import now_ms
from taskmill.results.base import Store
from taskmill.sqlite_db import Database

__all__ = ["SQLiteStore"]

_SCHEMA = (Path(__file__).with_name("sqlite_schema.sql")).read_text()
_SWEEP_BATCH = 100  # expired rows deleted per write, so the tables stay small without a cron


class SQLiteStore(Store):
    """Rows with an expiry column; expired rows read as absent and are swept a batch at a time."""

    def __init__(self, url: str, *, busy_timeout: float = 30.0) -> None:
        super().__init__(url)
        self._database = Database(url, _SCHEMA, busy_timeout=busy_timeout)

    def put(self, key: str, value: bytes, ttl_ms: int) -> None:
        now = now_ms()
        with self._database.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO taskmill_kv (key, kind, value, expires_at) VALUES (?, 'value', ?, ?)",
                (key, value, now + ttl_ms),
            )
            db.execute(
                "DELETE FROM taskmill_kv WHERE key IN"
                f" (SELECT key FROM taskmill_kv WHERE expires_at <= ? LIMIT {_SWEEP_BATCH})",
                (now,),
            )
            db.execute(
                "DELETE FROM taskmill_set_members WHERE (key, member) IN"
                f" (SELECT key, member FROM taskmill_set_members WHERE expires_at <= ? LIMIT {_SWEEP_BATCH})",
                (now,),
            )

    def get(self, key: str) -> bytes | None:
        rows = self._database.read(
            "SELECT value FROM taskmill_kv WHERE key = ? AND kind = 'value' AND expires_at > ?", (key, now_ms())
        )
        return bytes(rows[0][0]) if rows else None

    def wait(self, key: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            mark = self._database.change_mark()
            value = self.get(key)
            remaining = deadline - time.monotonic()
            if value is not None or remaining <= 0:
                return value
            self._database.wait_for_commit(remaining, since=mark)

    def delete(self, key: str) -> bool:
        now = now_ms()
        with self._database.write() as db:
            live = db.execute("SELECT 1 FROM taskmill_kv WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
            live = (
                live
                or db.execute(
                    "SELECT 1 FROM taskmill_set_members WHERE key = ? AND expires_at > ?", (key, now)
                ).fetchone()
            )
            db.execute("DELETE FROM taskmill_kv WHERE key = ?", (key,))
            db.execute("DELETE FROM taskmill_set_members WHERE key = ?", (key,))
        return live is not None

    def add(self, key: str, member: str, ttl_ms: int) -> tuple[bool, int]:
        now = now_ms()
        with self._database.write() as db:
            db.execute("DELETE FROM taskmill_set_members WHERE key = ? AND expires_at <= ?", (key, now))
            added = db.execute(
                "INSERT OR IGNORE INTO taskmill_set_members (key, member, expires_at) VALUES (?, ?, ?)",
                (key, member, now + ttl_ms),
            ).rowcount
            db.execute("UPDATE taskmill_set_members SET expires_at = ? WHERE key = ?", (now + ttl_ms, key))
            size = db.execute("SELECT COUNT(*) FROM taskmill_set_members WHERE key = ?", (key,)).fetchone()[0]
        return added == 1, int(size)

    def incr(self, key: str, amount: int, ttl_ms: int) -> int:
        now = now_ms()
        with self._database.write() as db:
            row = db.execute(
                "INSERT INTO taskmill_kv (key, kind, value, expires_at) VALUES (?, 'counter', ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET"
                " value = CASE WHEN expires_at <= ? OR kind != 'counter'"
                " THEN excluded.value ELSE value + excluded.value END,"
                " kind = 'counter', expires_at = excluded.expires_at RETURNING value",
                (key, amount, now + ttl_ms, now),
            ).fetchone()
        return int(row[0])

    def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        now = now_ms()
        with self._database.write() as db:
            taken = db.execute(
                "INSERT INTO taskmill_kv (key, kind, value, expires_at) VALUES (?, 'lock', ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET"
                " value = excluded.value, kind = 'lock', expires_at = excluded.expires_at"
                " WHERE expires_at <= ? OR (kind = 'lock' AND value = excluded.value)",
                (key, owner, now + ttl_ms, now),
            ).rowcount
        return taken == 1

    def release(self, key: str, owner: str) -> bool:
        with self._database.write() as db:
            return (
                db.execute(
                    "DELETE FROM taskmill_kv WHERE key = ? AND kind = 'lock' AND value = ? AND expires_at > ?",
                    (key, owner, now_ms()),
                ).rowcount
                == 1
            )

    def close(self) -> None:
        self._database.close()
