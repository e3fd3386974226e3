"""Real worker processes for the integration tests: start, watch, signal and always clean up.

Worker children call ``os.setpgrp()``, so killing the supervisor's process group misses them, and
once the supervisor is gone they are re-parented. Every process a test starts therefore carries a
unique ``TASKMILL_TEST_RUN`` value in its environment, and cleanup SIGKILLs whatever carries it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ledger import ENV as LEDGER_ENV
from ledger import Ledger

from taskmill import App, BrokerUnavailable, Message
from taskmill.brokers import QueueStats

REDIS_SERVER = "redis-server"
PG_BIN_ENV = "TASKMILL_TEST_PG_BIN"  # a directory with initdb and postgres, when not in the usual places

HERE = Path(__file__).resolve().parent
RUN_ENV = "TASKMILL_TEST_RUN"
T = TypeVar("T")


def sqlite_url(path: Path) -> str:
    """The broker URL of an absolute SQLite path (four slashes)."""
    return f"sqlite:///{path.resolve()}"


def wait_until(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_completed(ledger: Ledger, at_least: int, timeout: float) -> int:
    """Block until the ledger shows ``at_least`` completed ids; return the count."""
    return wait_until(
        lambda: count if (count := ledger.completed_count()) >= at_least else 0, timeout, f"{at_least} completions"
    )


def new_key() -> str:
    """A fresh id, used both as the message id and as the actor's ledger key."""
    return uuid.uuid4().hex


def record_messages(app: App, count: int, *, queue: str | None = None) -> list[Message]:
    """``count`` messages for the ``record`` actor, each keyed by its own message id (on ``queue``, if given)."""
    actor = app.get_actor("record")
    return [
        actor.message_with_options(args=(key,), message_id=key, queue=queue)
        for key in (new_key() for _ in range(count))
    ]


def totals(app: App) -> QueueStats:
    """The broker's counts summed over every queue (queue name ``*``)."""
    rows = app.broker.stats()
    return QueueStats(
        "*",
        ready=sum(r.ready for r in rows),
        delayed=sum(r.delayed for r in rows),
        in_flight=sum(r.in_flight for r in rows),
        dead=sum(r.dead for r in rows),
    )


def wait_drained(app: App, timeout: float = 10) -> QueueStats:
    """Block until the broker holds no ready, delayed or leased message; return the totals."""

    def drained() -> QueueStats | None:
        counts = totals(app)
        return counts if counts.ready == counts.delayed == counts.in_flight == 0 else None

    return wait_until(drained, timeout, "the broker to hold no live message")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def _parent_pid(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[1])  # the command name in parentheses may contain spaces


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def pids_with_marker(marker: str) -> list[int]:
    """Processes whose environment carries ``TASKMILL_TEST_RUN=marker``."""
    needle = f"{RUN_ENV}={marker}".encode()
    return [pid for pid in _all_pids() if needle in _read(f"/proc/{pid}/environ").split(b"\0")]


def _state(pid: int) -> bytes:
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(b")", 1)[1].split()[0] if stat else b""


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return _state(pid) not in {b"", b"Z", b"X"}


def kill_quietly(pid: int, signum: int = signal.SIGKILL) -> None:
    """Signal ``pid``, ignoring that it may be gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


class WorkerProcess:
    """``python -m taskmill ...`` as a subprocess, its output in a file."""

    def __init__(self, args: Sequence[str], *, env: Mapping[str, str], cwd: Path, output: Path) -> None:
        self.marker = uuid.uuid4().hex
        self.output_path = output
        self._output = output.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskmill", *args],
            cwd=cwd,
            env={**env, RUN_ENV: self.marker},
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The supervisor's pid."""
        return self.process.pid

    def output(self) -> str:
        """Everything the supervisor and its children printed so far."""
        return self.output_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """The live worker processes (spawned children), not multiprocessing's resource tracker."""
        return sorted(
            pid
            for pid in _all_pids()
            if _parent_pid(pid) == self.pid
            and b"--multiprocessing-fork" in _read(f"/proc/{pid}/cmdline")
            and is_alive(pid)
        )

    def wait_children(self, count: int, *, without: Collection[int] = (), timeout: float = 20) -> list[int]:
        """Block until exactly ``count`` worker processes run, none of them in ``without``; return their pids."""

        def settled() -> list[int] | None:
            found = self.children()
            return found if len(found) == count and not set(found) & set(without) else None

        return wait_until(settled, timeout, f"{count} worker processes other than {sorted(without)}")

    def wait_for_output(self, text: str, timeout: float = 20) -> None:
        """Block until ``text`` appears in the output."""
        wait_until(lambda: text in self.output(), timeout, f"{text!r} in the worker's output")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the supervisor only."""
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The supervisor's exit code; fails the test if it does not exit within ``timeout`` s."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit within {timeout} s; output:\n{self.output()[-3000:]}") from None

    def cleanup(self) -> None:
        """SIGKILL the supervisor's group and every process that carries this run's marker."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in pids_with_marker(self.marker):
            kill_quietly(pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        wait_until(lambda: not [p for p in pids_with_marker(self.marker) if is_alive(p)], 10, "test processes to die")
        self._output.close()


class Workers:
    """Starts ``taskmill`` subprocesses for one test and kills them all when it ends."""

    def __init__(self, tmp_path: Path, broker_url: str, ledger_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            "TASKMILL_BROKER_URL": broker_url,
            LEDGER_ENV: str(ledger_path),
        }
        self.started: list[WorkerProcess] = []

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> WorkerProcess:
        """Run ``python -m taskmill *args`` with cwd tmp_path; extra ``env`` overrides."""
        output = self.tmp_path / f"worker-{len(self.started)}.log"
        process = WorkerProcess(args, env={**self.env, **(env or {})}, cwd=self.tmp_path, output=output)
        self.started.append(process)
        return process

    def worker(
        self,
        *options: str,
        processes: int = 1,
        threads: int = 1,
        log_level: str = "INFO",
        env: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        """``taskmill --log-level L worker ledger_app --processes P --threads T *options``."""
        counts = ("--processes", str(processes), "--threads", str(threads))
        return self.start("--log-level", log_level, "worker", "ledger_app", *counts, *options, env=env)

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a short CLI command to completion, capturing stdout and stderr apart."""
        return subprocess.run(
            [sys.executable, "-m", "taskmill", *args],
            cwd=self.tmp_path,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cleanup(self) -> None:
        """Kill everything started."""
        for process in self.started:
            process.cleanup()


@contextmanager
def workers_for(tmp_path: Path, broker_url: str, ledger_path: Path) -> Iterator[Workers]:
    """A ``Workers`` whose processes are killed on exit, whatever happened."""
    workers = Workers(tmp_path, broker_url, ledger_path)
    try:
        yield workers
    finally:
        workers.cleanup()


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a loopback port, with AOF fsynced on every write, that a test
    can SIGKILL and start again on the same port and directory (the AOF keeps the data)."""

    def __init__(self, directory: Path, port: int | None = None, binary: str | None = None) -> None:
        found = binary or shutil.which(REDIS_SERVER)
        if found is None:
            raise FileNotFoundError(f"{REDIS_SERVER} is not on PATH")
        self.binary = found
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.marker = uuid.uuid4().hex
        self.log_path = directory / "redis-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def url(self, prefix: str, db: int = 0) -> str:
        """A ``redis://`` URL on this server with a key prefix."""
        return f"redis://127.0.0.1:{self.port}/{db}?prefix={prefix}"

    @property
    def pid(self) -> int | None:
        """The running server's pid, or None."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def start(self, timeout: float = 20) -> float:
        """Start the server (it must not be running) and block until it answers PING with its data
        loaded; returns the ``time.time()`` at which it first did."""
        assert self.pid is None, "redis-server is running already"
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, RUN_ENV: self.marker},
                start_new_session=True,  # Ctrl-C on pytest does not reach it; stop() does
            )
        self.starts += 1
        return wait_until(self._answers, timeout, f"redis-server on port {self.port} to answer PING")

    def _answers(self) -> float | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return time.time() if client.ping() else None
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return None
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server and reap it: no shutdown, no final AOF rewrite."""
        if self.process is None:
            return
        kill_quietly(self.process.pid)
        self.process.wait(10)
        self.process = None

    def restart(self, timeout: float = 20) -> float:
        """Start again on the same port and directory; returns when it answers (see ``start``)."""
        self.kill()
        return self.start(timeout)

    def ensure_running(self) -> None:
        """Start the server if a test left it down."""
        if self.pid is None:
            self.start()

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Kill the server and anything else that carries its marker."""
        self.kill()
        for pid in pids_with_marker(self.marker):
            kill_quietly(pid)


def postgres_bin_dir() -> Path | None:
    """Where ``initdb`` and ``postgres`` live: ``$TASKMILL_TEST_PG_BIN``, the newest ``/usr/lib/postgresql/N/bin``
    (Debian keeps them off PATH), or PATH."""
    candidates = [Path(p) for p in [os.environ.get(PG_BIN_ENV)] if p]
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    if found := shutil.which("initdb"):
        candidates.append(Path(found).parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "postgres").is_file()), None)


class PostgresServer:
    """A private PostgreSQL cluster (trust auth, ``fsync=on``) on a loopback port, initdb'd into a fresh directory on
    first start, that a test can SIGKILL (postmaster and every backend at once) and start again on the same port and
    data directory: crash recovery replays the WAL, so every committed transaction survives.

    PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` OS user (through ``runuser``), in a
    directory outside pytest's root-only tmp tree. Backends rewrite their environment for the process title, so they
    are found by parentage (children of the postmaster), not by ``TASKMILL_TEST_RUN``.
    """

    def __init__(self, port: int | None = None, bin_dir: Path | None = None, os_user: str = "postgres") -> None:
        found = bin_dir or postgres_bin_dir()
        if found is None:
            raise FileNotFoundError(f"no initdb/postgres in ${PG_BIN_ENV}, /usr/lib/postgresql/*/bin or on PATH")
        self.bin_dir = found
        self.as_user: list[str] = []
        owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            import pwd

            runuser = shutil.which("runuser")
            try:
                entry = pwd.getpwnam(os_user)
            except KeyError:
                raise FileNotFoundError(f"running as root, with no {os_user!r} OS user to run postgres as") from None
            if runuser is None:
                raise FileNotFoundError("running as root, and runuser (util-linux) is not on PATH")
            self.as_user = [runuser, "-u", os_user, "--"]
            owner = (entry.pw_uid, entry.pw_gid)
        self.directory = Path(tempfile.mkdtemp(prefix="tmfault-pg-"))  # also the Unix socket's directory
        if owner is not None:
            os.chown(self.directory, *owner)
        self.data = self.directory / "data"
        self.port = port if port is not None else free_port()
        self.log_path = self.directory / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.postmaster: int | None = None
        self.starts = 0

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` on this cluster (no query string)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The running postmaster's pid, or None."""
        return self.postmaster if self.postmaster is not None and is_alive(self.postmaster) else None

    def _run(self, *args: str) -> None:
        with self.log_path.open("ab") as log:
            subprocess.run([*self.as_user, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True)

    def start(self, timeout: float = 30) -> float:
        """Start the server (initdb first, once) and block until it accepts connections, crash recovery done;
        returns the ``time.time()`` at which it first did."""
        assert self.pid is None, "postgres is running already"
        if not (self.data / "PG_VERSION").exists():
            initdb = str(self.bin_dir / "initdb")
            self._run(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-N")
        args = [
            *self.as_user, str(self.bin_dir / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-k", str(self.directory),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=on",
            "-c", "synchronous_commit=on",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1
        up = wait_until(self._answers, timeout, f"postgres on port {self.port} to accept connections")
        self.postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        return up

    def _answers(self) -> float | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"postgres exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        import psycopg

        try:
            psycopg.connect(self.url(), connect_timeout=1).close()
        except psycopg.OperationalError:  # refused, or "the database system is starting up"
            return None
        return time.time()

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE name`` on the running server."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def kill(self) -> None:
        """SIGKILL the postmaster and all its children at once: no shutdown checkpoint, no goodbye to clients."""
        if self.process is None:
            return
        postmaster = self.pid
        if postmaster is not None:
            kill_quietly(postmaster, signal.SIGSTOP)  # it forks no new backend while they are gathered
            backends = [pid for pid in _all_pids() if _parent_pid(pid) == postmaster]
            for pid in [*backends, postmaster]:
                kill_quietly(pid)
            wait_until(lambda: not [p for p in [*backends, postmaster] if is_alive(p)], 10, "postgres to die")
        kill_quietly(self.process.pid)  # runuser, which waits for its child
        self.process.wait(10)
        self.process = self.postmaster = None
        # Nothing is left to hold them; a stale pid here could name an unrelated postgres-owned process by now.
        for stale in (self.data / "postmaster.pid", self.directory / f".s.PGSQL.{self.port}.lock"):
            stale.unlink(missing_ok=True)

    def restart(self, timeout: float = 30) -> float:
        """Kill, then start again on the same port and data directory (see ``start``)."""
        self.kill()
        return self.start(timeout)

    def ensure_running(self) -> None:
        """Start the server if a test left it down."""
        if self.pid is None:
            self.kill()
            self.start()

    def log(self) -> str:
        """What initdb and the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Kill the server and remove its directory."""
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class SteadyProducer:
    """Sends ``sends`` ``record`` messages one at a time from a thread, ``pause`` s apart, recording each OK send in
    the ledger; sends that raise ``BrokerUnavailable`` and any other error are kept apart (F7)."""

    app: App
    ledger_path: Path
    sends: int
    pause: float = 0.004
    ok: list[tuple[str, float]] = field(default_factory=list)  # (id, time.time() when the send returned)
    unavailable: list[tuple[str, float]] = field(default_factory=list)
    unavailable_messages: list[str] = field(default_factory=list)  # what each BrokerUnavailable said
    other_errors: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sending in the background."""
        self.thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        own = Ledger(self.ledger_path)  # SQLite connections belong to the thread that opened them
        actor = self.app.get_actor("record")
        try:
            for _ in range(self.sends):
                key = new_key()
                try:
                    self.app.enqueue([actor.message_with_options(args=(key,), message_id=key)])
                except BrokerUnavailable as exc:
                    self.unavailable.append((key, time.time()))
                    self.unavailable_messages.append(str(exc))
                except Exception as exc:
                    self.other_errors.append(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
                else:
                    own.record_enqueued([key])
                    self.ok.append((key, time.time()))
                time.sleep(self.pause)
        finally:
            own.close()

    def join(self, timeout: float) -> None:
        """Wait for the last send; fails the test if it takes longer than ``timeout`` s."""
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the producer did not finish its sends"
