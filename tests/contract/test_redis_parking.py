"""The Redis broker's idle path (brokers/redis_park.py): a worker parked in ``wait`` is handed a
published message directly, leased to it, and everything a parked worker held is given back or
delivered again when it goes away."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from taskmill.brokers import Delivery, Record, open_broker
from taskmill.brokers.redis import RedisBroker

LEASE_MS = 30_000
MAX_DELIVERIES = 3


@pytest.fixture
def url(redis_test_url: str) -> str:
    return redis_test_url


@pytest.fixture
def brokers(url: str) -> Iterator[list[RedisBroker]]:
    """Brokers on one prefix, as separate worker processes would have; closed after the test."""
    made: list[RedisBroker] = []
    yield made
    for broker in made:
        broker.close()


def new(url: str, made: list[RedisBroker]) -> RedisBroker:
    broker = open_broker(url, max_deliveries=MAX_DELIVERIES)
    assert isinstance(broker, RedisBroker)
    made.append(broker)
    return broker


def record(queue: str = "default", priority: int = 0, delay_ms: int = 0) -> Record:
    return Record(uuid.uuid4().hex, queue, f"body-{uuid.uuid4().hex}".encode(), priority, delay_ms)


class Parked:
    """``broker.wait`` in a thread of its own (as a worker's fetch loop runs it), then its fetch."""

    def __init__(self, broker: RedisBroker, queues: list[str], timeout: float = 10.0) -> None:
        self.broker, self.queues, self.timeout = broker, queues, timeout
        self.returned_after: float | None = None
        self.fetched: list = []
        assert broker.fetch(queues, 8, LEASE_MS) == []  # what a worker does before it waits
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        self.broker.wait(self.queues, self.timeout)
        self.returned_after = time.monotonic() - started
        # a handed delivery comes back alone, without a round trip; the worker's next fetch gets the rest
        while batch := self.broker.fetch(self.queues, 8, LEASE_MS):
            self.fetched.extend(batch)

    def join(self) -> Parked:
        self.thread.join(15)
        assert not self.thread.is_alive()
        return self


def settle_parking(broker: RedisBroker, queues: list[str]) -> None:
    """Wait until a parked thread's registration is visible (it parks a moment after it starts)."""
    keys = broker._keys(queues[0])
    deadline = time.monotonic() + 5
    while not broker._client.call("ZCARD", keys[8]):
        assert time.monotonic() < deadline, "the worker never parked"
        time.sleep(0.005)


def test_a_message_published_to_a_parked_worker_arrives_leased_to_it(url: str, brokers: list) -> None:
    worker, producer = new(url, brokers), new(url, brokers)
    parked = Parked(worker, ["default"])
    settle_parking(worker, ["default"])
    sent = record()
    producer.publish([sent])
    (stats,) = producer.stats(["default"])
    assert (stats.ready, stats.in_flight) == (0, 1)  # leased by the publish itself, before any fetch
    parked.join()
    assert parked.returned_after is not None
    assert parked.returned_after < 5
    assert [(d.id, d.body, d.deliveries) for d in parked.fetched] == [(sent.id, sent.body, 1)]
    assert worker.ack(parked.fetched) == []
    assert producer.stats(["default"])[0].in_flight == 0


def test_the_handed_message_is_the_best_ready_one(url: str, brokers: list) -> None:
    worker, producer = new(url, brokers), new(url, brokers)
    parked = Parked(worker, ["default"])
    settle_parking(worker, ["default"])
    low, high = record(priority=1), record(priority=7)
    producer.publish([low, high])
    parked.join()
    assert [d.id for d in parked.fetched] == [high.id, low.id]  # the handed one first, then the fetched


def test_one_message_per_parked_worker_and_the_rest_stay_ready(url: str, brokers: list) -> None:
    producer = new(url, brokers)
    workers = [new(url, brokers) for _ in range(2)]
    parked = [Parked(w, ["default"]) for w in workers]
    deadline = time.monotonic() + 5
    while producer._client.call("ZCARD", producer._keys("default")[8]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    sent = [record(priority=9), record(priority=9), *(record() for _ in range(3))]
    producer.publish(sent)
    handed = [p.join().fetched[0].id for p in parked]
    assert sorted(handed) == sorted(r.id for r in sent[:2])  # one each: the two best
    got = [d.id for p in parked for d in p.fetched] + [d.id for d in producer.fetch(["default"], 8, LEASE_MS)]
    assert sorted(got) == sorted(r.id for r in sent)


def test_a_worker_parked_on_two_queues_is_handed_one_message_in_all(url: str, brokers: list) -> None:
    producer = new(url, brokers)
    keys = [*producer._keys("a"), *producer._keys("b")]
    assert producer._run("park", keys, ["park", "w1", "n0nce", LEASE_MS, 5000]) > 0  # parked on a and b, never woken
    first, second = record("a"), record("b")
    producer.publish([first])
    producer.publish([second])  # the park was used up by the first: this one stays ready
    assert [(s.ready, s.in_flight) for s in producer.stats(["a", "b"])] == [(0, 1), (1, 0)]
    (row,) = producer._run("park", keys, ["leave", "w1"])  # what its inboxes hold
    assert row[0] == 1
    assert row[1].split(b"\0")[0] == first.id.encode()


def test_a_delayed_message_wakes_a_worker_parked_past_its_due_time(url: str, brokers: list) -> None:
    worker, producer = new(url, brokers), new(url, brokers)
    parked = Parked(worker, ["default"], timeout=8.0)
    settle_parking(worker, ["default"])
    producer.publish([record(delay_ms=300)])
    parked.thread.join(5)
    assert parked.returned_after is not None
    assert parked.returned_after < 5


def test_a_release_or_retry_hands_the_message_to_a_parked_worker(url: str, brokers: list) -> None:
    holder, parked_broker = new(url, brokers), new(url, brokers)
    sent = record()
    holder.publish([sent])
    (held,) = holder.fetch(["default"], 1, LEASE_MS)
    parked = Parked(parked_broker, ["default"])
    settle_parking(parked_broker, ["default"])
    holder.release([held])
    parked.join()
    assert [(d.id, d.deliveries) for d in parked.fetched] == [(sent.id, 1)]  # a give-back is not counted
    parked_again = Parked(holder, ["default"])
    settle_parking(holder, ["default"])
    parked_broker.retry(parked.fetched[0], 0)
    parked_again.join()
    assert [(d.id, d.deliveries) for d in parked_again.fetched] == [(sent.id, 2)]


def test_closing_a_worker_gives_back_what_was_handed_to_it(url: str, brokers: list) -> None:
    worker, producer = new(url, brokers), new(url, brokers)
    assert worker.fetch(["default"], 8, LEASE_MS) == []
    waiter = threading.Thread(target=worker.wait, args=(["default"], 10.0), daemon=True)
    waiter.start()
    settle_parking(worker, ["default"])
    sent = record()
    producer.publish([sent])
    waiter.join(10)  # the wait returned with the message stashed; the worker stops before fetching it
    worker.close()
    brokers.remove(worker)
    (back,) = producer.fetch(["default"], 1, LEASE_MS)
    assert (back.id, back.deliveries) == (sent.id, 1)  # given back uncounted, at once


def test_a_message_handed_to_a_worker_that_died_parked_is_delivered_again(url: str, brokers: list) -> None:
    dead, producer = new(url, brokers), new(url, brokers)
    keys = dead._keys("default")
    assert dead._run("park", keys, ["park", "deadbeef", "n0nce", 300, 5000]) > 0  # parked, then killed
    sent = record()
    producer.publish([sent])
    assert producer.fetch(["default"], 1, LEASE_MS) == []  # leased to the dead worker
    time.sleep(0.4)  # its 300 ms lease expires
    (again,) = producer.fetch(["default"], 1, LEASE_MS)
    assert (again.id, again.deliveries) == (sent.id, 2)
    assert producer.ack([again]) == []


def test_a_handed_delivery_whose_lease_was_lost_cannot_be_acked(url: str, brokers: list) -> None:
    worker, producer = new(url, brokers), new(url, brokers)
    assert worker.fetch(["default"], 8, 200) == []  # this worker leases for 200 ms

    def publish_once_parked() -> None:
        settle_parking(worker, ["default"])
        producer.publish([record()])

    threading.Thread(target=publish_once_parked, daemon=True).start()
    worker.wait(["default"], 10.0)  # the handed delivery waits in the stash for this process's next fetch
    time.sleep(0.3)
    (stolen,) = producer.fetch(["default"], 1, LEASE_MS)  # the lease expired: fetched again
    (handed,) = worker.fetch(["default"], 8, LEASE_MS)
    assert handed.id == stolen.id
    assert handed.token != stolen.token
    assert worker.ack([handed]) == [handed]
    assert producer.ack([stolen]) == []


def test_a_worker_whose_wait_ended_is_handed_nothing(url: str, brokers: list) -> None:
    worker, producer = new(url, brokers), new(url, brokers)
    assert worker.fetch(["default"], 8, LEASE_MS) == []
    worker.wait(["default"], 0.2)  # ends by its timeout: the park ended with it
    producer.publish([record()])  # the worker might be busy now: the message must stay for anyone
    assert [(s.ready, s.in_flight) for s in producer.stats(["default"])] == [(1, 0)]


def test_a_row_drained_from_the_inbox_is_leased_afresh(url: str, brokers: list) -> None:
    worker, other = new(url, brokers), new(url, brokers)
    assert worker.fetch(["default"], 8, LEASE_MS) == []
    park_id = worker._parking._mine()[0]  # this thread's: the fetch below drains its inbox
    assert worker._run("park", worker._keys("default"), ["park", park_id, "n0nce", 300, 5000]) > 0
    sent = record()
    other.publish([sent])  # handed: leased for 300 ms, waiting in the inbox (nobody popped it)
    time.sleep(0.2)
    (drained,) = worker.fetch(["default"], 8, LEASE_MS)
    assert (drained.id, drained.deliveries) == (sent.id, 1)
    time.sleep(0.2)  # past the hand-off's 300 ms: the drain renewed the lease for the fetch's 30 s
    assert other.fetch(["default"], 8, LEASE_MS) == []
    assert worker.ack([drained]) == []


def test_stop_consuming_gives_back_what_was_handed_but_not_fetched(url: str, brokers: list) -> None:
    worker, producer = new(url, brokers), new(url, brokers)
    assert worker.fetch(["default"], 8, LEASE_MS) == []

    def publish_once_parked() -> None:
        settle_parking(worker, ["default"])
        producer.publish([sent])

    sent = record()
    threading.Thread(target=publish_once_parked, daemon=True).start()
    worker.wait(["default"], 10.0)  # returns with the message stashed
    worker.stop_consuming()  # a Worker stopping, its app (and broker) still open
    (back,) = producer.fetch(["default"], 1, LEASE_MS)
    assert (back.id, back.deliveries) == (sent.id, 1)


def test_a_park_that_cannot_be_read_hands_nothing_and_loses_nothing(url: str, brokers: list) -> None:
    producer = new(url, brokers)
    keys = producer._keys("default")
    park_key = f"{producer.prefix}:park:odd"
    producer._client.call("SET", park_key, "no lease here", "PX", 5000)
    producer._client.call("ZADD", keys[8], int(time.time() * 1000) + 5000, "odd")
    sent = record()
    producer.publish([sent])
    assert [(s.ready, s.in_flight) for s in producer.stats(["default"])] == [(1, 0)]
    (got,) = producer.fetch(["default"], 1, LEASE_MS)
    assert got.id == sent.id


def test_a_delivery_handed_to_one_thread_is_fetched_by_another(url: str, brokers: list) -> None:
    """A worker's fetch loop moves between its threads: what was handed to the thread that waited
    is taken by the next fetch, whichever thread makes it."""
    worker, producer = new(url, brokers), new(url, brokers)
    assert worker.fetch(["default"], 8, LEASE_MS) == []
    sent = record()

    def publish_once_parked() -> None:
        settle_parking(worker, ["default"])
        producer.publish([sent])

    threading.Thread(target=publish_once_parked, daemon=True).start()
    waiter = threading.Thread(target=worker.wait, args=(["default"], 10.0))
    waiter.start()
    waiter.join(15)
    (got,) = worker.fetch(["default"], 8, LEASE_MS)  # this thread never waited
    assert (got.id, got.deliveries) == (sent.id, 1)
    assert worker.ack([got]) == []


def test_a_worker_told_to_fetch_now_is_parked_no_more(url: str, brokers: list) -> None:
    """A park left behind (its BLPOP failed) ends when the worker parks again and is told to fetch:
    otherwise a publish could hand a message to a thread that no longer fetches."""
    worker, producer = new(url, brokers), new(url, brokers)
    keys = worker._keys("default")
    cid = uuid.uuid4().hex[:16]
    assert int(worker._run("park", keys, ["park", cid, "n1", LEASE_MS, 5000])) > 0  # parked; never BLPOPs
    worker._client.call("RPUSH", f"{keys[0][: -len('ready')]}inbox:{cid}", "")  # something to fetch now
    assert int(worker._run("park", keys, ["park", cid, "n2", LEASE_MS, 5000])) == -1
    assert worker._client.call("ZSCORE", keys[8], cid) is None
    producer.publish([sent := record()])
    assert [(s.ready, s.in_flight) for s in producer.stats(["default"])] == [(1, 0)]  # handed to nobody
    assert [d.id for d in producer.fetch(["default"], 8, LEASE_MS)] == [sent.id]


class ReplyDropper:
    """A TCP proxy to Redis that, once armed, discards the next reply Redis sends on any of its
    connections and closes that connection: Redis carried the command out, and its answer was lost
    on the way (a network fault, or a reply that outlived the socket's timeout)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.listener.getsockname()[1]}"))
        self.armed, self.dropped = threading.Event(), threading.Event()
        self.addresses: set[str] = set()  # of its connections to Redis, as CLIENT LIST shows them
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            self.addresses.add(f"127.0.0.1:{server.getsockname()[1]}")
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self.armed.is_set():
                    self.armed.clear()
                    self.dropped.set()
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def blocked_in(self, command: str, observer: RedisBroker) -> str | None:
        """The address of one of its connections whose last command is ``command``, as ``observer``
        sees it in CLIENT LIST (None if none is)."""
        for line in observer._client.call("CLIENT", "LIST").decode().splitlines():
            fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
            if fields.get("addr") in self.addresses and fields.get("cmd") == command:
                return fields["addr"]
        return None

    def close(self) -> None:
        self.listener.close()


def test_a_handed_message_whose_reply_was_lost_is_fetched_at_once(url: str, brokers: list) -> None:
    """Redis popped the handed row for the parked worker, but the reply never reached it: the worker
    finds the message leased to its park and takes it now, not when its lease runs out."""
    proxy = ReplyDropper(url)
    try:
        worker, producer = new(proxy.url, brokers), new(url, brokers)
        parked = Parked(worker, ["default"])
        while not proxy.blocked_in("blpop", producer):  # the next reply through the proxy is that BLPOP's
            time.sleep(0.005)
        proxy.armed.set()
        sent = record()
        producer.publish([sent])
        assert proxy.dropped.wait(5)
        parked.join()
        assert [(d.id, d.deliveries) for d in parked.fetched] == [(sent.id, 1)]
        assert worker.ack(parked.fetched) == []
        assert producer.stats(["default"])[0].in_flight == 0
    finally:
        proxy.close()


def test_recovering_a_row_still_in_the_inbox_takes_it_out(url: str, brokers: list) -> None:
    """A BLPOP can fail before it popped anything: then what was handed is still in the inbox, and
    recovering it must leave nothing there for a fetch to hand out a second time."""
    worker, producer = new(url, brokers), new(url, brokers)
    keys = worker._keys("default")
    assert worker._run("park", keys, ["park", "c1d", "n0nce", LEASE_MS, 5000, ""]) > 0
    sent = record()
    producer.publish([sent])
    index, row = worker._run("park", keys, ["recover", "c1d", "n0nce"])
    assert (int(index), bytes(row).split(b"\0")[:2]) == (1, [sent.id.encode(), b"n0nce.0"])
    assert worker._client.call("LLEN", worker._parking._inbox("default", "c1d")) == 0
    assert worker._run("park", keys, ["recover", "c1d", "n0nce"]) == [index, row]  # its reply may be lost too


def test_recovering_ends_the_park(url: str, brokers: list) -> None:
    """Its BLPOP failed, so nobody listens to its inboxes: what is sent next stays ready."""
    worker, producer = new(url, brokers), new(url, brokers)
    keys = worker._keys("default")
    assert worker._run("park", keys, ["park", "c1d", "n0nce", LEASE_MS, 5000, ""]) > 0
    assert worker._run("park", keys, ["recover", "c1d", "n0nce"]) == []
    assert producer._client.call("ZCARD", keys[8]) == 0
    producer.publish([record()])
    assert [(s.ready, s.in_flight) for s in producer.stats(["default"])] == [(1, 0)]


def test_nothing_is_recovered_for_a_park_whose_message_it_no_longer_holds(url: str, brokers: list) -> None:
    worker, producer = new(url, brokers), new(url, brokers)
    keys = worker._keys("default")
    assert worker._run("park", keys, ["park", "c1d", "n0nce", LEASE_MS, 5000, ""]) > 0
    sent = record()
    producer.publish([sent])
    handed = Delivery(sent.id, "default", sent.body, 0, 1, "n0nce.0")
    assert worker.ack([handed]) == []  # settled by its token: the worker got it after all
    assert worker._run("park", keys, ["recover", "c1d", "n0nce"]) == []
    assert producer.stats(["default"])[0].in_flight == 0


def test_a_park_forgets_what_the_one_before_it_was_handed(url: str, brokers: list) -> None:
    """Each hand-off leaves a note for recovery; the same thread's next park drops it (it was received)."""
    worker, producer = new(url, brokers), new(url, brokers)
    markers = f"{worker.prefix}:handed:*"
    seen: list[int] = []
    fetched: list = []

    def park_twice() -> None:
        assert worker.fetch(["default"], 8, LEASE_MS) == []
        worker.wait(["default"], 5)
        fetched.extend(worker.fetch(["default"], 8, LEASE_MS))
        seen.append(len(producer._client.call("KEYS", markers)))
        worker.wait(["default"], 0.05)
        seen.append(len(producer._client.call("KEYS", markers)))

    thread = threading.Thread(target=park_twice)
    thread.start()
    settle_parking(producer, ["default"])
    producer.publish([record()])
    thread.join(10)
    assert seen == [1, 0]
    assert len(fetched) == 1
    assert worker.ack(fetched) == []


def test_a_park_whose_blpop_failed_is_handed_nothing(url: str, brokers: list) -> None:
    """The worker's BLPOP failed (its connection was killed) before anything was handed: the park
    ends with the failure, so a message sent next stays ready for any worker rather than being
    handed to an inbox nobody listens to."""
    proxy = ReplyDropper(url)
    try:
        worker, producer = new(proxy.url, brokers), new(url, brokers)
        parked = Parked(worker, ["default"])
        while (address := proxy.blocked_in("blpop", producer)) is None:
            time.sleep(0.005)
        producer._client.call("CLIENT", "KILL", "ADDR", address)
        parked.join()
        assert parked.returned_after is not None
        assert parked.returned_after < 5  # the failed wait returned; it was not sent again
        producer.publish([record()])
        assert [(s.ready, s.in_flight) for s in producer.stats(["default"])] == [(1, 0)]
    finally:
        proxy.close()
