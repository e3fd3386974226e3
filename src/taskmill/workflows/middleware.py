"""Workflows middleware: after a step succeeds, enqueue the next pipeline step, the on_success
callback and, for the last member of a group, the group's callback; on a final failure, record it
for the pipeline and the group and enqueue on_failure.

Each follow-up message has a fixed id, so a step that runs twice (at-least-once) enqueues it
twice only if the first copy already finished; the group's callback fires when the set of
finished members reaches the group's size, and a marker keeps it from firing again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from taskmill.message import Message
from taskmill.middleware.base import Middleware
from taskmill.results.records import failure_record, result_key
from taskmill.workflows.pipeline import next_step

if TYPE_CHECKING:
    from taskmill.app import App
    from taskmill.brokers.base import Failure

__all__ = ["Workflows"]

log = logging.getLogger("taskmill.workflows")


class Workflows(Middleware):
    """Drives pipelines, groups and message callbacks from inside the worker."""

    def after_process(self, app: App, message: Message, *, result: Any, exception: BaseException | None) -> None:
        if exception is not None:
            return
        follow_ups = []
        step = next_step(message, result)
        if step is not None:
            follow_ups.append(step)
        callback = _callback(app, message, "on_success", result)
        if callback is not None:
            follow_ups.append(callback)
        if follow_ups:
            app.enqueue(follow_ups)
        if step is None:
            _member_finished(app, message, failed=False)

    def before_dead_letter(self, app: App, message: Message | None, failure: Failure) -> None:
        if message is None:
            return
        final = message.options.get("pipeline_result")
        if isinstance(final, str) and final != message.id:
            record = failure_record(failure.error_type or failure.reason, failure.error_message, failure.traceback)
            app.store.put(result_key(final), record, _ttl_ms(app))
        error = {
            "message_id": message.id,
            "actor": message.actor,
            "reason": failure.reason,
            "type": failure.error_type,
            "message": failure.error_message,
        }
        callback = _callback(app, message, "on_failure", error)
        if callback is not None:
            app.enqueue([callback])
        _member_finished(app, message, failed=True)


def _callback(app: App, message: Message, kind: str, argument: Any) -> Message | None:
    name = message.options.get(kind)
    actor = app.actors.get(message.actor)
    if name is None and actor is not None:
        name = getattr(actor.options, kind)
    if not name:
        return None
    target = app.actors.get(name)
    if target is None:
        log.error("message %s: %s callback %r is not a registered actor", message.id, kind, name)
        return None
    import hashlib  # here: it loads OpenSSL's libcrypto (~3.7 MB a worker process), for callbacks only

    follow_up_id = hashlib.sha256(f"{message.id}\0{kind}".encode()).hexdigest()[:32]  # fixed: re-sends dedupe
    return target.message_with_options(args=(argument,), message_id=follow_up_id)


def _member_finished(app: App, message: Message, *, failed: bool) -> None:
    info = message.options.get("group")
    if not isinstance(info, dict):
        return
    group_id, size, ttl = info["id"], info["size"], _ttl_ms(app)
    member = message.options.get("pipeline_result", message.id)
    prefix = f"taskmill:group:{group_id}"
    if failed:
        app.store.put(f"{prefix}:failed", b"1", ttl)
    _, finished = app.store.add(f"{prefix}:finished", member, ttl)
    if finished < size or app.store.get(f"{prefix}:fired") is not None:
        return
    any_failed = app.store.get(f"{prefix}:failed") is not None
    envelope = info.get("on_failure") if any_failed else info.get("on_complete")
    if envelope is not None:
        app.enqueue([Message.from_envelope(envelope)])  # its id is fixed: enqueueing it twice is a no-op
    app.store.put(f"{prefix}:fired", b"1", ttl)


def _ttl_ms(app: App) -> int:
    return int(app.settings.result_ttl_seconds * 1000)
