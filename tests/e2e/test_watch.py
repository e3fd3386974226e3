"""`taskmill worker --watch DIR` restarts its workers when Python code under DIR changes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskmill import App, Message

TASKS_V1 = """
import pathlib
import taskmill

@taskmill.actor
def touch(path: str) -> None:
    pathlib.Path(path).write_text("v1")
"""

TASKS_V2 = TASKS_V1.replace('"v1"', '"v2"')


def _wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.mark.slow
def test_code_change_restarts_workers_with_the_new_code(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "watched_tasks.py").write_text(TASKS_V1)
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    env = {**os.environ, "TASKMILL_BROKER_URL": url, "PYTHONPATH": str(code)}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "taskmill", "worker", "watched_tasks", "-p", "1", "-t", "1", "--watch", str(code)],
        cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    app = App(url)
    out = tmp_path / "out.txt"
    try:
        app.enqueue([Message(actor="touch", args=(str(out),))])
        _wait_for(lambda: out.exists() and out.read_text() == "v1")
        (code / "watched_tasks.py").write_text(TASKS_V2)
        _wait_for(
            lambda: (
                "code changed" in (text := (tmp_path / "worker.log").read_text())
                and "worker process started" in text.split("code changed")[1]
            )
        )
        out.unlink()
        app.enqueue([Message(actor="touch", args=(str(out),))])
        _wait_for(lambda: out.exists() and out.read_text() == "v2")
    finally:
        app.close()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        log.close()
