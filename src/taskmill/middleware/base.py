"""The hook protocol: subclass Middleware and override the hooks you need; all default to no-ops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from taskmill.app import App
    from taskmill.brokers.base import Failure
    from taskmill.message import Message

__all__ = ["Middleware"]


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
