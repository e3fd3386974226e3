"""The ceiling: what Python and Redis allow on this machine with no framework at all.

Messages are taskmill's own JSON envelopes, stored as a body hash plus a ready list. The consumer
(``python -m systems.ceiling_redis``) is one process and one thread: a Lua script pops up to 100
ids and leases them (ZADD to a leased set, returning the bodies), each body is decoded with orjson
and its function called (the same bookkeeping as every system's task), then one pipeline deletes
the batch (ZREM + HDEL). When the list is empty it blocks in BLPOP, so there is no polling sleep.
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import redis

from systems.base import REDIS_URL, System, record, record_latency, record_sleep

READY, LEASED, BODY = "ceiling:ready", "ceiling:leased", "ceiling:body"
BATCH = 100
LEASE_MS = 30_000

FETCH = """
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local bodies = {}
for i, id in ipairs(ids) do
  redis.call('ZADD', KEYS[2], ARGV[2], id)
  bodies[i] = redis.call('HGET', KEYS[3], id)
end
return {ids, bodies}
"""

FUNCS = {"noop": record, "sleep": record_sleep, "latency": record_latency}


def _body(task: str, args: Sequence[Any]) -> tuple[str, bytes]:
    message_id = uuid.uuid4().hex
    envelope = {
        "v": 1,
        "id": message_id,
        "actor": task,
        "queue": "default",
        "args": list(args),
        "kwargs": {},
        "priority": 0,
        "created_ms": time.time_ns() // 1_000_000,
    }
    return message_id, orjson.dumps(envelope)


class Ceiling(System):
    name = "ceiling"
    concurrency = "1 process, 1 thread, batches of 100"
    bulk_api = "pipeline of HSET+RPUSH x 1000"
    notes = "hand-written consumer: Lua batch pop + lease, orjson decode, pipelined deletes"

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(REDIS_URL)

    def send(self, task: str, *args: Any) -> None:
        message_id, body = _body(task, args)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(BODY, message_id, body)
        pipe.rpush(READY, message_id)
        pipe.execute()

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for args in arg_list:
            message_id, body = _body(task, args)
            pipe.hset(BODY, message_id, body)
            pipe.rpush(READY, message_id)
        pipe.execute()

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "systems.ceiling_redis"]

    def close(self) -> None:
        self.client.close()


def system() -> System:
    return Ceiling()


def consume() -> None:
    """The consumer loop; runs until killed."""
    client = redis.Redis.from_url(REDIS_URL)
    fetch = client.register_script(FETCH)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        result = fetch(keys=[READY, LEASED, BODY], args=[BATCH, int(time.time() * 1000) + LEASE_MS])
        if result:
            ids, bodies = result
        else:
            popped = client.blpop([READY], timeout=1)
            if popped is None:
                continue
            pipe = client.pipeline(transaction=False)
            pipe.zadd(LEASED, {popped[1]: int(time.time() * 1000) + LEASE_MS})
            pipe.hget(BODY, popped[1])
            ids, bodies = [popped[1]], [pipe.execute()[1]]
        for body in bodies:
            envelope = orjson.loads(body)
            FUNCS[envelope["actor"]](*envelope["args"], **envelope["kwargs"])
        pipe = client.pipeline(transaction=False)
        pipe.zrem(LEASED, *ids)
        pipe.hdel(BODY, *ids)
        pipe.execute()


if __name__ == "__main__":
    consume()
