"""One broker (and one result store) per backend: every test in this directory runs against each of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskmill.brokers import Broker, open_broker
from taskmill.results import Store, open_store

MAX_DELIVERIES = 3


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # sqlite:/// + an absolute path: four slashes in all


# id -> a factory building a fresh, empty broker whose data (if any) lives under tmp_path.
BACKENDS: dict[str, Callable[[Path], Broker]] = {
    "memory": lambda tmp_path: open_broker("memory://", max_deliveries=MAX_DELIVERIES),
    "sqlite": lambda tmp_path: open_broker(
        _sqlite_url(tmp_path.resolve() / "broker.db"), max_deliveries=MAX_DELIVERIES
    ),
}


@pytest.fixture(params=list(BACKENDS))
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A fresh broker of each backend in turn, closed after the test."""
    instance = BACKENDS[request.param](tmp_path)
    yield instance
    instance.close()


# id -> a factory building a fresh, empty result store whose data (if any) lives under tmp_path.
STORES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda tmp_path: open_store("memory://"),
    "sqlite": lambda tmp_path: open_store(f"sqlite:///{(tmp_path / 'store.db').resolve()}"),
}


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh result store of each backend in turn, closed after the test."""
    instance = STORES[request.param](tmp_path)
    yield instance
    instance.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """The absolute path of a fresh SQLite broker file."""
    return tmp_path.resolve() / "broker.db"


@pytest.fixture
def sqlite_url(sqlite_path: Path) -> str:
    """The URL of a fresh SQLite broker file, for tests that open several brokers on it."""
    return _sqlite_url(sqlite_path)
