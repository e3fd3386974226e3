"""The ledger: an out-of-band SQLite record of what was enqueued and what actors executed.

It lives in its own file, never the broker's, so that it tells the truth about the broker under
test. Producers record ``(id, enqueue_ok_ts)`` once ``enqueue`` returned; actors append a start row
before their work and an end row after it (``execution``). ``Ledger.check`` turns the rows into
the Jepsen-style figures of the reliability plan: lost, dup, unexpected, and whether each duplicate
is explained by a fault (an execution by a process that was killed).

Every fault scenario is one more test: enqueue through the ledger, inject the fault, wait for
``completed_count``, then assert on ``check``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskmill import App, Message

ENV = "TASKMILL_TEST_LEDGER"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS enqueued (id TEXT PRIMARY KEY, enqueue_ok_ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT    NOT NULL,
    attempt INTEGER NOT NULL,
    pid     INTEGER NOT NULL,
    started REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS executions_id ON executions (id);
CREATE TABLE IF NOT EXISTS completions (
    execution INTEGER PRIMARY KEY REFERENCES executions (seq),
    id        TEXT    NOT NULL,
    pid       INTEGER NOT NULL,
    ended     REAL    NOT NULL
);
"""


def _connect(path: Path | str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process, which is the fault here
    return db


@dataclass(frozen=True, slots=True)
class Execution:
    """One run of an actor for one id: who ran it, when, and whether it reached its end row."""

    id: str
    attempt: int
    pid: int
    started: float
    ended: float | None


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An id that was executed more than once."""

    id: str
    executions: tuple[Execution, ...]
    by_killed_pid: bool  # one of its executions ran in a process the test killed


@dataclass(frozen=True, slots=True)
class Report:
    """What the checker found; the pass bar is ``lost == unexpected == set()`` and no unexplained dup."""

    enqueued: int
    completed: int
    executions: int
    executed_ids: int
    lost: frozenset[str]
    unexpected: frozenset[str]
    duplicates: tuple[Duplicate, ...]

    @property
    def dup(self) -> int:
        """Executions beyond the first per id."""
        return self.executions - self.executed_ids

    @property
    def unexplained(self) -> tuple[Duplicate, ...]:
        """Duplicates with no execution by a killed process: the ones a fault does not excuse."""
        return tuple(d for d in self.duplicates if not d.by_killed_pid)

    def summary(self) -> str:
        """One line for assertion messages."""
        return (
            f"enqueued={self.enqueued} completed={self.completed} lost={len(self.lost)} dup={self.dup}"
            f" unexpected={len(self.unexpected)} unexplained_dups={[d.id for d in self.unexplained][:10]}"
            f" lost_ids={sorted(self.lost)[:10]}"
        )


class Ledger:
    """The test's side of the ledger file: create it, record enqueues, read progress, check."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _connect(path)  # held open, so the WAL is never checkpointed away by a closing actor
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the test's connection."""
        self._db.close()

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return self._db.execute(sql, params).fetchall()

    def enqueue(self, app: App, messages: Sequence[Message], batch: int = 500) -> list[str]:
        """Send ``messages`` in batches, recording each id only once the broker accepted it."""
        ids: list[str] = []
        for start in range(0, len(messages), batch):
            sent = app.enqueue(messages[start : start + batch])
            self.record_enqueued(m.id for m in sent)
            ids.extend(m.id for m in sent)
        return ids

    def record_enqueued(self, ids: Iterable[str]) -> None:
        """Record ids whose enqueue returned OK."""
        now = time.time()
        self._db.executemany("INSERT INTO enqueued (id, enqueue_ok_ts) VALUES (?, ?)", [(i, now) for i in ids])

    def completed_count(self) -> int:
        """Distinct ids with an end row."""
        return int(self._query("SELECT COUNT(DISTINCT id) FROM completions")[0][0])

    def completed_ids(self) -> set[str]:
        """The ids with an end row."""
        return {row[0] for row in self._query("SELECT DISTINCT id FROM completions")}

    def executions(self) -> list[Execution]:
        """Every execution in start order, with its end time if it reached its end row."""
        rows = self._query(
            "SELECT e.id, e.attempt, e.pid, e.started, c.ended FROM executions e"
            " LEFT JOIN completions c ON c.execution = e.seq ORDER BY e.seq"
        )
        return [Execution(*row) for row in rows]

    def running(self) -> list[Execution]:
        """Executions with a start row and no end row."""
        return [e for e in self.executions() if e.ended is None]

    def check(self, killed_pids: Collection[int] = (), dead_letter_ids: Collection[str] = ()) -> Report:
        """Compare enqueues with executions; dead-lettered ids count as accounted for, not lost."""
        enqueued = {str(r[0]) for r in self._query("SELECT id FROM enqueued")}
        completed = {str(r[0]) for r in self._query("SELECT DISTINCT id FROM completions")}
        runs = self.executions()
        by_id: dict[str, list[Execution]] = {}
        for run in runs:
            by_id.setdefault(run.id, []).append(run)
        killed = set(killed_pids)
        duplicates = tuple(
            Duplicate(key, tuple(group), any(e.pid in killed for e in group))
            for key, group in sorted(by_id.items())
            if len(group) > 1
        )
        return Report(
            enqueued=len(enqueued),
            completed=len(completed),
            executions=len(runs),
            executed_ids=len(by_id),
            lost=frozenset(enqueued - completed - set(dead_letter_ids)),
            unexpected=frozenset(completed - enqueued),
            duplicates=duplicates,
        )


@contextmanager
def execution(key: str) -> Iterator[int]:
    """Actor side: a start row before the body, an end row after it returns; yields the attempt number."""
    path = os.environ[ENV]
    pid = os.getpid()
    with closing(_connect(path)) as db:
        db.execute("BEGIN IMMEDIATE")
        (attempt,) = db.execute("SELECT COUNT(*) + 1 FROM executions WHERE id = ?", (key,)).fetchone()
        cursor = db.execute(
            "INSERT INTO executions (id, attempt, pid, started) VALUES (?, ?, ?, ?)", (key, attempt, pid, time.time())
        )
        db.execute("COMMIT")
        seq = cursor.lastrowid
    yield int(attempt)
    with closing(_connect(path)) as db:
        db.execute(
            "INSERT INTO completions (execution, id, pid, ended) VALUES (?, ?, ?, ?)", (seq, key, pid, time.time())
        )
