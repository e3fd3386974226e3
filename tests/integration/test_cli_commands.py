"""The operator's commands against a real SQLite file: status, send, purge, dead list/retry/purge, and errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import Workers, new_key, sqlite_url, totals
from ledger import Ledger

from taskmill import App, Message
from taskmill.brokers import Failure

PRIVATE_ARG = "an-argument-dead-list-must-not-print"


def lines_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout.splitlines()


def bury(app: App, queue: str, reason: str, *, error_type: str = "", error_message: str = "") -> str:
    """Publish a message to ``queue`` and dead-letter it the way a worker would; returns its id."""
    message = app.get_actor("record").message_with_options(args=(PRIVATE_ARG,), queue=queue)
    app.enqueue([message])
    (delivery,) = app.broker.fetch([queue], 1, 60_000)
    assert delivery.id == message.id
    traceback = f"Traceback (most recent call last):\n{error_type}: {error_message}" if error_type else ""
    app.broker.dead_letter(delivery, Failure(reason, error_type, error_message, traceback))
    return message.id


def send_records(app: App, count: int, *, queue: str = "default", delay: float | None = None) -> list[Message]:
    record = app.get_actor("record")
    return app.enqueue([record.message_with_options(args=(new_key(),), queue=queue, delay=delay) for _ in range(count)])


def test_status_counts_ready_delayed_in_flight_and_dead_per_queue(
    workers: Workers, producer: App, broker_path: Path
) -> None:
    bury(producer, "poison", "delivery_limit")
    send_records(producer, 3)
    send_records(producer, 2, delay=600)
    send_records(producer, 2, queue="poison")
    producer.broker.fetch(["poison"], 1, 60_000)

    output = lines_of(workers.run("status"))
    assert output[0] == f"broker: sqlite:///{broker_path.resolve()}"
    assert output[1].split() == ["queue", "ready", "delayed", "in", "flight", "dead"]
    assert [line.split() for line in output[2:]] == [["default", "3", "2", "0", "0"], ["poison", "1", "0", "1", "1"]]


def test_status_reads_the_broker_option_before_the_environment(workers: Workers, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    output = lines_of(workers.run("status", "--broker", sqlite_url(other)))
    assert output == [f"broker: sqlite:///{other.resolve()}", output[1], "(no queues yet)"]


def test_send_enqueues_a_message_that_a_worker_runs(workers: Workers, producer: App, ledger: Ledger) -> None:
    key = new_key()
    (message_id,) = lines_of(workers.run("send", "ledger_app:record", key, "--priority", "7"))

    (delivery,) = producer.broker.fetch(["default"], 10, 60_000)
    message = Message.decode(delivery.body)
    assert (message.id, message.actor, message.args, message.priority) == (message_id, "record", (key,), 7)
    producer.broker.release([delivery])

    assert workers.worker("--burst").wait(30) == 0
    assert [e.id for e in ledger.executions()] == [key]


def test_send_parses_json_arguments_and_keyword_arguments(workers: Workers, producer: App) -> None:
    lines_of(workers.run("send", "ledger_app:digest", "k", "--kwarg", 'payload="[1, 2]"', "--kwarg", "mode=ok"))
    lines_of(workers.run("send", "ledger_app:digest", "12", "[1, 2]", "plain text", "--queue", "elsewhere"))

    (first,) = producer.broker.fetch(["default"], 10, 60_000)
    assert (Message.decode(first.body).args, dict(Message.decode(first.body).kwargs)) == (
        ("k",),
        {"payload": "[1, 2]", "mode": "ok"},
    )
    (second,) = producer.broker.fetch(["elsewhere"], 10, 60_000)
    assert Message.decode(second.body).args == (12, [1, 2], "plain text")


def test_purge_deletes_ready_and_delayed_messages_but_not_leased_ones(workers: Workers, producer: App) -> None:
    send_records(producer, 3)
    send_records(producer, 2, delay=600)
    send_records(producer, 1, queue="poison")
    (leased,) = producer.broker.fetch(["default"], 1, 60_000)

    assert lines_of(workers.run("purge", "default")) == ["purged 4 message(s)"]
    counts = {q.queue: (q.ready, q.delayed, q.in_flight) for q in producer.broker.stats()}
    assert counts == {"default": (0, 0, 1), "poison": (1, 0, 0)}
    producer.broker.ack_one(leased)


def test_dead_list_shows_reasons_and_errors_but_no_arguments(workers: Workers, producer: App) -> None:
    failed = bury(producer, "default", "failed", error_type="ValueError", error_message="bad input")
    limited = bury(producer, "poison", "delivery_limit", error_message="lease expired too often")

    output = lines_of(workers.run("dead", "list"))
    assert [line.split("  ") for line in output] == [
        [limited, "queue=poison", "reason=delivery_limit", "deliveries=1", "lease expired too often"],
        [failed, "queue=default", "reason=failed", "deliveries=1", "ValueError: bad input"],
    ]
    assert lines_of(workers.run("dead", "list", "--queue", "default"))[0].startswith(failed)
    assert len(lines_of(workers.run("dead", "list", "--limit", "1", "--offset", "1"))) == 1
    with_traceback = workers.run("dead", "list", "--traceback").stdout
    assert "Traceback (most recent call last):\nValueError: bad input" in with_traceback
    assert PRIVATE_ARG not in with_traceback


def test_dead_retry_by_id_and_by_queue_requeues_with_a_fresh_delivery_count(workers: Workers, producer: App) -> None:
    failed = bury(producer, "default", "failed", error_type="ValueError", error_message="bad input")
    poisoned = {bury(producer, "poison", "delivery_limit") for _ in range(2)}

    assert lines_of(workers.run("dead", "retry", "--id", failed)) == ["retried 1 message(s)"]
    assert lines_of(workers.run("dead", "retry", "--id", failed)) == ["retried 0 message(s)"]
    (again,) = producer.broker.fetch(["default"], 10, 60_000)
    assert (again.id, again.deliveries) == (failed, 1)
    assert {d.id for d in producer.broker.dead_letters()} == poisoned

    assert lines_of(workers.run("dead", "retry", "--queue", "poison")) == ["retried 2 message(s)"]
    assert producer.broker.dead_letters() == []
    assert {d.id for d in producer.broker.fetch(["poison"], 10, 60_000)} == poisoned


def test_dead_purge_all_deletes_every_dead_message(workers: Workers, producer: App) -> None:
    bury(producer, "default", "failed", error_type="ValueError", error_message="bad input")
    bury(producer, "poison", "delivery_limit")
    kept = bury(producer, "other", "decode_error")

    assert lines_of(workers.run("dead", "purge", "--queue", "poison")) == ["purged 1 message(s)"]
    assert lines_of(workers.run("dead", "purge", "--id", kept)) == ["purged 1 message(s)"]
    bury(producer, "poison", "delivery_limit")
    assert lines_of(workers.run("dead", "purge", "--all")) == ["purged 2 message(s)"]
    assert producer.broker.dead_letters() == []
    assert totals(producer).dead == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(["send", "no_such_module:record", "x"], "no_such_module", id="unknown-module"),
        pytest.param(["send", "ledger_app:no_such_actor", "x"], "no_such_actor", id="unknown-actor"),
        pytest.param(["send", "ledger_app"], "MODULE:ACTOR", id="send-without-actor"),
        pytest.param(["send", "ledger_app:record"], "key", id="send-missing-argument"),
        pytest.param(["worker", "no_such_module", "--burst"], "no_such_module", id="worker-unknown-module"),
        pytest.param(["dead", "retry"], "--all", id="dead-retry-without-selection"),
        pytest.param(["dead", "purge"], "--all", id="dead-purge-without-selection"),
        pytest.param(["dead", "retry", "--all", "--queue", "q"], "--all", id="dead-retry-all-and-queue"),
        pytest.param(["status", "--app", "ledger_app", "--broker", "memory://"], "not both", id="app-and-broker"),
        pytest.param(["status", "--broker", "nosuch://x"], "nosuch", id="unknown-broker-scheme"),
    ],
)
def test_errors_are_one_line_on_stderr_without_a_traceback(workers: Workers, args: list[str], says: str) -> None:
    result = workers.run(*args)
    assert result.returncode != 0
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert says in line
