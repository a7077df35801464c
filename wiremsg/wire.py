"""Frame shapes on the wire, and their validation (docs/PROTOCOL.md is the prose spec).

Every frame is a map with a ``type``. Handshake frames (``hello``, ``challenge``, ``auth``,
``welcome``, ``reject``) are always JSON and at most :data:`MAX_HANDSHAKE_FRAME` bytes; after
``welcome`` the data-phase frames (``msg``, ``ack``, ``ping``, ``pong``, ``goodbye``,
``error``) use the negotiated codec. The ``check_*`` functions take a decoded frame from the
network and either return it (now known to have the right shape) or raise
:class:`~wiremsg.errors.ProtocolError` with code ``bad_frame`` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from wiremsg.errors import ProtocolError
from wiremsg.message import MAX_KIND_LENGTH

PROTOCOL_VERSION = 1
"""The protocol version this implementation speaks."""

SUPPORTED_VERSIONS = frozenset({1})
"""Versions a master accepts in ``hello.protocol``."""

MAX_HANDSHAKE_FRAME = 64 * 1024
"""The largest handshake frame accepted, in bytes."""

MAX_NAME_LENGTH = 255
MAX_TAGS = 64
MAX_CODECS = 8
MAX_ID_LENGTH = 128

HANDSHAKE_TYPES = frozenset({"hello", "challenge", "auth", "welcome", "reject"})
DATA_TYPES = frozenset({"msg", "ack", "ping", "pong", "goodbye", "error"})

# Wire error codes (reject.code and error.code).
BAD_FRAME = "bad_frame"
TOO_LARGE = "too_large"
UNEXPECTED = "unexpected"
VERSION = "version"
CODEC = "codec"
AUTH_FAILED = "auth_failed"
DUPLICATE = "duplicate"
HANDSHAKE_TIMEOUT = "handshake_timeout"
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
SHUTDOWN = "shutdown"
HANDLER_ERROR = "handler_error"
NO_HANDLER = "no_handler"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_INF = float("inf")


def _bad(field: str, problem: str) -> ProtocolError:
    return ProtocolError(BAD_FRAME, f"{field}: {problem}")


@contextmanager
def _inside(parent: str) -> Iterator[None]:
    """Name a nested map's bad field by its full path (``resume.token``, ``error.code``)."""
    try:
        yield
    except ProtocolError as exc:
        raise ProtocolError(exc.code, f"{parent}.{exc.reason}") from None


def frame_type(frame: object) -> str:
    """Return a decoded frame's ``type``, or raise ``bad_frame``."""
    if type(frame) is not dict:
        raise _bad("frame", f"must be a map, not {type(frame).__name__}")
    t = frame.get("type")
    if type(t) is not str:
        raise _bad("type", "missing or not a string")
    return t


def _str(
    frame: dict[str, Any], field: str, max_len: int, *, optional: bool = False, empty: bool = False
) -> None:
    value = frame.get(field)
    if value is None and optional:
        return
    if type(value) is not str:
        raise _bad(field, "missing or not a string")
    if not empty and not value:
        raise _bad(field, "must not be empty")
    if len(value) > max_len:
        raise _bad(field, f"longer than {max_len}")


def _int(frame: dict[str, Any], field: str) -> None:
    value = frame.get(field)
    if type(value) is not int or value < 0:
        raise _bad(field, "missing or not a non-negative integer")


def _num(frame: dict[str, Any], field: str) -> None:
    value = frame.get(field)
    # ``not 0 <= value < inf`` also refuses NaN and infinity (msgpack can carry both).
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < _INF:
        raise _bad(field, "missing or not a finite non-negative number")


def _nonce(frame: dict[str, Any], field: str) -> None:
    value = frame.get(field)
    if type(value) is not str or not _HEX64.fullmatch(value):
        raise _bad(field, "must be 64 lowercase hex digits")


def _str_list(frame: dict[str, Any], field: str, max_items: int) -> None:
    value = frame.get(field)
    if type(value) is not list or len(value) > max_items:
        raise _bad(field, f"must be a list of at most {max_items} strings")
    for item in value:
        if type(item) is not str or not item or len(item) > MAX_NAME_LENGTH:
            raise _bad(field, f"{item!r} is not a non-empty string of <= {MAX_NAME_LENGTH}")


def check_hello(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``hello``; see docs/PROTOCOL.md §hello."""
    _int(frame, "protocol")
    _str(frame, "worker", MAX_NAME_LENGTH)
    _str_list(frame, "codecs", MAX_CODECS)
    if not frame["codecs"]:
        raise _bad("codecs", "must name at least one codec")
    _str_list(frame, "tags", MAX_TAGS)
    if type(frame.get("info")) is not dict:
        raise _bad("info", "missing or not a map")
    _nonce(frame, "nonce")
    resume = frame.get("resume")
    if resume is not None:
        if type(resume) is not dict:
            raise _bad("resume", "must be a map or null")
        with _inside("resume"):
            _str(resume, "session", MAX_ID_LENGTH)
            _str(resume, "token", MAX_ID_LENGTH)
            _int(resume, "ack")
    return frame


def check_challenge(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``challenge``."""
    _nonce(frame, "nonce")
    return frame


def check_auth(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate an ``auth``."""
    _nonce(frame, "proof")
    return frame


def check_welcome(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``welcome``."""
    _str(frame, "session", MAX_ID_LENGTH)
    _str(frame, "token", MAX_ID_LENGTH)
    _str(frame, "codec", MAX_NAME_LENGTH)
    _num(frame, "heartbeat")
    _nonce(frame, "proof")
    if type(frame.get("resumed")) is not bool:
        raise _bad("resumed", "missing or not a boolean")
    _int(frame, "ack")
    if frame["heartbeat"] <= 0:
        raise _bad("heartbeat", "must be positive")
    return frame


def check_reject(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``reject`` (and, with the same fields, an ``error``)."""
    _str(frame, "code", MAX_NAME_LENGTH)
    _str(frame, "reason", 4096, empty=True)
    return frame


def check_msg(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a data-phase ``msg`` (the hot path: plain type checks only)."""
    seq, ack, id_, kind = frame.get("seq"), frame.get("ack"), frame.get("id"), frame.get("kind")
    if (  # the common case, a plain one-way message, in one expression
        type(seq) is int
        and seq >= 1
        and type(ack) is int
        and ack >= 0
        and type(id_) is str
        and 0 < len(id_) <= MAX_ID_LENGTH
        and type(kind) is str
        and 0 < len(kind) <= MAX_KIND_LENGTH
        and "body" in frame
    ):
        n = len(frame)
        if n == 6:
            return frame
        if n == 7:  # a request, or a plain reply
            if frame.get("request") is True:
                return frame
            reply_to = frame.get("reply_to")
            if type(reply_to) is str and 0 < len(reply_to) <= MAX_ID_LENGTH:
                return frame
    seq = frame.get("seq")
    if type(seq) is not int or seq < 1:
        raise _bad("seq", "missing or not a positive integer")
    _int(frame, "ack")
    _str(frame, "id", MAX_ID_LENGTH)
    _str(frame, "kind", MAX_KIND_LENGTH)
    if "body" not in frame:
        raise _bad("body", "missing")
    _str(frame, "reply_to", MAX_ID_LENGTH, optional=True)
    request = frame.get("request", False)
    if type(request) is not bool:
        raise _bad("request", "not a boolean")
    error = frame.get("error")
    if error is not None:
        if type(error) is not dict:
            raise _bad("error", "must be a map")
        with _inside("error"):
            check_reject(error)
        if frame.get("reply_to") is None:
            raise _bad("error", "only a reply may carry an error")
    return frame


def check_ack(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate an ``ack``."""
    _int(frame, "ack")
    return frame


def check_ping(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``ping`` or ``pong``."""
    _int(frame, "ack")
    _num(frame, "time")
    return frame


def check_goodbye(frame: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``goodbye``."""
    _int(frame, "ack")
    _str(frame, "reason", 4096, empty=True)
    masters = frame.get("masters", [])
    if type(masters) is not list or not all(type(m) is str for m in masters):
        raise _bad("masters", "must be a list of address strings")
    return frame


CHECKS = {
    "hello": check_hello,
    "challenge": check_challenge,
    "auth": check_auth,
    "welcome": check_welcome,
    "reject": check_reject,
    "msg": check_msg,
    "ack": check_ack,
    "ping": check_ping,
    "pong": check_ping,
    "goodbye": check_goodbye,
    "error": check_reject,
}
"""The validator for each frame type."""
