"""Message: immutability, and body validation that names the offending path."""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wiremsg.codec import _has_small_float
from wiremsg.errors import MessageError
from wiremsg.message import (
    MAX_DEPTH,
    MAX_KIND_LENGTH,
    Message,
    scan_body,
    validate_body,
    validate_kind,
)


def nested(depth: int) -> Any:
    """``depth`` containers, one inside the other."""
    value: Any = 0
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# -- construction and immutability --------------------------------------------------------


def test_defaults() -> None:
    msg = Message("update")
    assert msg.kind == "update"
    assert msg.body == {}
    assert msg.id == ""
    assert msg.reply_to is None


def test_fields() -> None:
    msg = Message("echo", {"x": 1}, id="ab.1", reply_to="cd.7")
    assert (msg.kind, msg.body, msg.id, msg.reply_to) == ("echo", {"x": 1}, "ab.1", "cd.7")


def test_none_body_becomes_empty_map_each_time() -> None:
    a, b = Message("k"), Message("k", None)
    assert a.body == {} and b.body == {}
    assert a.body is not b.body


@pytest.mark.parametrize("field", ["kind", "body", "id", "reply_to"])
def test_immutable(field: str) -> None:
    msg = Message("k", {"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(msg, field, "x")


def test_no_new_attributes() -> None:
    msg = Message("k")
    with pytest.raises((AttributeError, TypeError)):
        msg.extra = 1  # type: ignore[attr-defined]


def test_equality_by_value() -> None:
    assert Message("k", {"a": [1]}, id="x") == Message("k", {"a": [1]}, id="x")
    assert Message("k", {"a": [1]}) != Message("k", {"a": [2]})


def test_replace_validates() -> None:
    msg = Message("k", {"a": 1})
    assert dataclasses.replace(msg, id="z.1").id == "z.1"
    with pytest.raises(MessageError):
        dataclasses.replace(msg, body={"a": float("nan")})


# -- kind ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("", "empty"),
        ("x" * (MAX_KIND_LENGTH + 1), "longer"),
        (7, "must be a str"),
        (None, "must be a str"),
        (b"update", "must be a str"),
        ("bad\ud800", "surrogate"),
    ],
)
def test_bad_kind(kind: Any, problem: str) -> None:
    with pytest.raises(MessageError, match=problem) as info:
        Message(kind)
    assert info.value.path == "kind"


def test_kind_limits() -> None:
    assert validate_kind("x" * MAX_KIND_LENGTH) == "x" * MAX_KIND_LENGTH
    assert validate_kind("é" * MAX_KIND_LENGTH) == "é" * MAX_KIND_LENGTH  # characters, not bytes


# -- body: what is accepted -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        [],
        "text",
        "",
        0,
        -1,
        2**64 - 1,
        -(2**63),
        1.5,
        -0.0,
        1e308,
        True,
        False,
        None,
        {"unicode": "héllo 日本語 🎉", "nested": {"list": [1, "two", 3.0, None, True]}},
        {"": "empty key is a key"},
    ],
)
def test_good_bodies(body: Any) -> None:
    Message("k", body)
    validate_body(body)


def test_tuples_accepted_anywhere() -> None:
    body = {"t": (1, (2, "x"), [3, ()])}
    msg = Message("k", body)
    assert msg.body is body  # stored as given; a codec writes tuples as arrays
    pair: Any = (1, 2)
    assert Message("k", pair).body == pair


def test_depth_limit_exact() -> None:
    validate_body(nested(MAX_DEPTH))
    with pytest.raises(MessageError, match=f"deeper than {MAX_DEPTH}"):
        validate_body(nested(MAX_DEPTH + 1))


def test_validate_body_returns_a_size_estimate() -> None:
    small = validate_body({"a": 1})
    big = validate_body({"a": "x" * 10_000})
    assert 0 < small < big
    assert big >= 10_000


# -- body: what is refused, and where ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path", "problem"),
    [
        ({"items": [{"x": 1}, {"x": 2}, {"x": {1, 2}}]}, "body.items[2].x", "set"),
        ({"a": {"b": [0, [1, b"raw"]]}}, "body.a.b[1][1]", "bytes"),
        ({"x": float("nan")}, "body.x", "nan"),
        ({"x": [float("inf")]}, "body.x[0]", "inf"),
        ({"x": -math.inf}, "body.x", "inf"),
        ({"n": 2**64}, "body.n", "64-bit"),
        ({"n": -(2**63) - 1}, "body.n", "64-bit"),
        ({"deep": {1: "int key"}}, "body.deep", "key 1 is not a str"),
        ({"deep": {None: "none key"}}, "body.deep", "key None"),
        ({"deep": {("t",): 1}}, "body.deep", "key"),
        ({"deep": {True: 1}}, "body.deep", "key True"),
        ({"o": object()}, "body.o", "object"),
        ({"c": 1j}, "body.c", "complex"),
        ({"od": OrderedDict(a=1)}, "body.od", "OrderedDict"),
        ({"s": "lone \udc80 surrogate"}, "body.s", "surrogate"),
        ({"k": {"bad\ud800key": 1}}, "body.k", "surrogate"),
        (float("nan"), "body", "nan"),
        ({1, 2}, "body", "set"),
    ],
)
def test_bad_bodies_name_the_path(body: Any, path: str, problem: str) -> None:
    with pytest.raises(MessageError) as info:
        Message("k", body)
    assert info.value.path == path
    assert problem in info.value.problem
    assert str(info.value).startswith(f"{path}: ")


def test_too_deep_names_the_path() -> None:
    body = {"a": nested(MAX_DEPTH)}
    with pytest.raises(MessageError) as info:
        Message("k", body)
    assert info.value.path.startswith("body.a")
    assert info.value.path.count(".k") + info.value.path.count("[0]") == MAX_DEPTH - 1


def test_bool_and_int_subclasses_are_not_confused() -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    with pytest.raises(MessageError, match="Color"):
        Message("k", {"c": Color.RED})


def test_validate_body_custom_root() -> None:
    with pytest.raises(MessageError) as info:
        validate_body([1, {2: 3}], path="reply")
    assert info.value.path == "reply[1]"


def test_message_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Message("k", {"x": float("nan")})


# -- trusted ----------------------------------------------------------------------------------


def test_trusted_skips_validation() -> None:
    body: Any = {"x": float("nan"), 1: b"raw"}
    msg = Message.trusted("", body, "id.1", "id.0")
    assert msg.kind == ""
    assert msg.body is body
    assert (msg.id, msg.reply_to) == ("id.1", "id.0")


def test_trusted_is_still_immutable_and_equal() -> None:
    msg = Message.trusted("k", {"a": 1}, "i")
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.kind = "other"  # type: ignore[misc]
    assert msg == Message("k", {"a": 1}, id="i")
    assert Message.trusted("k", {"a": 1}).reply_to is None


# -- scan_body: the send path's one-pass check ---------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_bodies = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
_anything = st.recursive(
    _scalars
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
    | st.binary(max_size=3)
    | st.sets(st.integers(), max_size=2),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner)
        | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(_bodies)
@example({"line": "x" * 200})
@example({"k": 1e-5})
@example([{"a": [-2e-7]}])
@example(nested(MAX_DEPTH))
def test_scan_body_agrees_with_validate_body_and_finds_small_floats(body: Any) -> None:
    assert scan_body(body) == (validate_body(body), _has_small_float(body))


@given(_anything)
@example(nested(MAX_DEPTH + 1))
@example({"ok": 1, 2: "key"})
@example({"a": 2**64})
def test_scan_body_refuses_exactly_what_validate_body_refuses(body: Any) -> None:
    try:
        expected = validate_body(body)
    except MessageError as exc:
        with pytest.raises(MessageError) as info:
            scan_body(body)
        assert str(info.value) == str(exc), "the same path and reason"
    else:
        assert scan_body(body)[0] == expected
