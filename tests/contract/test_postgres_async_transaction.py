"""Transactional enqueue through a psycopg AsyncConnection: ``async with app.transaction(aconn)``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from taskmill import App, ArgumentsError, ConfigurationError
from taskmill.brokers import Broker, open_broker

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def url(postgres_test_url: str) -> str:
    return postgres_test_url


@pytest.fixture
def app(url: str) -> Iterator[App]:
    app = App(url)
    yield app
    app.close()


@pytest.fixture
def observer(url: str) -> Iterator[Broker]:
    """Another broker on the same schema: it sees only what was committed."""
    with closing(open_broker(url)) as broker:
        yield broker


def conninfo(url: str) -> str:
    return url.split("?", maxsplit=1)[0]


async def connect(url: str) -> Any:
    return await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True)


def fetched_ids(broker: Broker) -> list[str]:
    return [d.id for d in broker.fetch(["default"], 100, 60_000)]


class OrderFailed(Exception):
    pass


def test_messages_sent_in_an_async_block_are_fetchable_once_after_commit(app: App, url: str, observer: Broker) -> None:
    @app.actor
    def invoice(order: int) -> None: ...

    async def place_order() -> list[str]:
        async with await connect(url) as aconn, aconn.transaction():
            async with app.transaction(aconn):
                sent = [invoice.send(1).id, invoice.send_with_options(args=(2,), priority=5).id]
            assert fetched_ids(observer) == []  # written, not committed yet
        return sent

    sent = asyncio.run(place_order())
    assert sorted(fetched_ids(observer)) == sorted(sent)
    assert fetched_ids(observer) == []


def test_sends_are_written_when_the_block_ends_not_before(app: App, url: str) -> None:
    @app.actor
    def invoice(order: int) -> None: ...

    async def count_rows(aconn: Any) -> int:
        schema = url.rsplit("schema=", 1)[1]
        cursor = await aconn.execute(f"SELECT count(*) FROM {schema}.messages")
        row = await cursor.fetchone()
        return int(row[0])

    async def place_order() -> tuple[int, int]:
        async with await connect(url) as aconn, aconn.transaction():
            async with app.transaction(aconn):
                invoice.send(1)
                inside = await count_rows(aconn)
            return inside, await count_rows(aconn)

    assert asyncio.run(place_order()) == (0, 1)


def test_without_autocommit_the_messages_commit_with_the_connection(app: App, url: str, observer: Broker) -> None:
    @app.actor
    def invoice(order: int) -> None: ...

    async def place_order() -> str:
        async with await psycopg.AsyncConnection.connect(conninfo(url)) as aconn:
            async with app.transaction(aconn):
                sent = invoice.send(1).id
            assert fetched_ids(observer) == []
            await aconn.commit()
        return sent

    sent = asyncio.run(place_order())
    assert fetched_ids(observer) == [sent]


def test_a_rolled_back_database_transaction_leaves_no_message(app: App, url: str, observer: Broker) -> None:
    @app.actor
    def invoice(order: int) -> None: ...

    async def place_order() -> None:
        async with await connect(url) as aconn, aconn.transaction():
            async with app.transaction(aconn):
                invoice.send(1)
            raise OrderFailed

    with pytest.raises(OrderFailed):
        asyncio.run(place_order())
    assert fetched_ids(observer) == []


def test_an_error_inside_the_block_writes_nothing_even_if_the_database_commits(
    app: App, url: str, observer: Broker
) -> None:
    @app.actor
    def invoice(order: int) -> None: ...

    async def send_then_fail(aconn: Any) -> None:
        async with app.transaction(aconn):
            invoice.send(1)
            raise OrderFailed

    async def place_order() -> None:
        async with await connect(url) as aconn, aconn.transaction():
            with pytest.raises(OrderFailed):
                await send_then_fail(aconn)
            await aconn.execute("SELECT 1")  # the connection's transaction is still healthy, and commits

    asyncio.run(place_order())
    assert fetched_ids(observer) == []


def test_concurrent_tasks_keep_their_own_transactions(app: App, url: str, observer: Broker) -> None:
    @app.actor
    def invoice(order: int) -> None: ...

    async def scenario() -> list[str]:
        a_sent, b_sent = asyncio.Event(), asyncio.Event()

        async def commits() -> list[str]:
            async with await connect(url) as aconn, aconn.transaction(), app.transaction(aconn):
                sent = [invoice.send(1).id]
                a_sent.set()
                await b_sent.wait()  # both blocks are open at once
                sent.append(invoice.send(2).id)
            return sent

        async def rolls_back() -> None:
            await a_sent.wait()
            async with await connect(url) as aconn, aconn.transaction():
                async with app.transaction(aconn):
                    invoice.send(3)
                    b_sent.set()
                    invoice.send(4)
                raise OrderFailed

        committed, failed = await asyncio.gather(commits(), rolls_back(), return_exceptions=True)
        assert isinstance(failed, OrderFailed)
        assert isinstance(committed, list)
        return committed

    committed = asyncio.run(scenario())
    assert sorted(fetched_ids(observer)) == sorted(committed)


def test_a_task_started_in_the_block_sends_into_it(app: App, url: str, observer: Broker) -> None:
    @app.actor
    def invoice(order: int) -> None: ...

    async def send_one() -> str:
        return invoice.send(1).id

    async def place_order() -> str:
        async with await connect(url) as aconn, aconn.transaction(), app.transaction(aconn):
            return await asyncio.create_task(send_one())  # the task copies the context, block included

    sent = asyncio.run(place_order())
    assert fetched_ids(observer) == [sent]


def test_a_send_after_the_block_ended_from_a_task_started_in_it_is_refused(app: App, url: str) -> None:
    @app.actor
    def invoice(order: int) -> None: ...

    async def place_order() -> None:
        block_ended = asyncio.Event()

        async def late_send() -> None:
            await block_ended.wait()
            invoice.send(1)

        async with await connect(url) as aconn, aconn.transaction():
            async with app.transaction(aconn):
                late = asyncio.create_task(late_send())
            block_ended.set()
            await late

    with pytest.raises(ConfigurationError, match="after its"):
        asyncio.run(place_order())


def test_bad_arguments_are_refused_at_send_and_the_block_goes_on(app: App, url: str, observer: Broker) -> None:
    @app.actor
    def invoice(order: int) -> None: ...

    async def place_order() -> str:
        async with await connect(url) as aconn, aconn.transaction(), app.transaction(aconn):
            with pytest.raises(ArgumentsError):
                invoice.send_with_options(args=(1, 2))
            return invoice.send(1).id

    sent = asyncio.run(place_order())
    assert fetched_ids(observer) == [sent]


def test_async_with_on_a_sync_connection_is_a_configuration_error(app: App, url: str) -> None:
    async def misuse(conn: Any) -> None:
        async with app.transaction(conn):
            pass

    with psycopg.connect(conninfo(url)) as conn, pytest.raises(ConfigurationError, match="use `with`"):
        asyncio.run(misuse(conn))


def test_with_on_an_async_connection_is_a_configuration_error(app: App, url: str) -> None:
    async def misuse() -> None:
        async with await connect(url) as aconn:
            with pytest.raises(ConfigurationError, match="use `async with`"), app.transaction(aconn):
                pass

    asyncio.run(misuse())


def test_something_not_a_psycopg_connection_is_a_configuration_error(app: App) -> None:
    async def misuse() -> None:
        async with app.transaction(object()):
            pass

    with pytest.raises(ConfigurationError, match="needs a psycopg"):
        asyncio.run(misuse())


def test_brokers_that_cannot_join_refuse_async_with_too(url: str) -> None:
    other = App("memory://")

    async def misuse() -> None:
        async with await connect(url) as aconn, other.transaction(aconn):
            pass

    with pytest.raises(ConfigurationError, match="cannot join"):
        asyncio.run(misuse())
