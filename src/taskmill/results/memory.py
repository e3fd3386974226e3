"""memory:// — a result store in this process's memory, for tests and eager mode."""

from __future__ import annotations

import threading
import time

from taskmill.message import now_ms
from taskmill.results.base import Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Dicts behind one lock; expiry is checked on read."""

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self._values: dict[str, tuple[object, int]] = {}  # key -> (bytes | int | owner | set, expires_at)
        self._changed = threading.Condition()

    def _live(self, key: str) -> object | None:
        entry = self._values.get(key)
        if entry is None or entry[1] <= now_ms():
            self._values.pop(key, None)
            return None
        return entry[0]

    def put(self, key: str, value: bytes, ttl_ms: int) -> None:
        with self._changed:
            self._values[key] = (bytes(value), now_ms() + ttl_ms)
            self._changed.notify_all()

    def get(self, key: str) -> bytes | None:
        with self._changed:
            value = self._live(key)
        return value if isinstance(value, bytes) else None

    def wait(self, key: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = self._live(key)
                if isinstance(value, bytes):
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def delete(self, key: str) -> bool:
        with self._changed:
            live = self._live(key) is not None
            self._values.pop(key, None)
            return live

    def add(self, key: str, member: str, ttl_ms: int) -> tuple[bool, int]:
        with self._changed:
            members = self._live(key)
            if not isinstance(members, set):
                members = set()
            added = member not in members
            members.add(member)
            self._values[key] = (members, now_ms() + ttl_ms)
            return added, len(members)

    def incr(self, key: str, amount: int, ttl_ms: int) -> int:
        with self._changed:
            current = self._live(key)
            total = (current if isinstance(current, int) else 0) + amount
            self._values[key] = (total, now_ms() + ttl_ms)
            return total

    def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        with self._changed:
            holder = self._live(key)
            if holder is not None and holder != ("lock", owner):
                return False
            self._values[key] = (("lock", owner), now_ms() + ttl_ms)
            return True

    def release(self, key: str, owner: str) -> bool:
        with self._changed:
            if self._live(key) != ("lock", owner):
                return False
            del self._values[key]
            return True
