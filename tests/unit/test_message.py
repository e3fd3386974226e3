"""The v1 envelope: what producers write and what workers accept."""

from __future__ import annotations

import json

import pytest

from taskmill.errors import DecodeError
from taskmill.message import ENVELOPE_VERSION, Message


def test_envelope_round_trips() -> None:
    message = Message(actor="add", args=(1, "two"), kwargs={"x": [3]}, queue="q", priority=7, delay_ms=500)
    assert Message.decode(message.encode()) == message


def test_envelope_fields_are_documented_names() -> None:
    envelope = json.loads(Message(actor="add", args=(1,), id="abc", created_ms=5).encode())
    assert envelope == {
        "v": ENVELOPE_VERSION, "id": "abc", "actor": "add", "queue": "default", "args": [1], "kwargs": {},
        "priority": 0, "created_ms": 5,
    }  # fmt: skip


def test_minimal_envelope_from_another_language_decodes() -> None:
    message = Message.decode(b'{"v":1,"id":"m1","actor":"add","queue":"default"}')
    assert (message.id, message.actor, message.args, dict(message.kwargs), message.priority) == (
        "m1", "add", (), {}, 0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[]", "not a JSON object"),
        (b'{"v":2,"id":"m","actor":"a","queue":"q"}', "unsupported envelope version 2"),
        (b'{"id":"m","actor":"a","queue":"q"}', "unsupported envelope version None"),
        (b'{"v":1,"actor":"a","queue":"q"}', "missing the required field 'id'"),
        (b'{"v":1,"id":"m","actor":"a","queue":"q","args":{}}', "'args' must be list"),
        (b'{"v":1,"id":"m","actor":"a","queue":"q","priority":"9"}', "'priority' must be int"),
        (b'{"v":1,"id":"","actor":"a","queue":"q"}', "empty id"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_invalid_envelopes_raise_decode_error(body: bytes, words: str) -> None:
    with pytest.raises(DecodeError, match=words):
        Message.decode(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"v":1,"id":"m","actor":"a","queue":"q","priority":77}',
        b'{"v":1,"id":"m","actor":"a","queue":"q","priority":-1}',
        b'{"v":1,"id":"m","actor":"a","queue":""}',
    ],
)
def test_out_of_range_envelope_values_raise_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        Message.decode(body)
