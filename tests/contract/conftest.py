"""One broker (and one result store) per backend: every test in this directory runs against each of them."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from taskmill.brokers import Broker, open_broker
from taskmill.results import Store, open_store

MAX_DELIVERIES = 3
REDIS_TEST_URL = "redis://127.0.0.1:6379/15"
POSTGRES_TEST_URL = "postgresql://postgres@127.0.0.1:5432/test"
RABBITMQ_TEST_URL = "amqp://guest:guest@127.0.0.1:5672/"


class _RefuseDeadLetterReports(logging.Filter):
    """Raises on the worker's line for a dead letter the broker made while fetching (its report)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "delivery_limit after" in record.getMessage():
            raise RuntimeError("a log filter failed")
        return True


@pytest.fixture
def failing_dead_letter_reports() -> Iterator[None]:
    """While the test runs, the worker's report of a dead letter made during a fetch raises."""
    logger, refuse = logging.getLogger("taskmill.worker"), _RefuseDeadLetterReports()
    logger.addFilter(refuse)
    yield
    logger.removeFilter(refuse)


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # sqlite:/// + an absolute path: four slashes in all


def _no_server(problem: str) -> NoReturn:
    if os.environ.get("CI") == "true":  # CI must never skip a missing server
        pytest.fail(problem)
    pytest.skip(problem)


def redis_url(request: pytest.FixtureRequest) -> str:
    """A URL on the test Redis with a key prefix of this test's own, whose keys are deleted after it.
    With no server the test fails when CI is "true" and is skipped elsewhere."""
    try:
        import redis
    except ImportError:
        _no_server("the redis package is not installed: pip install -e '.[dev]'")
    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        client.close()
        _no_server(f"no Redis server at {REDIS_TEST_URL}: {exc}")
    prefix = f"tmtest-{uuid.uuid4().hex}"

    def delete_keys() -> None:
        with client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.unlink(*keys)

    request.addfinalizer(delete_keys)
    return f"{REDIS_TEST_URL}?prefix={prefix}"


def postgres_url(request: pytest.FixtureRequest) -> str:
    """A URL on the test PostgreSQL database with a schema of this test's own (created by the migrations when
    a broker or store opens it), dropped after it. With no server the test fails when CI is "true" and is
    skipped elsewhere."""
    try:
        import psycopg
    except ImportError:
        _no_server("the psycopg package is not installed: pip install -e '.[dev]'")
    try:
        psycopg.connect(POSTGRES_TEST_URL, connect_timeout=2).close()
    except psycopg.OperationalError as exc:
        _no_server(f"no PostgreSQL server at {POSTGRES_TEST_URL}: {exc}")
    schema = f"tmtest_{uuid.uuid4().hex}"

    def drop_schema() -> None:
        with psycopg.connect(POSTGRES_TEST_URL, connect_timeout=2, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    request.addfinalizer(drop_schema)
    return f"{POSTGRES_TEST_URL}?schema={schema}"


def rabbitmq_url(request: pytest.FixtureRequest, queue_type: str = "classic") -> str:
    """A URL on the test RabbitMQ with a name prefix of this test's own, whose queues and exchanges are
    deleted after it. With no server the test fails when CI is "true" and is skipped elsewhere."""
    try:
        import aio_pika  # noqa: F401 -- only to report a missing package clearly
    except ImportError:
        _no_server("the aio-pika package is not installed: pip install -e '.[dev]'")
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        _no_server(f"no RabbitMQ server at {RABBITMQ_TEST_URL}: {exc}")
    url = f"{RABBITMQ_TEST_URL}?prefix=tmtest-{uuid.uuid4().hex}&queue_type={queue_type}"
    request.addfinalizer(lambda: delete_rabbitmq_names(url))
    return url


def delete_rabbitmq_names(url: str) -> None:
    """Delete every queue and exchange a broker with this URL's prefix may have declared."""
    from taskmill.brokers.rabbitmq import RabbitMQBroker
    from taskmill.brokers.rabbitmq_inspect import known_queues
    from taskmill.brokers.rabbitmq_topology import LEVELS

    broker = RabbitMQBroker(url)
    names = broker.names

    async def delete() -> None:
        queues = await known_queues(broker)
        channel = await broker._connection.channel()
        for queue in queues:
            for name in (names.queue(queue), names.dead(queue), *(names.level(queue, n) for n in range(LEVELS))):
                await channel.queue_delete(name)
        await channel.queue_delete(names.registry)
        for exchange in (names.dead_exchange, *(names.level_exchange(n) for n in range(-1, LEVELS))):
            await channel.exchange_delete(exchange)
        await channel.close()

    try:
        broker.call(delete())
    finally:
        broker.close()


# Broker abilities that some backends do not have; a test marked ``@pytest.mark.needs(ability)`` is
# deselected (not skipped) for those backends, and the backend's own tests cover what it does instead.
# RabbitMQ holds a delivery for as long as the connection that received it lives (no time leases), keeps
# no index of ids (publishing an id twice queues it twice), orders by priority within a queue only, and
# cannot count unacked messages over AMQP; its stats add up separate queue counts, so a delayed message
# moving between delay levels can be missed for a moment. Quorum queues have no priorities in RabbitMQ 3.x.
_RABBITMQ_LACKS = {"expiring_leases", "unique_ids", "order_across_queues", "in_flight_counts", "snapshot_stats"}
LACKS: dict[str, set[str]] = {
    "rabbitmq": _RABBITMQ_LACKS,
    "rabbitmq_quorum": {*_RABBITMQ_LACKS, "priorities"},
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("broker") if callspec is not None else None
        needs = {arg for mark in item.iter_markers("needs") for arg in mark.args}
        (drop if needs & LACKS.get(str(backend), set()) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# id -> a factory building a fresh, empty broker whose data (if any) lives under tmp_path, or under
# a key prefix of the test's own that the request's finalizer clears.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Broker]] = {
    "memory": lambda request, tmp_path: open_broker("memory://", max_deliveries=MAX_DELIVERIES),
    "sqlite": lambda request, tmp_path: open_broker(
        _sqlite_url(tmp_path.resolve() / "broker.db"), max_deliveries=MAX_DELIVERIES
    ),
    "redis": lambda request, tmp_path: open_broker(redis_url(request), max_deliveries=MAX_DELIVERIES),
    "postgres": lambda request, tmp_path: open_broker(postgres_url(request), max_deliveries=MAX_DELIVERIES),
    "rabbitmq": lambda request, tmp_path: open_broker(rabbitmq_url(request), max_deliveries=MAX_DELIVERIES),
    "rabbitmq_quorum": lambda request, tmp_path: open_broker(
        rabbitmq_url(request, "quorum"), max_deliveries=MAX_DELIVERIES
    ),
}


@pytest.fixture(params=list(BACKENDS))
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A fresh broker of each backend in turn, closed after the test."""
    instance = BACKENDS[request.param](request, tmp_path)
    yield instance
    instance.close()


# id -> a factory building a fresh, empty result store whose data (if any) lives under tmp_path, or under
# a key prefix of the test's own that the request's finalizer clears.
STORES: dict[str, Callable[[pytest.FixtureRequest, Path], Store]] = {
    "memory": lambda request, tmp_path: open_store("memory://"),
    "sqlite": lambda request, tmp_path: open_store(f"sqlite:///{(tmp_path / 'store.db').resolve()}"),
    "redis": lambda request, tmp_path: open_store(redis_url(request)),
    "postgres": lambda request, tmp_path: open_store(postgres_url(request)),
}


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh result store of each backend in turn, closed after the test."""
    instance = STORES[request.param](request, tmp_path)
    yield instance
    instance.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """The absolute path of a fresh SQLite broker file."""
    return tmp_path.resolve() / "broker.db"


@pytest.fixture
def sqlite_url(sqlite_path: Path) -> str:
    """The URL of a fresh SQLite broker file, for tests that open several brokers on it."""
    return _sqlite_url(sqlite_path)


@pytest.fixture
def redis_test_url(request: pytest.FixtureRequest) -> str:
    """A Redis URL with a prefix of this test's own (see ``redis_url``)."""
    return redis_url(request)


@pytest.fixture
def rabbitmq_test_url(request: pytest.FixtureRequest) -> str:
    """A RabbitMQ URL with a name prefix of this test's own (see ``rabbitmq_url``)."""
    return rabbitmq_url(request)


@pytest.fixture
def postgres_test_url(request: pytest.FixtureRequest) -> str:
    """A PostgreSQL URL with a schema of this test's own (see ``postgres_url``)."""
    return postgres_url(request)
