"""One broker per backend: every test in this directory runs against each of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskmill.brokers import Broker, open_broker

MAX_DELIVERIES = 3


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{(tmp_path / 'broker.db').resolve()}"


# id -> a factory building a fresh, empty broker whose data (if any) lives under tmp_path.
BACKENDS: dict[str, Callable[[Path], Broker]] = {
    "memory": lambda tmp_path: open_broker("memory://", max_deliveries=MAX_DELIVERIES),
    "sqlite": lambda tmp_path: open_broker(_sqlite_url(tmp_path), max_deliveries=MAX_DELIVERIES),
}


@pytest.fixture(params=list(BACKENDS))
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A fresh broker of each backend in turn, closed after the test."""
    instance = BACKENDS[request.param](tmp_path)
    yield instance
    instance.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a fresh SQLite broker file, for tests that open several brokers on it."""
    return _sqlite_url(tmp_path)
