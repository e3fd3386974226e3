"""The JSON codec: strict, so that what is accepted at send() round-trips exactly in the worker.

orjson is used when it is installed; the standard library otherwise. Both paths accept the same
values: None, bool, 64-bit int, finite float, str (valid Unicode), list/tuple (tuples arrive as
lists) and dict with str keys, nested at most ``MAX_DEPTH`` deep.
"""

from __future__ import annotations

import json
import math
from types import ModuleType
from typing import Any

from taskmill.errors import DecodeError, EncodeError, PayloadTooLarge

__all__ = ["MAX_DEPTH", "dumps", "loads", "validate"]

MAX_DEPTH = 64
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1

_orjson: ModuleType | None
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised when orjson is absent
    _orjson = None


def validate(value: Any, max_bytes: int | None = None) -> None:
    """Raise EncodeError unless ``value`` survives a JSON round trip exactly.

    With ``max_bytes``, raise PayloadTooLarge as soon as the text seen so far (a lower bound of the
    encoded size) exceeds it, so an oversized payload is refused before it is copied or encoded.
    """
    seen = 0

    def check(item: Any, depth: int) -> None:
        nonlocal seen
        if depth > MAX_DEPTH:
            raise EncodeError(f"arguments nested deeper than {MAX_DEPTH} levels")
        kind = type(item)
        if kind is list or kind is tuple:
            elements: Any = item
        elif kind is dict:
            for key in item:
                if type(key) is not str:
                    raise EncodeError(f"dict key {key!r} is not a str; JSON objects have str keys")
                seen += len(key)
                if not key.isascii():
                    _check_text(key)
            elements = item.values()
        else:
            elements = (item,)
            depth -= 1  # a scalar at the top: checked below as if it were an element
        if depth >= MAX_DEPTH and elements:
            raise EncodeError(f"arguments nested deeper than {MAX_DEPTH} levels")
        for element in elements:  # scalars inline: one function call per container, not per value
            kind = type(element)
            if kind is str:
                seen += len(element)
                if not element.isascii():
                    _check_text(element)
            elif kind is int:
                if not _INT_MIN <= element <= _INT_MAX:
                    raise EncodeError("integer outside the signed 64-bit range cannot be sent")
            elif element is None or kind is bool:
                continue
            elif kind is float:
                if not math.isfinite(element):
                    raise EncodeError(f"{element!r} is not valid JSON")
            elif kind is list or kind is tuple or kind is dict:
                check(element, depth + 1)
                continue
            else:
                raise EncodeError(f"{kind.__name__} is not JSON-serializable; send plain data instead")
            if max_bytes is not None and seen > max_bytes:
                raise PayloadTooLarge(seen, max_bytes, at_least=True)
        if max_bytes is not None and seen > max_bytes:
            raise PayloadTooLarge(seen, max_bytes, at_least=True)

    check(value, 0)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodeError("string contains a lone surrogate, which is not valid Unicode") from exc


def dumps(value: Any) -> bytes:
    """Encode ``value`` (already validated) as compact UTF-8 JSON."""
    try:
        if _orjson is not None:
            encoded: bytes = _orjson.dumps(value)
            return encoded
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError(str(exc)) from exc


def loads(data: bytes | str) -> Any:
    """Decode JSON, raising DecodeError on anything malformed."""
    try:
        if _orjson is not None:
            return _orjson.loads(data)
        return json.loads(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from exc
