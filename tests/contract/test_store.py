"""The result store contract (taskmill/results/base.py): every backend, one behaviour per test."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from taskmill.results import Store, open_store
from taskmill.results.postgres import PostgresStore
from taskmill.results.redis import RedisStore
from taskmill.results.sqlite import SQLiteStore

T = TypeVar("T")

LONG_TTL_MS = 60_000  # outlasts any test: a key expires only where a test means it to
SHORT_TTL_MS = 200
GRACE_S = 1.0  # how late something may come after its time
CLOCK_SLACK_S = 0.02  # millisecond rounding between the store's clock and ours
POLL_S = 0.02
THREADS = 8

# Backends where opening the same URL again reaches the same data, as another process would.
SHARED_BY_URL: tuple[type[Store], ...] = (SQLiteStore, RedisStore, PostgresStore)
# Runs a test on just those backends (their ids in conftest's STORES).
on_stores_shared_by_url = pytest.mark.parametrize("store", ["sqlite", "redis", "postgres"], indirect=True)


@dataclass(frozen=True)
class Due:
    """When something becomes due, bounded on both sides, in time.monotonic() seconds."""

    not_before: float
    not_after: float


def expiring(ttl_ms: int, act: Callable[[], T]) -> tuple[T, Due]:
    """Run ``act``, which writes something that lives ``ttl_ms``; when it expires."""
    start = time.monotonic()
    result = act()
    return result, Due(start + ttl_ms / 1000, time.monotonic() + ttl_ms / 1000)


def sleep_until(due: Due) -> None:
    """Sleep until what ``due`` bounds has surely happened."""
    time.sleep(max(0.0, due.not_after + CLOCK_SLACK_S - time.monotonic()))


def poll(probe: Callable[[], bool], due: Due) -> None:
    """Call ``probe`` until it returns True: not before ``due``, within 1 s after."""
    while True:
        done = probe()
        now = time.monotonic()
        if done:
            assert now >= due.not_before - CLOCK_SLACK_S, f"came {due.not_before - now:.3f} s early"
            return
        assert now <= due.not_after + GRACE_S, "did not come within 1 s after its time"
        time.sleep(POLL_S)


def timed(act: Callable[[], T]) -> tuple[T, float]:
    """Run ``act``; its result and how many seconds it took."""
    start = time.monotonic()
    result = act()
    return result, time.monotonic() - start


@contextmanager
def handles(store: Store, count: int) -> Iterator[list[Store]]:
    """``count`` handles on ``store``'s data, one per thread. Where the data is shared by URL (SQLite, Redis,
    PostgreSQL), each is a store of its own on it, as separate processes would have; otherwise ``store`` itself."""
    if not isinstance(store, SHARED_BY_URL):
        yield [store] * count
        return
    with ExitStack() as stack:
        yield [stack.enter_context(closing(open_store(store.url))) for _ in range(count)]


def race(stores: Sequence[Store], work: Callable[[int, Store], T]) -> list[T]:
    """Run ``work(index, store)`` on one thread per store, all released at once; their results."""
    start = threading.Barrier(len(stores), timeout=10)

    def run(index: int, handle: Store) -> T:
        start.wait()
        return work(index, handle)

    with ThreadPoolExecutor(len(stores)) as pool:
        futures = [pool.submit(run, index, handle) for index, handle in enumerate(stores)]
        return [future.result() for future in futures]


def put_later(store: Store, key: str, value: bytes, delay_s: float = 0.2) -> float:
    """Sleep ``delay_s``, put ``value`` under ``key``; when the put had returned."""
    time.sleep(delay_s)
    store.put(key, value, LONG_TTL_MS)
    return time.monotonic()


# -- put and get -------------------------------------------------------------------------------


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(value=st.binary(max_size=4096))
@example(value=b"\x00\xff")
@example(value=b"")
def test_get_returns_the_exact_bytes_that_were_put(store: Store, value: bytes) -> None:
    store.put("key", value, LONG_TTL_MS)
    assert store.get("key") == value


def test_get_of_a_key_never_put_is_none(store: Store) -> None:
    assert store.get("missing") is None


def test_put_replaces_the_value_under_the_key(store: Store) -> None:
    store.put("key", b"first", LONG_TTL_MS)
    store.put("key", b"second", LONG_TTL_MS)
    assert store.get("key") == b"second"


def test_values_under_different_keys_are_independent(store: Store) -> None:
    store.put("a", b"one", LONG_TTL_MS)
    store.put("b", b"two", LONG_TTL_MS)
    assert (store.get("a"), store.get("b")) == (b"one", b"two")


def test_a_value_reads_as_none_once_its_ttl_has_passed(store: Store) -> None:
    _, due = expiring(SHORT_TTL_MS, lambda: store.put("key", b"value", SHORT_TTL_MS))
    poll(lambda: store.get("key") is None, due)


# -- wait --------------------------------------------------------------------------------------


def test_wait_returns_a_value_that_is_already_there_at_once(store: Store) -> None:
    store.put("key", b"value", LONG_TTL_MS)
    value, took = timed(lambda: store.wait("key", 5.0))
    assert value == b"value"
    assert took < GRACE_S


def test_wait_for_a_key_that_never_comes_returns_none_after_about_its_timeout(store: Store) -> None:
    value, took = timed(lambda: store.wait("missing", 0.3))
    assert value is None
    assert 0.3 - CLOCK_SLACK_S <= took < 0.3 + GRACE_S


def test_wait_does_not_return_a_value_whose_ttl_has_passed(store: Store) -> None:
    _, due = expiring(SHORT_TTL_MS, lambda: store.put("key", b"value", SHORT_TTL_MS))
    sleep_until(due)
    assert store.wait("key", 0.1) is None


def test_wait_returns_soon_after_another_thread_puts_the_key(store: Store) -> None:
    with ThreadPoolExecutor(1) as pool:
        put_at = pool.submit(put_later, store, "key", b"value")
        value = store.wait("key", 5.0)
        returned_at = time.monotonic()
        assert value == b"value"
        assert returned_at < put_at.result() + GRACE_S


def test_a_wait_is_not_held_up_by_another_threads_wait_on_the_store(store: Store) -> None:
    store.put("ready", b"value", LONG_TTL_MS)
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(store.wait, "missing", 3.0)
        time.sleep(0.2)  # the other thread is waiting by now
        value, took = timed(lambda: store.wait("ready", 5.0))
        assert value == b"value"
        assert took < GRACE_S
        assert not other.done(), "the other wait returned early"
        assert other.result() is None


def test_threads_waiting_for_different_keys_each_return_soon_after_their_own_put(store: Store) -> None:
    keys = [f"key-{index}" for index in range(4)]
    with ThreadPoolExecutor(len(keys)) as pool:
        waits = [pool.submit(timed, lambda key=key: store.wait(key, 10.0)) for key in keys]
        time.sleep(0.2)  # every thread is waiting by now
        for index, key in enumerate(keys):
            store.put(key, str(index).encode(), LONG_TTL_MS)
            time.sleep(0.1)
        results = [future.result() for future in waits]
    assert [value for value, _ in results] == [str(index).encode() for index in range(len(keys))]
    assert all(took < 0.2 + 0.1 * index + GRACE_S for index, (_, took) in enumerate(results))


# -- delete ------------------------------------------------------------------------------------

# kind -> (write a live key of that kind, whether the key now reads as never written)
KINDS: dict[str, tuple[Callable[[Store, str], object], Callable[[Store, str], bool]]] = {
    "value": (
        lambda store, key: store.put(key, b"value", LONG_TTL_MS),
        lambda store, key: store.get(key) is None,
    ),
    "counter": (
        lambda store, key: store.incr(key, 5, LONG_TTL_MS),
        lambda store, key: store.incr(key, 1, LONG_TTL_MS) == 1,
    ),
    "set": (
        lambda store, key: store.add(key, "member", LONG_TTL_MS),
        lambda store, key: store.add(key, "member", LONG_TTL_MS) == (True, 1),
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_delete_removes_a_key_of_any_kind_and_returns_true(store: Store, kind: str) -> None:
    write, is_gone = KINDS[kind]
    write(store, "key")
    assert store.delete("key") is True
    assert is_gone(store, "key")


def test_delete_of_a_key_never_written_returns_false(store: Store) -> None:
    assert store.delete("missing") is False


def test_delete_of_a_key_already_deleted_returns_false(store: Store) -> None:
    store.put("key", b"value", LONG_TTL_MS)
    store.delete("key")
    assert store.delete("key") is False


def test_delete_leaves_other_keys_alone(store: Store) -> None:
    store.put("a", b"one", LONG_TTL_MS)
    store.put("b", b"two", LONG_TTL_MS)
    store.delete("a")
    assert store.get("b") == b"two"


# -- add: sets ---------------------------------------------------------------------------------


def test_the_first_add_of_a_member_is_new_and_the_set_has_one_member(store: Store) -> None:
    assert store.add("set", "a", LONG_TTL_MS) == (True, 1)


def test_adding_a_member_again_is_not_new_and_leaves_the_size(store: Store) -> None:
    store.add("set", "a", LONG_TTL_MS)
    assert store.add("set", "a", LONG_TTL_MS) == (False, 1)


def test_a_second_member_is_new_and_the_set_has_two(store: Store) -> None:
    store.add("set", "a", LONG_TTL_MS)
    assert store.add("set", "b", LONG_TTL_MS) == (True, 2)


def test_sets_under_different_keys_are_independent(store: Store) -> None:
    store.add("one", "a", LONG_TTL_MS)
    assert store.add("two", "a", LONG_TTL_MS) == (True, 1)


def test_a_sets_members_are_forgotten_once_its_ttl_has_passed(store: Store) -> None:
    def add_two() -> None:
        store.add("set", "a", SHORT_TTL_MS)
        store.add("set", "b", SHORT_TTL_MS)

    _, due = expiring(SHORT_TTL_MS, add_two)
    sleep_until(due)
    assert store.add("set", "a", LONG_TTL_MS) == (True, 1)


def test_each_add_renews_the_ttl_of_the_whole_set(store: Store) -> None:
    ttl_ms = 1000
    _, first_due = expiring(ttl_ms, lambda: store.add("set", "a", ttl_ms))
    time.sleep(0.5)
    _, renewed_due = expiring(ttl_ms, lambda: store.add("set", "b", ttl_ms))
    sleep_until(first_due)
    assert store.add("set", "a", LONG_TTL_MS) == (False, 2)
    assert time.monotonic() < renewed_due.not_before, "too slow to check before the renewed TTL ran out"


def test_concurrent_adds_count_each_member_once_and_exactly_one_call_completes_the_set(
    store: Store,
) -> None:
    per_thread = 50

    def add_members(index: int, handle: Store) -> list[tuple[bool, int]]:
        results = []
        for number in range(per_thread):
            results.append(handle.add("set", f"{index}-{number}", LONG_TTL_MS))
            if number % 5 == 0:  # duplicates: its own member again, and the next thread's (present or not)
                results.append(handle.add("set", f"{index}-{number}", LONG_TTL_MS))
                results.append(handle.add("set", f"{(index + 1) % THREADS}-{number}", LONG_TTL_MS))
        return results

    with handles(store, THREADS) as stores:
        results = [result for thread in race(stores, add_members) for result in thread]
    total = THREADS * per_thread
    assert store.add("set", "0-0", LONG_TTL_MS) == (False, total)
    assert sum(added for added, _ in results) == total
    assert Counter(results)[(True, total)] == 1


# -- incr: counters ----------------------------------------------------------------------------


def test_incr_of_a_new_counter_starts_from_zero(store: Store) -> None:
    assert store.incr("counter", 3, LONG_TTL_MS) == 3


def test_incr_adds_the_amount_and_returns_the_new_total(store: Store) -> None:
    totals = [store.incr("counter", amount, LONG_TTL_MS) for amount in (5, 2, -10, 0, 4)]
    assert totals == [5, 7, -3, -3, 1]


def test_counters_under_different_keys_are_independent(store: Store) -> None:
    store.incr("one", 5, LONG_TTL_MS)
    assert store.incr("two", 1, LONG_TTL_MS) == 1


def test_a_counter_starts_from_zero_again_once_its_ttl_has_passed(store: Store) -> None:
    _, due = expiring(SHORT_TTL_MS, lambda: store.incr("counter", 5, SHORT_TTL_MS))
    sleep_until(due)
    assert store.incr("counter", 1, LONG_TTL_MS) == 1


def test_concurrent_incrs_lose_no_update_and_each_returns_a_different_total(store: Store) -> None:
    per_thread = 100

    def increment(_: int, handle: Store) -> list[int]:
        return [handle.incr("counter", 1, LONG_TTL_MS) for _ in range(per_thread)]

    with handles(store, THREADS) as stores:
        totals = [total for thread in race(stores, increment) for total in thread]
    total = THREADS * per_thread
    assert store.incr("counter", 0, LONG_TTL_MS) == total
    assert sorted(totals) == list(range(1, total + 1))


# -- acquire and release: locks ----------------------------------------------------------------


def test_acquire_of_a_free_lock_succeeds(store: Store) -> None:
    assert store.acquire("lock", "a", LONG_TTL_MS) is True


def test_acquire_of_a_lock_another_owner_holds_fails(store: Store) -> None:
    store.acquire("lock", "a", LONG_TTL_MS)
    assert store.acquire("lock", "b", LONG_TTL_MS) is False


def test_locks_under_different_keys_are_independent(store: Store) -> None:
    store.acquire("one", "a", LONG_TTL_MS)
    assert store.acquire("two", "b", LONG_TTL_MS) is True


def test_the_owner_acquiring_its_lock_again_succeeds(store: Store) -> None:
    store.acquire("lock", "a", LONG_TTL_MS)
    assert store.acquire("lock", "a", LONG_TTL_MS) is True


def test_the_owner_acquiring_its_lock_again_renews_its_ttl(store: Store) -> None:
    _, original = expiring(SHORT_TTL_MS, lambda: store.acquire("lock", "a", SHORT_TTL_MS))
    store.acquire("lock", "a", LONG_TTL_MS)
    sleep_until(original)
    assert store.acquire("lock", "b", LONG_TTL_MS) is False


def test_release_by_another_owner_fails_and_leaves_the_lock_held(store: Store) -> None:
    store.acquire("lock", "a", LONG_TTL_MS)
    assert store.release("lock", "b") is False
    assert store.acquire("lock", "b", LONG_TTL_MS) is False


def test_release_by_the_owner_succeeds_and_frees_the_lock(store: Store) -> None:
    store.acquire("lock", "a", LONG_TTL_MS)
    assert store.release("lock", "a") is True
    assert store.acquire("lock", "b", LONG_TTL_MS) is True


def test_release_of_a_lock_nobody_holds_fails(store: Store) -> None:
    assert store.release("lock", "a") is False


def test_a_lock_whose_ttl_has_passed_can_be_taken_by_another_owner(store: Store) -> None:
    _, due = expiring(SHORT_TTL_MS, lambda: store.acquire("lock", "a", SHORT_TTL_MS))
    sleep_until(due)
    assert store.acquire("lock", "b", LONG_TTL_MS) is True


def test_the_former_owner_of_an_expired_lock_cannot_release_it_from_the_new_owner(store: Store) -> None:
    _, due = expiring(SHORT_TTL_MS, lambda: store.acquire("lock", "a", SHORT_TTL_MS))
    sleep_until(due)
    store.acquire("lock", "b", LONG_TTL_MS)
    assert store.release("lock", "a") is False
    assert store.acquire("lock", "c", LONG_TTL_MS) is False


def test_exactly_one_of_many_concurrent_acquirers_gets_the_lock(store: Store) -> None:
    with handles(store, THREADS) as stores:
        taken = race(stores, lambda index, handle: handle.acquire("lock", f"owner-{index}", LONG_TTL_MS))
    assert taken.count(True) == 1


# -- keys of different kinds -------------------------------------------------------------------


def test_get_of_a_counter_key_is_none(store: Store) -> None:
    store.incr("key", 5, LONG_TTL_MS)
    assert store.get("key") is None


def test_get_of_a_set_key_is_none(store: Store) -> None:
    store.add("key", "member", LONG_TTL_MS)
    assert store.get("key") is None


def test_get_of_a_lock_key_is_none(store: Store) -> None:
    store.acquire("key", "owner", LONG_TTL_MS)
    assert store.get("key") is None


def test_release_of_a_key_holding_a_value_fails_and_leaves_the_value(store: Store) -> None:
    store.put("key", b"value", LONG_TTL_MS)
    assert store.release("key", "owner") is False
    assert store.get("key") == b"value"


# -- stores on one URL (a SQLite file, a Redis prefix, a PostgreSQL schema), as separate processes open it --


@on_stores_shared_by_url
def test_wait_returns_soon_after_another_store_on_the_url_puts_the_key(store: Store) -> None:
    with handles(store, 2) as (waiter, writer), ThreadPoolExecutor(1) as pool:
        put_at = pool.submit(put_later, writer, "key", b"value")
        value = waiter.wait("key", 5.0)
        returned_at = time.monotonic()
        assert value == b"value"
        assert returned_at < put_at.result() + GRACE_S


@on_stores_shared_by_url
def test_wait_notices_a_put_that_lands_just_after_its_first_look(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put by another process between wait()'s look at the key and the start of its waiting must wake it."""
    with handles(store, 2) as (waiter, writer):
        first_get = waiter.get
        looks = 0

        def get_then_put_elsewhere(key: str) -> bytes | None:
            nonlocal looks
            value = first_get(key)
            looks += 1
            if looks == 1:  # another process puts the key right after wait() found it absent
                writer.put(key, b"value", LONG_TTL_MS)
            return value

        monkeypatch.setattr(waiter, "get", get_then_put_elsewhere)
        value, took = timed(lambda: waiter.wait("key", 2.5))
        assert value == b"value"
        assert took < GRACE_S


def test_deleting_an_expired_key_says_nothing_was_there(store: Store) -> None:
    store.put("gone", b"v", 100)
    store.incr("gone-counter", 1, 100)
    store.add("gone-set", "m", 100)
    time.sleep(0.25)
    assert [store.delete(k) for k in ("gone", "gone-counter", "gone-set")] == [False, False, False]


def test_the_redis_result_store_accepts_the_brokers_url_options(redis_test_url: str) -> None:
    from taskmill.results import open_store

    with closing(open_store(redis_test_url + "&dead_retention=60")) as store:
        store.put("k", b"v", 1000)
        assert store.get("k") == b"v"
