"""redis:// and rediss:// — the result store in Redis, on the connection options the Redis broker uses.

Each kind lives in its own Redis key (``{prefix}:kv:{key}``, ``:counter:``, ``:set:``, ``:lock:``), so a
key of one kind never reads as another; ``delete`` removes all four. Expiry is Redis's own (PX/PEXPIRE),
so every client shares one clock. ``put`` publishes on ``{prefix}:put:{key}`` in the same transaction,
which is what ``wait`` sleeps on.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from taskmill.redis_conn import connect, translated
from taskmill.results.base import Store

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

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
        self._client: redis.Redis
        self._client, self._prefix = connect(url)
        self._acquire: Script = self._client.register_script(_script("acquire"))
        self._release: Script = self._client.register_script(_script("release"))

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}:{kind}:{key}"

    def put(self, key: str, value: bytes, ttl_ms: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_ms`` and wake whoever waits for it."""
        with translated(), self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._key("kv", key), value, px=_px(ttl_ms))
            pipe.publish(self._key("put", key), b"")
            pipe.execute()

    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when absent or expired."""
        with translated():
            value = self._client.get(self._key("kv", key))
        assert value is None or isinstance(value, bytes), "the Redis client must not decode responses"
        return value

    def wait(self, key: str, timeout: float) -> bytes | None:
        """Block up to ``timeout`` seconds until ``key`` has a value, woken by ``put``'s notification."""
        deadline = time.monotonic() + timeout
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves pubsub() unannotated
        with translated(), closing(pubsub):
            pubsub.subscribe(self._key("put", key))
            while True:
                # The first message is the server confirming the subscription: only then is a look safe,
                # since any put after it publishes to us. Each later one (a put, or the re-subscription
                # after a reconnect) is a reason to look again.
                pubsub.get_message(timeout=max(0.0, min(deadline - time.monotonic(), _RECHECK_S)))
                value = self.get(key)
                if value is not None or time.monotonic() >= deadline:
                    return value

    def delete(self, key: str) -> bool:
        """Remove ``key`` whatever its kind; True if something live was there."""
        with translated():
            # UNLINK skips keys that have expired but not yet been evicted: they count as absent.
            return self._client.unlink(*(self._key(kind, key) for kind in _KINDS)) > 0

    def add(self, key: str, member: str, ttl_ms: int) -> tuple[bool, int]:
        """Add ``member`` to the set ``key`` and renew its TTL; (whether it was new, the set's size)."""
        with translated(), self._client.pipeline(transaction=True) as pipe:
            name = self._key("set", key)
            pipe.sadd(name, member)
            pipe.pexpire(name, _px(ttl_ms))
            pipe.scard(name)
            added, _, size = pipe.execute()
        return added == 1, int(size)

    def incr(self, key: str, amount: int, ttl_ms: int) -> int:
        """Add ``amount`` to the counter ``key`` (absent or expired counts as 0), renew its TTL; the total."""
        with translated(), self._client.pipeline(transaction=True) as pipe:
            name = self._key("counter", key)
            pipe.incrby(name, amount)
            pipe.pexpire(name, _px(ttl_ms))
            total, _ = pipe.execute()
        return int(total)

    def acquire(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew the lock ``key`` for ``owner`` for ``ttl_ms``; False if another owner holds it."""
        with translated():
            return bool(self._acquire(keys=[self._key("lock", key)], args=[owner, _px(ttl_ms)]))

    def release(self, key: str, owner: str) -> bool:
        """Release the lock if ``owner`` holds it; True if it did."""
        with translated():
            return bool(self._release(keys=[self._key("lock", key)], args=[owner]))

    def close(self) -> None:
        """Close the client's connection pool."""
        with translated():
            self._client.close()
