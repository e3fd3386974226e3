"""Fixtures: a fresh SQLite broker file, a ledger beside it, and worker processes that never outlive a test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ledger_app
import pytest
from harness import Workers, sqlite_url, workers_for
from ledger import Ledger

from taskmill import App


@pytest.fixture
def broker_path(tmp_path: Path) -> Path:
    """Where the broker's SQLite file lives (created on first use)."""
    return tmp_path / "broker.db"


@pytest.fixture
def broker_url(broker_path: Path) -> str:
    """The broker's ``sqlite:////abs/path`` URL."""
    return sqlite_url(broker_path)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger in its own file, apart from the broker."""
    opened = Ledger(tmp_path / "ledger.db")
    yield opened
    opened.close()


@pytest.fixture
def producer(broker_url: str) -> Iterator[App]:
    """The test's App on the broker, with the actors of ``ledger_app``; closed after the test."""
    app = ledger_app.make_app(broker_url)
    yield app
    app.close()


@pytest.fixture
def workers(tmp_path: Path, broker_url: str, ledger: Ledger) -> Iterator[Workers]:
    """Starts ``taskmill`` subprocesses on the test's broker and ledger; kills them all afterwards."""
    with workers_for(tmp_path, broker_url, ledger.path) as started:
        yield started
