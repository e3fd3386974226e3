"""The result Store interface: small key-value primitives that results, groups, rate limits and the
scheduler's leader lock are built from. Every backend honours the same semantics (tests/contract):

- ``put``/``get`` with a TTL; an expired key reads as absent. ``wait`` blocks until a key exists.
- ``add`` puts a member in a set and says whether it was new and how big the set is now: the
  idempotent counter that fires a group's callback once even when a member runs twice.
- ``incr`` is an atomic counter; ``acquire``/``release`` a lock with a TTL and an owner token.

TTLs are measured on the store's clock. Values are opaque bytes.
"""

from __future__ import annotations

import abc

__all__ = ["FOREVER", "Store"]

FOREVER = 365 * 86400.0  # what "no timeout" waits: long enough, and finite for every lock and socket


class Store(abc.ABC):
    """Key-value storage with TTLs, sets, counters and locks; one subclass per backend."""

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    def put(self, key: str, value: bytes, ttl_ms: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms``, replacing what was there."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when absent or expired."""

    @abc.abstractmethod
    def wait(self, key: str, timeout: float) -> bytes | None:
        """Block up to ``timeout`` seconds until ``key`` has a value; None if it never came."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key`` (value, set or counter); True if something was there."""

    @abc.abstractmethod
    def add(self, key: str, member: str, ttl_ms: int) -> tuple[bool, int]:
        """Add ``member`` to the set ``key``; return (whether it was new, the set's size now)."""

    @abc.abstractmethod
    def incr(self, key: str, amount: int, ttl_ms: int) -> int:
        """Add ``amount`` to the counter ``key`` (absent counts as 0) and return the new value."""

    @abc.abstractmethod
    def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew the lock ``key`` for ``owner`` for ``ttl_ms``; False if another owner holds it."""

    @abc.abstractmethod
    def release(self, key: str, owner: str) -> bool:
        """Release the lock if ``owner`` holds it; True if it did."""

    def close(self) -> None:  # noqa: B027 -- optional hook
        """Release connections and files."""
