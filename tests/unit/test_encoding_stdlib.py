"""Without orjson the standard library codec accepts and refuses exactly the same values."""

from __future__ import annotations

import math

import pytest

from taskmill import encoding
from taskmill.errors import DecodeError, EncodeError
from taskmill.message import Message


@pytest.fixture(autouse=True)
def _without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "_orjson", None)


def test_round_trip_with_the_standard_library() -> None:
    message = Message(actor="a", args=("héllo ✓ \u202e", 2**63 - 1, -0.5, None, [True, {"k": []}]))
    assert Message.decode(message.encode()) == message


def test_refusals_match_the_orjson_path() -> None:
    for value in (math.nan, "\udfff", 2**63, {2: 1}):
        with pytest.raises(EncodeError):
            Message(actor="a", args=(value,)).encode()


def test_malformed_json_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        Message.decode(b"{nope")
