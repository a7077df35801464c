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
        msg = object.__new__(cls)
        object.__setattr__(msg, "kind", kind)
        object.__setattr__(msg, "body", body)
        object.__setattr__(msg, "id", id)
        object.__setattr__(msg, "reply_to", reply_to)
        return msg
