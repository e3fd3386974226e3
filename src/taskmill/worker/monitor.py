"""The worker's monitor thread: it renews the leases of the messages in flight every third of the
lease (a heartbeat), and interrupts a sync actor that runs past its time limit."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from taskmill.brokers.base import Delivery
from taskmill.errors import BrokerError
from taskmill.worker.executor import cancel_interrupt, interrupt_thread

if TYPE_CHECKING:
    from taskmill.app import App

__all__ = ["Monitor"]

log = logging.getLogger("taskmill.worker")


class Monitor:
    """Heartbeats for what ``held()`` returns, and sync actors' deadlines, until ``stopped`` is set.
    ``first_losses`` gets the deliveries a heartbeat found lost and returns those to warn about."""

    def __init__(
        self,
        app: App,
        lease_ms: int,
        held: Callable[[], list[Delivery]],
        first_losses: Callable[[list[Delivery]], list[Delivery]],
        stopped: threading.Event,
    ) -> None:
        self.app = app
        self.lease_ms = lease_ms
        self._held = held
        self._first_losses = first_losses
        self._stopped = stopped
        self._deadlines: dict[int, float] = {}  # thread id -> monotonic deadline of its sync actor
        self._lock = threading.Lock()

    def run(self) -> None:
        beat_every = self.lease_ms / 3000
        next_beat = time.monotonic() + beat_every
        while not self._stopped.wait(0.05):
            now = time.monotonic()
            with self._lock:
                for thread_id, deadline in list(self._deadlines.items()):
                    if now >= deadline:
                        del self._deadlines[thread_id]
                        interrupt_thread(thread_id)
            if now < next_beat:
                continue
            next_beat = now + beat_every
            if held := self._held():
                self._beat(held)

    def _beat(self, held: list[Delivery]) -> None:
        try:
            lost = self.app.broker.extend(held, self.lease_ms)
        except BrokerError as exc:
            log.warning("heartbeat failed (%s); leases may expire", exc)
            return
        for delivery in self._first_losses(lost):  # an ack in progress is not a lost lease
            log.warning("lease lost on message %s; it may run elsewhere", delivery.id)

    @contextlib.contextmanager
    def time_limit(self, seconds: float) -> Iterator[None]:
        """Arm this thread's deadline; disarm it, withdrawing an interrupt not yet raised."""
        ident = threading.get_ident()
        with self._lock:  # a plain Lock: its C-level enter leaves no gap for the interrupt
            self._deadlines[ident] = time.monotonic() + seconds
        try:
            yield
        finally:
            with self._lock:
                self._deadlines.pop(ident, None)
                cancel_interrupt(ident)
