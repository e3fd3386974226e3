"""Logs never contain arguments by default, on every path (done, retried, failed, rejected); --log-args truncates."""

from __future__ import annotations

import logging
import random
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from harness import Workers, new_key, totals
from ledger import ENV as LEDGER_ENV
from ledger import Ledger

from taskmill import App, Message, Worker
from taskmill.brokers import Record

PAYLOAD_CHARS = 100_000
SLICE = 64


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages with big, recognisable arguments, and what should become of them."""

    payloads: list[str]
    failing_keys: set[str]

    def slices(self) -> list[str]:
        """Two 64-character slices of every payload: its start, and one at a random offset."""
        starts = [random.randrange(PAYLOAD_CHARS - SLICE) for _ in self.payloads]
        return [
            piece
            for payload, start in zip(self.payloads, starts, strict=True)
            for piece in (payload[:SLICE], payload[start : start + SLICE])
        ]


def big_payload() -> str:
    token = secrets.token_hex(16)
    return (f"<{token}>" * (PAYLOAD_CHARS // len(token) + 1))[:PAYLOAD_CHARS]


def mode_of(index: int) -> str:
    if index % 50 == 7:
        return "bad"
    if index % 10 == 3:
        return "flaky"
    return "ok"


def send_digests(ledger: Ledger, producer: App, count: int) -> Batch:
    """``count`` digest messages (every 10th fails once, every 50th always) plus two the worker must reject."""
    digest = producer.get_actor("digest")
    payloads: list[str] = []
    messages: list[Message] = []
    failing: set[str] = set()
    for index in range(count):
        key, payload, mode = new_key(), big_payload(), mode_of(index)
        payloads.append(payload)
        messages.append(digest.message_with_options(args=(key, payload, mode), message_id=key))
        if mode == "bad":
            failing.add(key)
    ledger.enqueue(producer, messages, batch=100)
    rejected = [Message(actor="no_such_actor", args=(big_payload(),)), Message(actor="digest", args=(big_payload(),))]
    # raw records: the producer itself refuses bad arguments, and a producer in another language might not
    producer.broker.publish([Record(m.id, m.queue, m.encode(), m.priority) for m in rejected])
    payloads.extend(str(m.args[0]) for m in rejected)
    return Batch(payloads, failing)


def assert_outcome(ledger: Ledger, producer: App, batch: Batch) -> None:
    reasons = sorted(d.reason for d in producer.broker.dead_letters(limit=1000))
    assert reasons == sorted(["failed"] * len(batch.failing_keys) + ["unknown_actor", "bad_arguments"])
    report = ledger.check(dead_letter_ids=batch.failing_keys)
    assert (report.lost, report.unexpected) == (frozenset(), frozenset()), report.summary()
    counts = totals(producer)
    assert (counts.ready, counts.delayed, counts.in_flight) == (0, 0, 0)


def assert_every_path_logged(text: str) -> None:
    for fragment in (
        "done in",
        "failed with RuntimeError: transient failure, try again; retry in",
        "failed for good with ValueError: digest rejects this kind of input",
        "Traceback (most recent call last)",
        "dead-lettered: unknown_actor",
        "dead-lettered: bad_arguments",
    ):
        assert fragment in text


def leaked(text: str, slices: Sequence[str]) -> list[str]:
    return [piece for piece in slices if piece in text]


@pytest.mark.slow
def test_worker_logs_never_contain_arguments_even_at_debug_and_on_errors(
    workers: Workers, ledger: Ledger, producer: App
) -> None:
    batch = send_digests(ledger, producer, 1000)
    worker = workers.worker("--burst", processes=2, threads=4, log_level="DEBUG")
    assert worker.wait(90) == 0, worker.output()[-3000:]

    text = worker.output()
    assert_every_path_logged(text)
    assert leaked(text, batch.slices()) == []
    assert_outcome(ledger, producer, batch)


@pytest.mark.slow
def test_log_args_shows_arguments_truncated(workers: Workers, ledger: Ledger, producer: App) -> None:
    batch = send_digests(ledger, producer, 20)
    worker = workers.worker("--burst", "--log-args", threads=4)
    assert worker.wait(60) == 0, worker.output()[-3000:]

    lines = worker.output().splitlines()
    assert max(len(line) for line in lines) <= 2000
    shown = [match[1] for line in lines if (match := re.search(r" args=(.+?)\.\.\.", line))]
    assert shown
    assert max(len(args) for args in shown) <= 200
    assert all(any(payload[:SLICE] in args for args in shown) for payload in batch.payloads[:20])
    assert_outcome(ledger, producer, batch)


def test_in_process_worker_logs_no_arguments_at_debug(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, ledger: Ledger, producer: App
) -> None:
    monkeypatch.setenv(LEDGER_ENV, str(ledger.path))
    caplog.set_level(logging.DEBUG)
    batch = send_digests(ledger, producer, 200)

    worker = Worker(producer, threads=4, burst=True)
    worker.start()
    assert worker.wait_stopped(60)

    text = caplog.text
    assert_every_path_logged(text)
    assert leaked(text, batch.slices()) == []
    assert leaked("\n".join(r.getMessage() for r in caplog.records), batch.slices()) == []
    assert_outcome(ledger, producer, batch)
