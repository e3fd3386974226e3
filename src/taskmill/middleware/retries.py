"""The retry policy: exponential backoff with jitter, per actor and per exception type."""

from __future__ import annotations

import random

from taskmill.errors import EncodeError, Retry
from taskmill.options import ActorOptions

__all__ = ["backoff", "retry_delay"]


def backoff(attempt: int, min_backoff: float, max_backoff: float) -> float:
    """Seconds before retry number ``attempt`` (1-based): min*2^(attempt-1), capped, jittered ±50%."""
    base: float = min(min_backoff * 2.0 ** min(attempt - 1, 62), max_backoff)
    return min(base * random.uniform(0.5, 1.5), max_backoff)  # noqa: S311 -- jitter, not crypto


def retry_delay(options: ActorOptions, attempt: int, error: BaseException) -> float | None:
    """Seconds to wait before the next attempt, or None when the message should be dead-lettered.

    ``attempt`` counts deliveries, this one included. ``throws`` never retry; ``retry_when`` decides
    instead of ``max_retries`` when given; ``Retry(delay=...)`` picks its own delay but still counts.
    """
    if isinstance(error, EncodeError) or (options.throws and isinstance(error, options.throws)):
        return None  # a result JSON cannot carry fails the same way every time
    if options.retry_when is not None:
        if not options.retry_when(error, attempt):
            return None
    elif attempt > options.max_retries:
        return None
    if isinstance(error, Retry) and error.delay is not None:
        return max(error.delay, 0.0)
    return backoff(attempt, options.min_backoff, options.max_backoff)
