"""Which acks may go as one ``multiple`` frame: never past a delivery still held or never seen;
and a channel refused by a dropped connection is a connection error."""

from __future__ import annotations

import asyncio

import pytest

from taskmill.brokers.rabbitmq_client import DeliveryTags, open_channel


def tags_after(arrived: list[int], settled: tuple[int, ...] = ()) -> DeliveryTags:
    tags = DeliveryTags()
    for tag in arrived:
        tags.arrived(tag)
    for tag in settled:
        tags.settled(tag)
    return tags


def test_a_run_of_the_lowest_tags_goes_as_one() -> None:
    assert tags_after([1, 2, 3, 4]).run([1, 2, 3, 4]) == 4


def test_a_held_tag_stops_the_run_below_it() -> None:
    tags = tags_after([1, 2, 3, 4, 5, 6])
    assert tags.run([1, 2, 4, 5]) == 2  # 3 is still held: 4 and 5 go one by one
    assert tags.run([4, 5]) == 0  # 1, 2 and 3 held: nothing may pass them


def test_settled_tags_below_do_not_stop_it() -> None:
    tags = tags_after([1, 2, 3, 4, 5], settled=(1, 2))
    assert tags.run([3, 4]) == 2


def test_a_tag_that_never_arrived_stops_the_run() -> None:
    # 3 went to a consumer that was being cancelled, and the client dropped it unseen
    tags = tags_after([1, 2, 4, 5])
    assert tags.run([1, 2, 4, 5]) == 2
    tags.settled(1)
    tags.settled(2)
    tags.arrived(3)
    assert tags.run([3, 4, 5]) == 3


def test_a_new_channel_starts_over() -> None:
    tags = tags_after([1, 2, 3])
    tags.reset()
    tags.arrived(1)
    assert tags.run([1]) == 1
    assert tags.run([2]) == 0  # not arrived on the new channel


def test_a_gap_that_never_fills_turns_multiple_acks_off_until_the_next_channel() -> None:
    tags = DeliveryTags()
    for tag in range(2, 10_003):  # tag 1 never arrives
        tags.arrived(tag)
    assert tags.run([2, 3]) == 0
    tags.reset()
    tags.arrived(1)
    tags.arrived(2)
    assert tags.run([1, 2]) == 2


class DroppedConnection:
    """A connection the server dropped: aio-pika has not marked it closed, aiormq refuses channels."""

    is_closed = False

    async def channel(self, **options: object) -> object:
        raise RuntimeError('<Connection: "amqp://guest:******@127.0.0.1:5672/"> closed')


def test_a_channel_refused_by_a_dropped_connection_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError, match="closed"):
        asyncio.run(open_channel(DroppedConnection(), publisher_confirms=True))
