"""App: settings, the broker built from its URL, and the registry of actors."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from taskmill.brokers import Broker, Record, open_broker
from taskmill.brokers.base import Transaction
from taskmill.errors import ActorNotFound, ConfigurationError, ResultMissing, ResultTimeout
from taskmill.message import Message
from taskmill.middleware import Middleware
from taskmill.middleware.base import overriding
from taskmill.middleware.results import Results
from taskmill.options import ActorOptions
from taskmill.results import Store, default_store_url, open_store
from taskmill.results.base import FOREVER
from taskmill.results.records import read_record, result_key
from taskmill.workflows.middleware import Workflows

if TYPE_CHECKING:
    from taskmill.actor import Actor

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["App", "Settings"]

DEFAULT_BROKER_URL = "sqlite:///taskmill.db"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every App setting; each has an environment variable TASKMILL_<NAME upper-cased>."""

    broker_url: str = DEFAULT_BROKER_URL
    lease_seconds: float = 30.0  # a worker that stops heartbeating loses its messages after this
    max_payload_bytes: int = 256 * 1024
    max_deliveries: int = 25  # crash guard: a message whose lease expires this often is dead-lettered
    grace_seconds: float = 30.0  # how long a stopping worker lets in-flight work finish
    log_args: bool = False  # include (truncated) arguments in worker log lines
    log_args_max: int = 200  # characters of arguments logged when log_args is on
    results_url: str = ""  # result store; empty means the broker's own URL when it keeps results
    result_ttl_seconds: float = 86400.0  # how long results (and group bookkeeping) are kept
    store_results: bool = False  # the default of the actor option of the same name

    @classmethod
    def resolve(cls, given: dict[str, Any], environ: os._Environ[str] | dict[str, str] = os.environ) -> Settings:
        """Arguments first, then TASKMILL_* environment variables, then defaults."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if given.get(spec.name) is not None:
                values[spec.name] = given[spec.name]
                continue
            raw = environ.get(f"TASKMILL_{spec.name.upper()}")
            if raw is not None and raw != "":
                values[spec.name] = _parse(spec.name, raw, type(spec.default))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise ConfigurationError for values no worker could run with."""
        for name in ("lease_seconds", "max_payload_bytes", "max_deliveries", "log_args_max", "result_ttl_seconds"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigurationError(f"{name} must be a positive number, not {value!r}")
        if not 0 <= self.grace_seconds < math.inf:
            raise ConfigurationError(f"grace_seconds must be >= 0, not {self.grace_seconds!r}")


def _parse(name: str, raw: str, kind: type) -> Any:
    problem = ConfigurationError(f"TASKMILL_{name.upper()}={raw!r} is not a valid {kind.__name__}")
    if kind is bool:
        if raw.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
            raise problem
        return raw.lower() in {"1", "true", "yes", "on"}
    try:
        return kind(raw)
    except ValueError:
        raise problem from None


class App:
    """A taskmill application: one broker, its settings and its actors."""

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        broker: Broker | None = None,
        results: str | Store | None = None,
        middleware: Sequence[Middleware] = (),
        lease_seconds: float | None = None,
        max_payload_bytes: int | None = None,
        max_deliveries: int | None = None,
        grace_seconds: float | None = None,
        log_args: bool | None = None,
        log_args_max: int | None = None,
        result_ttl_seconds: float | None = None,
        store_results: bool | None = None,
    ) -> None:
        given = {k: v for k, v in locals().items() if k not in {"self", "broker", "results", "middleware"}}
        given["results_url"] = results if isinstance(results, str) else None
        self.settings = Settings.resolve(given)
        # Results stores before Workflows reads it: after-hooks run in reverse order.
        self.middleware: list[Middleware] = [Workflows(), Results(), *middleware]
        self.actors: dict[str, Actor[Any, Any]] = {}
        self._broker = broker
        self._store = results if isinstance(results, Store) else None
        self._open_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"App({self.settings.broker_url!r}, actors={sorted(self.actors)})"

    @property
    def broker(self) -> Broker:
        """The broker, opened on first use (so importing a module with an App does no I/O)."""
        if self._broker is None:
            with self._open_lock:
                if self._broker is None:
                    self._broker = open_broker(self.settings.broker_url, max_deliveries=self.settings.max_deliveries)
        return self._broker

    @property
    def store(self) -> Store:
        """The result store, opened on first use; ConfigurationError when there is none."""
        if self._store is None:
            with self._open_lock:
                if self._store is None:
                    broker_url = self._broker.url if self._broker is not None else self.settings.broker_url
                    url = self.settings.results_url or default_store_url(broker_url)
                    if not url:
                        raise ConfigurationError(
                            f"{self.settings.broker_url.split(':')[0]}:// keeps no results; "
                            "pass App(..., results=URL) or set TASKMILL_RESULTS_URL"
                        )
                    self._store = open_store(url)
        return self._store

    def get_result(self, message: Message | str, timeout: float | None = None) -> Any:
        """The result of a message (or message id), waiting up to ``timeout`` s (None: no limit; 0: no wait).

        Raises ResultTimeout when it does not come in time, ResultMissing when it is not there and
        ``timeout`` is 0 (or at once when the actor does not store results), and TaskFailed when
        the task failed for good.
        """
        if isinstance(message, Message):
            actor = self.actors.get(message.actor)
            if actor is not None and not self.stores_results(actor.options, message):
                raise ResultMissing(f"actor {actor.name!r} does not store results; give it store_results=True")
        message_id = message.id if isinstance(message, Message) else message
        key = result_key(message_id)
        if timeout == 0:
            data = self.store.get(key)
            if data is None:
                raise ResultMissing(f"no result stored for message {message_id} (not done yet, not stored, or expired)")
        else:
            data = self.store.wait(key, FOREVER if timeout is None else timeout)
            if data is None:
                raise ResultTimeout(f"no result for message {message_id} within {timeout} s")
        return read_record(message_id, data)

    def stores_results(self, options: ActorOptions, message: Message) -> bool:
        """Whether a message's result is kept: the actor option, else the app default; workflows force it."""
        if message.options.get("store_result"):
            return True
        return self.settings.store_results if options.store_results is None else options.store_results

    def transaction(self, connection: Any) -> Transaction:
        """Inside this block, messages are written through ``connection`` (the application's own database
        connection, in its open transaction): they exist only if that transaction commits. ``with`` it for a
        psycopg Connection; ``async with`` it for a psycopg AsyncConnection (sends are checked at once and
        written, awaited, when the block ends without an error). ConfigurationError for a broker that cannot
        join (only postgresql:// can) or a connection of the wrong kind."""
        return self.broker.transaction(connection)

    def close(self) -> None:
        """Close the broker's and the result store's connections."""
        if self._broker is not None:
            self._broker.close()
        if self._store is not None:
            self._store.close()

    # -- actors --------------------------------------------------------------------------------
    @overload
    def actor(self, fn: Callable[P, R], /) -> Actor[P, R]: ...

    @overload
    def actor(
        self, fn: None = None, /, *, name: str | None = None, **options: Any
    ) -> Callable[[Callable[P, R]], Actor[P, R]]: ...

    def actor(
        self, fn: Callable[P, R] | None = None, /, *, name: str | None = None, **options: Any
    ) -> Actor[P, R] | Callable[[Callable[P, R]], Actor[P, R]]:
        """Make a function an actor, bare (``@app.actor``) or with options (``@app.actor(queue=...)``)."""
        from taskmill.actor import Actor  # actor.py imports app for typing only; this breaks the cycle

        actor_options = ActorOptions.build(options, self.declared_options())

        def decorate(func: Callable[P, R]) -> Actor[P, R]:
            actor = Actor(func, app=self, name=name or func.__name__, options=actor_options)
            existing = self.actors.get(actor.name)
            if existing is not None and existing.fn.__qualname__ != func.__qualname__:
                raise ConfigurationError(f"two actors are named {actor.name!r}; pass name=... to one")
            self.actors[actor.name] = actor
            return actor

        return decorate(fn) if fn is not None else decorate

    def declared_options(self) -> Iterable[str]:
        """Option names the app's middleware accept beyond the built-in ones."""
        return {name for mw in self.middleware for name in mw.options}

    def get_actor(self, name: str) -> Actor[Any, Any]:
        """The actor registered under ``name``; ActorNotFound otherwise."""
        try:
            return self.actors[name]
        except KeyError:
            raise ActorNotFound(
                f"no actor named {name!r} (known: {', '.join(sorted(self.actors)) or 'none'})"
            ) from None

    # -- producing -----------------------------------------------------------------------------
    def enqueue(self, messages: Sequence[Message]) -> list[Message]:
        """Encode, size-check and publish messages in one broker call; nothing is sent if one is bad."""
        prepared: list[Message] = []
        records: list[Record] = []
        limit = self.settings.max_payload_bytes
        before = overriding(self.middleware, "before_enqueue")
        for original in messages:
            message = original
            actor = self.actors.get(message.actor)
            if actor is not None:
                actor.check_arguments(message.args, message.kwargs)
                if self.stores_results(actor.options, message) and not message.options.get("store_result"):
                    # the producer's choice travels, so even a worker without this actor stores the outcome
                    message = dataclasses.replace(message, options={**message.options, "store_result": True})
            for hook in before:
                message = hook(self, message)
            body = message.encode(limit)
            prepared.append(message if message.app is self else dataclasses.replace(message, app=self))
            records.append(Record(message.id, message.queue, body, message.priority, message.delay_ms))
        broker = self.broker
        if broker.eager:
            from taskmill.worker.executor import run_eagerly

            for record in records:
                run_eagerly(self, record.body)
        else:
            broker.publish(records)
        after = overriding(self.middleware, "after_enqueue", reverse=True)
        if after:
            for message in prepared:
                for hook in after:
                    hook(self, message)
        return prepared
