"""Actor and send options are checked where they are given, with messages that say what is allowed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from taskmill import App, InvalidOptionError, UnknownOptionError
from taskmill.options import ActorOptions, delay_ms


def test_unknown_actor_option_lists_the_known_ones() -> None:
    with pytest.raises(UnknownOptionError, match=r"unknown actor option\(s\) retires; known options: .*max_retries"):
        ActorOptions.build({"retires": 3})


def test_middleware_declared_options_are_accepted() -> None:
    options = ActorOptions.build({"rate_limit": 5}, declared={"rate_limit"})
    assert options.extra == {"rate_limit": 5}


@pytest.mark.parametrize(
    "given",
    [
        {"priority": 10},
        {"priority": -1},
        {"priority": 1.5},
        {"queue": ""},
        {"max_retries": -1},
        {"min_backoff": -1},
        {"min_backoff": 10, "max_backoff": 1},
        {"time_limit": 0},
        {"throws": ValueError},
        {"retry_when": 3},
    ],
)
def test_out_of_range_actor_options_raise(given: dict[str, Any]) -> None:
    with pytest.raises(InvalidOptionError):
        ActorOptions.build(given)


def test_delay_accepts_seconds_and_timedelta() -> None:
    assert delay_ms(1.5, None) == 1500
    assert delay_ms(dt.timedelta(minutes=1), None) == 60_000
    assert delay_ms(None, None) == 0
    assert delay_ms(-5, None) == 0


def test_eta_becomes_a_delay() -> None:
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    assert 25_000 < delay_ms(None, eta) <= 30_000


def test_delay_and_eta_together_are_refused() -> None:
    with pytest.raises(InvalidOptionError, match="not both"):
        delay_ms(1, dt.datetime.now(dt.UTC))


@pytest.mark.parametrize("bad", ["10", float("nan"), True, 10 * 366 * 86400])
def test_bad_delays_raise(bad: Any) -> None:
    with pytest.raises(InvalidOptionError):
        delay_ms(bad, None)


def test_send_options_are_checked_before_any_io() -> None:
    app = App("memory://")

    @app.actor
    def noop() -> None: ...

    with pytest.raises(InvalidOptionError):
        noop.send_with_options(priority=42)
    with pytest.raises(InvalidOptionError):
        noop.send_with_options(queue="")
    assert app.broker.stats() == []


@pytest.mark.parametrize(
    "options",
    [
        {"delay": float("-inf")},
        {"delay": float("inf")},
        {"eta": dt.datetime.min},
        {"message_id": "a\x00b"},
        {"queue": "q\x00"},
    ],
)
def test_out_of_range_send_options_are_typed_errors(options: dict[str, Any]) -> None:
    app = App("memory://")

    @app.actor
    def job() -> None: ...

    with pytest.raises(InvalidOptionError):
        job.send_with_options(**options)


def test_kwargs_must_be_a_mapping() -> None:
    from taskmill import ArgumentsError

    app = App("memory://")

    @app.actor
    def job(a: str = "") -> None: ...

    with pytest.raises(ArgumentsError):
        job.send_with_options(kwargs="ab")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), -1, float("inf")])
def test_retry_refuses_a_delay_it_cannot_wait(bad: float) -> None:
    from taskmill import Retry

    with pytest.raises(ValueError, match="Retry"):
        Retry(delay=bad)
