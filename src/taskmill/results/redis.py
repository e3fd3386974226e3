"""redis:// and rediss:// — the result store in Redis, on the connection options the Redis broker uses.

Each kind lives in its own Redis key (``{prefix}:kv:{key}``, ``:counter:``, ``:set:``, ``:lock:``), so a
key of one kind never reads as another; ``delete`` removes all four. Expiry is Redis's own (PX/PEXPIRE),
so every client shares one clock. ``put`` publishes on ``{prefix}:put:{key}`` in the same transaction,
which is what ``wait`` sleeps on.
"""

from __future__ import annotations

import time
from pathlib import Path

from taskmill.redis_client import connect
from taskmill.results.base import Store

__all__ = ["RedisStore"]

_KINDS = ("kv", "counter", "set", "lock")
# wait() looks again at least this often even without a notification: a put published while the pub/sub
# connection was down reached nobody, and a half-open connection never says it is down.
_RECHECK_S = 5.0


def _script(name: str) -> str:
    return Path(__file__).with_name(f"redis_{name}.lua").read_text()


def _px(ttl_ms: int) -> int:
    # Redis rejects PX 0; other stores treat a TTL of 0 as expiring at once, which 1 ms nearly is.
    return max(1, ttl_ms)


class RedisStore(Store):
    """Plain Redis keys with server-side expiry; the lock's check-and-set steps run as Lua scripts."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._client, self._prefix = connect(url)
        self._acquire = self._client.script(_script("acquire"))
        self._release = self._client.script(_script("release"))

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}:{kind}:{key}"

    def put(self, key: str, value: bytes, ttl_ms: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms`` and wake whoever waits for it."""
        name = self._key("kv", key)
        self._client.pipeline(
            [("SET", name, value, "PX", _px(ttl_ms)), ("PUBLISH", self._key("put", key), b"")], transaction=True
        )

    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when absent or expired."""
        value = self._client.call("GET", self._key("kv", key))
        assert value is None or isinstance(value, bytes), "the Redis client must not decode responses"
        return value

    def wait(self, key: str, timeout: float) -> bytes | None:
        """Block up to ``timeout`` seconds until ``key`` has a value, woken by ``put``'s notification."""
        deadline = time.monotonic() + timeout
        subscription = self._client.subscription()
        try:
            subscription.subscribe(self._key("put", key))
            while True:
                # The first event is the server confirming the subscription: only then is a look safe,
                # since any put after it publishes to us. Each later one (a put, or the re-subscription
                # after a reconnect) is a reason to look again.
                subscription.get(max(0.0, min(deadline - time.monotonic(), _RECHECK_S)))
                value = self.get(key)
                if value is not None or time.monotonic() >= deadline:
                    return value
        finally:
            subscription.close()

    def delete(self, key: str) -> bool:
        """Remove ``key`` whatever its kind; True if something live was there."""
        # UNLINK skips keys that have expired but not yet been evicted: they count as absent.
        return int(self._client.call("UNLINK", *(self._key(kind, key) for kind in _KINDS))) > 0

    def add(self, key: str, member: str, ttl_ms: int) -> tuple[bool, int]:
        """Add ``member`` to the set ``key`` and renew its TTL; (whether it was new, the set's size)."""
        name = self._key("set", key)
        added, _, size = self._client.pipeline(
            [("SADD", name, member), ("PEXPIRE", name, _px(ttl_ms)), ("SCARD", name)], transaction=True
        )
        return added == 1, int(size)

    def incr(self, key: str, amount: int, ttl_ms: int) -> int:
        """Add ``amount`` to the counter ``key`` (absent or expired counts as 0), renew its TTL; the total."""
        name = self._key("counter", key)
        total, _ = self._client.pipeline([("INCRBY", name, amount), ("PEXPIRE", name, _px(ttl_ms))], transaction=True)
        return int(total)

    def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew the lock ``key`` for ``owner`` for ``ttl_ms``; False if another owner holds it."""
        return bool(self._acquire([self._key("lock", key)], [owner, _px(ttl_ms)]))

    def release(self, key: str, owner: str) -> bool:
        """Release the lock if ``owner`` holds it; True if it did."""
        return bool(self._release([self._key("lock", key)], [owner]))

    def close(self) -> None:
        """Close the client's idle connections."""
        self._client.close()
