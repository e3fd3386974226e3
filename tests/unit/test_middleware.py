"""Middleware hooks run in order before and in reverse after; they declare the options they accept."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import pytest

from taskmill import App, Message, Middleware, UnknownOptionError, Worker
from taskmill.brokers import Failure


class Recorder(Middleware):
    options: ClassVar[frozenset[str]] = frozenset({"audit"})

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def before_enqueue(self, app: App, message: Message) -> Message:
        self.calls.append(f"{self.name}.before_enqueue")
        return replace(message, options={**message.options, self.name: True})

    def after_enqueue(self, app: App, message: Message) -> None:
        self.calls.append(f"{self.name}.after_enqueue")

    def before_process(self, app: App, message: Message) -> None:
        self.calls.append(f"{self.name}.before_process:{sorted(message.options)}")

    def after_process(self, app: App, message: Message, *, result: Any, exception: BaseException | None) -> None:
        self.calls.append(f"{self.name}.after_process:{result}")

    def before_dead_letter(self, app: App, message: Message | None, failure: Failure) -> None:
        self.calls.append(f"{self.name}.before_dead_letter:{failure.reason}")


def test_hooks_run_in_order_then_reversed() -> None:
    calls: list[str] = []
    app = App("memory://", middleware=[Recorder("a", calls), Recorder("b", calls)])

    @app.actor(audit=True)
    def double(n: int) -> int:
        return n * 2

    double.send(4)
    worker = Worker(app, threads=1)
    worker.start()
    app.broker.join("default", timeout=5)  # type: ignore[attr-defined]
    worker.stop(grace=5)
    assert calls == [
        "a.before_enqueue", "b.before_enqueue", "b.after_enqueue", "a.after_enqueue",
        "a.before_process:['a', 'b']", "b.before_process:['a', 'b']", "b.after_process:8", "a.after_process:8",
    ]  # fmt: skip
    assert double.options.extra == {"audit": True}


def test_dead_letter_hook_sees_the_reason() -> None:
    calls: list[str] = []
    app = App("memory://", middleware=[Recorder("a", calls)])
    app.broker.publish([__import__("taskmill.brokers", fromlist=["Record"]).Record("x", "default", b"nope")])
    worker = Worker(app, threads=1)
    worker.start()
    app.broker.join("default", timeout=5, fail_fast=False)  # type: ignore[attr-defined]
    worker.stop(grace=5)
    assert calls == ["a.before_dead_letter:decode_error"]


def test_options_nobody_declared_are_refused() -> None:
    app = App("memory://")
    with pytest.raises(UnknownOptionError, match="audit"):

        @app.actor(audit=True)
        def job() -> None: ...
