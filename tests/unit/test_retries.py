"""The retry policy: exponential backoff with jitter, bounded, per exception type."""

from __future__ import annotations

import pytest

from taskmill import Retry
from taskmill.middleware.retries import backoff, retry_delay
from taskmill.options import ActorOptions


@pytest.mark.parametrize("attempt", [1, 2, 3, 10, 100])
def test_backoff_doubles_with_jitter_and_stays_capped(attempt: int) -> None:
    base = min(2.0 * 2 ** (attempt - 1), 60.0)
    for _ in range(50):
        assert base * 0.5 <= backoff(attempt, 2.0, 60.0) <= min(base * 1.5, 60.0)


def test_retries_until_max_retries_then_stops() -> None:
    options = ActorOptions(max_retries=2, min_backoff=1, max_backoff=10)
    assert retry_delay(options, 1, ValueError()) is not None
    assert retry_delay(options, 2, ValueError()) is not None
    assert retry_delay(options, 3, ValueError()) is None


def test_throws_never_retry() -> None:
    options = ActorOptions(max_retries=5, throws=(KeyError,))
    assert retry_delay(options, 1, KeyError("x")) is None
    assert retry_delay(options, 1, ValueError()) is not None


def test_retry_when_decides_instead_of_max_retries() -> None:
    options = ActorOptions(max_retries=0, retry_when=lambda exc, attempt: isinstance(exc, OSError) and attempt < 4)
    assert retry_delay(options, 3, OSError()) is not None
    assert retry_delay(options, 4, OSError()) is None
    assert retry_delay(options, 1, ValueError()) is None


def test_retry_request_uses_its_own_delay_but_still_counts() -> None:
    options = ActorOptions(max_retries=1)
    assert retry_delay(options, 1, Retry(delay=7)) == 7
    assert retry_delay(options, 2, Retry(delay=7)) is None
