"""memory:// — an in-process broker for users' own tests.

``join(queue)`` waits until a queue is drained and, with ``fail_fast``, re-raises the error of an
actor whose message was dead-lettered. ``memory://?eager=1`` makes send() run actors inline.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from taskmill.brokers.base import DELIVERY_LIMIT_TEXT, Broker, DeadLetter, Delivery, Failure, QueueStats, Record
from taskmill.errors import LeaseLost
from taskmill.message import now_ms

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Entry:
    record: Record
    seq: int
    available_at: int  # ms: run-at while waiting, lease expiry while leased
    deliveries: int = 0
    token: str | None = None  # set while leased


class MemoryBroker(Broker):
    """A thread-safe broker in one process's memory; nothing survives the process."""

    def __init__(self, url: str = "memory://", *, max_deliveries: int = 25) -> None:
        super().__init__(url, max_deliveries=max_deliveries)
        query = parse_qs(urlsplit(url).query)
        self.eager = query.get("eager", ["0"])[-1].lower() in {"1", "true", "yes"}
        self._entries: dict[str, _Entry] = {}
        self._dead: dict[str, tuple[DeadLetter, Failure]] = {}
        self._queues: set[str] = set()
        self._reported: set[str] = set()  # dead letters a join already raised
        self._seq = 0
        self._changed = threading.Condition()

    def publish(self, records: Sequence[Record]) -> None:
        now = now_ms()
        with self._changed:
            for record in records:
                if record.id in self._entries:
                    continue  # publishing an id that is still queued is a no-op, as on every backend
                self._seq += 1
                self._entries[record.id] = _Entry(record, self._seq, now + max(record.delay_ms, 0))
                self._queues.add(record.queue)
            self._changed.notify_all()

    def fetch(self, queues: Sequence[str], limit: int, lease_ms: int) -> list[Delivery]:
        now = now_ms()
        wanted = set(queues)
        with self._changed:
            due = [e for e in self._entries.values() if e.record.queue in wanted and e.available_at <= now]
            due.sort(key=lambda e: (-e.record.priority, e.seq))
            out: list[Delivery] = []
            for entry in due:
                if len(out) >= limit:
                    break
                if entry.token is not None and entry.deliveries >= self.max_deliveries:
                    self._bury(entry, Failure("delivery_limit", error_message=DELIVERY_LIMIT_TEXT))
                    continue
                entry.deliveries += 1
                entry.token = uuid.uuid4().hex
                entry.available_at = now + lease_ms
                out.append(self._delivery(entry))
            return out

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = set(queues)
        with self._changed:
            while (remaining := deadline - time.monotonic()) > 0:
                soonest = min(
                    (e.available_at for e in self._entries.values() if e.record.queue in wanted),
                    default=None,
                )
                if soonest is not None and soonest <= now_ms():
                    return
                if soonest is not None:
                    remaining = min(remaining, (soonest - now_ms()) / 1000)
                self._changed.wait(max(remaining, 0.001))

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        lost = []
        with self._changed:
            for delivery in deliveries:
                if self._holds(delivery):
                    del self._entries[delivery.id]
                else:
                    lost.append(delivery)
            self._changed.notify_all()
        return lost

    def extend(self, deliveries: Sequence[Delivery], lease_ms: int) -> list[Delivery]:
        now = now_ms()
        lost = []
        with self._changed:
            for delivery in deliveries:
                if self._holds(delivery):
                    self._entries[delivery.id].available_at = now + lease_ms
                else:
                    lost.append(delivery)
        return lost

    def retry(self, delivery: Delivery, delay_ms: int) -> None:
        with self._changed:
            entry = self._held(delivery)
            entry.token = None
            entry.available_at = now_ms() + max(delay_ms, 0)
            self._changed.notify_all()

    def release(self, deliveries: Sequence[Delivery]) -> None:
        with self._changed:
            for delivery in deliveries:
                if self._holds(delivery):
                    entry = self._entries[delivery.id]
                    entry.token = None
                    entry.deliveries -= 1
                    entry.available_at = now_ms()
            self._changed.notify_all()

    def dead_letter(self, delivery: Delivery, failure: Failure) -> None:
        with self._changed:
            self._bury(self._held(delivery), failure)
            self._changed.notify_all()

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        now = now_ms()
        with self._changed:
            names = sorted(self._queues if queues is None else set(queues))
            counts = {name: [0, 0, 0, 0] for name in names}
            for entry in self._entries.values():
                row = counts.get(entry.record.queue)
                if row is not None:
                    row[0 if entry.available_at <= now else 2 if entry.token else 1] += 1
            for dead, _ in self._dead.values():
                if dead.queue in counts:
                    counts[dead.queue][3] += 1
        return [QueueStats(name, *counts[name]) for name in names]

    def purge(self, queue: str) -> int:
        with self._changed:
            now = now_ms()
            doomed = [
                i
                for i, e in self._entries.items()
                if e.record.queue == queue and (e.token is None or e.available_at <= now)
            ]
            for message_id in doomed:
                del self._entries[message_id]
            self._changed.notify_all()
        return len(doomed)

    def dead_letters(self, queue: str | None = None, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        with self._changed:
            dead = [d for d, _ in self._dead.values() if queue is None or d.queue == queue]
        return list(reversed(dead))[offset : offset + limit]

    def retry_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        with self._changed:
            chosen = [d for d in self._select_dead(ids, queue) if d.id not in self._entries]
            self.publish([Record(d.id, d.queue, d.body, d.priority) for d in chosen])
            for dead in chosen:
                del self._dead[dead.id]
        return len(chosen)

    def purge_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        with self._changed:
            chosen = self._select_dead(ids, queue)
            for dead in chosen:
                del self._dead[dead.id]
            self._changed.notify_all()
        return len(chosen)

    def join(self, queue: str = "default", timeout: float | None = None, *, fail_fast: bool = True) -> None:
        """Wait until ``queue`` has nothing ready, delayed or in flight.

        With ``fail_fast``, raise the error of a message of ``queue`` that was dead-lettered and
        that no earlier join raised (the actor's own exception where there is one).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                if fail_fast:
                    for message_id, (dead, failure) in self._dead.items():
                        if dead.queue == queue and message_id not in self._reported:
                            self._reported.add(message_id)  # each dead letter fails one join
                            if failure.exception is not None:
                                raise failure.exception
                            raise RuntimeError(f"message {message_id} was dead-lettered: {dead.reason}")
                if not any(e.record.queue == queue for e in self._entries.values()):
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"queue {queue!r} was not drained within {timeout} s")
                self._changed.wait(0.05 if remaining is None else min(remaining, 0.05))

    # -- helpers, called with the lock held ------------------------------------------------------
    def _holds(self, delivery: Delivery) -> bool:
        entry = self._entries.get(delivery.id)
        return entry is not None and entry.token == delivery.token

    def _held(self, delivery: Delivery) -> _Entry:
        if not self._holds(delivery):
            raise LeaseLost(f"message {delivery.id} is leased to another delivery")
        return self._entries[delivery.id]

    def _bury(self, entry: _Entry, failure: Failure) -> None:
        record = entry.record
        del self._entries[record.id]
        dead = DeadLetter(
            record.id, record.queue, record.body, record.priority, failure.reason,
            failure.error_type, failure.error_message, failure.traceback, entry.deliveries, now_ms(),
        )  # fmt: skip
        self._dead.pop(record.id, None)
        self._dead[record.id] = (dead, failure)
        if failure.reason == "delivery_limit":
            self._buried.append(dead)

    def _select_dead(self, ids: Sequence[str] | None, queue: str | None) -> list[DeadLetter]:
        wanted = None if ids is None else set(ids)
        return [
            d
            for d, _ in self._dead.values()
            if (wanted is None or d.id in wanted) and (queue is None or d.queue == queue)
        ]

    @staticmethod
    def _delivery(entry: _Entry) -> Delivery:
        record = entry.record
        assert entry.token is not None
        return Delivery(record.id, record.queue, record.body, record.priority, entry.deliveries, entry.token)
