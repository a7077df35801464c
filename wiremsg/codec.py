"""Codecs: a data-phase frame (a dict) to bytes and back, with limits checked first.

Two codecs exist, named on the wire: ``json`` (the default, and always the handshake's) and
``msgpack``. Both refuse a frame larger than their ``max_frame`` *before* decoding it, and turn
every decoding failure into :class:`~wiremsg.errors.DecodeError`, so hostile bytes never raise
anything else. JSON uses orjson when installed; its output is byte-for-byte what the standard
library writes with ``separators=(",", ":")`` and ``ensure_ascii=False`` (tests check it).
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol

import msgpack

from wiremsg.errors import DecodeError, FrameTooLarge

_orjson: Any
try:  # orjson is an optional accelerator; the bytes are the same either way.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _orjson = None

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
"""The default hard limit on one frame's size, in bytes (16 MiB)."""

_FRAME_OVERHEAD = 64 * 1024
"""Room allowed on top of a 16 MiB payload for the envelope around it."""


class Codec(Protocol):
    """What a codec offers. ``name`` is its wire name in ``hello.codecs``."""

    name: str
    max_frame: int

    def encode(self, obj: dict[str, Any], small_floats: bool = True) -> bytes:
        """Return ``obj`` as bytes. Raises :class:`FrameTooLarge` if over ``max_frame``.

        ``small_floats=False`` promises that ``obj`` holds no float with ``0 < |f| < 1e-4``
        (:func:`~wiremsg.message.scan_body` tells), which spares a codec that formats those
        specially a walk over ``obj``."""
        ...

    def decode(self, frame: bytes) -> Any:
        """Return the decoded value. Raises :class:`FrameTooLarge` or :class:`DecodeError`."""
        ...


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: orjson refuses it too
        raise ValueError(f"{text} is out of range")
    return value


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _has_small_float(obj: Any) -> bool:
    """True if ``obj`` holds a float with 0 < |f| < 1e-4: the only values for which orjson's
    text (``0.00001``) differs from the standard library's (``1e-05``)."""
    stack = [obj]
    pop, extend = stack.pop, stack.extend
    while stack:
        o = pop()
        t = type(o)
        if t is dict:
            extend(o.values())
        elif t is list or t is tuple:
            extend(o)
        elif t is float and o != 0.0 and -1e-4 < o < 1e-4:
            return True
    return False


def _str_keys(obj: dict[Any, Any]) -> dict[Any, Any]:
    for key in obj:
        if type(key) is not str:
            raise ValueError(f"map key {key!r} is not a str")
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"ext type {code} is not allowed")


class JSONCodec:
    """Compact UTF-8 JSON. NaN and Infinity are refused when decoding; encoding expects data
    already checked by :func:`~wiremsg.message.validate_body` (orjson would write them as null).

    :param max_frame: the largest frame accepted or produced, in bytes.
    """

    name = "json"

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME + _FRAME_OVERHEAD) -> None:
        self.max_frame = max_frame
        self._decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite)

    def encode(self, obj: dict[str, Any], small_floats: bool = True) -> bytes:
        """Encode ``obj``; raises :class:`FrameTooLarge` past ``max_frame``. With
        ``small_floats=False`` (the caller knows there are none) ``obj`` is not walked."""
        if _orjson is not None and not (small_floats and _has_small_float(obj)):
            data: bytes = _orjson.dumps(obj)
        else:
            data = _stdlib_dumps(obj)
        if len(data) > self.max_frame:
            raise FrameTooLarge(len(data), self.max_frame)
        return data

    def decode(self, frame: bytes) -> Any:
        """Decode one frame; raises :class:`FrameTooLarge` or :class:`DecodeError`."""
        if len(frame) > self.max_frame:
            raise FrameTooLarge(len(frame), self.max_frame)
        try:
            if _orjson is not None:
                return _orjson.loads(frame)
            return self._decoder.decode(bytes(frame).decode("utf-8"))  # pragma: no cover
        except (ValueError, RecursionError, TypeError) as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None


class MsgpackCodec:
    """msgpack with ``use_bin_type=True``; decoding refuses ext types and non-str map keys,
    and bounds every string, array and map by the frame limit.

    :param max_frame: the largest frame accepted or produced, in bytes.
    """

    name = "msgpack"

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME + _FRAME_OVERHEAD) -> None:
        self.max_frame = max_frame
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    def encode(self, obj: dict[str, Any], small_floats: bool = True) -> bytes:
        """Encode ``obj``; raises :class:`FrameTooLarge` past ``max_frame``
        (``small_floats`` is accepted for the :class:`Codec` protocol and ignored)."""
        data: bytes = self._packer.pack(obj)
        if len(data) > self.max_frame:
            raise FrameTooLarge(len(data), self.max_frame)
        return data

    def decode(self, frame: bytes) -> Any:
        """Decode one frame; raises :class:`FrameTooLarge` or :class:`DecodeError`."""
        size = len(frame)
        if size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame)
        try:
            return msgpack.unpackb(
                frame,
                raw=False,
                use_list=True,
                strict_map_key=True,
                object_hook=_str_keys,
                ext_hook=_refuse_ext,
                max_str_len=size,
                max_bin_len=size,
                max_array_len=size,
                max_map_len=size,
                max_ext_len=0,
            )
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
            raise DecodeError(f"invalid msgpack: {exc}") from None


CODECS: dict[str, type[JSONCodec] | type[MsgpackCodec]] = {
    "json": JSONCodec,
    "msgpack": MsgpackCodec,
}
"""Codecs by wire name, in the order a peer prefers them by default."""


def get_codec(name: str, max_frame: int = DEFAULT_MAX_FRAME + _FRAME_OVERHEAD) -> Codec:
    """Return a codec instance by wire name; raises :class:`KeyError` for an unknown name."""
    return CODECS[name](max_frame)
