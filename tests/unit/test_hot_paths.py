"""Shortcuts on the per-message paths decide exactly what the slow, general code would."""

from __future__ import annotations

import inspect
import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from taskmill import App
from taskmill.errors import ArgumentsError
from taskmill.message import Message
from taskmill.middleware import Middleware
from taskmill.middleware.base import overriding
from taskmill.worker.process import BatchingHandler


def plain(a: int, b: int) -> None: ...
def defaults(a: int, b: int = 1, c: int = 2) -> None: ...
def star(a: int, *rest: int) -> None: ...
def keyword_only(a: int, *, k: int) -> None: ...
def keyword_only_default(a: int, *, k: int = 0) -> None: ...
def positional_only(a: int, /, b: int = 0) -> None: ...
def anything(*args: Any, **kwargs: Any) -> None: ...
def nothing() -> None: ...


SIGNATURES = [plain, defaults, star, keyword_only, keyword_only_default, positional_only, anything, nothing]
CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    ((1,), {}),
    ((1, 2), {}),
    ((1, 2, 3), {}),
    ((1, 2, 3, 4), {}),
    ((1,), {"b": 2}),
    ((1,), {"k": 2}),
    ((), {"a": 1}),
]


def binds(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, partial: bool) -> bool:
    try:
        (inspect.signature(fn).bind_partial if partial else inspect.signature(fn).bind)(*args, **kwargs)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("fn", SIGNATURES, ids=lambda fn: fn.__name__)
@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
def test_argument_checks_agree_with_inspect_for_every_kind_of_signature(fn: Callable[..., Any], partial: bool) -> None:
    actor = App("memory://").actor(fn)
    for args, kwargs in CALLS:
        expected = binds(fn, args, kwargs, partial=partial)
        try:
            actor.check_arguments(args, kwargs, partial=partial)
            checked = True
        except ArgumentsError:
            checked = False
        assert checked == expected, (args, kwargs)
        if not partial:
            assert actor.binds(args, kwargs) == expected, (args, kwargs)


class Before(Middleware):
    def before_process(self, app: App, message: Message) -> None: ...


class After(Middleware):
    def after_process(self, app: App, message: Message, *, result: Any, exception: BaseException | None) -> None: ...


@dataclass
class Unhashable(Middleware):  # a dataclass with eq and no hash, as users write them
    label: str = ""

    def before_process(self, app: App, message: Message) -> None: ...


def test_only_middleware_that_override_a_hook_are_called_for_it_in_order_and_reversed() -> None:
    first, second, third, idle = Before(), Unhashable("x"), After(), Middleware()
    chain = [first, idle, second, third]
    assert [hook.__self__ for hook in overriding(chain, "before_process")] == [first, second]
    assert [hook.__self__ for hook in overriding(chain, "after_process", reverse=True)] == [third]
    assert overriding(chain, "before_enqueue") == ()


def test_a_hook_set_on_one_instance_counts_as_overridden() -> None:
    special = Middleware()
    calls: list[str] = []
    special.before_process = lambda app, message: calls.append(message.id)  # type: ignore[method-assign]
    [hook] = overriding([special, Middleware()], "before_process")
    hook(App("memory://"), Message(actor="a", id="m1"))
    assert calls == ["m1"]


def test_a_changed_middleware_list_gets_its_own_hooks() -> None:
    chain: list[Middleware] = [Before()]
    assert len(overriding(chain, "before_process")) == 1
    chain.append(Before())
    assert len(overriding(chain, "before_process")) == 2


def record(level: int, text: str) -> logging.LogRecord:
    return logging.LogRecord("taskmill.test", level, __file__, 1, text, None, None)


def test_batched_info_lines_come_out_on_flush_and_a_warning_brings_them_out_first() -> None:
    stream = io.StringIO()
    handler = BatchingHandler(stream, delay=60)  # no timed flush during the test
    handler.handle(record(logging.INFO, "one"))
    handler.handle(record(logging.INFO, "two"))
    assert stream.getvalue() == ""
    handler.handle(record(logging.WARNING, "three"))
    assert stream.getvalue() == "one\ntwo\nthree\n"
    handler.handle(record(logging.INFO, "four"))
    handler.flush()
    assert stream.getvalue().endswith("three\nfour\n")


def test_a_batched_line_keeps_the_text_its_arguments_had_when_it_was_logged() -> None:
    stream = io.StringIO()
    handler = BatchingHandler(stream, delay=60)
    state = ["before"]
    handler.handle(logging.LogRecord("taskmill.test", logging.INFO, __file__, 1, "state %s", (state,), None))
    state[0] = "after"
    handler.flush()
    assert stream.getvalue() == "state ['before']\n"


def test_no_line_is_lost_when_eight_threads_log_while_the_handler_flushes() -> None:
    stream = io.StringIO()
    handler = BatchingHandler(stream, delay=0.001)  # the flush thread runs all the time
    start = threading.Barrier(8)

    def log_lines(thread: int) -> None:
        start.wait()
        for i in range(2_000):
            level = logging.WARNING if i % 500 == 0 else logging.INFO
            handler.handle(record(level, f"{thread}-{i}"))

    threads = [threading.Thread(target=log_lines, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.flush()
    lines = stream.getvalue().splitlines()
    assert sorted(lines) == sorted(f"{t}-{i}" for t in range(8) for i in range(2_000))
