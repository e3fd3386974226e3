"""Every error taskmill raises, as one tree.

::

    TaskmillError
    ├── ConfigurationError          a bad setting, URL or actor option
    │   ├── UnknownOptionError      an actor option nobody declared
    │   └── InvalidOptionError      a known option with a value out of range
    ├── ActorNotFound               no actor of that name is registered
    ├── MessageError                a message that cannot travel
    │   ├── ArgumentsError          arguments that do not fit the actor's signature
    │   ├── EncodeError             arguments JSON cannot carry exactly
    │   ├── PayloadTooLarge         the encoded message exceeds max_payload_bytes
    │   └── DecodeError             a body that is not a valid envelope
    ├── BrokerError                 the broker failed an operation
    │   ├── BrokerUnavailable       the broker cannot be reached
    │   └── LeaseLost               the delivery's lease belongs to someone else now
    ├── TimeLimitExceeded           an actor ran past its time_limit
    └── ResultError                 a result that cannot be returned
        ├── ResultTimeout           not ready within the timeout
        ├── ResultMissing           never stored, or expired
        └── TaskFailed              the task failed for good; carries the remote error's text

``Retry`` is not an error: an actor raises it to ask for another attempt.
"""

from __future__ import annotations

import datetime
import math

__all__ = [
    "ActorNotFound",
    "ArgumentsError",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "InvalidOptionError",
    "LeaseLost",
    "MessageError",
    "PayloadTooLarge",
    "ResultError",
    "ResultMissing",
    "ResultTimeout",
    "Retry",
    "TaskFailed",
    "TaskmillError",
    "TimeLimitExceeded",
    "UnknownOptionError",
]


class TaskmillError(Exception):
    """The base of every error taskmill raises."""


class ConfigurationError(TaskmillError):
    """A setting, URL or option has a value taskmill cannot use."""


class UnknownOptionError(ConfigurationError):
    """An actor or send option that no part of taskmill declares."""


class InvalidOptionError(ConfigurationError):
    """A known option given a value it cannot take."""


class ActorNotFound(TaskmillError):
    """A message names an actor that is not registered."""


class MessageError(TaskmillError):
    """A message that cannot be sent or read."""


class ArgumentsError(MessageError, TypeError):
    """Arguments that do not bind to the actor's signature."""


class EncodeError(MessageError):
    """Arguments that JSON cannot carry exactly."""


class PayloadTooLarge(MessageError):
    """The encoded message is larger than the configured cap."""

    def __init__(self, size: int, limit: int, *, at_least: bool = False) -> None:
        amount = f"at least {size}" if at_least else str(size)
        super().__init__(f"message is {amount} bytes, over the {limit}-byte limit (max_payload_bytes)")
        self.size = size
        self.limit = limit


class DecodeError(MessageError):
    """A body that is not a valid taskmill envelope."""


class BrokerError(TaskmillError):
    """The broker failed an operation."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached."""


class LeaseLost(BrokerError):
    """The delivery's lease expired and the message belongs to another delivery now."""


class TimeLimitExceeded(TaskmillError):
    """An actor ran longer than its time_limit."""


class ResultError(TaskmillError):
    """A task's result cannot be returned."""


class ResultTimeout(ResultError, TimeoutError):
    """The result was not ready within the timeout."""


class ResultMissing(ResultError):
    """No result is stored for the message: it was never stored, or it expired."""


class TaskFailed(ResultError):
    """The task failed for good. Only text travels: nothing is unpickled or constructed."""

    def __init__(self, message_id: str, error_type: str, error_message: str, traceback: str = "") -> None:
        super().__init__(f"task {message_id} failed: {error_type}: {error_message}")
        self.message_id = message_id
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback


class Retry(Exception):  # a request, not an error: `raise Retry(delay=5)` reads right
    """Raised by an actor to ask for another attempt, optionally after ``delay`` seconds."""

    def __init__(self, delay: float | datetime.timedelta | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        if isinstance(delay, datetime.timedelta):
            delay = delay.total_seconds()
        if delay is not None and (isinstance(delay, bool) or not 0 <= delay < math.inf):
            raise ValueError(f"Retry(delay=...) takes seconds >= 0 or a timedelta, not {delay!r}")
        self.delay = delay
