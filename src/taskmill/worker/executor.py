"""Run one message: decode it, find its actor, bind its arguments and call it (thread or event loop)."""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskmill import encoding
from taskmill.brokers.base import DeadLetter, Delivery, Failure
from taskmill.errors import ActorNotFound, BrokerError, DecodeError, LeaseLost, PayloadTooLarge, TimeLimitExceeded
from taskmill.message import Message
from taskmill.middleware.base import overriding

if TYPE_CHECKING:
    from taskmill.actor import Actor
    from taskmill.app import App

log = logging.getLogger("taskmill.worker")
_MAX_BACKOFF = 10.0  # seconds between attempts while the broker is unreachable
_UNGUARDED: AbstractContextManager[None] = nullcontext()  # reusable: nullcontext keeps no state
_DONE = "%s done in %.1f ms"

__all__ = [
    "EventLoopThread",
    "Outcome",
    "back_off",
    "buried",
    "cancel_interrupt",
    "dead_letter",
    "dead_letter_hooks",
    "decode",
    "describe",
    "execute",
    "failure_from",
    "give_back",
    "interrupt_thread",
    "log_done",
    "log_lost_acks",
    "run",
    "run_eagerly",
]


@dataclass(slots=True)
class Outcome:
    """What running a message produced: a result, an actor error, or a reason it never ran."""

    message: Message | None
    actor: Actor[Any, Any] | None = None
    result: Any = None
    error: BaseException | None = None
    rejected: Failure | None = None  # set when the message cannot run at all; it is dead-lettered at once
    seconds: float = 0.0


class EventLoopThread:
    """One asyncio loop on its own thread, shared by every async actor of a worker process."""

    def __init__(self) -> None:
        import asyncio  # only processes with async actors pay for asyncio

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="taskmill-event-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], time_limit: float | None) -> Any:
        """Run ``coro`` on the loop and wait for it; cancel it and raise TimeLimitExceeded on timeout."""
        import asyncio

        future = asyncio.run_coroutine_threadsafe(_shielded(coro), self.loop)
        try:
            return future.result(timeout=time_limit)
        except FutureTimeout:
            future.cancel()
            raise TimeLimitExceeded(f"ran longer than its time_limit of {time_limit} s") from None
        except _Escaped as escaped:
            raise escaped.args[0] from None  # SystemExit and friends, on the worker thread where they belong

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class _Escaped(Exception):
    """Wraps an exception that would otherwise stop the shared event loop (SystemExit, KeyboardInterrupt)."""


async def _shielded(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Escaped(exc) from None


def failure_from(reason: str, error: BaseException) -> Failure:
    """A dead-letter Failure describing ``error`` (type name, message and traceback text), valid UTF-8."""
    text = _printable("".join(traceback.format_exception(error)))
    return Failure(reason, type(error).__qualname__, _printable(str(error)), text, exception=error)


def _printable(text: str) -> str:
    """Lone surrogates (from surrogateescape-decoded file names, say) cannot be stored by any backend."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def decode(app: App, body: bytes) -> Outcome:
    """Decode the body and look up its actor, or say why it cannot run."""
    limit = app.settings.max_payload_bytes
    if len(body) > limit:
        return Outcome(None, rejected=failure_from("payload_too_large", PayloadTooLarge(len(body), limit)))
    try:
        message = Message.decode(body)
    except DecodeError as exc:
        return Outcome(None, rejected=failure_from("decode_error", exc))
    try:
        actor = app.get_actor(message.actor)
    except ActorNotFound as exc:
        return Outcome(message, rejected=failure_from("unknown_actor", exc))
    if not actor.binds(message.args, message.kwargs):
        try:
            actor.signature.bind(*message.args, **message.kwargs)  # for the error's text
        except TypeError as exc:
            return Outcome(message, actor, rejected=failure_from("bad_arguments", exc))
    return Outcome(message, actor)


def dead_letter_hooks(app: App, message_id: str, message: Message | None, failure: Failure) -> None:
    """Run the middleware's before_dead_letter hooks (reversed); a failing hook is logged, never raised."""
    for hook in overriding(app.middleware, "before_dead_letter", reverse=True):
        try:
            hook(app, message, failure)
        except Exception:
            name = type(hook.__self__).__name__
            log.exception("middleware %s failed in before_dead_letter for %s", name, message_id)


def buried(app: App, dead_letters: list[DeadLetter]) -> None:
    """The broker's crash guard dead-lettered these while fetching: log each and run the hooks. One
    whose report raises does not keep the others from theirs; the first error is raised after."""
    failed: Exception | None = None
    for dead in dead_letters:
        try:
            try:
                message: Message | None = Message.decode(dead.body)
            except DecodeError:
                message = None
            log.error("message %s dead-lettered: %s after %d deliveries", dead.id, dead.reason, dead.deliveries)
            dead_letter_hooks(app, dead.id, message, Failure(dead.reason, error_message=dead.error_message))
        except Exception as exc:  # noqa: BLE001 -- raised below, once every dead letter had its turn
            failed = failed or exc
    if failed is not None:
        raise failed


def give_back(app: App, deliveries: list[Delivery], why: str) -> None:
    """Release fetched deliveries that will not run here, uncounted. If that fails they come back when
    their leases run out (on RabbitMQ, when the connection closes)."""
    if deliveries:
        try:
            app.broker.release(deliveries)
        except BrokerError as exc:
            log.warning("could not give back %d messages %s (%s)", len(deliveries), why, exc)


def dead_letter(app: App, lease_ms: int, delivery: Delivery, failure: Failure, outcome: Outcome) -> None:
    """Dead-letter a message this worker holds: its hooks first (a crash in between loses nothing)."""
    if app.broker.extend([delivery], lease_ms):  # fenced: a stale holder must not fail the result
        raise LeaseLost(f"message {delivery.id}: lease lost before it was dead-lettered")
    dead_letter_hooks(app, delivery.id, outcome.message, failure)
    app.broker.dead_letter(delivery, failure)


def back_off(exc: BaseException, failures: int, stopping: threading.Event) -> int:
    """Pause after a failed broker call (capped, logged sparingly, cut short by a stop); returns the
    new failure count."""
    failures += 1
    pause = min(0.1 * 2**failures, _MAX_BACKOFF)
    if failures == 1 or (pause == _MAX_BACKOFF and failures % 10 == 0):
        log.warning("broker unavailable (%s); retrying every %.1f s at most", exc, pause)
    stopping.wait(pause)
    return failures


def log_lost_acks(lost: list[Delivery]) -> None:
    for delivery in lost:
        log.warning("message %s: lease lost before its ack; it may have run twice", delivery.id)


def execute(app: App, body: bytes, loop: EventLoopThread | None) -> Outcome:
    """Decode and run the message in ``body`` here; never raises for actor errors."""
    return run(app, decode(app, body), loop)


def run(
    app: App, outcome: Outcome, loop: EventLoopThread | None, time_guard: AbstractContextManager[None] = _UNGUARDED
) -> Outcome:
    """Run a decoded message (see ``decode``), filling in its result or error.

    ``time_guard`` is entered around the actor call only: a time-limit interrupt that lands while it
    is disarmed is still an error of this attempt, never an exception loose in the worker.
    """
    if outcome.rejected is not None:
        return outcome
    message, actor = outcome.message, outcome.actor
    assert message is not None
    assert actor is not None
    started = time.perf_counter()
    try:
        for before in overriding(app.middleware, "before_process"):
            before(app, message)
        with time_guard:
            called = actor.fn(*message.args, **message.kwargs)
        if actor.is_async and loop is not None:
            outcome.result = loop.run(called, actor.options.time_limit)
        elif actor.is_async:
            outcome.result = _run_coroutine(_limited(called, actor.options.time_limit))
        else:
            outcome.result = called
        if result_travels(app, message):
            encoding.validate(outcome.result)  # stored or passed on: refuse what JSON cannot carry, here
    except (Exception, SystemExit) as exc:  # noqa: BLE001 -- an actor's error is data: retried or dead-lettered
        if isinstance(exc, TimeLimitExceeded) and not str(exc):  # raised by class from the watchdog
            exc = TimeLimitExceeded(f"ran longer than its time_limit of {actor.options.time_limit} s")
        outcome.error = exc
    outcome.seconds = time.perf_counter() - started
    for after in overriding(app.middleware, "after_process", reverse=True):
        try:
            after(app, message, result=outcome.result, exception=outcome.error)
        except Exception as exc:  # e.g. the result store is down: retry the message rather than lose its result
            name = type(after.__self__).__name__
            log.exception("middleware %s failed in after_process for message %s", name, message.id)
            if outcome.error is None:
                outcome.error = exc
    return outcome


def result_travels(app: App, message: Message) -> bool:
    """Whether the return value leaves the worker: stored, piped to a next step or sent to a callback."""
    actor = app.actors.get(message.actor)
    options = message.options
    if "pipe" in options or "group" in options or "on_success" in options:
        return True
    return actor is not None and (actor.options.on_success is not None or app.stores_results(actor.options, message))


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, also from inside a running loop (eager mode in async code): then on a new thread."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1, thread_name_prefix="taskmill-eager") as pool:
        return pool.submit(asyncio.run, coro).result()


async def _limited(coro: Coroutine[Any, Any, Any], time_limit: float | None) -> Any:
    import asyncio

    try:
        return await asyncio.wait_for(coro, time_limit)
    except TimeoutError:
        raise TimeLimitExceeded(f"ran longer than its time_limit of {time_limit} s") from None


def run_eagerly(app: App, body: bytes) -> Any:
    """Run a message in the caller (eager mode), raising what the actor raised."""
    outcome = execute(app, body, loop=None)
    if outcome.rejected is not None:
        raise outcome.rejected.exception or RuntimeError(outcome.rejected.reason)
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


def interrupt_thread(thread_id: int) -> None:
    """Raise TimeLimitExceeded in another thread at its next Python bytecode."""
    import ctypes  # here, not at the top: only a time limit that fires needs it (~0.4 MB a process)

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(TimeLimitExceeded))


def cancel_interrupt(thread_id: int) -> None:
    """Withdraw an interrupt that has not fired yet (the actor returned just in time)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


def log_done(logger: logging.Logger, delivery: Delivery, outcome: Outcome, log_args: bool, max_chars: int) -> None:
    """The INFO line for a message that succeeded; through the CLI's handler's cheap path when it can take it."""
    if not logger.isEnabledFor(logging.INFO):  # skip even describe() when it is off
        return
    args = (describe(delivery, outcome, log_args, max_chars), outcome.seconds * 1000)
    handlers = logging.root.handlers
    if len(handlers) == 1 and (defer := getattr(handlers[0], "defer", None)) is not None:
        code = (frame := sys._getframe(1)).f_code  # the caller, as stacklevel=2 names it below
        if defer(logger, _DONE, args, (code.co_filename, frame.f_lineno, code.co_name)):
            return
    logger.info(_DONE, *args, stacklevel=2)


def describe(delivery: Delivery, outcome: Outcome, log_args: bool, max_chars: int) -> str:
    """One log line's worth of a message: id, actor, queue, attempt, and arguments only when asked (truncated)."""
    message = outcome.message
    actor_name = message.actor if message is not None else "?"
    text = f"message {delivery.id} actor={actor_name} queue={delivery.queue} attempt={delivery.deliveries}"
    if log_args and message is not None:
        shown: Any = repr((message.args, dict(message.kwargs)))
        text += f" args={shown[:max_chars]}{'...' if len(shown) > max_chars else ''}"
    return text
