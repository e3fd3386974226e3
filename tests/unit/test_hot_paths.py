"""Shortcuts on the per-message paths decide exactly what the slow, general code would."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from taskmill import App
from taskmill.brokers.base import Delivery
from taskmill.errors import ArgumentsError
from taskmill.message import Message
from taskmill.middleware import Middleware
from taskmill.middleware.base import overriding
from taskmill.worker import executor
from taskmill.worker.executor import Outcome
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


FORMAT = "%(created)f %(msecs)d %(levelname)s %(process)d %(thread)s %(threadName)s %(name)s: %(message)s"
DONE = "%s done in %.1f ms"


@pytest.fixture
def sole() -> Iterator[tuple[BatchingHandler, io.StringIO]]:
    """A BatchingHandler as the root's only handler at INFO, as the CLI sets it up; restored after.
    pytest adds its capturing handler to the root as the test body starts: the test calls
    ``alone`` (below) once it runs."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = BatchingHandler(stream, delay=60)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.setLevel(logging.INFO)
    yield handler, stream
    root.setLevel(level)


@contextlib.contextmanager
def alone(handler: logging.Handler) -> Iterator[None]:
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        yield
    finally:
        root.handlers[:] = handlers


def in_thread(name: str, call: Callable[[], Any]) -> Any:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), name=name)
    thread.start()
    thread.join()
    return result[0]


def test_a_deferred_line_reads_as_the_line_logger_info_makes(sole: tuple[BatchingHandler, io.StringIO]) -> None:
    handler, stream = sole
    logger = logging.getLogger("taskmill.actor.deferred")  # the "taskmill" logger has the library's NullHandler
    args = ("message m1 actor=a queue=default attempt=1", 1.25)

    def both() -> tuple[float, bool, float]:  # on one thread: two threads may not share an ident
        logger.info(DONE, *args)
        before = time.time()
        deferred = handler.defer(logger, DONE, args, ("here.py", 7, "caller"))
        return before, deferred, time.time()

    with alone(handler):
        before, deferred_it, after = in_thread("worker-7", both)
    assert deferred_it
    handler.flush()
    made, deferred = (line.split(" ", 2) for line in stream.getvalue().splitlines())
    assert made[2] == deferred[2]  # level, process, thread ident, thread name, logger and text
    assert deferred[2].startswith("INFO ")
    assert " worker-7 taskmill.actor.deferred: " in deferred[2]
    assert deferred[2].endswith(": message m1 actor=a queue=default attempt=1 done in 1.2 ms")
    created = float(deferred[0])  # printed to the microsecond: it may have rounded up past a millisecond
    assert before - 1e-6 <= created <= after + 1e-6
    shown = int((created - int(created)) * 1000)
    assert int(deferred[1]) in {shown, (shown - 1) % 1000}


def test_a_deferred_line_keeps_its_place_among_the_records_queued_around_it(
    sole: tuple[BatchingHandler, io.StringIO],
) -> None:
    handler, stream = sole
    logger = logging.getLogger("taskmill.actor.deferred")
    handler.handle(record(logging.INFO, "one"))
    with alone(handler):
        assert handler.defer(logger, "%s", ("two",), ("here.py", 7, "caller"))
    handler.handle(record(logging.WARNING, "three"))  # writes what was queued before it, in order
    assert [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()] == ["one", "two", "three"]


def test_a_deferred_line_leaves_out_the_thread_when_logging_does(sole: tuple[BatchingHandler, io.StringIO]) -> None:
    handler, stream = sole
    logger = logging.getLogger("taskmill.actor.deferred")
    logging.logThreads = False
    try:
        with alone(handler):
            assert handler.defer(logger, "%s", ("line",), ("here.py", 7, "caller"))
    finally:
        logging.logThreads = True
    handler.flush()
    assert " None None taskmill.actor.deferred: line" in stream.getvalue()


def test_a_root_that_does_not_propagate_still_gets_deferred_lines(sole: tuple[BatchingHandler, io.StringIO]) -> None:
    handler, stream = sole
    logger = logging.getLogger("taskmill.actor.deferred")
    logging.getLogger().propagate = False  # meaningless on the root, and common in configurations
    try:
        with alone(handler):
            assert handler.defer(logger, "%s", ("line",), ("here.py", 7, "caller"))
    finally:
        logging.getLogger().propagate = True
    handler.flush()
    assert stream.getvalue().endswith("taskmill.actor.deferred: line\n")


class Spy(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def add_filter(logger: logging.Logger, handler: BatchingHandler) -> Callable[[], None]:
    drop = logging.Filter("nothing")
    logger.addFilter(drop)
    return lambda: logger.removeFilter(drop)


def filter_handler(logger: logging.Logger, handler: BatchingHandler) -> Callable[[], None]:
    drop = logging.Filter("nothing")
    handler.addFilter(drop)
    return lambda: handler.removeFilter(drop)


def handler_between(logger: logging.Logger, handler: BatchingHandler) -> Callable[[], None]:
    parent = logging.getLogger("taskmill.actor")
    spy = Spy()
    parent.addHandler(spy)
    return lambda: parent.removeHandler(spy)


def second_root_handler(logger: logging.Logger, handler: BatchingHandler) -> Callable[[], None]:
    spy = Spy()
    logging.getLogger().addHandler(spy)
    return lambda: logging.getLogger().removeHandler(spy)


def record_factory(logger: logging.Logger, handler: BatchingHandler) -> Callable[[], None]:
    factory = logging.getLogRecordFactory()

    def custom(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return factory(*args, **kwargs)

    logging.setLogRecordFactory(custom)
    return lambda: logging.setLogRecordFactory(factory)


def no_propagation(logger: logging.Logger, handler: BatchingHandler) -> Callable[[], None]:
    parent = logging.getLogger("taskmill.actor")
    parent.propagate = False
    return lambda: setattr(parent, "propagate", True)


def handler_level(logger: logging.Logger, handler: BatchingHandler) -> Callable[[], None]:
    handler.setLevel(logging.WARNING)
    return lambda: handler.setLevel(logging.NOTSET)


def logger_level(logger: logging.Logger, handler: BatchingHandler) -> Callable[[], None]:
    logger.setLevel(logging.WARNING)
    return lambda: logger.setLevel(logging.NOTSET)


def wrapped_call_handlers(logger: logging.Logger, handler: BatchingHandler) -> Callable[[], None]:
    original = logging.Logger.callHandlers  # as Sentry's logging integration and APM agents do

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        original(self, record)

    logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]
    return lambda: setattr(logging.Logger, "callHandlers", original)


@pytest.mark.parametrize(
    "change",
    [
        add_filter,
        filter_handler,
        handler_between,
        second_root_handler,
        record_factory,
        no_propagation,
        handler_level,
        logger_level,
        wrapped_call_handlers,
    ],
)
def test_a_line_something_else_could_see_or_drop_is_not_deferred(
    sole: tuple[BatchingHandler, io.StringIO], change: Callable[[logging.Logger, BatchingHandler], Callable[[], None]]
) -> None:
    handler, stream = sole
    logger = logging.getLogger("taskmill.actor.deferred")
    with alone(handler):
        undo = change(logger, handler)
        try:
            assert handler.defer(logger, "%s", ("line",), ("here.py", 7, "caller")) is False
        finally:
            undo()
    handler.flush()
    assert stream.getvalue() == ""


class Adding(logging.Logger):
    """A logger class that adds a field to its records, as applications do with ``setLoggerClass``."""

    def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:  # noqa: N802 -- logging's name
        made = super().makeRecord(*args, **kwargs)
        made.request = "req-42"
        return made


def settle(logger: logging.Logger | logging.LoggerAdapter[logging.Logger], name: str) -> None:
    """Where the worker logs the done line from (its caller is the line's)."""
    delivery, outcome = Delivery(name, "default", b"", 0, 1, "t"), Outcome(message=None, seconds=0.002)
    executor.log_done(logger, delivery, outcome, False, 9)  # type: ignore[arg-type]


SEEN = "%(funcName)s: %(message)s"


def test_the_done_line_is_deferred_when_the_clis_handler_is_alone(sole: tuple[BatchingHandler, io.StringIO]) -> None:
    handler, stream = sole
    handler.setFormatter(logging.Formatter(SEEN))
    with alone(handler):
        settle(logging.getLogger("taskmill.actor.deferred"), "m2")
        assert len(handler._pending) == 1  # queued by defer, not by handle()
    handler.flush()
    assert stream.getvalue() == "settle: message m2 actor=? queue=default attempt=1 done in 2.0 ms\n"


def test_the_done_line_reaches_another_handler_by_the_ordinary_path(sole: tuple[BatchingHandler, io.StringIO]) -> None:
    handler, stream = sole
    handler.setFormatter(logging.Formatter(SEEN))
    spy = Spy()
    logging.getLogger("taskmill.actor").addHandler(spy)
    try:
        with alone(handler):
            settle(logging.getLogger("taskmill.actor.deferred"), "m3")
    finally:
        logging.getLogger("taskmill.actor").removeHandler(spy)
    handler.flush()
    assert spy.lines == ["message m3 actor=? queue=default attempt=1 done in 2.0 ms"]
    assert stream.getvalue() == "settle: message m3 actor=? queue=default attempt=1 done in 2.0 ms\n"


def test_the_done_line_of_another_logger_class_or_an_adapter_takes_the_ordinary_path(
    sole: tuple[BatchingHandler, io.StringIO],
) -> None:
    handler, stream = sole
    handler.setFormatter(logging.Formatter("%(request)s %(funcName)s: %(message)s"))
    adding = Adding("taskmill.actor.adding")
    adding.parent = logging.getLogger()
    with alone(handler):
        settle(adding, "m4")
        handler.flush()
        handler.setFormatter(logging.Formatter(SEEN))
        settle(logging.LoggerAdapter(logging.getLogger("taskmill.actor.adapted")), "m5")
    handler.flush()
    assert stream.getvalue().splitlines() == [
        "req-42 settle: message m4 actor=? queue=default attempt=1 done in 2.0 ms",
        "settle: message m5 actor=? queue=default attempt=1 done in 2.0 ms",
    ]
