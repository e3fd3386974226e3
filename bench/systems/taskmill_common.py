"""What the taskmill systems share: the bench's three actors on an App, and the System driving a
``taskmill worker`` on it. Each ``taskmill_<backend>`` module builds its App with ``bench_app(url)``
(the worker imports that module's ``app``) and returns a ``TaskmillSystem``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import taskmill
from systems.base import System, bin_path, record, record_latency, record_sleep


def bench_app(url: str) -> tuple[taskmill.App, dict[str, Any]]:
    """An App on ``url`` with the bench's actors: (app, {task name: actor})."""
    app = taskmill.App(url)

    @app.actor
    def noop(uid: str, n: int) -> None:
        record(uid, n)

    @app.actor
    def sleep(uid: str, n: int) -> None:
        record_sleep(uid, n)

    @app.actor
    def latency(uid: str, sent: float) -> None:
        record_latency(uid, sent)

    return app, {"noop": noop, "sleep": sleep, "latency": latency}


class TaskmillSystem(System):
    """``taskmill worker --processes P --threads 8`` on the App of ``systems.<module>`` (defaults otherwise)."""

    name = "taskmill"
    bulk_api = "app.enqueue([actor.message(...) x 1000])"

    def __init__(
        self, module: str, app: taskmill.App, actors: dict[str, Any], backend: str, notes: str, processes: int = 1
    ) -> None:
        self.module, self.app, self.actors, self.processes = module, app, actors, processes
        self.backend, self.notes = backend, notes
        self.concurrency = f"{processes} process{'es' if processes > 1 else ''} x 8 threads"

    def send(self, task: str, *args: Any) -> None:
        self.actors[task].send(*args)

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        actor = self.actors[task]
        self.app.enqueue([actor.message(*args) for args in arg_list])

    def worker_command(self) -> list[str]:
        return [
            bin_path("taskmill"), "worker", f"systems.{self.module}:app",
            "--processes", str(self.processes), "--threads", "8",
        ]  # fmt: skip

    def close(self) -> None:
        self.app.close()
