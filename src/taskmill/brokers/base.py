"""The Broker interface: the one seam between taskmill and a backend.

A broker stores opaque message bodies and hands them out under *leases*. It knows nothing of
actors or the envelope. Every backend honours the same semantics (tests/contract proves it):

- ``publish`` makes records durable before it returns; a record with ``delay_ms`` becomes
  fetchable ``delay_ms`` after the broker received it, measured on the broker's clock. Publishing
  an id that is still queued (ready, delayed or leased) does nothing: producers may retry safely.
- ``fetch`` hands out fetchable records, highest ``priority`` (0-9) first, then oldest first, each under
  a lease of ``lease_ms`` with a fresh fencing ``token``, and counts the delivery in the broker.
- A delivery whose lease ran out becomes fetchable again (deliveries + 1). When such a record has
  already been delivered ``max_deliveries`` times, the broker dead-letters it with the reason
  ``delivery_limit`` instead, so a message that kills its worker cannot loop forever; the fetching
  instance hands those to ``take_buried`` so the worker can run its dead-letter hooks.
- ``ack``, ``retry``, ``dead_letter`` and ``extend`` succeed only for the current holder: once
  another delivery of the message was fetched, the old token is refused (LeaseLost). A holder
  whose lease ran out but whose message nobody fetched yet may still settle it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from taskmill.errors import ConfigurationError, LeaseLost

__all__ = [
    "DELIVERY_LIMIT_TEXT",
    "TRANSACTION",
    "Broker",
    "DeadLetter",
    "Delivery",
    "Failure",
    "QueueStats",
    "Record",
    "Transaction",
]

#: (broker, target): what that broker publishes through inside ``App.transaction``: the application's own
#: connection, or a backend's buffer for it. Keyed by broker, so another App's sends are not swept into it.
TRANSACTION: ContextVar[tuple[Any, Any] | None] = ContextVar("taskmill_transaction", default=None)

DELIVERY_LIMIT_TEXT = "its lease expired too often: the message keeps killing or stalling its worker"


@dataclass(frozen=True, slots=True)
class Record:
    """What a producer hands the broker: an encoded message and how to route it."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a record to a consumer, valid while its lease holds."""

    id: str
    queue: str
    body: bytes
    priority: int
    deliveries: int  # times this record was handed out, this delivery included
    token: str  # fencing token: only the current holder may settle the record


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a message is dead: a reason code and, for actor errors, the error's text."""

    reason: str  # failed | decode_error | unknown_actor | bad_arguments | payload_too_large | delivery_limit
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    exception: BaseException | None = None  # kept in memory only (memory broker's join); never stored


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in the dead-letter queue, with why it died."""

    id: str
    queue: str
    body: bytes
    priority: int
    reason: str
    error_type: str
    error_message: str
    traceback: str
    deliveries: int
    dead_at_ms: int


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for one queue: fetchable now (expired leases included), waiting for their time, leased, dead."""

    queue: str
    ready: int = 0
    delayed: int = 0
    in_flight: int = 0
    dead: int = 0


class Transaction(AbstractContextManager[None], AbstractAsyncContextManager[None]):
    """What ``App.transaction(conn)`` returns: ``with`` it for a sync connection, ``async with`` for an async one."""


class Broker(abc.ABC):
    """Stores message bodies and leases them to consumers; one subclass per backend."""

    #: True when send() should run the actor at once in the caller (memory://?eager=1).
    eager: bool = False

    def __init__(self, url: str, *, max_deliveries: int = 25) -> None:
        self.url = url
        self.max_deliveries = max_deliveries
        self._buried: list[DeadLetter] = []

    def take_buried(self) -> list[DeadLetter]:
        """Messages this instance dead-lettered for ``delivery_limit`` while fetching, since the last call."""
        buried, self._buried = self._buried, []
        return buried

    def transaction(self, connection: Any) -> Transaction:
        """A block whose sends are written through ``connection``, in the application's own transaction."""
        raise ConfigurationError(f"{self.url.split(':')[0]}:// cannot join an application transaction")

    @property
    def location(self) -> str:
        """Where the data lives, for the worker's banner (for sqlite, a URL with the file's absolute path)."""
        return self.url

    # -- producing -----------------------------------------------------------------------------
    @abc.abstractmethod
    def publish(self, records: Sequence[Record]) -> None:
        """Store ``records`` durably; all of them or (on error) possibly none."""

    # -- consuming -----------------------------------------------------------------------------
    @abc.abstractmethod
    def fetch(self, queues: Sequence[str], limit: int, lease_ms: int) -> list[Delivery]:
        """Lease up to ``limit`` fetchable records from ``queues``, best priority first."""

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, lease_ms: int
    ) -> tuple[list[Delivery], list[Delivery]]:
        """Ack ``acks`` then fetch, in one round trip where the backend can; returns (lost, fetched)."""
        lost = self.ack(acks) if acks else []
        return lost, self.fetch(queues, limit, lease_ms)

    @abc.abstractmethod
    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block up to ``timeout`` seconds, returning early when a fetch may find something."""

    @abc.abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Delete finished records; return the deliveries refused because their lease was lost."""

    @abc.abstractmethod
    def extend(self, deliveries: Sequence[Delivery], lease_ms: int) -> list[Delivery]:
        """Renew leases to ``lease_ms`` from now; return the deliveries whose lease was lost."""

    @abc.abstractmethod
    def retry(self, delivery: Delivery, delay_ms: int) -> None:
        """Make the record fetchable again after ``delay_ms``; LeaseLost if not the holder."""

    @abc.abstractmethod
    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give unstarted deliveries back at once, uncounted (shutdown); lost leases are ignored."""

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, failure: Failure) -> None:
        """Move the record to the dead-letter queue; LeaseLost if not the holder."""

    # -- inspecting and operating --------------------------------------------------------------
    @abc.abstractmethod
    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        """Counts per queue (every known queue when ``queues`` is None), sorted by name."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Delete the ready (expired leases included) and delayed records of ``queue``; returns count.

        Records under a live lease are left to finish.
        """

    @abc.abstractmethod
    def dead_letters(self, queue: str | None = None, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Dead letters, newest first, a page at a time."""

    @abc.abstractmethod
    def retry_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        """Move dead letters (by id, by queue, or all) back to their queue with a fresh count.

        A dead letter whose id is queued again already stays dead. Returns how many moved.
        """

    @abc.abstractmethod
    def purge_dead(self, ids: Sequence[str] | None = None, queue: str | None = None) -> int:
        """Delete dead letters (by id, by queue, or all). Returns how many."""

    def stop_consuming(self) -> None:  # noqa: B027 -- optional hook; only push-based brokers hold anything
        """Stop receiving, and give back (uncounted) what was received but never handed out by ``fetch``."""

    def migrate(self) -> list[str]:
        """Bring the backend's schema up to date; the names of the migrations applied (none by default)."""
        return []

    def close(self) -> None:  # noqa: B027 -- optional hook; most backends have something to close
        """Release connections and files."""

    # -- conveniences over the batch operations ------------------------------------------------
    def ack_one(self, delivery: Delivery) -> None:
        """Ack one delivery, raising LeaseLost if the lease was lost."""
        if self.ack([delivery]):
            raise LeaseLost(f"message {delivery.id} is leased to another delivery; ack refused")
