"""The hook protocol: subclass Middleware and override the hooks you need; all default to no-ops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from taskmill.app import App
    from taskmill.brokers.base import Failure
    from taskmill.message import Message

__all__ = ["Middleware", "overriding"]


class Middleware:
    """Hooks called by the producer and the worker. ``before_*`` run in order, ``after_*`` reversed."""

    #: Extra actor options this middleware accepts (read them from ``actor.options.extra``).
    options: ClassVar[frozenset[str]] = frozenset()

    def before_enqueue(self, app: App, message: Message) -> Message:
        """Called before a message is encoded; may return a changed copy (e.g. with options)."""
        return message

    def after_enqueue(self, app: App, message: Message) -> None:
        """Called after the broker stored the message."""

    def before_process(self, app: App, message: Message) -> None:
        """Called in the worker before the actor runs."""

    def after_process(self, app: App, message: Message, *, result: Any, exception: BaseException | None) -> None:
        """Called in the worker after the actor returned or raised (before ack or retry)."""

    def before_dead_letter(self, app: App, message: Message | None, failure: Failure) -> None:
        """Called when the worker gives up on a message, just before it is dead-lettered.

        ``message`` is None when the body could not be decoded. Runs in reverse order, like after-hooks.
        """

    def worker_started(self, app: App) -> None:
        """Called once per worker process after it started."""

    def worker_stopped(self, app: App) -> None:
        """Called once per worker process as it stops."""


_HOOKS: dict[tuple[Any, ...], tuple[tuple[Middleware, ...], tuple[Any, ...]]] = {}


def overriding(middleware: Sequence[Middleware], hook: str, *, reverse: bool = False) -> tuple[Any, ...]:
    """The bound ``hook`` methods of the middleware that override it, in order (or reversed):
    a hook left as the base class's no-op costs nothing per message."""
    key = (hook, reverse, *map(id, middleware))  # ids: middleware need not be hashable
    cached = _HOOKS.get(key)
    if cached is not None:
        return cached[1]
    kept = tuple(middleware)  # held by the entry, so no id in its key can be reused while it lives
    found = tuple(
        getattr(mw, hook)
        for mw in (reversed(kept) if reverse else kept)
        if getattr(type(mw), hook) is not getattr(Middleware, hook) or hook in getattr(mw, "__dict__", {})
    )
    if len(_HOOKS) > 256:  # middleware lists rarely change; never let the cache grow without bound
        _HOOKS.clear()
    _HOOKS[key] = (kept, found)
    return found
