"""Worker: fetch under leases, run on threads, heartbeat, settle (ack, retry, dead-letter), stop cleanly.

Prefetch is bounded by free slots: the worker never holds a message it cannot start at once, so a
high-priority message is the next one a freed slot starts.

One thread at a time runs the fetch loop; the others run messages handed to them. When a batch
fills the last free slot, the fetching thread runs its first message and leaves the loop to the
next thread that frees a slot, which acks and fetches itself: a busy worker starts messages with
no hand-off between threads. When the broker wakes an idle loop, the fetching thread runs the
first message and hands the loop to a free thread (threads + 1 threads, so one is free to fetch).
"""

from __future__ import annotations

import contextlib
import logging
import queue as queue_module
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from taskmill.brokers.base import Broker, Delivery
from taskmill.errors import BrokerError, LeaseLost
from taskmill.middleware.retries import retry_delay
from taskmill.worker import executor
from taskmill.worker.executor import EventLoopThread, Outcome
from taskmill.worker.monitor import Monitor

if TYPE_CHECKING:
    from taskmill.app import App

__all__ = ["Worker"]

log = logging.getLogger("taskmill.worker")
_IDLE_WAIT = 0.5  # seconds an idle fetch loop blocks in broker.wait before checking for stop
_FETCH = Delivery("", "", b"", 0, 0, "")  # handed over like a message: "run the fetch loop now"


class Worker:
    """Consumes ``queues`` of ``app`` on ``threads`` threads in this process."""

    def __init__(self, app: App, *, queues: Sequence[str] | None = None, threads: int = 8, burst: bool = False) -> None:
        self.app = app
        self.queues = list(queues or sorted({a.options.queue for a in app.actors.values()} or {"default"}))
        self.threads = threads
        self.burst = burst
        self.lease_ms = int(app.settings.lease_seconds * 1000)
        self._work: queue_module.SimpleQueue[Delivery | None] = queue_module.SimpleQueue()
        self._in_flight: dict[int, Delivery] = {}  # id(delivery): two deliveries of one message hold two slots
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._fetch_ended = threading.Event()  # the fetch loop ended for good (stop, or burst mode's end)
        self._monitor = Monitor(app, self.lease_ms, self._held, self._first_losses, self._stopped)
        self._loop: EventLoopThread | None = None
        self._acks: list[Delivery] = []  # finished, waiting for the fetch loop's next broker call
        self._idle = False  # the fetch loop is waiting for new messages
        self._flushing = False  # a thread is sending queued acks (the loop idles, or a stop began)
        self._role_free = False  # nobody runs the fetch loop: the next thread to free a slot takes it
        self._taker = 0  # the thread that took it, until it starts the loop
        self._unrenewed: set[int] = set()  # in flight, renewed no more: retried, dead-lettered, or its loss logged
        self._pool: list[threading.Thread] = []

    @property
    def in_flight(self) -> int:
        """Deliveries fetched and not yet finished (a finished one's ack may still be on its way)."""
        return len(self._in_flight)

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start fetching and processing in background threads; returns at once."""
        if any(a.is_async for a in self.app.actors.values()):
            self._loop = EventLoopThread()
        for mw in self.app.middleware:
            mw.worker_started(self.app)
        self._pool = [
            threading.Thread(target=self._worker, args=(i == 0,), name=f"taskmill-worker-{i}", daemon=True)
            for i in range(self.threads + 1)
        ]
        self._pool.append(threading.Thread(target=self._monitor.run, name="taskmill-monitor", daemon=True))
        for thread in self._pool:
            thread.start()

    def run(self) -> None:
        """Start and block until stopped (or, in burst mode, until nothing is due)."""
        self.start()
        while not self._stopped.wait(0.2):
            pass

    def stop(self, grace: float | None = None) -> bool:
        """Stop fetching, let in-flight work finish within ``grace`` s, then give back what is left.

        Returns True when everything in flight finished in time.
        """
        grace = self.app.settings.grace_seconds if grace is None else grace
        self._stopping.set()
        self._release_unstarted()
        with self._changed:
            clean = self._changed.wait_for(lambda: not self._in_flight, timeout=grace)
        if not clean:
            self.abandon()
        self._finish()
        return clean

    def abandon(self) -> None:
        """Hard stop: give every in-flight message back to the broker now (its delivery counts)."""
        self._stopping.set()
        self._release_unstarted()
        with self._changed:
            left = list(self._in_flight.values())
        for delivery in left:
            with contextlib.suppress(BrokerError):  # a lost lease means someone else has it already
                self.app.broker.retry(delivery, 0)
        self._finish()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the worker stopped; True if it did within ``timeout``."""
        return self._stopped.wait(timeout)

    def _finish(self) -> None:
        if self._stopped.is_set():
            return
        self._stopping.set()
        if self._pool:
            self._fetch_ended.wait(timeout=5)  # it may be handing acks back: flush after it is done
        with self._changed:  # and after a worker thread's flush: its acks must be sent when stop() returns
            if not self._changed.wait_for(lambda: not self._flushing, timeout=5):
                log.warning("an ack is still on its way after 5 s; if it fails, its messages run again")
            self._flushing = True
        self._flush_acks()
        if self._acks:
            log.warning("could not ack %d finished messages; they run again when their leases expire", len(self._acks))
        for _ in range(self.threads + 1):
            self._work.put(None)
        for mw in self.app.middleware:
            mw.worker_stopped(self.app)
        if self._loop is not None:
            self._loop.close()
        self._stopped.set()
        if self._pool and self._pool[-1].is_alive():  # the monitor touches the broker (not started: no wait)
            self._pool[-1].join(timeout=5)

    def _release_unstarted(self) -> None:
        try:
            self.app.broker.stop_consuming()  # what a push-based broker received but did not hand out
        except BrokerError:
            log.warning("could not stop consuming cleanly; unstarted messages return when the connection closes")
        unstarted = []
        with contextlib.suppress(queue_module.Empty):  # until the hand-over queue is empty
            while True:
                if (delivery := self._work.get_nowait()) is _FETCH:
                    self._fetch_ended.set()  # nobody will take the fetch loop over now
                elif delivery is not None:
                    unstarted.append(delivery)
        with self._changed:
            if self._role_free:  # nobody will take it now (_free checks for the stop)
                self._fetch_ended.set()
        if unstarted:
            try:
                self.app.broker.release(unstarted)
            except BrokerError:
                log.warning("could not release %d prefetched messages; they return when leases expire", len(unstarted))
            with self._changed:
                for delivery in unstarted:
                    self._free(delivery)

    # -- threads -------------------------------------------------------------------------------
    def _worker(self, fetching: bool) -> None:
        """Run what is handed over (a message, the fetch loop, or None: stop); start with the fetch loop if asked."""
        me = threading.get_ident()
        item = _FETCH if fetching else self._work.get()
        while item is not None:
            if item is _FETCH:
                self._taker = 0  # taken (or handed over): until it leaves the loop, nobody takes it
                try:
                    item = self._fetch_loop()  # a message it kept to run here, or None: the loop ended
                except BaseException:  # never let the fetch loop end with its role unpassed
                    log.exception("internal error in the fetch loop")
                    if not self._stopping.wait(1.0):
                        continue  # item is still _FETCH: run the loop again
                    self._fetch_ended.set()
                    item = None
                if item is None:
                    item = self._work.get()
                continue
            self._run(item)
            item = _FETCH if self._taker == me else self._work.get()  # freeing its slot, it may have taken the loop

    def _fetch_loop(self) -> Delivery | None:
        """Ack what finished and lease as many messages as there are free slots, in one broker call.
        Returns a message to run on this thread when it left the loop to another; None when it left
        the loop with no slot free, or the loop ended."""
        broker, failures, woken = self.app.broker, 0, False
        while not self._stopping.is_set():
            with self._changed:
                free = self.threads - len(self._in_flight)
                if free <= 0 and not self._stopping.is_set() and not self._acks:
                    self._role_free = True  # the next thread to free a slot fetches for it
                    return None
                acks, self._acks = self._acks, []
            if self._stopping.is_set():
                self._return_acks(acks)
                break
            try:
                if free > 0:
                    lost, deliveries = broker.ack_and_fetch(acks, self.queues, free, self.lease_ms)
                else:  # no slot free: acks a failed send left behind, sent before the loop is left
                    lost, deliveries = broker.ack(acks), []
            except Exception as exc:  # noqa: BLE001 -- the fetch loop must outlive any broker failure
                self._return_acks(acks)
                failures = executor.back_off(exc, failures, self._stopping)
                continue
            was_woken, woken = woken, False
            executor.log_lost_acks(lost)
            try:
                executor.buried(self.app, broker.take_buried())
            except BaseException:  # what this fetch leased goes back now, not when its leases run out
                executor.give_back(self.app, deliveries, "fetched with a dead letter whose report failed")
                raise
            if deliveries:
                failures = 0  # a whole round worked: the broker is back
                if (kept := self._dispatch(deliveries, was_woken)) is not None:
                    return kept  # run it here, with no hand-off; another thread fetches on
                if self._stopping.is_set():
                    break
                if len(deliveries) >= free:
                    continue  # a full batch: more may be ready
            # nothing (more) is ready: wait for news rather than ask again at once
            with self._changed:
                if self._acks or free <= 0:
                    continue  # something finished meanwhile: ack it before waiting (or leave: no slot is free)
                if self.burst and not self._in_flight and self._nothing_left(broker):
                    break
                self._idle = True  # from now on finishing threads ack for themselves
            failed = self._idle_wait(broker)
            woken = failed is None
            # back off outside idle, so finishing threads leave their acks to this loop
            failures = 0 if failed is None else executor.back_off(failed, failures, self._stopping)
        self._fetch_ended.set()
        if self.burst and not self._stopping.is_set():
            self._finish()
        return None

    def _dispatch(self, deliveries: list[Delivery], woken: bool) -> Delivery | None:
        """Hand fetched deliveries to the worker threads. Returns the first, for the caller to run as it
        leaves the loop, when they fill the last free slot (the next thread to free one takes the loop)
        or are news for an idle worker (``woken``: a free thread takes it); else None (a stop: given back)."""
        with self._changed:  # under the lock stop() waits with, so no batch slips past it
            if not (stopping := self._stopping.is_set()):
                hand_over = woken and not self._in_flight
                self._in_flight.update((id(d), d) for d in deliveries)
                self._role_free = full = len(self._in_flight) >= self.threads
        if stopping:  # fetched as the stop began: give them back at once (or they come back with their leases)
            executor.give_back(self.app, deliveries, "fetched as the stop began")
            return None
        kept = deliveries[0] if full or hand_over else None
        for delivery in deliveries[1:] if kept else deliveries:
            self._work.put(delivery)
        if kept and not full:
            self._work.put(_FETCH)
        return kept

    def _idle_wait(self, broker: Broker) -> Exception | None:
        """Wait for new messages; the broker's error if the wait failed."""
        try:
            broker.wait(self.queues, _IDLE_WAIT)
        except Exception as exc:  # noqa: BLE001 -- waiting fails like fetching when the broker is down
            return exc
        finally:
            with self._changed:
                self._idle = False
        return None

    def _nothing_left(self, broker: Broker) -> bool:
        """Burst mode's end: nothing ready and nothing leased by anyone (a crashed process's lease
        counts: its message comes back, or is dead-lettered, when the lease expires)."""
        try:
            return all(s.ready == 0 and s.in_flight == 0 for s in broker.stats(self.queues))
        except BrokerError:
            return False  # cannot tell now: the wait below fails too, and the loop backs off until it can

    def _return_acks(self, acks: list[Delivery]) -> None:
        with self._changed:
            self._acks[:0] = acks
            self._take_role()  # a failed ack send with every slot busy: send them again from the loop

    def _run(self, delivery: Delivery) -> None:
        try:
            self._handle(delivery)
        except BaseException:  # never let one message kill a worker thread
            log.exception("internal error while handling message %s", delivery.id)
        finally:
            with self._changed:
                self._free(delivery)

    def _free(self, delivery: Delivery) -> None:
        """Give up ``delivery``'s slot (``self._changed`` held): the fetch loop may fill it at once."""
        if self._in_flight.pop(id(delivery), None) is not None:
            self._unrenewed.discard(id(delivery))
            self._take_role()
            self._changed.notify_all()

    def _take_role(self) -> None:
        """(``self._changed`` held) If nobody runs the fetch loop, this thread runs it after its message."""
        if self._role_free and not self._stopping.is_set():
            self._role_free, self._taker = False, threading.get_ident()

    def _held(self) -> list[Delivery]:
        with self._changed:
            return [d for key, d in self._in_flight.items() if key not in self._unrenewed]

    def _first_losses(self, lost: list[Delivery]) -> list[Delivery]:
        """Of the deliveries a heartbeat found lost, those still in flight and not reported yet."""
        with self._changed:
            fresh = [d for d in lost if self._in_flight.get(id(d)) is d and id(d) not in self._unrenewed]
            self._unrenewed.update(id(d) for d in fresh)
            return fresh

    # -- one message ---------------------------------------------------------------------------
    def _handle(self, delivery: Delivery) -> None:
        outcome = executor.decode(self.app, delivery.body)
        actor = outcome.actor
        if actor is not None and not actor.is_async and actor.options.time_limit is not None:
            outcome = executor.run(self.app, outcome, self._loop, self._monitor.time_limit(actor.options.time_limit))
        else:
            outcome = executor.run(self.app, outcome, self._loop)
        try:
            self._settle(delivery, outcome)
        except LeaseLost:
            log.warning("message %s: lease lost before it was settled; another worker has it", delivery.id)

    def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        broker, actor, settings = self.app.broker, outcome.actor, self.app.settings
        logger = actor.logger if actor is not None else log
        if outcome.error is None and outcome.rejected is None:
            self._ack(delivery)
            executor.log_done(logger, delivery, outcome, settings.log_args, settings.log_args_max)
            return
        where = executor.describe(delivery, outcome, settings.log_args, settings.log_args_max)
        if outcome.rejected is not None:
            executor.dead_letter(self.app, self.lease_ms, delivery, outcome.rejected, outcome)
            self._settled(delivery)
            logger.error("%s dead-lettered: %s (%s)", where, outcome.rejected.reason, outcome.rejected.error_message)
            return
        error = outcome.error
        assert actor is not None
        assert error is not None
        try:
            delay = retry_delay(actor.options, delivery.deliveries, error)
        except Exception:  # a broken retry_when must not leave the message unsettled
            logger.exception("%s: retry_when failed; dead-lettering the message", where)
            delay = None
        if delay is None:
            executor.dead_letter(self.app, self.lease_ms, delivery, executor.failure_from("failed", error), outcome)
            self._settled(delivery)
            logger.error("%s failed for good with %s: %s", where, type(error).__qualname__, error, exc_info=error)
            return
        broker.retry(delivery, int(delay * 1000))
        self._settled(delivery)
        logger.warning("%s failed with %s: %s; retry in %.1f s", where, type(error).__qualname__, error, delay)

    def _settled(self, delivery: Delivery) -> None:
        """Its retry or dead letter ended its lease: heartbeats renew it no more, nor report it lost."""
        with self._changed:
            self._unrenewed.add(id(delivery))

    def _ack(self, delivery: Delivery) -> None:
        """Queue an ack for the fetch loop's next call and free the slot; while the loop idles, or a
        stop lets running messages finish (the loop has ended), ack here."""
        with self._changed:
            self._acks.append(delivery)
            self._free(delivery)
            if not (self._idle or self._stopping.is_set()) or self._flushing:
                return
            self._flushing = True
        self._flush_acks()

    def _flush_acks(self) -> None:
        """Ack everything queued, batch after batch. The caller set ``_flushing``; it clears under the lock
        that finds nothing left (or after a failed send), so no ack queued meanwhile is left behind."""
        while True:
            with self._changed:
                batch, self._acks = self._acks, []
                if not batch:
                    self._flushing = False
                    self._changed.notify_all()  # stop() may be waiting for this flush
                    return
            try:
                lost = self.app.broker.ack(batch)
            except BaseException as exc:  # the batch goes back, for the fetch loop (or the stop) to send
                with self._changed:
                    self._return_acks(batch)
                    self._flushing = False
                    self._changed.notify_all()
                if not isinstance(exc, Exception):
                    raise
                unexpected = not isinstance(exc, BrokerError)  # a bug, not an outage: show where
                log.warning("ack of %d messages failed (%s); retried later", len(batch), exc, exc_info=unexpected)
                return
            executor.log_lost_acks(lost)
