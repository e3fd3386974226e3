"""What a stored result looks like: a small JSON record under a key derived from the message id.

``{"ok": true, "value": <the actor's return value>}`` or
``{"ok": false, "error": {"type": "...", "message": "...", "traceback": "..."}}``.
"""

from __future__ import annotations

from typing import Any

from taskmill import encoding
from taskmill.errors import DecodeError, TaskFailed

__all__ = ["failure_record", "read_record", "result_key", "success_record"]


def result_key(message_id: str) -> str:
    """The store key of a message's result."""
    return f"taskmill:result:{message_id}"


def success_record(value: Any) -> bytes:
    """Encode a return value (the worker has checked that JSON carries it exactly)."""
    return encoding.dumps({"ok": True, "value": value})


def failure_record(error_type: str, error_message: str, traceback: str) -> bytes:
    """Encode a failure as text only."""
    return encoding.dumps(
        {"ok": False, "error": {"type": error_type, "message": error_message, "traceback": traceback}}
    )


def read_record(message_id: str, data: bytes) -> Any:
    """The stored value, or raise TaskFailed with the remote error's type name, message and traceback."""
    try:
        record = encoding.loads(data)
        if record["ok"] is True:
            return record["value"]
        error = record["error"]
        failed = TaskFailed(message_id, str(error["type"]), str(error["message"]), str(error.get("traceback", "")))
    except (DecodeError, KeyError, TypeError) as exc:
        raise TaskFailed(message_id, "DecodeError", f"stored result is unreadable: {exc}") from None
    raise failed
