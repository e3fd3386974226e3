"""Message: what travels from send() to the actor, and its versioned JSON envelope.

The envelope is documented field by field in docs/protocol.md so that other languages can
produce messages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from taskmill import encoding
from taskmill.errors import DecodeError, PayloadTooLarge, ResultMissing

__all__ = ["ENVELOPE_VERSION", "Message", "new_message_id", "now_ms"]

ENVELOPE_VERSION = 1
MAX_PRIORITY = 9  # priorities are 0..9 on every backend; higher runs first
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def new_message_id() -> str:
    """A fresh random message id (32 hex characters, 128 random bits)."""
    return os.urandom(16).hex()


def now_ms() -> int:
    """Wall-clock time in integer milliseconds, the unit every wire time uses."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Message:
    """One call of an actor: its name, arguments and routing, immutable once made."""

    actor: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    queue: str = "default"
    priority: int = 0
    delay_ms: int = 0
    id: str = field(default_factory=new_message_id)
    created_ms: int = field(default_factory=now_ms)
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    app: Any = field(default=None, compare=False, repr=False)  # the App that sent it, for result()

    def result(self, timeout: float | None = None) -> Any:
        """The actor's return value, waiting up to ``timeout`` s (None: no limit; 0: no wait).

        Raises ResultTimeout, ResultMissing or TaskFailed (see ``App.get_result``).
        """
        if self.app is None:
            raise ResultMissing(f"message {self.id} was not sent through an App; it has no result to fetch")
        return self.app.get_result(self, timeout)

    async def result_async(self, timeout: float | None = None) -> Any:
        """``result()`` for async code: waits in a thread, so the event loop keeps running."""
        import asyncio  # here, not at the top: asyncio costs ~8 MB that most processes never need

        return await asyncio.to_thread(self.result, timeout)

    def __or__(self, other: Any) -> Any:
        """``a.message() | b.message()`` builds a pipeline."""
        from taskmill.workflows.pipeline import pipeline

        return pipeline([self]) | other

    def to_envelope(self) -> dict[str, Any]:
        """The envelope as a JSON-ready dict."""
        envelope: dict[str, Any] = {
            "v": ENVELOPE_VERSION,
            "id": self.id,
            "actor": self.actor,
            "queue": self.queue,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "priority": self.priority,
            "created_ms": self.created_ms,
        }
        if self.delay_ms:
            envelope["delay_ms"] = self.delay_ms
        if self.options:
            envelope["options"] = dict(self.options)
        return envelope

    def encode(self, max_bytes: int | None = None) -> bytes:
        """Validate and encode the envelope as UTF-8 JSON, at most ``max_bytes`` long when given."""
        envelope = self.to_envelope()
        payload = (envelope["args"], envelope["kwargs"], envelope.get("options", {}))
        encoding.validate(payload, max_bytes)  # the other fields are typed by the dataclass
        body = encoding.dumps(envelope)
        if max_bytes is not None and len(body) > max_bytes:
            raise PayloadTooLarge(len(body), max_bytes)
        return body

    @classmethod
    def decode(cls, body: bytes) -> Message:
        """Parse an envelope, raising DecodeError for anything that is not a valid v1 envelope."""
        return cls.from_envelope(encoding.loads(body))

    @classmethod
    def from_envelope(cls, data: Any) -> Message:
        """Build a Message from a decoded envelope dict, raising DecodeError when it is not valid."""
        if not isinstance(data, dict):
            raise DecodeError("envelope is not a JSON object")
        version = data.get("v")
        if version != ENVELOPE_VERSION:
            raise DecodeError(f"unsupported envelope version {version!r} (expected {ENVELOPE_VERSION})")
        try:
            message = cls(
                id=_field(data, "id", str),
                actor=_field(data, "actor", str),
                queue=_field(data, "queue", str),
                args=tuple(_field(data, "args", list, [])),
                kwargs=_field(data, "kwargs", dict, {}),
                priority=_field(data, "priority", int, 0),
                delay_ms=_field(data, "delay_ms", int, 0),
                created_ms=_field(data, "created_ms", int, 0),
                options=_field(data, "options", dict, {}),
            )
        except KeyError as exc:
            raise DecodeError(f"envelope is missing the required field {exc.args[0]!r}") from None
        if not message.id or not message.actor or not message.queue:
            raise DecodeError("envelope has an empty id, actor or queue")
        if not 0 <= message.priority <= MAX_PRIORITY:
            raise DecodeError(f"envelope priority {message.priority} is outside 0..{MAX_PRIORITY}")
        return message


_MISSING: Any = object()


def _field(data: dict[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
    value = data.get(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise KeyError(name)
        return default
    if type(value) is not kind:
        raise DecodeError(f"envelope field {name!r} must be {kind.__name__}, not {type(value).__name__}")
    return value
