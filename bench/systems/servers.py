"""The PostgreSQL and RabbitMQ servers the bench uses, and how it cleans them between runs.

PostgreSQL: database ``test`` on 127.0.0.1:5432; taskmill's tables live in the schema
``taskmill_bench`` and Procrastinate's in ``procrastinate_bench``, both dropped before every run (as
the Redis systems' db 14 is flushed).
RabbitMQ: a vhost of its own, ``bench`` (created with rabbitmqctl when missing, guest given every
permission there), so cleaning it never touches another vhost: before every run each queue in it
is deleted (names from ``rabbitmqctl list_queues``, deletion over AMQP).

Every value can be overridden from the environment (BENCH_POSTGRES_URL, BENCH_AMQP_URL,
BENCH_RABBITMQCTL, e.g. ``docker exec rabbitmq rabbitmqctl``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_SCHEMA = "taskmill_bench"  # taskmill's tables
PROCRASTINATE_SCHEMA = "procrastinate_bench"  # the peer's, in a schema of its own
APPLICATION_NAME = "taskmill-bench"  # every bench connection says so, to tell them from others'
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/bench")
RABBITMQCTL = shlex.split(os.environ.get("BENCH_RABBITMQCTL", "rabbitmqctl"))


def backend_of(module: str) -> str:
    """The server a system module needs besides Redis: the suffix of its name (``taskmill_postgres``)."""
    return module.rsplit("_", 1)[-1]


# -- PostgreSQL ---------------------------------------------------------------------------------
def postgres_connect() -> Any:
    import psycopg

    return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=10)


def postgres_version() -> str:
    with postgres_connect() as conn:
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "?"


def reset_postgres(schemas: tuple[str, ...] = (POSTGRES_SCHEMA, PROCRASTINATE_SCHEMA)) -> None:
    """Drop the bench's schemas. A killed worker's server processes may hold a lock for a moment
    (until the server sees the closed socket), so a lock wait is retried, then the bench's own
    connections (application_name ``APPLICATION_NAME``) are terminated; nobody else's."""
    with postgres_connect() as conn:
        conn.execute("SET lock_timeout = '5s'")
        for attempt in range(4):
            try:
                for schema in schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except Exception:
                if attempt == 3:
                    raise
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s AND pid <> pg_backend_pid()",
                    (APPLICATION_NAME,),
                )
                time.sleep(1)


# -- RabbitMQ -----------------------------------------------------------------------------------
def vhost() -> str:
    path = urlsplit(AMQP_URL).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _ctl(*args: str) -> str:
    done = subprocess.run([*RABBITMQCTL, *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join([*RABBITMQCTL, *args])} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def ensure_vhost() -> None:
    """Create the bench's vhost and give guest every permission there, when missing (idempotent)."""
    name = vhost()
    if name == "/":
        return
    if name not in _ctl("list_vhosts", "name", "--quiet", "--no-table-headers").split():
        _ctl("add_vhost", name)
    user = urlsplit(AMQP_URL).username or "guest"
    _ctl("set_permissions", "-p", name, unquote(user), ".*", ".*", ".*")


def amqp_connect() -> Any:
    import pika

    return pika.BlockingConnection(pika.URLParameters(AMQP_URL))


def rabbitmq_version() -> str:
    connection = amqp_connect()
    try:
        version = connection._impl.server_properties.get("version", b"?")  # pika has no public accessor
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        connection.close()


def reset_rabbitmq() -> None:
    """Delete every queue of the bench's vhost (its messages, and the bindings with it)."""
    start_reset_rabbitmq()()


def start_reset_rabbitmq() -> Callable[[], None]:
    """Start listing the vhost's queues (rabbitmqctl takes ~0.4 s to boot); the function returned
    waits for the list and deletes them, so a caller can do other work meanwhile."""
    command = [*RABBITMQCTL, "list_queues", "-p", vhost(), "name", "--quiet", "--no-table-headers"]
    listing = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish() -> None:
        out, err = listing.communicate(timeout=60)
        if listing.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed: {(err or out).strip()}")
        _delete_queues(out.split())

    return finish


def _delete_queues(names: list[str]) -> None:
    import pika.exceptions

    if not names:
        return
    connection = amqp_connect()
    try:
        channel = connection.channel()
        for name in names:
            try:
                channel.queue_delete(name)
            except pika.exceptions.ChannelClosedByBroker:  # gone already, or exclusive to a dying connection
                channel = connection.channel()
    finally:
        connection.close()


# -- what the driver and run.py call -------------------------------------------------------------
def reset(module: str) -> None:
    """Clean the server a system module uses (nothing for Redis, flushed by the driver, or SQLite)."""
    start_reset(module)()


def start_reset(module: str) -> Callable[[], None]:
    """Begin cleaning the server a system module uses; call the result to finish. PostgreSQL is
    clean when this returns; RabbitMQ's queues are listed meanwhile and deleted by the result, so
    the module may be imported in between (importing one connects to nothing)."""
    backend = backend_of(module)
    if backend == "postgres":
        reset_postgres()
    elif backend == "rabbitmq":
        return start_reset_rabbitmq()
    return lambda: None


def check(backend: str) -> str | None:
    """Why the server a backend needs cannot be used, or None (run.py skips that backend's systems)."""
    try:
        if backend == "postgres":
            postgres_version()
        elif backend == "rabbitmq":
            ensure_vhost()
            rabbitmq_version()
    except Exception as exc:  # noqa: BLE001 -- reported as the reason the systems are skipped
        where = POSTGRES_URL if backend == "postgres" else AMQP_URL
        text = " ".join(str(exc).split())
        return f"{_without_password(where)}: " + (f"{type(exc).__name__}: {text}" if text else repr(exc))
    return None


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def version(backend: str) -> str | None:
    try:
        if backend == "postgres":
            return postgres_version()
        if backend == "rabbitmq":
            return rabbitmq_version()
    except Exception:  # noqa: BLE001
        return None
    return None
