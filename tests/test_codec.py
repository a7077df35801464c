"""Codecs: canonical JSON bytes, msgpack rules, size limits before decoding, hostile input."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wiremsg import codec as codec_module
from wiremsg.codec import (
    CODECS,
    DEFAULT_MAX_FRAME,
    JSONCodec,
    MsgpackCodec,
    get_codec,
)
from wiremsg.errors import DecodeError, FrameTooLarge, ProtocolError

DEFAULT_LIMIT = DEFAULT_MAX_FRAME + 64 * 1024

# JSON-compatible values as a Message body may hold them (no lone surrogates: they have no
# UTF-8 form, and validate_body refuses them).
text = st.text(st.characters(codec="utf-8"), max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=25,
)
frames = st.dictionaries(text, values, max_size=6)


def stdlib(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types all the way down (``1 == 1.0 == True`` is not)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.fixture
def no_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test on the standard-library fallback, as where orjson is not installed."""
    monkeypatch.setattr(codec_module, "_orjson", None)


# -- registry ---------------------------------------------------------------------------------


def test_registry() -> None:
    assert list(CODECS) == ["json", "msgpack"]
    assert isinstance(get_codec("json"), JSONCodec)
    assert isinstance(get_codec("msgpack"), MsgpackCodec)
    assert get_codec("msgpack", 1000).max_frame == 1000
    assert get_codec("json").max_frame == DEFAULT_LIMIT == 16 * 1024 * 1024 + 65536
    with pytest.raises(KeyError):
        get_codec("cbor")


def test_codec_errors_are_protocol_errors() -> None:
    assert issubclass(DecodeError, ProtocolError)
    assert issubclass(FrameTooLarge, ProtocolError)
    assert DecodeError("x").code == "bad_frame"
    assert FrameTooLarge(2, 1).code == "too_large"


# -- JSON: the canonical byte form ---------------------------------------------------------------


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
@example({"small": [1e-05, 1.5e-07, -2.5e-9, 0.0001, 9.999e-05, 5e-324]})
@example({"big": [1e16, 1.7976931348623157e308, 2**64 - 1, -(2**63), 123456789.125]})
@example({"esc": '"\\/\b\f\n\r\t\x00\x1f\x7f\u2028\u2029é日🎉'})
@example({"e-": "text with e- and 0.0000 in it", "x": 1.5})
def test_json_bytes_identical_to_stdlib(frame: dict[str, Any]) -> None:
    assert JSONCodec().encode(frame) == stdlib(frame)


@given(frames)
@example({"small": [1e-05, 1.5e-07]})
def test_json_stdlib_fallback_writes_the_same_bytes(frame: dict[str, Any]) -> None:
    data = JSONCodec().encode(frame)
    saved = codec_module._orjson
    codec_module._orjson = None
    try:
        assert JSONCodec().encode(frame) == data
        assert same(JSONCodec().decode(data), JSONCodec().decode(data))
    finally:
        codec_module._orjson = saved


@given(frames)
def test_json_round_trip(frame: dict[str, Any]) -> None:
    c = JSONCodec()
    assert same(c.decode(c.encode(frame)), frame)


def test_json_form() -> None:
    c = JSONCodec()
    assert c.encode({"a": [1, 2.0, None, True], "b": {"c": "é"}}) == (
        b'{"a":[1,2.0,null,true],"b":{"c":"\xc3\xa9"}}'
    )
    assert c.encode({"t": (1, (2,))}) == b'{"t":[1,[2]]}'  # tuples are arrays
    assert c.encode({"k": "\U0001f389"}) == '{"k":"🎉"}'.encode()  # not \ud83c\udf89


def test_json_decodes_any_valid_json() -> None:
    c = JSONCodec()
    assert c.decode(b' { "a" : [ 1 , 2 ] }\n') == {"a": [1, 2]}
    assert c.decode(b'{"s":"\\u00e9\\ud83c\\udf89"}') == {"s": "é🎉"}
    assert c.decode(bytearray(b"{}")) == {}  # type: ignore[arg-type]
    assert c.decode(memoryview(b"[1]")) == [1]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b'{"x":NaN}',
        b'{"x":Infinity}',
        b'{"x":-Infinity}',
        b'{"x":1e400}',
        b'{"x":"\xff"}',
        b'{"x":"\\ud800"}',
        b"",
        b"{",
        b'{"a":1,}',
        b"\xef\xbb\xbf{}",
        b"[" * 100_000,
    ],
)
def test_json_refuses(data: bytes) -> None:
    with pytest.raises(DecodeError):
        JSONCodec().decode(data)


@pytest.mark.usefixtures("no_orjson")
@pytest.mark.parametrize(
    "data", [b'{"x":NaN}', b'{"x":-Infinity}', b'{"x":1e400}', b"\xff", b"[" * 100_000]
)
def test_json_fallback_refuses(data: bytes) -> None:
    with pytest.raises(DecodeError):
        JSONCodec().decode(data)


# -- msgpack --------------------------------------------------------------------------------------


@given(frames)
def test_msgpack_round_trip(frame: dict[str, Any]) -> None:
    c = MsgpackCodec()
    assert same(c.decode(c.encode(frame)), frame)


def test_msgpack_bin_type_round_trip() -> None:
    c = MsgpackCodec()
    data = c.encode({"raw": b"\x00\xff", "text": "é"})
    assert b"\xc4\x02\x00\xff" in data  # bin 8, not raw str
    assert b"\xa2\xc3\xa9" in data  # fixstr, UTF-8
    assert c.decode(data) == {"raw": b"\x00\xff", "text": "é"}


def test_msgpack_encoding_details() -> None:
    c = MsgpackCodec()
    assert c.encode({"f": 1.5}) == b"\x81\xa1f\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"  # float 64
    assert c.encode({"u": 2**64 - 1}) == b"\x81\xa1u\xcf" + b"\xff" * 8
    assert c.encode({"t": (1, 2)}) == c.encode({"t": [1, 2]})
    assert c.decode(c.encode({"t": (1, 2)})) == {"t": [1, 2]}


def test_msgpack_packer_recovers_after_a_failed_encode() -> None:
    c = MsgpackCodec()
    with pytest.raises(TypeError):
        c.encode({"bad": {1, 2}})
    assert c.encode({"a": 1}) == msgpack.packb({"a": 1})


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb({"a": msgpack.ExtType(5, b"xx")}),
        msgpack.packb(msgpack.ExtType(1, b"")),
        b"\x81\xa1a\xc7\x00\x00",  # ext 8 of length 0
        b"\xd6\xff\x00\x00\x00\x01",  # the timestamp extension (-1)
        b"\xc7\x00\xff",  # an empty timestamp
    ],
)
def test_msgpack_refuses_ext_types(data: bytes) -> None:
    with pytest.raises(DecodeError):
        MsgpackCodec().decode(data)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (msgpack.packb({1: "int key"}), "int"),
        (msgpack.packb({"a": {2: 1}}), "int"),
        (msgpack.packb({b"bin": 1}, use_bin_type=True), "str"),
        (msgpack.packb({"a": [{b"k": 1}]}, use_bin_type=True), "str"),
        (msgpack.packb({None: 1}), "None"),
        (msgpack.packb({1.5: 1}), "float"),
        (msgpack.packb({(1, 2): 1}), "list"),
    ],
)
def test_msgpack_refuses_non_str_map_keys(data: bytes, what: str) -> None:
    with pytest.raises(DecodeError, match=what):
        MsgpackCodec().decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x92\x01",  # array of 2 with 1 element
        msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
        b"\xa3\xff\xfe\xfd",  # str that is not UTF-8
        b"\x91" * 100_000 + b"\xc0",  # nesting past the unpacker's stack
        b"\xdd\xff\xff\xff\xff",  # array of 4 billion in 5 bytes
        b"\xdb\x7f\xff\xff\xff",  # str of 2 GiB in 5 bytes
    ],
)
def test_msgpack_refuses(data: bytes) -> None:
    with pytest.raises(DecodeError):
        MsgpackCodec().decode(data)


# -- size limits, checked before decoding ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODECS))
def test_limit_is_exact(name: str) -> None:
    c = get_codec(name, 100)
    frame = {"s": "x" * 200}
    n = max(n for n in range(100) if len(get_codec(name).encode({"s": "x" * n})) <= 100)
    fits = {"s": "x" * n}
    assert len(c.encode(fits)) == 100
    assert c.decode(c.encode(fits)) == fits
    with pytest.raises(FrameTooLarge) as info:
        c.encode(frame)
    assert info.value.limit == 100 and info.value.size > 100
    with pytest.raises(FrameTooLarge):
        c.decode(get_codec(name).encode(frame))


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the decoder was called")


def test_json_huge_frame_refused_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeOrjson:
        loads = staticmethod(_boom)

    monkeypatch.setattr(codec_module, "_orjson", FakeOrjson)
    c = JSONCodec()
    huge = b"[" * (DEFAULT_LIMIT + 1)
    with pytest.raises(FrameTooLarge) as info:
        c.decode(huge)
    assert info.value.size == DEFAULT_LIMIT + 1
    assert info.value.limit == DEFAULT_LIMIT
    with pytest.raises(AssertionError, match="decoder was called"):
        c.decode(b"[]")  # the fake is really in place


def test_json_fallback_huge_frame_refused_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec_module, "_orjson", None)
    c = JSONCodec(1000)
    monkeypatch.setattr(c._decoder, "decode", _boom)
    with pytest.raises(FrameTooLarge):
        c.decode(b" " * 1001)
    with pytest.raises(AssertionError, match="decoder was called"):
        c.decode(b"[]")


def test_msgpack_huge_frame_refused_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(msgpack, "unpackb", _boom)
    c = MsgpackCodec()
    with pytest.raises(FrameTooLarge) as info:
        c.decode(b"\x00" * (DEFAULT_LIMIT + 1))
    assert info.value.code == "too_large"
    with pytest.raises(AssertionError, match="decoder was called"):
        c.decode(b"\x80")


def test_huge_frame_code_and_message() -> None:
    with pytest.raises(FrameTooLarge, match="frame of 11 bytes exceeds the limit of 10"):
        JSONCodec(10).decode(b"{}" + b" " * 9)


# -- hostile input: nothing but DecodeError (or a value) ------------------------------------------


def _decode_or_decode_error(name: str, data: bytes) -> None:
    try:
        get_codec(name).decode(data)
    except DecodeError:
        pass


@settings(max_examples=500)
@given(st.binary(max_size=200))
@example(b"\xc7\x00\x00")
@example(b"\x81\xc0\xc0")
@example(b"\x81\x80\xc0")
def test_msgpack_garbage_raises_only_decode_error(data: bytes) -> None:
    _decode_or_decode_error("msgpack", data)


@settings(max_examples=500)
@given(st.binary(max_size=200) | st.text(max_size=100).map(lambda s: s.encode("utf-8", "replace")))
@example(b'{"a":\xff}')
@example(b'{"a":"\\udc00"}')
def test_json_garbage_raises_only_decode_error(data: bytes) -> None:
    _decode_or_decode_error("json", data)


@settings(max_examples=200)
@given(frames, st.sampled_from(sorted(CODECS)), st.data())
def test_mutated_frames_raise_only_decode_error(
    frame: dict[str, Any], name: str, data: st.DataObject
) -> None:
    encoded = bytearray(get_codec(name).encode(frame))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    _decode_or_decode_error(name, bytes(encoded))


@settings(max_examples=100)
@given(frames.filter(bool), st.sampled_from(sorted(CODECS)))
def test_every_truncation_is_a_decode_error(frame: dict[str, Any], name: str) -> None:
    c = get_codec(name)
    encoded = c.encode(frame)
    for end in range(len(encoded)):
        with pytest.raises(DecodeError):
            c.decode(encoded[:end])


def test_json_skips_the_small_float_walk_only_on_the_callers_word() -> None:
    frame = {"x": 1e-05, "y": [2.5e-7]}
    assert JSONCodec().encode(frame) == stdlib(frame) == b'{"x":1e-05,"y":[2.5e-07]}'
    if codec_module._orjson is not None:  # a broken promise shows: orjson's own text
        assert JSONCodec().encode(frame, small_floats=False) == b'{"x":0.00001,"y":[2.5e-7]}'
    plain = {"x": 0.5, "s": "text"}
    assert JSONCodec().encode(plain, small_floats=False) == stdlib(plain)
    assert MsgpackCodec().encode(frame, small_floats=False) == MsgpackCodec().encode(frame)
