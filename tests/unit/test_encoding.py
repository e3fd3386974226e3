"""What send() accepts round-trips exactly; what it cannot carry is a typed EncodeError at send time."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmill import encoding
from taskmill.errors import DecodeError, EncodeError
from taskmill.message import Message

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None)) | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children)
        | st.dictionaries(st.text() | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(json_values)
def test_accepted_values_round_trip_exactly(value: Any) -> None:
    encoding.validate(value)
    assert encoding.loads(encoding.dumps(value)) == value


@settings(max_examples=500)
@given(anything)
def test_any_value_round_trips_or_raises_encode_error(value: Any) -> None:
    message = Message(actor="a", args=(value,))
    try:
        body = message.encode()
    except EncodeError:
        return
    decoded = Message.decode(body)
    assert _normalised(decoded.args[0]) == _normalised(value)


def _normalised(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (math.nan, "not valid JSON"),
        (math.inf, "not valid JSON"),
        ("lone \ud800 surrogate", "surrogate"),
        (2**64, "64-bit"),
        ({1: "x"}, "str keys"),
        (b"bytes", "bytes is not JSON-serializable"),
        (object(), "object is not JSON-serializable"),
        ({1, 2}, "set is not JSON-serializable"),
    ],
)
def test_values_json_cannot_carry_raise_encode_error(value: Any, words: str) -> None:
    with pytest.raises(EncodeError, match=words):
        encoding.validate(value)


def test_deep_nesting_raises_encode_error() -> None:
    value: Any = []
    for _ in range(1000):
        value = [value]
    with pytest.raises(EncodeError, match="nested deeper"):
        encoding.validate(value)


def test_gadget_looking_data_stays_data() -> None:
    gadget = {"__class__": "os.system", "py/object": "subprocess.Popen", "!!python/object": "x"}
    body = Message(actor="a", args=(gadget, "cos\nsystem\n(S'touch /tmp/pwned'\ntR.")).encode()
    assert Message.decode(body).args[0] == gadget


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Message.decode(body)


def test_malformed_json_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        encoding.loads(b'{"v": 1,')
