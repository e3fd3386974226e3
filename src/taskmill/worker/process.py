"""One worker process: the config the supervisor hands it, the CLI's logging, the app it loads,
and its main (``child_main``), which runs a Worker until signalled.

Kept apart from supervisor.py, which runs as a small interpreter of its own and must not import
what only a worker process needs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from taskmill.app import App

__all__ = ["CONFIG_ENV", "BatchingHandler", "WorkerConfig", "child_main", "configure_logging", "load_app", "run_child"]

log = logging.getLogger("taskmill.supervisor")

CONFIG_ENV = "TASKMILL_WORKER_CONFIG"  # how a worker process receives its WorkerConfig (JSON)
LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What every worker process needs to know; passed to the supervisor and its children as JSON."""

    app_spec: str
    processes: int = 1
    threads: int = 8
    queues: tuple[str, ...] = ()
    burst: bool = False
    grace: float | None = None
    log_level: str = "INFO"
    log_args: bool = False
    watch: tuple[str, ...] = field(default=())
    cwd: str = field(default_factory=os.getcwd)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        raw: dict[str, Any] = json.loads(text)
        fields: dict[str, Any] = {key: tuple(v) if isinstance(v, list) else v for key, v in raw.items()}
        return cls(**fields)


def load_app(spec: str) -> App:
    """Import ``module[:attribute]`` and return its App (the only App in it, or taskmill's default)."""
    from taskmill.app import App
    from taskmill.errors import ConfigurationError

    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, App):
            raise ConfigurationError(f"{spec!r} is not a taskmill.App")
        return found
    apps = {id(v): v for v in vars(module).values() if isinstance(v, App)}
    if len(apps) > 1:
        raise ConfigurationError(f"{module_name!r} has several Apps; name one as {module_name}:NAME")
    if apps:
        return next(iter(apps.values()))
    from taskmill import default_app

    return default_app()


def configure_logging(level: str) -> None:
    """The CLI's logging: one line per record on stderr; library code only ever adds a NullHandler."""
    handler = BatchingHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # one warning per reconnect attempt floods logs


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes INFO and below in batches, at most ``delay`` s late; WARNING and
    above (and every line queued before them) at once.

    A worker logs a line per message. So that busy threads do not queue behind each other for the
    handler's lock, an INFO record is only queued here, without the lock (a copy, with its message
    text made at once, so later changes to its arguments do not show), and the flush thread formats
    and writes the batch.

    The line for each message that succeeded goes further (``defer``): while nothing but this handler
    could see it, the worker thread queues only its logger, time, thread, text and caller, and the
    flush thread makes the record, in one warm loop per batch. ``logger.info`` made the record on a
    worker thread, through the logger's caller lookup, filters and walk to the root: in-process,
    taking that away cut a no-op message's CPU from 120-137 to 109-118 µs (docs/benchmarks.md).
    """

    def __init__(self, stream: TextIO, delay: float = 0.05) -> None:
        super().__init__(stream)
        self.delay = delay
        self._pending: collections.deque[Any] = collections.deque()  # records, defer()'s tuples; no lock
        self._stock = _stock_steps()
        self._waiting = threading.Event()
        threading.Thread(target=self._flush_later, name="taskmill-log-flush", daemon=True).start()

    def handle(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return bool(super().handle(record))  # locked: emit() writes the queue, then this record
        kept: object = self.filter(record)  # a bool, or since 3.12 maybe a record
        if not kept:
            return False
        if isinstance(kept, logging.LogRecord):  # a filter handed back another record
            record = kept
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- logging must never raise into the caller
            self.handleError(record)
            return False
        queued = logging.LogRecord.__new__(logging.LogRecord)  # a copy: other handlers see the record as it was
        queued.__dict__.update(record.__dict__)
        queued.msg, queued.args = message, None
        self._pending.append(queued)
        if not self._waiting.is_set():
            self._waiting.set()
        return True

    def defer(self, logger: logging.Logger, msg: str, args: tuple[Any, ...], caller: tuple[str, int, str]) -> bool:
        """Queue what the flush thread needs to make the record ``logger.info(msg, *args)`` would
        make at ``caller`` (file, line, function), when nothing but this handler could see that
        record: a plain Logger whose methods nobody replaced (Sentry and APM agents wrap
        ``callHandlers``), the stock record factory, no filter, and no handler on the way to the
        root but NullHandlers and this one, the root's only handler. False, queueing nothing, otherwise."""
        if type(logger) is not logging.Logger or not logger.isEnabledFor(logging.INFO) or logger.filters:
            return False
        if self.filters or self.level > logging.INFO or logging.getLogRecordFactory() is not logging.LogRecord:
            return False
        if self._stock is None or _logger_steps() != self._stock:
            return False
        each = logger
        while each.parent is not None:  # the root's own propagate does not matter
            if not each.propagate or any(type(handler) is not logging.NullHandler for handler in each.handlers):
                return False
            each = each.parent
        if each.handlers != [self]:
            return False
        thread = threading.current_thread() if logging.logThreads else None
        ident, name = (thread.ident, thread.name) if thread is not None else (None, None)
        self._pending.append((logger.name, time.time(), ident, name, msg % args if args else msg, caller))
        if not self._waiting.is_set():
            self._waiting.set()
        return True

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            self._pending.append(record)
            self._write()
        except Exception:  # noqa: BLE001 -- logging must never raise into the caller
            self.handleError(record)

    def flush(self) -> None:
        with self.lock if self.lock is not None else contextlib.nullcontext():
            self._write()

    def _write(self) -> None:
        lines = []
        with contextlib.suppress(IndexError):  # until the queue is empty; appends may race in
            while True:
                entry = self._pending.popleft()
                record = _record(entry) if type(entry) is tuple else entry
                try:
                    lines.append(self.format(record) + self.terminator)
                except Exception:  # noqa: BLE001 -- one bad record must not hold back the rest
                    self.handleError(record)
        if lines and self.stream is not None:
            self.stream.write("".join(lines))
        if self.stream is not None and hasattr(self.stream, "flush"):
            self.stream.flush()

    def _flush_later(self) -> None:
        while True:
            self._waiting.wait()
            time.sleep(self.delay)
            self._waiting.clear()
            with contextlib.suppress(Exception):  # a closed stream at exit
                self.flush()


def _record(made: tuple[str, float, int | None, str | None, str, tuple[str, int, str]]) -> logging.LogRecord:
    """The record ``Logger.info`` would have made on the worker thread, from what ``defer`` queued
    (its text made already)."""
    name, created, thread, thread_name, text, (path, line, function) = made
    record = logging.LogRecord(name, logging.INFO, path, line, text, None, None, function)
    record.relativeCreated -= (record.created - created) * 1000
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    record.thread, record.threadName = thread, thread_name
    return record


def _logger_steps() -> tuple[Any, ...]:
    """The Logger methods ``logger.info`` goes through, which ``BatchingHandler.defer`` skips."""
    cls = logging.Logger
    return cls.info, cls._log, cls.findCaller, cls.makeRecord, cls.handle, cls.callHandlers


def _stock_steps() -> tuple[Any, ...] | None:
    """``_logger_steps()`` if every one is the standard library's own (nobody wrapped them yet), else None."""
    steps = _logger_steps()
    stock = all(getattr(getattr(step, "__code__", None), "co_filename", None) == logging.__file__ for step in steps)
    return steps if stock else None


def run_child(config: WorkerConfig) -> None:
    """Entry point of one worker process (its own process group: Ctrl-C reaches the supervisor
    only, which forwards the signal once)."""
    os.chdir(config.cwd)
    configure_logging(config.log_level)
    from taskmill.worker.consumer import Worker

    app = load_app(config.app_spec)
    if config.log_args:
        app.settings = dataclasses.replace(app.settings, log_args=True)
    worker = Worker(app, queues=config.queues or None, threads=config.threads, burst=config.burst)
    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals = 2 if signum == signal.SIGUSR1 else signals + 1

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)  # the supervisor's "stop hard", so children need not count
    parent = os.getppid()
    worker.start()
    log.info("worker process started: %d threads on %s", config.threads, ", ".join(worker.queues))
    stopper: threading.Thread | None = None
    while not worker.wait_stopped(0.1):
        if signals == 0 and os.getppid() != parent:
            signals = 1  # the supervisor died; stop gracefully rather than run unsupervised
        if signals == 1 and stopper is None:
            grace = app.settings.grace_seconds if config.grace is None else config.grace
            log.info("stopping: finishing in-flight work (grace %.0f s)", grace)
            stopper = threading.Thread(target=worker.stop, args=(config.grace,), daemon=True)
            stopper.start()
        elif signals >= 2:
            log.warning("second signal: stopping now; in-flight messages go back to the broker")
            worker.abandon()
    app.close()


def child_main() -> None:
    """Entry point of a worker process the supervisor spawned (see ``supervisor.Child``)."""
    run_child(WorkerConfig.from_json(os.environ.pop(CONFIG_ENV)))
