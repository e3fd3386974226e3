"""Supervisor: runs worker processes, restarts crashed ones, forwards signals, reloads on --watch.

Signals: the first SIGTERM/SIGINT asks every child to stop gracefully (stop fetching, finish
in-flight work within the grace period, give back what was not started); a second one asks them
to stop hard (give back in-flight messages at once, then exit). Nothing is lost either way: what
a child did not ack stays in the broker.

The supervisor runs as this file alone, in an interpreter of its own (see ``supervise``), so it
imports only what it needs: no taskmill, no app, not even ``logging`` (its two log lines are
written by ``_say`` in the CLI's format). That keeps it ~10 MB; what a worker process needs is in
process.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

    from taskmill.worker.process import WorkerConfig

__all__ = ["Child", "Supervisor", "supervise"]

_CONFIG_ENV = "TASKMILL_SUPERVISOR_CONFIG"
_CHILD_CONFIG_ENV = "TASKMILL_WORKER_CONFIG"  # process.CONFIG_ENV: not imported, to keep this file alone
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds taskmill/
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def _say(level: str, message: str, threshold: int) -> None:
    """One log line on stderr, as the CLI's logging writes it (process.LOG_FORMAT), unless
    ``level`` is below ``threshold`` (the worker's --log-level)."""
    if _LEVELS[level] >= threshold:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
        sys.stderr.write(f"{stamp} {level:<7} [{os.getpid()}] taskmill.supervisor: {message}\n")
        sys.stderr.flush()


class Child:
    """One worker process: a fresh interpreter running ``run_child`` (no multiprocessing, so no
    resource-tracker process beside it), in its own process group, stdin on /dev/null."""

    MARK = "taskmill-worker-process"  # in its command line, so tools and tests can tell it apart

    def __init__(self, config_json: str) -> None:
        code = (
            f"import sys; sys.path.append({_PACKAGE_ROOT!r}); "  # taskmill's own location, last: shadows nothing
            "from taskmill.worker.process import child_main; child_main()"
        )
        env = {**os.environ, _CHILD_CONFIG_ENV: config_json}
        stdin: list[tuple[object, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
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
            try:
                if fd > 2 and os.get_inheritable(fd):
                    found.append(fd)
            except OSError:  # the listing's own descriptor, closed by now
                pass
        return found
    return []


class Supervisor:
    """Keeps ``processes`` children alive until asked to stop (the config's other fields are the
    children's business: it passes them on as JSON)."""

    def __init__(self, config_json: str) -> None:
        self.config_json = config_json
        settings = json.loads(config_json)
        self.processes: int = settings["processes"]
        self.burst: bool = settings["burst"]
        self.log_level = _LEVELS.get(str(settings["log_level"]).upper(), 20)
        self.children: list[Child | None] = [None] * self.processes
        self.signals = 0
        self.reload = False  # set by the --watch thread (a plain flag: this loop polls anyway)
        self.retiring: set[int] = set()  # pids a reload has asked to stop
        self._restarts: list[float] = []
        self._forwarded = 0  # signals passed on to the children so far

    def _spawn(self, slot: int) -> None:
        self.children[slot] = Child(self.config_json)

    def _signal_children(self, signum: int, *, skip: set[int] | frozenset[int] = frozenset()) -> None:
        for child in self.children:
            if child is not None and child.is_alive() and child.pid not in skip:
                try:  # noqa: SIM105 -- contextlib is one more import for this small interpreter
                    os.kill(child.pid, signum)
                except ProcessLookupError:
                    pass

    def on_signal(self, signum: int, frame: object) -> None:
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
        for slot in range(self.processes):
            self._spawn(slot)
        done = [False] * self.processes
        while True:
            self._forward()
            if self.reload and not self.signals:
                self.reload = False
                _say("INFO", "code changed: restarting workers", self.log_level)
                self.retiring = {c.pid for c in self.children if c is not None}
                self._signal_children(signal.SIGTERM)
                for child in self.children:
                    while child is not None and child.is_alive():
                        self._forward()
                        time.sleep(0.05)
                self.retiring = set()
                if not self.signals:  # a stop asked for during the reload wins over the reload
                    for slot in range(self.processes):
                        self._spawn(slot)
            for slot, child in enumerate(self.children):
                if child is None or child.is_alive() or done[slot]:  # is_alive() reaps an exited child
                    continue
                if self.signals or (self.burst and child.exitcode == 0):
                    done[slot] = True
                    continue
                _say(
                    "WARNING",
                    f"worker process {child.pid} exited with code {child.exitcode}; restarting it",
                    self.log_level,
                )
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
        _reexec(config.to_json())
    return _supervise(config.to_json())


def _supervise(config_json: str) -> int:
    supervisor = Supervisor(config_json)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # children inherit the mask: unblock first
    stop_watch = None
    watch = json.loads(config_json)["watch"]
    if watch:
        import threading

        stop_watch = threading.Event()
        threading.Thread(target=_watch, args=(watch, supervisor, stop_watch), daemon=True).start()
    try:
        return supervisor.run()
    finally:
        if stop_watch is not None:
            stop_watch.set()


def _reexec(config_json: str) -> None:
    """Replace this process with ``python supervisor.py`` carrying the config in its environment."""
    import logging  # imported by the CLI already; flushed so that no line is lost across the exec

    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, _CONFIG_ENV: config_json}
    # -P: the script's directory (this package's) must not shadow top-level modules of the app
    os.execve(sys.executable, [sys.executable, "-P", os.path.abspath(__file__)], env)  # noqa: S606 -- our own interpreter, fixed code


def main() -> None:
    """Entry point of the re-executed supervisor (see ``supervise``)."""
    sys.exit(_supervise(os.environ.pop(_CONFIG_ENV)))


def _watch(paths: list[str], supervisor: Supervisor, stop: threading.Event) -> None:
    import watchfiles

    for _changes in watchfiles.watch(*paths, watch_filter=watchfiles.PythonFilter(), stop_event=stop):
        supervisor.reload = True


if __name__ == "__main__":  # the re-executed supervisor
    main()
