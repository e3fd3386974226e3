"""App settings, the actor registry and the producer's checks before any I/O."""

from __future__ import annotations

import pytest

import taskmill
from taskmill import App, ArgumentsError, ConfigurationError, EncodeError, PayloadTooLarge
from taskmill.app import DEFAULT_BROKER_URL, Settings


def test_arguments_beat_environment_beat_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMILL_LEASE_SECONDS", "7.5")
    monkeypatch.setenv("TASKMILL_MAX_PAYLOAD_BYTES", "1000")
    monkeypatch.setenv("TASKMILL_LOG_ARGS", "yes")
    app = App("memory://", max_payload_bytes=2000)
    assert app.settings.lease_seconds == 7.5
    assert app.settings.max_payload_bytes == 2000
    assert app.settings.log_args is True
    assert app.settings.grace_seconds == Settings().grace_seconds


def test_broker_url_comes_from_the_environment_else_the_sqlite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKMILL_BROKER_URL", raising=False)
    assert App().settings.broker_url == DEFAULT_BROKER_URL == "sqlite:///taskmill.db"
    monkeypatch.setenv("TASKMILL_BROKER_URL", "memory://")
    assert App().settings.broker_url == "memory://"


@pytest.mark.parametrize(("name", "raw"), [("LEASE_SECONDS", "soon"), ("LOG_ARGS", "maybe"), ("MAX_DELIVERIES", "0")])
def test_bad_environment_values_raise_configuration_error(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(f"TASKMILL_{name}", raw)
    with pytest.raises(ConfigurationError):
        App("memory://")


def test_unknown_broker_scheme_names_the_supported_ones() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"supported schemes: amqp://, amqps://, memory://, postgres://, postgresql://, redis://, rediss://, sqlite://",
    ):
        _ = App("kafka://localhost").broker


def test_creating_an_app_does_no_io(tmp_path: object) -> None:
    App("sqlite:////nonexistent-dir/never/created.db")


def test_oversized_payload_is_refused_before_any_io() -> None:
    app = App("memory://", max_payload_bytes=1024)

    @app.actor
    def echo(text: str) -> str:
        return text

    with pytest.raises(PayloadTooLarge, match="over the 1024-byte limit"):
        echo.send("x" * 2000)
    assert app.broker.stats() == []


def test_a_batch_with_one_bad_message_sends_nothing() -> None:
    app = App("memory://")

    @app.actor
    def echo(value: object) -> object:
        return value

    with pytest.raises(EncodeError):
        app.enqueue([echo.message(1), echo.message(object())])
    assert app.broker.stats() == []


def test_bad_signature_is_refused_at_send() -> None:
    app = App("memory://")

    @app.actor
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(ArgumentsError, match="missing a required argument: 'b'"):
        add.send(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        add.send(1, 2, 3)  # type: ignore[call-arg]


def test_inline_call_runs_the_function() -> None:
    app = App("memory://")

    @app.actor
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    assert app.broker.stats() == []


def test_eager_mode_runs_at_send_and_raises_actor_errors() -> None:
    app = App("memory://?eager=1")
    calls: list[int] = []

    @app.actor
    def record(n: int) -> None:
        if n < 0:
            raise ValueError("negative")
        calls.append(n)

    @app.actor
    async def record_async(n: int) -> None:
        calls.append(n)

    record.send(1)
    record_async.send(2)
    assert calls == [1, 2]
    with pytest.raises(ValueError, match="negative"):
        record.send(-1)


def test_two_functions_with_one_name_are_refused() -> None:
    app = App("memory://")

    @app.actor(name="job")
    def first() -> None: ...

    with pytest.raises(ConfigurationError, match="two actors are named 'job'"):

        @app.actor(name="job")
        def second() -> None: ...


def test_message_with_options_carries_the_actor_defaults() -> None:
    app = App("memory://")

    @app.actor(queue="images", priority=5)
    def ingest(alert_id: int) -> None: ...

    message = ingest.message(7)
    assert (message.queue, message.priority, message.args) == ("images", 5, (7,))
    override = ingest.message_with_options(args=(7,), priority=9, queue="urgent", delay=2)
    assert (override.queue, override.priority, override.delay_ms) == ("urgent", 9, 2000)


def test_module_level_actor_uses_the_default_app() -> None:
    @taskmill.actor
    def default_app_actor() -> None: ...

    @taskmill.actor(queue="other")
    def default_app_actor_with_options() -> None: ...

    assert taskmill.default_app().actors["default_app_actor"] is default_app_actor
    assert default_app_actor_with_options.options.queue == "other"


def test_huge_payloads_are_refused_without_encoding_them() -> None:
    app = App("memory://")

    @app.actor
    def echo(text: str) -> str:
        return text

    for size in (256 * 1024 + 1, 16 * 1024 * 1024):
        with pytest.raises(PayloadTooLarge):
            echo.send("x" * size)
    with pytest.raises(PayloadTooLarge, match="at least"):
        echo.send("é" * (64 * 1024 * 1024))
    assert app.broker.stats() == []


@pytest.mark.parametrize(("name", "raw"), [("LEASE_SECONDS", "nan"), ("GRACE_SECONDS", "-1"), ("LEASE_SECONDS", "inf")])
def test_non_finite_or_negative_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(f"TASKMILL_{name}", raw)
    with pytest.raises(ConfigurationError):
        App("memory://")


@pytest.mark.parametrize("bad", ["", 42, "x" * 201])
def test_bad_message_ids_are_refused_at_send(bad: object) -> None:
    from taskmill import InvalidOptionError

    app = App("memory://")

    @app.actor
    def job() -> None: ...

    with pytest.raises(InvalidOptionError, match="message_id"):
        job.send_with_options(message_id=bad)  # type: ignore[arg-type]


def test_sending_a_queued_id_again_is_a_no_op() -> None:
    app = App("memory://")

    @app.actor
    def job() -> None: ...

    job.send_with_options(message_id="once")
    job.send_with_options(message_id="once")
    assert app.broker.stats()[0].ready == 1


def test_eager_async_actor_sent_from_async_code() -> None:
    import asyncio

    app = App("memory://?eager=1")
    seen: list[int] = []

    @app.actor
    async def record(n: int) -> None:
        seen.append(n)

    async def handler() -> None:
        record.send(5)

    asyncio.run(handler())
    assert seen == [5]
