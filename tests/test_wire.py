"""Frame validation: each check_* accepts a good frame and refuses each wrong field by name."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from wiremsg import wire
from wiremsg.errors import ProtocolError

NONCE = "0123456789abcdef" * 4
DELETE = object()

GOOD: dict[str, dict[str, Any]] = {
    "hello": {
        "type": "hello",
        "protocol": 1,
        "worker": "w1",
        "codecs": ["json", "msgpack"],
        "tags": ["linux"],
        "info": {"os": "linux"},
        "nonce": NONCE,
        "resume": None,
    },
    "challenge": {"type": "challenge", "nonce": NONCE},
    "auth": {"type": "auth", "proof": NONCE},
    "welcome": {
        "type": "welcome",
        "session": "4410492b788768bc",
        "token": "ff2218cf8f7373abe8e394daf807e24e",
        "codec": "json",
        "heartbeat": 5.0,
        "proof": NONCE,
        "resumed": False,
        "ack": 0,
    },
    "reject": {"type": "reject", "code": "auth_failed", "reason": "no"},
    "msg": {"type": "msg", "seq": 1, "ack": 0, "id": "ab.1", "kind": "k", "body": {}},
    "ack": {"type": "ack", "ack": 3},
    "ping": {"type": "ping", "ack": 0, "time": 12.5},
    "pong": {"type": "pong", "ack": 0, "time": 0},
    "goodbye": {"type": "goodbye", "ack": 0, "reason": "", "masters": ["amp://m2:1"]},
    "error": {"type": "error", "code": "bad_frame", "reason": ""},
}


def test_every_type_has_a_check() -> None:
    assert set(wire.CHECKS) == wire.HANDSHAKE_TYPES | wire.DATA_TYPES == set(GOOD)
    assert not wire.HANDSHAKE_TYPES & wire.DATA_TYPES


def test_constants() -> None:
    assert wire.PROTOCOL_VERSION == 1
    assert wire.PROTOCOL_VERSION in wire.SUPPORTED_VERSIONS
    assert wire.MAX_HANDSHAKE_FRAME == 65536
    assert (wire.MAX_NAME_LENGTH, wire.MAX_TAGS, wire.MAX_CODECS, wire.MAX_ID_LENGTH) == (
        255,
        64,
        8,
        128,
    )


@pytest.mark.parametrize("ftype", sorted(GOOD))
def test_good_frames_pass_unchanged(ftype: str) -> None:
    frame = copy.deepcopy(GOOD[ftype])
    assert wire.frame_type(frame) == ftype
    assert wire.CHECKS[ftype](frame) is frame
    assert frame == GOOD[ftype]


@pytest.mark.parametrize("ftype", sorted(GOOD))
def test_unknown_fields_are_ignored(ftype: str) -> None:
    frame = {**copy.deepcopy(GOOD[ftype]), "x-future": {"anything": [1]}, "zzz": None}
    assert wire.CHECKS[ftype](frame) is frame


GOOD_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("hello", {"resume": {"session": "s", "token": "t", "ack": 0}}),
    ("hello", {"resume": DELETE}),
    ("hello", {"tags": []}),
    ("hello", {"codecs": ["x"] * wire.MAX_CODECS}),
    ("hello", {"tags": [f"t{i}" for i in range(wire.MAX_TAGS)]}),
    ("hello", {"worker": "é" * wire.MAX_NAME_LENGTH}),
    ("hello", {"protocol": 0}),
    ("hello", {"protocol": 99}),  # the version is the session's business, not the shape's
    ("welcome", {"heartbeat": 1}),
    ("welcome", {"heartbeat": 0.001}),
    ("welcome", {"resumed": True, "ack": 10}),
    ("welcome", {"session": "s" * wire.MAX_ID_LENGTH}),
    ("reject", {"reason": "r" * 4096}),
    ("msg", {"body": None}),
    ("msg", {"body": [1, "x"]}),
    ("msg", {"body": "just a string"}),
    ("msg", {"request": True}),
    ("msg", {"request": False}),
    ("msg", {"reply_to": "ab.9"}),
    ("msg", {"reply_to": None}),
    ("msg", {"reply_to": "ab.9", "error": {"code": "no_handler", "reason": "none"}}),
    ("msg", {"reply_to": "ab.9", "error": None}),
    ("msg", {"seq": 2**64 - 1, "ack": 2**64 - 1}),
    ("msg", {"kind": "k" * 255, "id": "i" * 128}),
    ("ping", {"time": 0}),
    ("ping", {"time": 1.7e9}),
    ("goodbye", {"masters": DELETE}),
    ("goodbye", {"masters": []}),
    ("goodbye", {"reason": "bye"}),
]


@pytest.mark.parametrize(("ftype", "changes"), GOOD_VARIANTS)
def test_good_variants(ftype: str, changes: dict[str, Any]) -> None:
    frame = mutate(GOOD[ftype], changes)
    assert wire.CHECKS[ftype](frame) is frame


def mutate(frame: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(frame)
    for key, value in changes.items():
        if value is DELETE:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# (frame type, changes, the field the error must name)
BAD: list[tuple[str, dict[str, Any], str]] = [
    # hello
    ("hello", {"protocol": DELETE}, "protocol"),
    ("hello", {"protocol": "1"}, "protocol"),
    ("hello", {"protocol": 1.0}, "protocol"),
    ("hello", {"protocol": True}, "protocol"),
    ("hello", {"protocol": -1}, "protocol"),
    ("hello", {"worker": DELETE}, "worker"),
    ("hello", {"worker": ""}, "worker"),
    ("hello", {"worker": 7}, "worker"),
    ("hello", {"worker": "w" * 256}, "worker"),
    ("hello", {"codecs": DELETE}, "codecs"),
    ("hello", {"codecs": []}, "codecs"),
    ("hello", {"codecs": "json"}, "codecs"),
    ("hello", {"codecs": ["json", 1]}, "codecs"),
    ("hello", {"codecs": [""]}, "codecs"),
    ("hello", {"codecs": ["c"] * 9}, "codecs"),
    ("hello", {"tags": DELETE}, "tags"),
    ("hello", {"tags": None}, "tags"),
    ("hello", {"tags": ["t"] * 65}, "tags"),
    ("hello", {"tags": ["x" * 256]}, "tags"),
    ("hello", {"tags": [["nested"]]}, "tags"),
    ("hello", {"info": DELETE}, "info"),
    ("hello", {"info": []}, "info"),
    ("hello", {"info": None}, "info"),
    ("hello", {"nonce": DELETE}, "nonce"),
    ("hello", {"nonce": NONCE.upper()}, "nonce"),
    ("hello", {"nonce": NONCE[:-1]}, "nonce"),
    ("hello", {"nonce": NONCE + "0"}, "nonce"),
    ("hello", {"nonce": NONCE[:-1] + "g"}, "nonce"),
    ("hello", {"nonce": NONCE[:-1] + "\n"}, "nonce"),
    ("hello", {"resume": "token"}, "resume"),
    ("hello", {"resume": []}, "resume"),
    ("hello", {"resume": {"token": "t", "ack": 0}}, "resume.session"),
    ("hello", {"resume": {"session": "", "token": "t", "ack": 0}}, "resume.session"),
    ("hello", {"resume": {"session": "s" * 129, "token": "t", "ack": 0}}, "resume.session"),
    ("hello", {"resume": {"session": "s", "ack": 0}}, "resume.token"),
    ("hello", {"resume": {"session": "s", "token": 5, "ack": 0}}, "resume.token"),
    ("hello", {"resume": {"session": "s", "token": "t"}}, "resume.ack"),
    ("hello", {"resume": {"session": "s", "token": "t", "ack": -1}}, "resume.ack"),
    # challenge, auth
    ("challenge", {"nonce": DELETE}, "nonce"),
    ("challenge", {"nonce": 12}, "nonce"),
    ("auth", {"proof": DELETE}, "proof"),
    ("auth", {"proof": "A" * 64}, "proof"),
    ("auth", {"proof": ""}, "proof"),
    # welcome
    ("welcome", {"session": DELETE}, "session"),
    ("welcome", {"session": ""}, "session"),
    ("welcome", {"session": "s" * 129}, "session"),
    ("welcome", {"token": DELETE}, "token"),
    ("welcome", {"token": None}, "token"),
    ("welcome", {"codec": DELETE}, "codec"),
    ("welcome", {"codec": ""}, "codec"),
    ("welcome", {"heartbeat": DELETE}, "heartbeat"),
    ("welcome", {"heartbeat": 0}, "heartbeat"),
    ("welcome", {"heartbeat": 0.0}, "heartbeat"),
    ("welcome", {"heartbeat": -5.0}, "heartbeat"),
    ("welcome", {"heartbeat": "5"}, "heartbeat"),
    ("welcome", {"heartbeat": True}, "heartbeat"),
    ("welcome", {"heartbeat": float("inf")}, "heartbeat"),
    ("welcome", {"heartbeat": float("nan")}, "heartbeat"),
    ("welcome", {"proof": DELETE}, "proof"),
    ("welcome", {"proof": NONCE[1:]}, "proof"),
    ("welcome", {"resumed": DELETE}, "resumed"),
    ("welcome", {"resumed": 0}, "resumed"),
    ("welcome", {"resumed": "false"}, "resumed"),
    ("welcome", {"ack": DELETE}, "ack"),
    ("welcome", {"ack": -1}, "ack"),
    ("welcome", {"ack": 1.0}, "ack"),
    # reject and error
    ("reject", {"code": DELETE}, "code"),
    ("reject", {"code": ""}, "code"),
    ("reject", {"code": "c" * 256}, "code"),
    ("reject", {"reason": DELETE}, "reason"),
    ("reject", {"reason": None}, "reason"),
    ("reject", {"reason": "r" * 4097}, "reason"),
    ("error", {"code": 500}, "code"),
    ("error", {"reason": DELETE}, "reason"),
    # msg
    ("msg", {"seq": DELETE}, "seq"),
    ("msg", {"seq": 0}, "seq"),
    ("msg", {"seq": -1}, "seq"),
    ("msg", {"seq": 1.0}, "seq"),
    ("msg", {"seq": "1"}, "seq"),
    ("msg", {"seq": True}, "seq"),
    ("msg", {"ack": DELETE}, "ack"),
    ("msg", {"ack": -1}, "ack"),
    ("msg", {"ack": None}, "ack"),
    ("msg", {"id": DELETE}, "id"),
    ("msg", {"id": ""}, "id"),
    ("msg", {"id": "i" * 129}, "id"),
    ("msg", {"id": 1}, "id"),
    ("msg", {"kind": DELETE}, "kind"),
    ("msg", {"kind": ""}, "kind"),
    ("msg", {"kind": "k" * 256}, "kind"),
    ("msg", {"body": DELETE}, "body"),
    ("msg", {"reply_to": ""}, "reply_to"),
    ("msg", {"reply_to": 3}, "reply_to"),
    ("msg", {"reply_to": "r" * 129}, "reply_to"),
    ("msg", {"request": 1}, "request"),
    ("msg", {"request": "yes"}, "request"),
    ("msg", {"request": None}, "request"),
    ("msg", {"request": True, "reply_to": 3}, "reply_to"),
    ("msg", {"request": "yes", "reply_to": "r"}, "request"),
    ("msg", {"reply_to": "r", "error": "boom"}, "error"),
    ("msg", {"reply_to": "r", "error": ["c", "r"]}, "error"),
    ("msg", {"reply_to": "r", "error": {"reason": "r"}}, "error.code"),
    ("msg", {"reply_to": "r", "error": {"code": "", "reason": "r"}}, "error.code"),
    ("msg", {"reply_to": "r", "error": {"code": "c"}}, "error.reason"),
    ("msg", {"reply_to": "r", "error": {"code": "c", "reason": "r" * 4097}}, "error.reason"),
    ("msg", {"error": {"code": "c", "reason": "r"}}, "error"),
    # ack, ping, pong
    ("ack", {"ack": DELETE}, "ack"),
    ("ack", {"ack": -1}, "ack"),
    ("ack", {"ack": "3"}, "ack"),
    ("ack", {"ack": False}, "ack"),
    ("ping", {"ack": DELETE}, "ack"),
    ("ping", {"time": DELETE}, "time"),
    ("ping", {"time": -0.5}, "time"),
    ("ping", {"time": "now"}, "time"),
    ("ping", {"time": None}, "time"),
    ("ping", {"time": float("nan")}, "time"),
    ("ping", {"time": float("inf")}, "time"),
    ("pong", {"ack": 0.5}, "ack"),
    ("pong", {"time": True}, "time"),
    # goodbye
    ("goodbye", {"ack": DELETE}, "ack"),
    ("goodbye", {"reason": DELETE}, "reason"),
    ("goodbye", {"reason": 1}, "reason"),
    ("goodbye", {"reason": "r" * 4097}, "reason"),
    ("goodbye", {"masters": "amp://m2:1"}, "masters"),
    ("goodbye", {"masters": [1]}, "masters"),
    ("goodbye", {"masters": None}, "masters"),
]


@pytest.mark.parametrize(
    ("ftype", "changes", "field"),
    BAD,
    ids=[f"{t}-{f}-{i}" for i, (t, _, f) in enumerate(BAD)],
)
def test_bad_field_is_named(ftype: str, changes: dict[str, Any], field: str) -> None:
    frame = mutate(GOOD[ftype], changes)
    with pytest.raises(ProtocolError) as info:
        wire.CHECKS[ftype](frame)
    assert info.value.code == wire.BAD_FRAME
    assert info.value.reason.startswith(f"{field}: "), info.value.reason


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ([], "frame"),
        ("msg", "frame"),
        (None, "frame"),
        (b"{}", "frame"),
        ({}, "type"),
        ({"type": 1}, "type"),
        ({"type": None}, "type"),
    ],
)
def test_frame_type(frame: Any, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.frame_type(frame)
    assert info.value.code == wire.BAD_FRAME
    assert info.value.reason.startswith(f"{field}: ")


def test_frame_type_of_unknown_type_is_returned() -> None:
    # Whether a type is allowed is the session's decision (``unexpected``), not the shape's.
    assert wire.frame_type({"type": "future"}) == "future"


def test_error_codes() -> None:
    codes = {
        wire.BAD_FRAME,
        wire.TOO_LARGE,
        wire.UNEXPECTED,
        wire.VERSION,
        wire.CODEC,
        wire.AUTH_FAILED,
        wire.DUPLICATE,
        wire.HANDSHAKE_TIMEOUT,
        wire.HEARTBEAT_TIMEOUT,
        wire.SHUTDOWN,
        wire.HANDLER_ERROR,
        wire.NO_HANDLER,
    }
    assert len(codes) == 12
    assert all(c.islower() and " " not in c for c in codes)
