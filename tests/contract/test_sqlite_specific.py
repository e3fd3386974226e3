"""SQLite only: several brokers on one file, as several processes open it, act as one broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from taskmill.brokers import Broker, QueueStats, Record, open_broker
from taskmill.message import new_message_id

LEASE_MS = 30_000
GRACE_S = 1.0
DEFAULT = ["default"]


def open_sqlite(url: str) -> Broker:
    return open_broker(url, max_deliveries=3)


def new_record() -> Record:
    return Record(new_message_id(), "default", b"body")


@pytest.fixture
def two_brokers(sqlite_url: str) -> Iterator[tuple[Broker, Broker]]:
    with closing(open_sqlite(sqlite_url)) as first, closing(open_sqlite(sqlite_url)) as second:
        yield first, second


def test_brokers_on_one_file_see_each_others_records_and_leases(
    two_brokers: tuple[Broker, Broker],
) -> None:
    producer, consumer = two_brokers
    published = new_record()
    producer.publish([published])
    [delivery] = consumer.fetch(DEFAULT, 10, LEASE_MS)
    assert delivery.id == published.id
    assert producer.fetch(DEFAULT, 10, LEASE_MS) == []
    assert producer.stats(DEFAULT) == [QueueStats("default", in_flight=1)]
    assert consumer.ack([delivery]) == []
    assert producer.stats(DEFAULT) in ([], [QueueStats("default")])


def test_a_published_record_survives_closing_and_reopening_the_file(sqlite_url: str) -> None:
    published = new_record()
    with closing(open_sqlite(sqlite_url)) as before:
        before.publish([published])
    with closing(open_sqlite(sqlite_url)) as after:
        assert [delivery.id for delivery in after.fetch(DEFAULT, 10, LEASE_MS)] == [published.id]


def test_location_names_the_files_absolute_path(sqlite_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sqlite_path.parent)
    with closing(open_sqlite(f"sqlite:///{sqlite_path.name}")) as broker:
        assert broker.location == f"sqlite:///{sqlite_path}"
        assert sqlite_path.is_absolute()


def test_wait_returns_soon_after_another_broker_on_the_file_publishes(sqlite_url: str) -> None:
    def publish_later() -> float:
        with closing(open_sqlite(sqlite_url)) as producer:
            time.sleep(0.2)
            producer.publish([new_record()])
            return time.monotonic()

    with closing(open_sqlite(sqlite_url)) as waiter, ThreadPoolExecutor(1) as pool:
        published = pool.submit(publish_later)
        waiter.wait(DEFAULT, 5.0)
        assert time.monotonic() < published.result() + GRACE_S


def test_concurrent_fetches_from_four_brokers_never_hand_out_a_record_twice(
    sqlite_url: str,
) -> None:
    records = [new_record() for _ in range(200)]
    with closing(open_sqlite(sqlite_url)) as producer:
        producer.publish(records)
    fetched: list[str] = []
    start = threading.Barrier(4, timeout=10)
    deadline = time.monotonic() + 20

    def consume() -> None:
        with closing(open_sqlite(sqlite_url)) as consumer:
            start.wait()
            while len(fetched) < len(records) and time.monotonic() < deadline:
                fetched.extend(delivery.id for delivery in consumer.fetch(DEFAULT, 5, LEASE_MS))

    with ThreadPoolExecutor(4) as pool:
        for consumer in [pool.submit(consume) for _ in range(4)]:
            consumer.result()
    assert len(fetched) == len(set(fetched)), "a record was handed out twice while leased"
    assert sorted(fetched) == sorted(record.id for record in records)


def test_a_row_written_by_hand_with_a_text_body_is_delivered_as_bytes(sqlite_url: str) -> None:
    import sqlite3

    from taskmill.sqlite_db import path_from_url

    with closing(open_sqlite(sqlite_url)) as broker:
        with sqlite3.connect(path_from_url(sqlite_url)) as db:
            db.execute(
                "INSERT INTO taskmill_messages (id, queue, priority, available_at, body) VALUES (?, ?, ?, ?, ?)",
                ("text", "default", 0, 0, '{"v":1,"id":"text","actor":"a","queue":"default"}'),
            )
        [delivery] = broker.fetch(["default"], 1, 1000)
        assert delivery.body == b'{"v":1,"id":"text","actor":"a","queue":"default"}'


SYNC_LEVELS = {0: "off", 1: "normal", 2: "full", 3: "extra"}


@pytest.mark.parametrize(
    ("option", "durable", "lazy"),
    [
        ("", "full", "normal"),
        ("?synchronous=extra", "extra", "normal"),
        ("?synchronous=normal", "normal", "normal"),
        ("?synchronous=off", "off", "off"),
    ],
)
def test_only_writes_a_promise_rests_on_wait_for_the_disk(
    sqlite_path: Path, option: str, durable: str, lazy: str
) -> None:
    """A send (and an operator's retry or purge) commits at the URL's level; a worker's fetch, ack,
    heartbeat, retry, release and dead letter at NORMAL at most: losing one on power failure only
    delivers a message again, and WAL's order means a lost commit takes every later one with it."""
    from taskmill.brokers.base import Failure

    with closing(open_sqlite(f"sqlite:///{sqlite_path}{option}")) as broker:
        level = lambda: SYNC_LEVELS[broker._database.read("PRAGMA synchronous")[0][0]]  # noqa: E731
        broker.publish([new_record() for _ in range(4)])
        assert level() == durable
        deliveries = broker.fetch(DEFAULT, 4, LEASE_MS)
        assert level() == lazy
        for settle in (
            lambda: broker.extend(deliveries, LEASE_MS),
            lambda: broker.ack(deliveries[:1]),
            lambda: broker.retry(deliveries[1], 0),
            lambda: broker.release(deliveries[2:3]),
            lambda: broker.dead_letter(deliveries[3], Failure("failed", "ValueError", "bad")),
        ):
            broker.publish([new_record()])
            assert level() == durable
            settle()
            assert level() == lazy
        assert broker.retry_dead() == 1
        assert level() == durable
