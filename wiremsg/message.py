"""The application's unit of exchange: an immutable :class:`Message`.

A message is a ``kind`` (a short string naming what it is, e.g. ``"update"``), a ``body`` of
JSON-compatible data, an ``id`` unique per sender (so applications can drop duplicates after a
master crash), and, for replies, ``reply_to``: the id of the request it answers. The session
fills ``id`` and ``reply_to``; applications set ``kind`` and ``body``.

JSON-compatible means: ``dict`` with ``str`` keys, ``list`` (tuples are accepted and arrive as
lists), ``str``, ``int`` within signed 64 bits, finite ``float``, ``bool`` and ``None``, nested
at most :data:`MAX_DEPTH` deep. Anything else raises :class:`~wiremsg.errors.MessageError`
naming the path of the offending value, before a byte is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias

from wiremsg.errors import MessageError

JSON: TypeAlias = dict[str, Any] | list[Any] | str | int | float | bool | None
"""The type of a message body (checked at run time by :func:`validate_body`)."""

MAX_KIND_LENGTH = 255
"""The longest kind, in characters."""

MAX_DEPTH = 64
"""How deeply containers may nest inside a body."""

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1  # msgpack carries unsigned 64-bit too


def validate_kind(kind: object) -> str:
    """Return ``kind`` if it is a valid message kind, else raise :class:`MessageError`."""
    if not isinstance(kind, str):
        raise MessageError("kind", f"must be a str, not {type(kind).__name__}")
    if not kind:
        raise MessageError("kind", "must not be empty")
    if len(kind) > MAX_KIND_LENGTH:
        raise MessageError("kind", f"longer than {MAX_KIND_LENGTH} characters")
    if not kind.isascii():
        _check_utf8(kind, "kind")
    return kind


def validate_body(body: object, path: str = "body") -> int:
    """Raise :class:`MessageError` naming the path of the first non-JSON value in ``body``.

    :returns: a rough estimate of the body's encoded size in bytes (for queue accounting).
    """
    return _check(body, path, 0)


SMALL_FLOAT = 1e-4
"""Floats with ``0 < |f| < SMALL_FLOAT`` are the only ones whose shortest text differs between
orjson (``1e-5``) and the standard library (``1e-05``); :func:`scan_body` reports them."""


def scan_body(body: object) -> tuple[int, bool]:
    """Validate ``body`` as :func:`validate_body` does, in one pass without building paths.

    The send path's fast check: it walks the body once, and only when something is wrong walks
    it again with :func:`validate_body` to name the offending path in the
    :class:`MessageError`.

    :returns: ``(estimate, small_float)``: the same size estimate as :func:`validate_body`,
        and whether the body holds a float with ``0 < |f| <`` :data:`SMALL_FLOAT` (the codec
        must then format floats the standard library's way).
    """
    size = 0
    small = False
    stack: list[tuple[Any, int]] = []
    pop, push = stack.pop, stack.append
    if type(body) is dict:  # the usual body: a map of short values, checked right here
        size = 2
        for key, item in body.items():
            if type(key) is not str or not (key.isascii() or _utf8_ok(key)):
                push((body, 0))  # let the loop below find it and fall back
                break
            t = type(item)
            if t is str and item.isascii():
                size += len(key) + len(item) + 6
            elif t is int and _INT_MIN <= item <= _INT_MAX:
                size += len(key) + 12
            else:
                size += len(key) + 4
                push((item, 1))
        if not stack:
            return size, small
    else:
        push((body, 0))
    while stack:
        value, depth = pop()
        t = type(value)
        if t is str:
            if not value.isascii() and not _utf8_ok(value):
                break
            size += len(value) + 2
        elif t is dict:
            if depth >= MAX_DEPTH:
                break
            size += 2
            depth += 1
            for key, item in value.items():
                if type(key) is not str or not (key.isascii() or _utf8_ok(key)):
                    break
                if type(item) is str and item.isascii():  # the common leaf, inline
                    size += len(key) + len(item) + 6
                else:
                    size += len(key) + 4
                    push((item, depth))
            else:
                continue
            break
        elif value is None or t is bool:
            size += 5
        elif t is int:
            if not _INT_MIN <= value <= _INT_MAX:
                break
            size += 8
        elif t is float:
            if not math.isfinite(value):
                break
            if value != 0.0 and -SMALL_FLOAT < value < SMALL_FLOAT:
                small = True
            size += 12
        elif t is list or t is tuple:
            if depth >= MAX_DEPTH:
                break
            size += 2 + len(value)
            depth += 1
            for item in value:
                push((item, depth))
        else:
            break
    else:
        return size, small
    validate_body(body)  # names the path of what is wrong
    raise MessageError("body", "not JSON-compatible")  # pragma: no cover - validate_body raised


def _utf8_ok(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_utf8(value: str, path: str) -> None:
    # A str holding a lone surrogate (e.g. from os.fsdecode) has no UTF-8 form: no codec
    # could send it.
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        bad = value[exc.start : exc.end]
        raise MessageError(path, f"{bad!r} (a lone surrogate) is not encodable as UTF-8") from None


def _check(value: object, path: str, depth: int) -> int:
    # Exact type checks first: they are the common, cheap case.
    t = type(value)
    if t is str:
        if not value.isascii():  # type: ignore[attr-defined]
            _check_utf8(value, path)  # type: ignore[arg-type]
        return len(value) + 2  # type: ignore[arg-type]
    if value is None or t is bool:
        return 5
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            raise MessageError(path, "integer outside the 64-bit range")
        return 8
    if t is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise MessageError(path, f"{value!r} is not valid JSON")
        return 12
    if depth >= MAX_DEPTH:
        raise MessageError(path, f"nested deeper than {MAX_DEPTH}")
    size = 2
    if t is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise MessageError(path, f"key {key!r} is not a str")
            if not key.isascii():
                _check_utf8(key, path)
            size += len(key) + 4 + _check(item, f"{path}.{key}", depth + 1)
        return size
    if t is list or t is tuple:
        for index, item in enumerate(value):  # type: ignore[arg-type]
            size += 1 + _check(item, f"{path}[{index}]", depth + 1)
        return size
    raise MessageError(path, f"{t.__name__} is not JSON-compatible")


@dataclass(frozen=True, slots=True)
class Message:
    """An immutable message: ``kind``, ``body``, and the ids the session assigns.

    :param kind: what the message is; 1 to 255 characters.
    :param body: JSON-compatible data (see the module docstring). Defaults to ``{}``.
    :param id: unique per sender; assigned by the session when a message is sent.
    :param reply_to: for a reply, the ``id`` of the request it answers.
    :raises MessageError: if ``kind`` or ``body`` is not valid, naming the offending path.
    """

    kind: str
    body: JSON = None
    id: str = ""
    reply_to: str | None = None

    def __post_init__(self) -> None:
        validate_kind(self.kind)
        if self.body is None:
            object.__setattr__(self, "body", {})
        else:
            validate_body(self.body)

    @classmethod
    def trusted(cls, kind: str, body: JSON, id: str = "", reply_to: str | None = None) -> Message:
        """Build a message without validating it: for data the codec just decoded."""
        msg = _new(cls)
        _set_kind(msg, kind)
        _set_body(msg, body)
        _set_id(msg, id)
        _set_reply_to(msg, reply_to)
        return msg


# The slots' own setters: what the frozen dataclass's __setattr__ refuses, on the hot path of
# every message sent and received (about twice as fast as object.__setattr__ by name).
_new = object.__new__
_set_kind = Message.__dict__["kind"].__set__
_set_body = Message.__dict__["body"].__set__
_set_id = Message.__dict__["id"].__set__
_set_reply_to = Message.__dict__["reply_to"].__set__
