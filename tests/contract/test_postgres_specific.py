"""What only the PostgreSQL broker offers: transactional enqueue, migrations, a bounded pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pytest

from taskmill import App, BrokerUnavailable, ConfigurationError
from taskmill.brokers import Record, open_broker


@pytest.fixture
def url(postgres_test_url: str) -> str:
    return postgres_test_url


@pytest.fixture
def app(url: str) -> Iterator[App]:
    app = App(url)
    yield app
    app.close()


def conninfo(url: str) -> str:
    return url.split("?", maxsplit=1)[0]


def test_a_message_sent_in_a_transaction_exists_only_once_it_commits(app: App, url: str) -> None:
    import psycopg

    @app.actor
    def invoice(order: int) -> None: ...

    with closing(open_broker(url)) as observer, psycopg.connect(conninfo(url)) as conn:
        with conn.transaction(), app.transaction(conn):
            invoice.send(1)
            assert observer.stats() == [] or observer.stats()[0].ready == 0
        assert observer.stats()[0].ready == 1


def test_a_rolled_back_transaction_leaves_no_message(app: App, url: str) -> None:
    import psycopg

    @app.actor
    def invoice(order: int) -> None: ...

    def order_fails(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with conn.transaction(), app.transaction(conn):
            invoice.send(1)
            raise RuntimeError("the order failed")

    with psycopg.connect(conninfo(url)) as conn, pytest.raises(RuntimeError):
        order_fails(conn)
    assert all(s.ready == 0 for s in app.broker.stats())


def test_brokers_that_cannot_join_a_transaction_say_so(tmp_path: object) -> None:
    app = App("memory://")
    with pytest.raises(ConfigurationError, match="cannot join"), app.transaction(object()):
        pass


def test_with_auto_migrate_off_a_fresh_schema_asks_for_taskmill_db_migrate(url: str) -> None:
    with closing(open_broker(url + "&auto_migrate=false")) as broker:
        with pytest.raises(ConfigurationError, match="taskmill db migrate"):
            broker.publish([Record("m", "default", b"x")])
        assert broker.migrate() == ["001_init.sql"]
        broker.publish([Record("m", "default", b"x")])
        assert broker.stats()[0].ready == 1


def test_an_exhausted_pool_is_a_clear_typed_error(url: str) -> None:
    with closing(open_broker(url + "&pool_size=1&pool_timeout=0.3")) as broker:
        pool = broker.db.pool  # type: ignore[attr-defined]
        with pool.connection(), pytest.raises(BrokerUnavailable, match="pool"):
            broker.publish([Record("m", "default", b"x")])


def test_a_transaction_joins_only_its_own_apps_sends(app: App, url: str, tmp_path: object) -> None:
    import psycopg

    other = App("memory://")

    @app.actor
    def invoice(order: int) -> None: ...

    @other.actor
    def audit(order: int) -> None: ...

    def order_fails(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with conn.transaction(), app.transaction(conn):
            audit.send(1)
            raise RuntimeError("the order failed")

    with psycopg.connect(conninfo(url)) as conn, pytest.raises(RuntimeError):
        order_fails(conn)
    assert other.broker.stats()[0].ready == 1


def test_unknown_url_options_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="bad PostgreSQL URL"):
        open_broker("postgresql://postgres@127.0.0.1:5432/test?no_such_option=1")


def test_a_broker_opened_before_taskmill_db_migrate_sees_the_migration(url: str) -> None:
    with closing(open_broker(url + "&auto_migrate=false")) as waiting, closing(open_broker(url)):
        waiting.publish([Record("m", "default", b"x")])
        assert waiting.stats()[0].ready == 1
