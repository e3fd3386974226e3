"""Results: keep an actor's return value (or its final failure) in the result store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskmill.middleware.base import Middleware
from taskmill.results.records import failure_record, result_key, success_record

if TYPE_CHECKING:
    from taskmill.app import App
    from taskmill.brokers.base import Failure
    from taskmill.message import Message

__all__ = ["Results"]


class Results(Middleware):
    """Stores results of actors with ``store_results`` (and workflow steps) before the message is acked."""

    def after_process(self, app: App, message: Message, *, result: Any, exception: BaseException | None) -> None:
        if exception is not None or not _wanted(app, message):
            return  # a failure is stored only when it is final, in before_dead_letter
        app.store.put(result_key(message.id), success_record(result), _ttl_ms(app))  # the worker checked it is JSON

    def before_dead_letter(self, app: App, message: Message | None, failure: Failure) -> None:
        if message is None or not _wanted(app, message):
            return
        record = failure_record(failure.error_type or failure.reason, failure.error_message, failure.traceback)
        app.store.put(result_key(message.id), record, _ttl_ms(app))


def _wanted(app: App, message: Message) -> bool:
    actor = app.actors.get(message.actor)
    if actor is None:
        return bool(message.options.get("store_result"))
    return app.stores_results(actor.options, message)


def _ttl_ms(app: App) -> int:
    return int(app.settings.result_ttl_seconds * 1000)
