"""Supervisor: runs worker processes, restarts crashed ones, forwards signals, reloads on --watch.

Signals: the first SIGTERM/SIGINT asks every child to stop gracefully (stop fetching, finish
in-flight work within the grace period, give back what was not started); a second one asks them
to stop hard (give back in-flight messages at once, then exit). Nothing is lost either way: what
a child did not ack stays in the broker.
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
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # at run time imported where needed: the supervisor runs on the standard library alone
    from taskmill.app import App

__all__ = ["WorkerConfig", "load_app", "run_child", "supervise"]

log = logging.getLogger("taskmill.supervisor")


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
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # one warning per reconnect attempt floods logs


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes INFO and below in batches, at most ``delay`` s late; WARNING and
    above (and every line queued before them) at once.

    A worker logs a line per message. So that busy threads do not queue behind each other for the
    handler's lock, an INFO record is only queued here, without the lock (a copy, with its message
    text made at once, so later changes to its arguments do not show), and the flush thread formats
    and writes the batch.
    """

    def __init__(self, stream: TextIO, delay: float = 0.05) -> None:
        super().__init__(stream)
        self.delay = delay
        self._pending: collections.deque[logging.LogRecord] = collections.deque()  # appends need no lock
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
                record = self._pending.popleft()
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


class Child:
    """One worker process: a fresh interpreter running ``run_child`` (no multiprocessing, so no
    resource-tracker process beside it), in its own process group, stdin on /dev/null."""

    MARK = "taskmill-worker-process"  # in its command line, so tools and tests can tell it apart

    def __init__(self, config: WorkerConfig) -> None:
        code = (
            f"import sys; sys.path.append({_PACKAGE_ROOT!r}); "  # taskmill's own location, last: shadows nothing
            "from taskmill.worker.supervisor import child_main; child_main()"
        )
        env = {**os.environ, _CHILD_CONFIG_ENV: _to_json(config)}
        stdin: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        closed = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited_fds()]  # only 0-2 pass, as with multiprocessing
        self.pid = os.posix_spawn(
            sys.executable, [sys.executable, "-P", "-c", code, self.MARK], env, file_actions=stdin + closed, setpgroup=0
        )
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        if self.exitcode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exitcode = os.waitstatus_to_exitcode(status)  # -N when killed by signal N
        return self.exitcode is None


def _inherited_fds() -> list[int]:
    """File descriptors above 2 that a spawned child would inherit (passed to this process, say)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        found = []
        for fd in map(int, names):
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                if fd > 2 and os.get_inheritable(fd):
                    found.append(fd)
        return found
    return []


class Supervisor:
    """Keeps ``config.processes`` children alive until asked to stop."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.children: list[Child | None] = [None] * config.processes
        self.signals = 0
        self.reload = threading.Event()
        self.retiring: set[int] = set()  # pids a reload has asked to stop
        self._restarts: list[float] = []
        self._forwarded = 0  # signals passed on to the children so far

    def _spawn(self, slot: int) -> None:
        self.children[slot] = Child(self.config)

    def _signal_children(self, signum: int, *, skip: set[int] | frozenset[int] = frozenset()) -> None:
        for child in self.children:
            if child is not None and child.is_alive() and child.pid not in skip:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """First signal: graceful stop; second: hard stop. Only counted here: the main loop passes
        them on (reaping children from inside a signal handler could race the loop's own waitpid)."""
        self.signals += 1

    def _forward(self) -> None:
        if self.signals > self._forwarded:
            if self._forwarded == 0:  # children a reload already asked to stop must not count it twice
                self._signal_children(signal.SIGTERM, skip=self.retiring)
            if self.signals >= 2:
                self._signal_children(signal.SIGUSR1)
            self._forwarded = self.signals

    def run(self) -> int:
        """Spawn, watch and restart children until stopped; returns the exit code."""
        for slot in range(self.config.processes):
            self._spawn(slot)
        done = [False] * self.config.processes
        while True:
            self._forward()
            if self.reload.is_set() and not self.signals:
                self.reload.clear()
                log.info("code changed: restarting workers")
                self.retiring = {c.pid for c in self.children if c is not None}
                self._signal_children(signal.SIGTERM)
                for child in self.children:
                    while child is not None and child.is_alive():
                        self._forward()
                        time.sleep(0.05)
                self.retiring = set()
                if not self.signals:  # a stop asked for during the reload wins over the reload
                    for slot in range(self.config.processes):
                        self._spawn(slot)
            for slot, child in enumerate(self.children):
                if child is None or child.is_alive() or done[slot]:  # is_alive() reaps an exited child
                    continue
                if self.signals or (self.config.burst and child.exitcode == 0):
                    done[slot] = True
                    continue
                log.warning("worker process %s exited with code %s; restarting it", child.pid, child.exitcode)
                self._throttle()
                self._spawn(slot)
            if all(done):
                return 0
            time.sleep(0.1)

    def _throttle(self) -> None:
        """Back off when children crash in a loop, so a broken deploy does not spin the CPU."""
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 10] + [now]
        if len(self._restarts) > 5:
            time.sleep(min(len(self._restarts) - 5, 10))


def supervise(config: WorkerConfig, *, reexec: bool = True) -> int:
    """Run the supervisor in this (main) thread until its children stopped.

    With ``reexec`` (where the platform has exec), this process first becomes a fresh interpreter
    (same pid) running this file as a script, which imports neither the app nor taskmill: the CLI
    imported both for the banner, ~20 MB a supervisor has no use for. SIGTERM and SIGINT stay
    blocked across the exec, so a stop asked for meanwhile is handled, not fatal.
    """
    if reexec and hasattr(os, "execv") and hasattr(signal, "pthread_sigmask"):
        _reexec(config)
    supervisor = Supervisor(config)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # children inherit the mask: unblock first
    stop_watch = threading.Event()
    if config.watch:
        threading.Thread(target=_watch, args=(config.watch, supervisor.reload, stop_watch), daemon=True).start()
    try:
        return supervisor.run()
    finally:
        stop_watch.set()


_CONFIG_ENV = "TASKMILL_SUPERVISOR_CONFIG"
_CHILD_CONFIG_ENV = "TASKMILL_WORKER_CONFIG"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # where ``taskmill`` is importable from


def _to_json(config: WorkerConfig) -> str:
    return json.dumps(dataclasses.asdict(config))


def _from_env(name: str) -> WorkerConfig:
    raw: dict[str, Any] = json.loads(os.environ.pop(name))
    fields: dict[str, Any] = {key: tuple(v) if isinstance(v, list) else v for key, v in raw.items()}
    return WorkerConfig(**fields)


def _reexec(config: WorkerConfig) -> None:
    """Replace this process with ``python -c 'main()'`` carrying ``config`` in its environment."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, _CONFIG_ENV: _to_json(config)}
    # -P: the script's directory (this package's) must not shadow top-level modules of the app
    os.execve(sys.executable, [sys.executable, "-P", str(Path(__file__).resolve())], env)  # noqa: S606 -- our own interpreter, fixed code


def main() -> None:
    """Entry point of the re-executed supervisor (see ``supervise``)."""
    config = _from_env(_CONFIG_ENV)
    configure_logging(config.log_level)
    sys.exit(supervise(config, reexec=False))


def child_main() -> None:
    """Entry point of a worker process the supervisor spawned (see ``Child``)."""
    run_child(_from_env(_CHILD_CONFIG_ENV))


def _watch(paths: tuple[str, ...], reload: threading.Event, stop: threading.Event) -> None:
    import watchfiles

    for _changes in watchfiles.watch(
        *[Path(p) for p in paths], watch_filter=watchfiles.PythonFilter(), stop_event=stop
    ):
        reload.set()


if __name__ == "__main__":  # the re-executed supervisor
    main()
