"""Typed actor and send options, validated where they are given, before any I/O."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from taskmill.errors import InvalidOptionError, UnknownOptionError
from taskmill.message import MAX_PRIORITY

__all__ = ["MAX_PRIORITY", "ActorOptions", "delay_ms"]


@dataclass(frozen=True, slots=True)
class ActorOptions:
    """How an actor's messages are routed, retried and limited."""

    queue: str = "default"
    priority: int = 0
    max_retries: int = 3
    min_backoff: float = 1.0  # seconds before the first retry; doubles each attempt
    max_backoff: float = 300.0
    retry_when: Callable[[BaseException, int], bool] | None = None
    throws: tuple[type[BaseException], ...] = ()
    time_limit: float | None = None  # seconds; None means no limit
    store_results: bool | None = None  # None: the app's store_results setting
    on_success: str | None = None  # actor name enqueued with the result when this one succeeds
    on_failure: str | None = None  # actor name enqueued with an error description when it fails for good
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(cls, given: Mapping[str, Any], declared: Iterable[str] = ()) -> ActorOptions:
        """Options from keyword arguments; unknown names raise UnknownOptionError naming the known."""
        core = {f.name for f in fields(cls)} - {"extra"}
        declared = set(declared)
        unknown = set(given) - core - declared
        if unknown:
            known = ", ".join(sorted(core | declared))
            raise UnknownOptionError(f"unknown actor option(s) {', '.join(sorted(unknown))}; known options: {known}")
        extra = {k: v for k, v in given.items() if k in declared and k not in core}
        core_given = {
            k: _actor_name(v) if k in {"on_success", "on_failure"} else v for k, v in given.items() if k in core
        }
        options = cls(**core_given, extra=MappingProxyType(extra))
        options.check()
        return options

    def check(self) -> None:
        """Raise InvalidOptionError for values out of range."""
        check_queue(self.queue)
        check_priority(self.priority)
        if type(self.max_retries) is not int or self.max_retries < 0:
            raise InvalidOptionError(f"max_retries must be an int >= 0, not {self.max_retries!r}")
        for name in ("min_backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise InvalidOptionError(f"{name} must be a number of seconds >= 0, not {value!r}")
        if self.min_backoff > self.max_backoff:
            raise InvalidOptionError("min_backoff must not exceed max_backoff")
        if self.retry_when is not None and not callable(self.retry_when):
            raise InvalidOptionError("retry_when must be a callable (exception, attempt) -> bool")
        if not isinstance(self.throws, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.throws
        ):
            raise InvalidOptionError("throws must be a tuple of exception classes")
        if self.store_results is not None and not isinstance(self.store_results, bool):
            raise InvalidOptionError(f"store_results must be True, False or None, not {self.store_results!r}")
        for name in ("on_success", "on_failure"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidOptionError(f"{name} must be an actor or an actor's name, not {value!r}")
        if self.time_limit is not None and (
            not isinstance(self.time_limit, (int, float)) or not 0 < self.time_limit < math.inf
        ):
            raise InvalidOptionError(f"time_limit must be a positive number of seconds, not {self.time_limit!r}")


def _actor_name(value: Any) -> Any:
    """Callbacks may be given as actors; messages carry their names."""
    name = getattr(value, "name", None)
    return name if isinstance(name, str) and callable(value) else value


def check_queue(queue: object) -> None:
    """Queue names are non-empty strings of at most 200 characters."""
    if not isinstance(queue, str) or not queue or len(queue) > 200 or "\x00" in queue:
        raise InvalidOptionError(f"queue must be a non-empty str of at most 200 characters, not {queue!r}")


def check_priority(priority: object) -> None:
    """Priorities are ints from 0 to MAX_PRIORITY."""
    if type(priority) is not int or not 0 <= priority <= MAX_PRIORITY:
        raise InvalidOptionError(f"priority must be an int from 0 to {MAX_PRIORITY}, not {priority!r}")


def check_message_id(message_id: object) -> None:
    """Message ids are non-empty strings of at most 200 characters."""
    if not isinstance(message_id, str) or not message_id or len(message_id) > 200 or "\x00" in message_id:
        raise InvalidOptionError(f"message_id must be a non-empty str of at most 200 characters, not {message_id!r}")


def delay_ms(delay: float | dt.timedelta | None, eta: dt.datetime | None) -> int:
    """Milliseconds to wait from a delay (seconds or timedelta) or an ETA (aware or local datetime)."""
    if delay is not None and eta is not None:
        raise InvalidOptionError("give delay or eta, not both")
    if eta is not None:
        if not isinstance(eta, dt.datetime):
            raise InvalidOptionError(f"eta must be a datetime, not {type(eta).__name__}")
        try:
            delay = eta.astimezone(dt.UTC) - dt.datetime.now(dt.UTC)
        except (ValueError, OverflowError):
            raise InvalidOptionError(f"eta {eta!r} is out of range") from None
    if delay is None:
        return 0
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise InvalidOptionError(f"delay must be seconds or a timedelta, not {delay!r}")
    if seconds > 10 * 365 * 86400:
        raise InvalidOptionError("delay is more than ten years; that is surely a mistake")
    return max(int(seconds * 1000), 0)
