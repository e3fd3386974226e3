"""redis:// and rediss:// — the Redis broker. Every state change is one Lua script (in redis_lua/
beside this module), so fetch-and-lease, ack and the crash guard are atomic; times come from
Redis's own clock (``TIME``).

Each queue's keys share the hash tag ``{queue}``, ready for Redis Cluster, but the client is a
single-server one: run taskmill on one Redis server (with a replica for failover). An idle worker
parks and a publish hands it a message directly (redis_park.py), never polling. The client is
taskmill's own (redis_client.py).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from taskmill import encoding
from taskmill.brokers.base import DELIVERY_LIMIT_TEXT, Broker, DeadLetter, Delivery, Failure, QueueStats, Record
from taskmill.brokers.redis_park import Parking
from taskmill.errors import ConfigurationError, LeaseLost
from taskmill.redis_client import connect

__all__ = ["RedisBroker"]

_LUA = Path(__file__).with_name("redis_lua")
_COMMON = (_LUA / "common.lua").read_text()
_KEY_NAMES = ("ready", "delayed", "leased", "body", "meta", "dead", "deadinfo", "deadbody", "waiters", "seq")
_DEAD_RETENTION_S = 7 * 86400.0
_KEY_CACHE_SIZE = 10_000  # queues whose key names are kept ready (bounded: queue names may be unbounded)


class RedisBroker(Broker):
    """Queues as sorted sets and hashes under a key prefix; leases carry fencing tokens."""

    def __init__(self, url: str, *, max_deliveries: int = 25) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        query = dict(parse_qsl(urlsplit(url).query))
        try:
            retention = float(query.get("dead_retention", _DEAD_RETENTION_S))
        except ValueError:
            raise ConfigurationError("dead_retention must be a number of seconds") from None
        self.dead_retention_ms = int(retention * 1000)
        self._client, self.prefix = connect(url)
        self._scripts = {
            name: self._client.script(_COMMON + (_LUA / f"{name}.lua").read_text())
            for name in ("publish", "fetch", "settle", "inspect", "operate", "park")
        }
        self._key_cache: dict[str, list[str]] = {}  # queue -> its keys; read-only once made
        self._parking = Parking(self._run, self._client, self._keys, self.release)
        self._lease_ms = 30_000  # the last fetch's lease: a message handed to this worker while parked gets it

    @property
    def location(self) -> str:
        return self._client.location

    def _keys(self, queue: str) -> list[str]:
        keys = self._key_cache.get(queue)
        if keys is None:
            if "{" in queue or "}" in queue:
                raise ConfigurationError(f"queue {queue!r}: Redis queue names cannot contain braces")
            keys = [f"{self.prefix}:{{{queue}}}:{name}" for name in _KEY_NAMES[:-1]]
            keys.append(f"{self.prefix}:seq")  # one sequence for every queue: "oldest first" holds across queues
            if len(self._key_cache) < _KEY_CACHE_SIZE:
                self._key_cache[queue] = keys
        return keys

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts[name](keys, args)

    # -- producing -----------------------------------------------------------------------------
    def publish(self, records: Sequence[Record]) -> None:
        by_queue: dict[str, list[Any]] = defaultdict(list)
        for r in records:
            by_queue[r.queue].extend((r.id, r.priority, max(r.delay_ms, 0), r.body))
        if not by_queue:
            return
        for queue, args in by_queue.items():  # one round trip per queue: EVALSHA, loading the script if needed
            self._run("publish", [*self._keys(queue), f"{self.prefix}:queues"], [queue, *args])

    # -- consuming -----------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, lease_ms: int) -> list[Delivery]:
        return self.ack_and_fetch((), queues, limit, lease_ms)[1]

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        return self.ack_and_fetch(deliveries, (), 0, 0)[0] if deliveries else []

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, lease_ms: int
    ) -> tuple[list[Delivery], list[Delivery]]:
        limit = max(limit, 0) if queues else 0
        handed = self._parking.take(queues, limit) if limit else []
        if handed and not acks:
            return [], handed  # what a publish handed this worker while it was parked: no round trip
        limit -= len(handed)
        order = list(dict.fromkeys([*queues, *(d.queue for d in acks)]))
        if not order or (not acks and not limit):
            return [], handed
        if limit:
            self._lease_ms = lease_ms
        index = {queue: i + 1 for i, queue in enumerate(order)}
        keys = self._keys(order[0]) if len(order) == 1 else [key for queue in order for key in self._keys(queue)]
        args: list[Any] = [limit, lease_ms, self.max_deliveries, self.dead_retention_ms, DELIVERY_LIMIT_TEXT, len(acks)]
        for delivery in acks:
            args.extend((index[delivery.queue], delivery.id, delivery.token))
        args.append(os.urandom(12).hex())  # this call's fencing nonce; each token adds its position
        args.append(self._parking.park_id())  # its inboxes are drained into this fetch
        lost_positions, buried, *rows = self._run("fetch", keys, args)
        lost = [acks[position - 1] for position in lost_positions]
        dead_at = int(time.time() * 1000)
        self._buried.extend(
            DeadLetter(
                _text(b[1]),
                order[int(b[0]) - 1],
                bytes(b[2] or b""),
                int(b[3]),
                "delivery_limit",
                "",
                DELIVERY_LIMIT_TEXT,
                "",
                int(b[4]),
                dead_at,
            )
            for b in buried
        )
        fetched = handed + [
            Delivery(_text(row[1]), order[int(row[0]) - 1], bytes(row[2]), int(row[3]), int(row[4]), _text(row[5]))
            for row in rows
        ]
        wanted = len(handed) + limit
        if len(fetched) > wanted:  # the inboxes held more than asked for: leased to us, kept for the next fetch
            self._parking.keep(fetched[wanted:])
            fetched = fetched[:wanted]
        return lost, fetched

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        self._parking.wait(queues, timeout, self._lease_ms)

    def extend(self, deliveries: Sequence[Delivery], lease_ms: int) -> list[Delivery]:
        return [d for d in deliveries if not self._settle("extend", d, [lease_ms])]

    def retry(self, delivery: Delivery, delay_ms: int) -> None:
        if not self._settle("retry", delivery, [max(delay_ms, 0)]):
            raise LeaseLost(f"message {delivery.id} is leased to another delivery; retry refused")

    def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._settle("release", delivery, [])

    def dead_letter(self, delivery: Delivery, failure: Failure) -> None:
        fields = [failure.reason, failure.error_type, failure.error_message, failure.traceback]
        if not self._settle("dead", delivery, fields):
            raise LeaseLost(f"message {delivery.id} is leased to another delivery; dead-letter refused")

    def _settle(self, op: str, delivery: Delivery, extra: list[Any]) -> bool:
        return bool(self._run("settle", self._keys(delivery.queue), [op, delivery.id, delivery.token, *extra]))

    # -- inspecting and operating --------------------------------------------------------------
    def _known_queues(self) -> list[str]:
        return sorted(_text(q) for q in self._client.call("SMEMBERS", f"{self.prefix}:queues"))

    def _inspect(self, queues: Sequence[str]) -> list[Any]:
        return list(self._run("inspect", [k for q in queues for k in self._keys(q)], []))

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        names = sorted(self._known_queues() if queues is None else queues)
        if not names:
            return []
        rows = self._inspect(names)[:-1]
        return [QueueStats(name, *(int(n) for n in row)) for name, row in zip(names, rows, strict=True)]

    def purge(self, queue: str) -> int:
        return int(self._run("operate", self._keys(queue), ["purge"]))

    def dead_letters(self, queue: str | None = None, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        names = [queue] if queue is not None else self._known_queues()
        newest: list[tuple[float, str, str]] = []
        for name in names:
            flat = self._client.call("ZREVRANGE", self._keys(name)[5], 0, offset + limit - 1, "WITHSCORES")
            newest.extend(
                (float(score), name, _text(member)) for member, score in zip(flat[::2], flat[1::2], strict=True)
            )
        newest.sort(key=lambda item: item[0], reverse=True)
        page = newest[offset : offset + limit]
        commands = []
        for _, name, message_id in page:
            keys = self._keys(name)
            commands += [("HGET", keys[6], message_id), ("HGET", keys[7], message_id)]
        fetched = self._client.pipeline(commands) if commands else []
        letters = []
        for (score, name, message_id), info, body in zip(page, fetched[::2], fetched[1::2], strict=True):
            detail = encoding.loads(info or b"{}")
            letters.append(
                DeadLetter(
                    message_id,
                    name,
                    bytes(body or b""),
                    int(detail.get("priority", 0)),
                    detail.get("reason", ""),
                    detail.get("error_type", ""),
                    detail.get("error_message", ""),
                    detail.get("traceback", ""),
                    int(detail.get("deliveries", 0)),
                    int(score) // 1000,  # scored in microseconds
                )
            )
        return letters

    def retry_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        return self._on_dead("retry_dead", ids, queue)

    def purge_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        return self._on_dead("purge_dead", ids, queue)

    def _on_dead(self, op: str, ids: Sequence[str] | None, queue: str | None) -> int:
        if ids is not None and not ids:
            return 0
        selection = ["ids", *ids] if ids is not None else ["all"]
        names = [queue] if queue is not None else self._known_queues()
        return sum(int(self._run("operate", self._keys(name), [op, *selection])) for name in names)

    def stop_consuming(self) -> None:
        """Park no more, and give back (uncounted) what was handed to this worker but not fetched."""
        back = self._parking.leave()
        if back:
            self.release(back)

    def close(self) -> None:
        try:
            self.stop_consuming()
        finally:
            self._client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
