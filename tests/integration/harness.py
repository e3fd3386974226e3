"""Real worker processes for the integration tests: start, watch, signal and always clean up.

Worker children call ``os.setpgrp()``, so killing the supervisor's process group misses them, and
once the supervisor is gone they are re-parented. Every process a test starts therefore carries a
unique ``TASKMILL_TEST_RUN`` value in its environment, and cleanup SIGKILLs whatever carries it.
"""

from __future__ import annotations

import contextlib
import os
import random
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
from typing import NoReturn, TypeVar

import pytest
from ledger import ENV as LEDGER_ENV
from ledger import Execution, Ledger, Report

from taskmill import App, BrokerUnavailable, Message
from taskmill.brokers import QueueStats
from taskmill.worker.supervisor import Child

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

    def __init__(
        self, args: Sequence[str], *, env: Mapping[str, str], cwd: Path, output: Path, pass_fds: Sequence[int] = ()
    ) -> None:
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
            pass_fds=pass_fds,
        )

    @property
    def pid(self) -> int:
        """The supervisor's pid."""
        return self.process.pid

    def output(self) -> str:
        """Everything the supervisor and its children printed so far."""
        return self.output_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """The live worker processes (the supervisor's spawned children)."""
        return sorted(
            pid
            for pid in _all_pids()
            if _parent_pid(pid) == self.pid and Child.MARK.encode() in _read(f"/proc/{pid}/cmdline") and is_alive(pid)
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

    def start(self, *args: str, env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = ()) -> WorkerProcess:
        """Run ``python -m taskmill *args`` with cwd tmp_path; extra ``env`` overrides."""
        output = self.tmp_path / f"worker-{len(self.started)}.log"
        process = WorkerProcess(
            args, env={**self.env, **(env or {})}, cwd=self.tmp_path, output=output, pass_fds=pass_fds
        )
        self.started.append(process)
        return process

    def worker(
        self,
        *options: str,
        processes: int = 1,
        threads: int = 1,
        log_level: str = "INFO",
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> WorkerProcess:
        """``taskmill --log-level L worker ledger_app --processes P --threads T *options``."""
        counts = ("--processes", str(processes), "--threads", str(threads))
        args = ("--log-level", log_level, "worker", "ledger_app", *counts, *options)
        return self.start(*args, env=env, pass_fds=pass_fds)

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


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate authority: (certificate, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        key,
        "-out",
        cert,
    )
    return cert, key


def make_certificates(directory: Path) -> tuple[Path, Path, Path] | None:
    """(CA, server certificate, server key) for localhost and 127.0.0.1 in ``directory``, or None
    without openssl."""
    if shutil.which("openssl") is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca(directory, "taskmill-test-ca")
    cert, key, request = directory / "server.pem", directory / "server.key", directory / "server.csr"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", request)
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
             "-out", cert, "-extfile", directory / "san.ext")  # fmt: skip
    return ca, cert, key


class RedisServer:
    """A private ``redis-server`` on a loopback port, with AOF fsynced on every write, that a test
    can SIGKILL and start again on the same port and directory (the AOF keeps the data)."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        binary: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``tls``: (CA certificate, server certificate, server key) for an extra TLS listener on ``tls_port``."""
        found = binary or shutil.which(REDIS_SERVER)
        if found is None:
            raise FileNotFoundError(f"{REDIS_SERVER} is not on PATH")
        self.binary = found
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.marker = uuid.uuid4().hex
        self.log_path = directory / "redis-server.log"
        self.tls_port = free_port() if tls else 0
        self.ca = tls[0] if tls else None
        self.extra = (
            ["--tls-port", str(self.tls_port), "--tls-cert-file", str(tls[1]), "--tls-key-file", str(tls[2]),
             "--tls-ca-cert-file", str(tls[0]), "--tls-auth-clients", "no"]
            if tls else []
        )  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
            *self.extra,
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
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Start sending in the background."""
        self.thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        own = Ledger(self.ledger_path)  # SQLite connections belong to the thread that opened them
        actor = self.app.get_actor("record")
        try:
            for _ in range(self.sends):
                if self._stop.is_set():
                    break
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

    def stop(self) -> None:
        """Send nothing more after the send in progress (``sends`` is then only a cap)."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        """Wait for the last send; fails the test if it takes longer than ``timeout`` s."""
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the producer did not finish its sends"


RABBITMQ_BIN_ENV = "TASKMILL_TEST_RABBITMQ_BIN"  # a directory with rabbitmq-server and rabbitmqctl
# Debian's /usr/sbin scripts switch to the rabbitmq OS user (and its Erlang cookie) when run as root, so the
# real scripts they wrap come first: a private node runs as the test's user, with a cookie of its own.
_RABBITMQ_BIN_DIRS = ("/usr/lib/rabbitmq/bin", "/opt/rabbitmq/sbin")
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def rabbitmq_bin_dir() -> Path | None:
    """Where ``rabbitmq-server`` and ``rabbitmqctl`` live: ``$TASKMILL_TEST_RABBITMQ_BIN``, the package's own script
    directory, or PATH."""
    candidates = [Path(p) for p in [os.environ.get(RABBITMQ_BIN_ENV), *_RABBITMQ_BIN_DIRS] if p]
    if found := shutil.which("rabbitmq-server"):
        candidates.append(Path(found).parent)
    return next((c for c in candidates if (c / "rabbitmq-server").is_file() and (c / "rabbitmqctl").is_file()), None)


def amqp_answers(port: int, timeout: float = 1.0) -> bool:
    """True when a RabbitMQ on loopback ``port`` answers the AMQP 0-9-1 protocol header with Connection.Start."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(_AMQP_HEADER)
            return sock.recv(1)[:1] == b"\x01"  # a method frame: the broker's application is up
    except OSError:
        return False


class RabbitMQServer:
    """A private RabbitMQ node (its own node name, ports, data, logs, config and Erlang cookie) on a loopback port,
    never the shared server: a test can stop and start its application with ``rabbitmqctl stop_app``/``start_app``,
    or SIGKILL the whole node and boot it again on the same data directory (durable queues and persistent messages
    survive both).

    The node shares the host's epmd (the Erlang port mapper) when one runs, and never kills it.
    """

    def __init__(
        self, directory: Path, bin_dir: Path | None = None, tls: tuple[Path, Path, Path] | None = None
    ) -> None:
        """``tls``: (CA certificate, server certificate, server key) files for an extra TLS listener on ``tls_port``."""
        found = bin_dir or rabbitmq_bin_dir()
        if found is None:
            raise FileNotFoundError(f"no rabbitmq-server and rabbitmqctl in ${RABBITMQ_BIN_ENV}, {_RABBITMQ_BIN_DIRS}")
        self.bin_dir = found
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.port:
            self.dist_port = free_port()
        self.node = f"tmfault-{uuid.uuid4().hex[:12]}@localhost"
        self.marker = uuid.uuid4().hex
        self.log_path = directory / "rabbitmq-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        home = directory / "home"  # the Erlang cookie: the node writes it on first boot, rabbitmqctl reads it
        config = directory / "rabbitmq.conf"
        for path in (home, directory / "mnesia", directory / "log"):
            path.mkdir(parents=True, exist_ok=True)
        # Queue counts in list_queues (quorum queues' above all) are refreshed every collect_statistics_interval ms.
        settings = f"listeners.tcp.default = 127.0.0.1:{self.port}\ncollect_statistics_interval = 500\n"
        self.tls_port = 0
        if tls is not None:
            self.tls_port = free_port()
            ca, cert, key = tls
            settings += (
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\nssl_options.cacertfile = {ca}\n"
                f"ssl_options.certfile = {cert}\nssl_options.keyfile = {key}\nssl_options.verify = verify_none\n"
            )
        config.write_text(settings)
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")  # not the host's (which names the shared node)
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(directory / "node.pid"),
            RUN_ENV: self.marker,
        }

    def url(self, query: str = "") -> str:
        """An ``amqp://`` URL of this node's default vhost, with ``query`` (no leading ``?``)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/" + (f"?{query}" if query else "")

    @property
    def pid(self) -> int | None:
        """The running node's (launcher's) pid, or None."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def start(self, timeout: float = 60) -> float:
        """Boot the node (it must not be running) and block until it speaks AMQP; returns the ``time.time()`` at
        which it first did."""
        assert self.pid is None, "the RabbitMQ node is running already"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin_dir / "rabbitmq-server")],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.starts += 1
        return wait_until(self._answers, timeout, f"RabbitMQ node {self.node} on port {self.port} to boot", 0.1)

    def _answers(self) -> float | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        return time.time() if amqp_answers(self.port) else None

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n <node> *args`` as the node's user and cookie; its output (fails the test on an error)."""
        done = subprocess.run(
            [str(self.bin_dir / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)} exited with {done.returncode}: {done.stderr}"
        return done.stdout

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: the node stays up, the broker application (listeners, connections) stops."""
        self.ctl("stop_app")

    def start_app(self, timeout: float = 60) -> float:
        """``rabbitmqctl start_app``; returns the ``time.time()`` at which the node first spoke AMQP again."""
        self.ctl("start_app", timeout=timeout)
        return wait_until(self._answers, timeout, f"RabbitMQ node {self.node} to accept connections", 0.05)

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """Every queue of the default vhost: name -> (messages ready, messages unacknowledged), read by rabbitmqctl."""
        rows = self.ctl("list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged")
        counts: dict[str, tuple[int, int]] = {}
        for line in rows.splitlines():
            name, ready, unacked = line.rsplit(None, 2)
            counts[name] = (int(ready), int(unacked))
        return counts

    def kill(self) -> None:
        """SIGKILL the node (the Erlang VM and its helpers, never epmd) and reap it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self._own_pids():
            kill_quietly(pid)
        self.process.wait(10)
        self.process = None
        wait_until(lambda: not [p for p in self._own_pids() if is_alive(p)], 10, "the RabbitMQ node to die")

    def _own_pids(self) -> list[int]:
        return [pid for pid in pids_with_marker(self.marker) if not _read(f"/proc/{pid}/comm").startswith(b"epmd")]

    def restart(self, timeout: float = 60) -> float:
        """SIGKILL the node and boot it again on the same data directory (see ``start``)."""
        self.kill()
        return self.start(timeout)

    def ensure_running(self) -> None:
        """Boot the node, or start its application, if a test left it down."""
        if self.pid is None:
            self.kill()
            self.start()
        elif not amqp_answers(self.port):
            self.start_app()

    def log(self) -> str:
        """What the node printed to its console so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Kill the node."""
        self.kill()


# -- checks the fault tests share ---------------------------------------------------------------
def no_server(problem: str) -> NoReturn:
    """Skip a test whose server or tool is missing; under CI (CI=true) fail it instead, never skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


def assert_clean(report: Report) -> None:
    assert report.lost == frozenset(), report.summary()
    assert report.unexpected == frozenset(), report.summary()


def thread_crashes(worker: WorkerProcess) -> list[str]:
    """Threads that died of an exception in the worker (threading's excepthook prints these)."""
    return [line for line in worker.output().splitlines() if line.startswith("Exception in thread")]


def wait_all_completed(ledger: Ledger, count: int | set[str], timeout: float, *logs: WorkerProcess) -> None:
    """``wait_completed`` for a count of ids, or until every id of a set completed (a count can be reached
    early by an id that was not counted in: a send that raised yet landed); on timeout, the count
    reached, each worker's thread crashes and its log tail."""
    try:
        if isinstance(count, set):
            keys = count
            wait_until(lambda: keys <= ledger.completed_ids(), timeout, f"{len(keys)} given ids to complete")
        else:
            wait_completed(ledger, count, timeout)
    except AssertionError as exc:
        parts = [f"{exc}; got {ledger.completed_count()}"]
        parts += [f"--- {w.output_path.name}: {thread_crashes(w)}; tail:\n{w.output()[-2500:]}" for w in logs]
        raise AssertionError("\n".join(parts)) from None


ACK_MARGIN_S = 0.5  # an execution that ended this long before a fault had its ack sent long before


@dataclass
class Outage:
    """What a broker outage did to a steady producer and to a busy and an idle worker (F7/F8), from the ledger.

    A send that raised may still have been stored (the server went away after storing, before replying): such an
    id is indeterminate, not unexpected. Nothing is handed out while the broker is away, so whatever started
    before it came back was handed out before the fault, and only those may run twice.
    """

    report: Report
    enqueued: int  # OK sends plus the idle worker's one message
    failed: set[str]  # ids whose send raised BrokerUnavailable
    resumed: list[float]  # start times of the busy worker's runs after the broker came back
    idle_run: Execution
    up_at: float
    producer_resume_s: float
    in_flight: set[str]

    @classmethod
    def measure(cls, ledger: Ledger, sender: SteadyProducer, idle_key: str, down_at: float, up_at: float) -> Outage:
        runs = ledger.executions()
        (idle_run,) = [e for e in runs if e.id == idle_key]
        return cls(
            report=ledger.check(),
            enqueued=len(sender.ok) + 1,
            failed={key for key, _ in sender.unavailable},
            resumed=[e.started for e in runs if e.started >= up_at and e.id != idle_key],
            idle_run=idle_run,
            up_at=up_at,
            producer_resume_s=min((t for _, t in sender.ok if t >= up_at), default=float("nan")) - up_at,
            in_flight={
                e.id for e in runs if e.started < up_at and (e.ended is None or e.ended >= down_at - ACK_MARGIN_S)
            },
        )

    @property
    def landed_anyway(self) -> frozenset[str]:
        return self.report.unexpected & self.failed

    @property
    def outside_fault(self) -> list[str]:
        return [d.id for d in self.report.duplicates if d.id not in self.in_flight]

    def figures(self) -> str:
        report, busy = self.report, min(self.resumed) - self.up_at if self.resumed else float("nan")
        return (
            f"enqueued={report.enqueued} completed={report.completed} lost={len(report.lost)} dup={report.dup}"
            f" unexpected={len(report.unexpected)} broker_unavailable={len(self.failed)}"
            f" failed_but_landed={len(self.landed_anyway)} busy_worker_resume_s={busy:.3f}"
            f" idle_worker_resume_s={self.idle_run.started - self.up_at:.3f}"
            f" producer_resume_s={self.producer_resume_s:.3f} in_flight_window={len(self.in_flight)}"
        )

    def assert_nothing_lost(self) -> None:
        """Lost 0 of the OK sends, nothing unexplained, duplicates only of what was in flight, and work resumed."""
        assert self.report.lost == frozenset(), self.report.summary()
        assert self.report.unexpected - self.failed == frozenset(), self.report.summary()
        assert self.report.completed == self.enqueued + len(self.landed_anyway)
        assert self.outside_fault == [], f"duplicates of messages not in flight at the fault: {self.outside_fault[:10]}"
        assert self.resumed, "the busy worker ran nothing after the broker came back"


def sigkill_chaos(
    workers: Workers, ledger: Ledger, producer: App, name: str, messages: int = 500, kills: int = 3
) -> None:
    """F1 on a lease-based broker: SIGKILL busy worker children (2 processes x 4 threads, 40-80 ms tasks, 2 s
    leases) ``kills`` times; nothing lost or unexpected, and no more duplicates than were in flight at the kills."""
    ledger.enqueue(producer, record_messages(producer, messages))
    env = {"TASKMILL_LEASE_SECONDS": "2", "TASKMILL_TEST_TASK_MS": "40-80"}
    worker = workers.worker("--grace", "10", processes=2, threads=4, env=env)
    worker.wait_children(2)
    wait_completed(ledger, 20, 20)
    killed: list[int] = []
    in_flight_at_kills = 0
    for _ in range(kills):
        children = worker.wait_children(2, without=killed)
        busy = {e.pid for e in ledger.running()} & set(children)
        victim = random.choice(sorted(busy or children))
        assert ledger.completed_count() < messages, "the run finished before every kill; slow the actor down"
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        in_flight_at_kills += totals(producer).in_flight  # the victim's leases stay counted until they expire
        worker.wait_children(2, without=killed)
        wait_completed(ledger, min(ledger.completed_count() + 10, messages), 20)

    wait_all_completed(ledger, messages, 40, worker)
    report = ledger.check(killed_pids=killed)
    print(f"\nF1 {name}: {report.summary()} kills={len(killed)} in_flight_at_kills={in_flight_at_kills}")
    assert_clean(report)
    assert report.unexplained == (), report.summary()
    assert report.dup <= in_flight_at_kills, report.summary()
    assert report.completed == messages
    assert wait_drained(producer).dead == 0
    assert worker.output().count("exited with code -9; restarting it") == kills
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
