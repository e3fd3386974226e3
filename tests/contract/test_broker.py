"""The broker contract (taskmill/brokers/base.py): every backend, one behaviour per test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmill.brokers import Broker, DeadLetter, Delivery, Failure, QueueStats, Record
from taskmill.errors import LeaseLost
from taskmill.message import Message, new_message_id, now_ms

T = TypeVar("T")

LEASE_MS = 30_000  # outlasts any test: a lease runs out only where a test means it to
SHORT_LEASE_MS = 200
GRACE_S = 1.0  # how late something may come after its time
CLOCK_SLACK_S = 0.02  # millisecond rounding between the broker's clock and ours
POLL_S = 0.02
DEFAULT = ["default"]


def rec(queue: str = "default", priority: int = 0, delay_ms: int = 0, body: bytes | None = None) -> Record:
    """A record with a fresh id; its body is a valid envelope unless one is given."""
    message_id = new_message_id()
    if body is None:
        body = Message(actor="noop", queue=queue, priority=priority, id=message_id).encode()
    return Record(message_id, queue, body, priority, delay_ms)


def ids(items: Iterable[Record | Delivery | DeadLetter]) -> list[str]:
    return [item.id for item in items]


def content(item: Record | Delivery | DeadLetter) -> tuple[str, str, bytes, int]:
    return item.id, item.queue, item.body, item.priority


def by_priority(records: Sequence[Record]) -> list[Record]:
    """The order a broker must hand records out in, given their publish order."""
    return sorted(records, key=lambda record: -record.priority)


@dataclass(frozen=True)
class Due:
    """When something becomes due, bounded on both sides, in time.monotonic() seconds."""

    not_before: float
    not_after: float


def timed(due_in_s: float, act: Callable[[], T]) -> tuple[T, Due]:
    """Run ``act``, which makes something due ``due_in_s`` after the broker sees it."""
    start = time.monotonic()
    result = act()
    return result, Due(start + due_in_s, time.monotonic() + due_in_s)


def poll(probe: Callable[[], T], due: Due) -> T:
    """Call ``probe`` until it returns something truthy: not before ``due``, within 1 s after."""
    while True:
        result = probe()
        now = time.monotonic()
        if result:
            assert now >= due.not_before - CLOCK_SLACK_S, f"came {due.not_before - now:.3f} s early"
            return result
        assert now <= due.not_after + GRACE_S, "did not come within 1 s after its time"
        time.sleep(POLL_S)


def sleep_until(due: Due) -> None:
    """Sleep until what ``due`` bounds has surely happened."""
    time.sleep(max(0.0, due.not_after + CLOCK_SLACK_S - time.monotonic()))


def fetch(broker: Broker, queues: Sequence[str] = DEFAULT, limit: int = 10, lease_ms: int = LEASE_MS) -> list[Delivery]:
    return broker.fetch(queues, limit, lease_ms)


def fetch_one(broker: Broker) -> Delivery:
    deliveries = fetch(broker, limit=1)
    assert len(deliveries) == 1
    return deliveries[0]


def drain(broker: Broker, queues: Sequence[str] = DEFAULT) -> list[str]:
    """Fetch (and ack) one record at a time until none is left; the ids in the order they came."""
    order: list[str] = []
    while deliveries := fetch(broker, queues, limit=1):
        order += ids(deliveries)
        assert broker.ack(deliveries) == []
    return order


def lease(broker: Broker, lease_ms: int = SHORT_LEASE_MS, due: Due | None = None) -> tuple[Delivery, Due]:
    """Fetch the one default-queue record (once ``due``, if given) and when its lease runs out."""
    start = time.monotonic()
    deliveries = poll(lambda: fetch(broker, limit=1, lease_ms=lease_ms), due or Due(start, start))
    return deliveries[0], Due(start + lease_ms / 1000, time.monotonic() + lease_ms / 1000)


def lose_lease(broker: Broker) -> tuple[Delivery, Delivery]:
    """A record whose first lease ran out and was fetched again: (stale, current) deliveries."""
    broker.publish([rec()])
    stale, expiry = lease(broker)
    current, _ = lease(broker, LEASE_MS, due=expiry)
    return stale, current


def dead_letter_all(broker: Broker, records: Sequence[Record]) -> None:
    """Publish ``records``, fetch them and dead-letter them in their order."""
    broker.publish(records)
    queues = sorted({record.queue for record in records})
    deliveries = {delivery.id: delivery for delivery in fetch(broker, queues, len(records))}
    assert deliveries.keys() == set(ids(records))
    for record in records:
        broker.dead_letter(deliveries[record.id], Failure("failed"))


def counts(broker: Broker, queue: str = "default") -> QueueStats:
    """One queue's stats; a queue with nothing in it may be left out of stats()."""
    rows = broker.stats([queue])
    assert [row.queue for row in rows] in ([queue], [])
    return rows[0] if rows else QueueStats(queue)


SETTLE: dict[str, Callable[[Broker, Delivery], object]] = {
    "ack_one": lambda broker, delivery: broker.ack_one(delivery),
    "retry": lambda broker, delivery: broker.retry(delivery, 0),
    "dead_letter": lambda broker, delivery: broker.dead_letter(delivery, Failure("failed")),
}


# -- publish, fetch, ack -----------------------------------------------------------------------


def test_a_fetched_record_arrives_as_published_with_one_delivery_and_a_token(
    broker: Broker,
) -> None:
    record = rec(priority=7)
    broker.publish([record])
    delivery = fetch_one(broker)
    assert content(delivery) == content(record)
    assert delivery.deliveries == 1
    assert isinstance(delivery.token, str)
    assert delivery.token


@pytest.mark.needs("in_flight_counts")
def test_a_leased_record_is_not_handed_out_again(broker: Broker) -> None:
    broker.publish([rec()])
    fetch_one(broker)
    assert fetch(broker) == []
    assert counts(broker) == QueueStats("default", in_flight=1)


@pytest.mark.needs("expiring_leases")
def test_an_acked_record_is_gone_for_good(broker: Broker) -> None:
    broker.publish([rec()])
    delivery, expiry = lease(broker)
    assert broker.ack([delivery]) == []
    sleep_until(expiry)
    assert fetch(broker) == []
    assert counts(broker) == QueueStats("default")


def test_publishing_nothing_is_harmless(broker: Broker) -> None:
    broker.publish([])
    assert fetch(broker) == []


@pytest.mark.parametrize(
    "body",
    [b"\xff\x00garbage", bytes(range(256)), b"", bytes(range(256)) * 1024],
    ids=["non_utf8", "every_byte", "empty", "256_kib"],
)
def test_bodies_are_opaque_bytes_returned_exactly(broker: Broker, body: bytes) -> None:
    broker.publish([rec(body=body)])
    delivery = fetch_one(broker)
    broker.dead_letter(delivery, Failure("decode_error"))
    [dead] = broker.dead_letters()
    assert type(delivery.body) is bytes
    assert delivery.body == body
    assert type(dead.body) is bytes
    assert dead.body == body


# -- which records a fetch hands out, and in what order ----------------------------------------


def test_fetch_hands_out_at_most_limit_records(broker: Broker) -> None:
    broker.publish([rec() for _ in range(5)])
    assert len(fetch(broker, limit=2)) == 2
    assert len(fetch(broker, limit=10)) == 3
    assert fetch(broker) == []


def test_fetch_takes_only_from_the_queues_it_is_given(broker: Broker) -> None:
    a, b, c = rec("a"), rec("b"), rec("c")
    broker.publish([a, b, c])
    assert ids(fetch(broker, ["b"])) == [b.id]
    assert sorted(ids(fetch(broker, ["a", "c"]))) == sorted([a.id, c.id])
    assert fetch(broker, ["a", "b", "c"]) == []


@pytest.mark.needs("priorities")
def test_fetch_hands_out_higher_priority_first_then_oldest_first(broker: Broker) -> None:
    records = [rec(priority=priority) for priority in (0, 5, 1, 9, 5, 0)]
    for record in records:
        broker.publish([record])
    assert drain(broker) == ids(by_priority(records))


@pytest.mark.needs("priorities")
def test_a_batch_fetch_lists_deliveries_best_first(broker: Broker) -> None:
    records = [rec(priority=priority) for priority in (0, 5, 9, 5)]
    for record in records:
        broker.publish([record])
    assert ids(fetch(broker)) == ids(by_priority(records))


def test_records_published_in_one_call_are_handed_out_in_their_order(broker: Broker) -> None:
    records = [rec() for _ in range(5)]
    broker.publish(records)
    assert drain(broker) == ids(records)


@pytest.mark.needs("order_across_queues")
def test_priority_and_age_decide_across_all_queues_fetched_together(broker: Broker) -> None:
    old, new, urgent = rec("a"), rec("b"), rec("b", priority=9)
    for record in (old, new, urgent):
        broker.publish([record])
    assert drain(broker, ["a", "b"]) == ids([urgent, old, new])


@pytest.mark.needs("priorities")
@pytest.mark.parametrize("one_call", [False, True], ids=["one_by_one", "in_one_call"])
def test_a_priority_9_record_jumps_1000_priority_0_records(broker: Broker, one_call: bool) -> None:
    backlog = [rec() for _ in range(1000)]
    if one_call:
        broker.publish(backlog)
    else:
        for record in backlog:
            broker.publish([record])
    urgent = rec(priority=9)
    broker.publish([urgent])
    assert ids(fetch(broker, limit=1)) == [urgent.id]
    assert ids(fetch(broker, limit=1)) == [backlog[0].id]


@pytest.mark.needs("priorities")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(priorities=st.lists(st.integers(0, 9), max_size=12))  # the priorities a message can carry
def test_fetch_order_is_priority_then_age_for_any_mix_of_priorities(broker: Broker, priorities: list[int]) -> None:
    queue = new_message_id()  # a queue of its own per example: the broker outlives examples
    records = [rec(queue, priority=priority) for priority in priorities]
    for record in records:
        broker.publish([record])
    assert drain(broker, [queue]) == ids(by_priority(records))


# -- leases ------------------------------------------------------------------------------------


@pytest.mark.needs("expiring_leases")
def test_a_record_whose_lease_ran_out_is_delivered_again_with_a_new_token(broker: Broker) -> None:
    broker.publish([rec()])
    first, expiry = lease(broker)
    second, _ = lease(broker, LEASE_MS, due=expiry)
    assert second.id == first.id
    assert second.deliveries == 2
    assert second.token != first.token


@pytest.mark.needs("expiring_leases")
def test_an_ack_from_a_holder_that_lost_its_lease_is_returned_as_lost(broker: Broker) -> None:
    stale, current = lose_lease(broker)
    assert broker.ack([stale]) == [stale]
    assert broker.ack([current]) == []


@pytest.mark.needs("expiring_leases")
def test_a_batch_ack_refuses_only_the_deliveries_whose_lease_was_lost(broker: Broker) -> None:
    stale, current = lose_lease(broker)
    broker.publish([rec()])
    other = fetch_one(broker)
    assert broker.ack([stale, other]) == [stale]
    assert counts(broker) == QueueStats("default", in_flight=1)
    assert broker.ack([current]) == []


@pytest.mark.needs("expiring_leases")
def test_a_batch_ack_of_both_leases_of_one_message_refuses_the_stale_one(broker: Broker) -> None:
    stale, current = lose_lease(broker)
    assert broker.ack([stale, current]) == [stale]
    assert counts(broker) == QueueStats("default")
    assert fetch(broker) == []


@pytest.mark.needs("expiring_leases")
@pytest.mark.parametrize("operation", list(SETTLE))
def test_a_holder_that_lost_its_lease_cannot_settle_and_leaves_the_new_holder_alone(
    broker: Broker, operation: str
) -> None:
    stale, current = lose_lease(broker)
    with pytest.raises(LeaseLost):
        SETTLE[operation](broker, stale)
    assert fetch(broker) == []
    assert broker.dead_letters() == []
    assert broker.ack([current]) == []


@pytest.mark.needs("expiring_leases")
def test_a_holder_whose_lease_ran_out_may_still_ack_while_nobody_fetched_again(
    broker: Broker,
) -> None:
    broker.publish([rec()])
    delivery, expiry = lease(broker)
    sleep_until(expiry)
    assert broker.ack([delivery]) == []
    assert fetch(broker) == []
    assert counts(broker) == QueueStats("default")


@pytest.mark.needs("expiring_leases")
def test_a_holder_whose_lease_ran_out_may_still_retry_while_nobody_fetched_again(
    broker: Broker,
) -> None:
    broker.publish([rec()])
    delivery, expiry = lease(broker)
    sleep_until(expiry)
    broker.retry(delivery, 0)
    assert fetch_one(broker).deliveries == 2


@pytest.mark.needs("expiring_leases")
def test_a_holder_whose_lease_ran_out_may_still_dead_letter_while_nobody_fetched_again(
    broker: Broker,
) -> None:
    broker.publish([rec()])
    delivery, expiry = lease(broker)
    sleep_until(expiry)
    broker.dead_letter(delivery, Failure("failed"))
    assert [dead.reason for dead in broker.dead_letters()] == ["failed"]
    assert fetch(broker) == []


@pytest.mark.needs("expiring_leases")
def test_a_record_whose_lease_ran_out_counts_as_ready_again(broker: Broker) -> None:
    broker.publish([rec()])
    _, expiry = lease(broker)
    sleep_until(expiry)
    assert counts(broker) == QueueStats("default", ready=1)


@pytest.mark.needs("expiring_leases")
def test_an_extended_lease_outlasts_the_original_one(broker: Broker) -> None:
    broker.publish([rec()])
    delivery, original = lease(broker)
    assert broker.extend([delivery], LEASE_MS) == []
    sleep_until(original)
    assert fetch(broker) == []
    assert broker.ack([delivery]) == []


@pytest.mark.needs("expiring_leases")
def test_extend_returns_the_deliveries_whose_lease_was_lost(broker: Broker) -> None:
    stale, current = lose_lease(broker)
    assert broker.extend([stale, current], LEASE_MS) == [stale]
    assert broker.ack([current]) == []


@pytest.mark.needs("expiring_leases")
def test_a_record_whose_lease_ran_out_max_deliveries_times_is_dead_lettered(
    broker: Broker,
) -> None:
    record = rec()
    broker.publish([record])
    delivery, expiry = lease(broker)
    for attempt in range(2, broker.max_deliveries + 1):
        delivery, expiry = lease(broker, due=expiry)
        assert delivery.deliveries == attempt
    sleep_until(expiry)
    assert fetch(broker) == []
    [dead] = broker.dead_letters()
    assert content(dead) == content(record)
    assert (dead.reason, dead.deliveries) == ("delivery_limit", broker.max_deliveries)
    assert counts(broker) == QueueStats("default", dead=1)


@pytest.mark.needs("expiring_leases")
def test_a_fetch_that_dead_letters_a_record_hands_out_the_next_one_in_its_place(broker: Broker) -> None:
    broker.publish([rec()])
    _, expiry = lease(broker)
    for _ in range(2, broker.max_deliveries + 1):
        _, expiry = lease(broker, due=expiry)
    healthy = rec()
    broker.publish([healthy])
    sleep_until(expiry)
    assert ids(fetch(broker, limit=1)) == [healthy.id]
    assert [dead.reason for dead in broker.dead_letters()] == ["delivery_limit"]


def test_the_delivery_limit_does_not_cut_off_explicit_retries(broker: Broker) -> None:
    broker.publish([rec()])
    for _ in range(broker.max_deliveries):
        broker.retry(fetch_one(broker), 0)
    assert fetch_one(broker).deliveries == broker.max_deliveries + 1


# -- retry, release, delays --------------------------------------------------------------------


def test_a_retried_record_is_delivered_again_with_one_more_delivery(broker: Broker) -> None:
    broker.publish([rec()])
    first = fetch_one(broker)
    broker.retry(first, 0)
    second = fetch_one(broker)
    assert (second.id, second.deliveries) == (first.id, 2)
    assert second.token != first.token


def test_a_record_retried_with_a_delay_comes_back_not_before_it_and_within_1s_after(
    broker: Broker,
) -> None:
    broker.publish([rec()])
    first = fetch_one(broker)
    _, due = timed(0.3, lambda: broker.retry(first, 300))
    assert ids(poll(lambda: fetch(broker), due)) == [first.id]


def test_a_delayed_record_comes_not_before_its_time_and_within_1s_after(broker: Broker) -> None:
    record = rec(delay_ms=500)
    _, due = timed(0.5, lambda: broker.publish([record]))
    [delivery] = poll(lambda: fetch(broker), due)
    assert (delivery.id, delivery.deliveries) == (record.id, 1)


def test_a_record_waiting_for_its_time_counts_as_delayed_and_is_not_fetched(
    broker: Broker,
) -> None:
    broker.publish([rec(delay_ms=60_000)])
    assert fetch(broker) == []
    assert counts(broker) == QueueStats("default", delayed=1)


@pytest.mark.needs("snapshot_stats")
def test_a_delayed_record_counts_as_ready_once_its_time_has_come(broker: Broker) -> None:
    _, due = timed(0.3, lambda: broker.publish([rec(delay_ms=300)]))

    def ready() -> bool:
        stats = counts(broker)
        assert stats in (QueueStats("default", delayed=1), QueueStats("default", ready=1))
        return stats.ready == 1

    poll(ready, due)


def test_released_records_are_fetchable_at_once_and_their_delivery_is_not_counted(
    broker: Broker,
) -> None:
    records = [rec(), rec()]
    broker.publish(records)
    broker.release(fetch(broker))
    again = fetch(broker)
    assert sorted(ids(again)) == sorted(ids(records))
    assert [delivery.deliveries for delivery in again] == [1, 1]


@pytest.mark.needs("expiring_leases")
def test_release_ignores_a_delivery_whose_lease_was_lost(broker: Broker) -> None:
    stale, current = lose_lease(broker)
    broker.release([stale])
    assert fetch(broker) == []
    assert broker.ack([current]) == []


# -- the dead-letter queue ---------------------------------------------------------------------


def test_a_dead_lettered_record_keeps_its_failure_and_is_no_longer_fetchable(
    broker: Broker,
) -> None:
    record = rec(priority=3)
    broker.publish([record])
    delivery, expiry = lease(broker)
    failure = Failure(
        reason="failed",
        error_type="ValueError",
        error_message="boom",
        traceback="Traceback...",
        exception=ValueError("boom"),
    )
    before_ms = now_ms()
    broker.dead_letter(delivery, failure)
    after_ms = now_ms()
    [dead] = broker.dead_letters()
    assert dead == DeadLetter(
        *content(record),
        reason="failed",
        error_type="ValueError",
        error_message="boom",
        traceback="Traceback...",
        deliveries=1,
        dead_at_ms=dead.dead_at_ms,
    )
    assert before_ms - 1000 <= dead.dead_at_ms <= after_ms + 1000
    sleep_until(expiry)
    assert fetch(broker) == []
    assert counts(broker) == QueueStats("default", dead=1)


def test_dead_letters_are_listed_newest_first_a_page_at_a_time(broker: Broker) -> None:
    records = [rec() for _ in range(5)]
    dead_letter_all(broker, records)
    newest_first = ids(reversed(records))
    pages = [ids(broker.dead_letters(limit=2, offset=offset)) for offset in (0, 2, 4, 6)]
    assert pages == [newest_first[:2], newest_first[2:4], newest_first[4:], []]


def test_dead_letters_can_be_listed_for_one_queue(broker: Broker) -> None:
    a1, b1, a2, b2 = rec("a"), rec("b"), rec("a"), rec("b")
    dead_letter_all(broker, [a1, b1, a2, b2])
    assert ids(broker.dead_letters("a")) == [a2.id, a1.id]
    assert ids(broker.dead_letters("b", limit=1, offset=1)) == [b1.id]
    assert ids(broker.dead_letters()) == [b2.id, a2.id, b1.id, a1.id]


@pytest.mark.needs("in_flight_counts")
def test_retry_dead_by_id_requeues_just_those_with_a_fresh_delivery_count(broker: Broker) -> None:
    chosen, other = rec(priority=4), rec()
    dead_letter_all(broker, [chosen, other])
    assert broker.retry_dead(ids=[chosen.id]) == 1
    delivery = fetch_one(broker)
    assert content(delivery) == content(chosen)
    assert delivery.deliveries == 1
    assert ids(broker.dead_letters()) == [other.id]
    assert counts(broker) == QueueStats("default", in_flight=1, dead=1)


def test_retry_dead_by_queue_requeues_only_that_queue(broker: Broker) -> None:
    a1, b, a2 = rec("a"), rec("b"), rec("a")
    dead_letter_all(broker, [a1, b, a2])
    assert broker.retry_dead(queue="a") == 2
    deliveries = fetch(broker, ["a", "b"])
    assert sorted(ids(deliveries)) == sorted([a1.id, a2.id])
    assert [delivery.deliveries for delivery in deliveries] == [1, 1]
    assert ids(broker.dead_letters()) == [b.id]


@pytest.mark.needs("in_flight_counts")
def test_retry_dead_without_arguments_requeues_every_dead_letter(broker: Broker) -> None:
    records = [rec("a"), rec("b")]
    dead_letter_all(broker, records)
    assert broker.retry_dead() == 2
    deliveries = fetch(broker, ["a", "b"])
    assert sorted(ids(deliveries)) == sorted(ids(records))
    assert [delivery.deliveries for delivery in deliveries] == [1, 1]
    assert broker.stats() == [QueueStats("a", in_flight=1), QueueStats("b", in_flight=1)]


def test_purge_dead_by_id_deletes_just_those(broker: Broker) -> None:
    chosen, other = rec(), rec()
    dead_letter_all(broker, [chosen, other])
    assert broker.purge_dead(ids=[chosen.id]) == 1
    assert ids(broker.dead_letters()) == [other.id]
    assert fetch(broker) == []


def test_purge_dead_by_queue_deletes_only_that_queue(broker: Broker) -> None:
    a1, b, a2 = rec("a"), rec("b"), rec("a")
    dead_letter_all(broker, [a1, b, a2])
    assert broker.purge_dead(queue="a") == 2
    assert ids(broker.dead_letters()) == [b.id]


def test_purge_dead_without_arguments_deletes_every_dead_letter(broker: Broker) -> None:
    dead_letter_all(broker, [rec("a"), rec("b")])
    assert broker.purge_dead() == 2
    assert broker.dead_letters() == []
    assert fetch(broker, ["a", "b"]) == []


def test_dead_letter_operations_on_no_or_unknown_ids_change_nothing(broker: Broker) -> None:
    dead_letter_all(broker, [rec()])
    for selection in ([], [new_message_id()]):
        assert broker.retry_dead(ids=selection) == 0
        assert broker.purge_dead(ids=selection) == 0
    assert len(broker.dead_letters()) == 1


# -- operating: purge and stats ----------------------------------------------------------------


@pytest.mark.needs("in_flight_counts")
def test_purge_deletes_the_ready_and_delayed_records_of_one_queue_only(broker: Broker) -> None:
    dead_letter_all(broker, [rec("a")])
    broker.publish([rec("a"), rec("a"), rec("a"), rec("a", delay_ms=60_000), rec("b")])
    held = fetch(broker, ["a"], limit=1)
    assert broker.purge("a") == 3
    assert broker.stats() == [QueueStats("a", in_flight=1, dead=1), QueueStats("b", ready=1)]
    assert broker.ack(held) == []


@pytest.mark.needs("expiring_leases")
def test_purge_deletes_a_record_whose_lease_ran_out_as_a_ready_one(broker: Broker) -> None:
    broker.publish([rec()])
    _, expiry = lease(broker)
    sleep_until(expiry)
    assert broker.purge("default") == 1
    assert fetch(broker) == []
    assert counts(broker) == QueueStats("default")


@pytest.mark.needs("in_flight_counts")
def test_stats_count_every_known_queue_by_state_sorted_by_name(broker: Broker) -> None:
    dead_letter_all(broker, [rec("c")])
    broker.publish([rec("b"), rec("a", delay_ms=60_000), rec("a"), rec("a")])
    fetch(broker, ["a"], limit=1)
    assert broker.stats() == [
        QueueStats("a", ready=1, delayed=1, in_flight=1),
        QueueStats("b", ready=1),
        QueueStats("c", dead=1),
    ]


def test_stats_for_given_queues_cover_only_those(broker: Broker) -> None:
    broker.publish([rec("c"), rec("b"), rec("a")])
    assert broker.stats(["c", "a"]) == [QueueStats("a", ready=1), QueueStats("c", ready=1)]


# -- waiting for work --------------------------------------------------------------------------


def test_wait_returns_after_about_its_timeout_when_nothing_comes(broker: Broker) -> None:
    start = time.monotonic()
    broker.wait(DEFAULT, 0.3)
    assert time.monotonic() - start < 0.3 + GRACE_S


def test_wait_returns_at_once_when_a_record_is_already_fetchable(broker: Broker) -> None:
    broker.publish([rec()])
    start = time.monotonic()
    broker.wait(DEFAULT, 5.0)
    assert time.monotonic() - start < GRACE_S


def test_wait_returns_soon_after_another_thread_publishes(broker: Broker) -> None:
    def publish_later() -> float:
        time.sleep(0.2)
        broker.publish([rec()])
        return time.monotonic()

    with ThreadPoolExecutor(1) as pool:
        published = pool.submit(publish_later)
        broker.wait(DEFAULT, 5.0)
        returned_at = time.monotonic()
        assert returned_at < published.result() + GRACE_S
    assert len(fetch(broker)) == 1


def test_wait_returns_soon_after_a_delayed_record_comes_due(broker: Broker) -> None:
    _, due = timed(0.3, lambda: broker.publish([rec(delay_ms=300)]))
    broker.wait(DEFAULT, 5.0)
    assert time.monotonic() <= due.not_after + GRACE_S


@pytest.mark.needs("unique_ids")
def test_publishing_an_id_that_is_still_queued_does_nothing(broker: Broker) -> None:
    first = rec(body=b"first")
    broker.publish([first])
    broker.publish([Record(first.id, first.queue, b"second", priority=9)])
    [delivery] = broker.fetch(DEFAULT, 10, 30_000)
    assert delivery.body == b"first"
    broker.publish([Record(first.id, first.queue, b"third")])
    assert broker.fetch(DEFAULT, 10, 30_000) == []


@pytest.mark.needs("expiring_leases")
def test_the_fetching_instance_hands_over_what_the_crash_guard_buried(broker: Broker) -> None:
    record = rec(body=b"poison")
    broker.publish([record])
    assert broker.take_buried() == []
    for _ in range(broker.max_deliveries):
        _, expiry = lease(broker, 200)
        sleep_until(expiry)
    assert fetch(broker) == []
    [buried] = broker.take_buried()
    assert (buried.id, buried.body, buried.reason, buried.deliveries) == (
        record.id, b"poison", "delivery_limit", broker.max_deliveries,
    )  # fmt: skip
    assert broker.take_buried() == []


def test_a_star_is_an_id_like_any_other_when_purging_dead_letters(broker: Broker) -> None:
    record = rec()
    dead_letter_all(broker, [record])
    assert broker.purge_dead(ids=["*"]) == 0
    assert broker.retry_dead(ids=["*"]) == 0
    assert ids(broker.dead_letters()) == [record.id]


@pytest.mark.needs("order_across_queues")
def test_equal_priorities_across_queues_come_oldest_first(broker: Broker) -> None:
    older, newer = rec("busy"), rec("quiet")
    broker.publish([rec("busy") for _ in range(3)])
    for delivery in broker.fetch(["busy"], 3, LEASE_MS):
        broker.ack_one(delivery)
    broker.publish([older])
    broker.publish([newer])
    assert ids(broker.fetch(["quiet", "busy"], 1, LEASE_MS)) == [older.id]
