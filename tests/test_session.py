"""Unit tests for :mod:`wiremsg.session`: the sans-IO state machine, driven with no sockets.

Every session reads an injected :class:`~twisted.internet.task.Clock` and a seeded random
source, so nonces, ids and tokens are reproducible and every frame can be asserted exactly.
Low-level tests move frames by hand between two sessions; scenario tests use
:class:`wiremsg.testing.pair.SessionPair`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import pytest
from twisted.internet.task import Clock

from wiremsg import auth, wire
from wiremsg.errors import LinkLost, MessageError, RemoteError, Timeout, WindowFull
from wiremsg.events import (
    Attached,
    Authenticated,
    Closed,
    Detached,
    DropLink,
    Event,
    GoodbyeReceived,
    MessageReceived,
    Paused,
    Rejected,
    ReplyReceived,
    RequestFailed,
    Resumed,
    ResumeRequest,
    SendFailed,
)
from wiremsg.message import Message
from wiremsg.session import DEFAULT_ACK_DELAY, TRANSITIONS, Role, Session, State
from wiremsg.testing.pair import SessionPair

NAME = "w1"
SECRET = "sesame"
WORKER_SEED = 1
MASTER_SEED = 2


# -- helpers ----------------------------------------------------------------------------------


def rng(seed: int) -> auth.RandomSource:
    return random.Random(seed).randbytes


class Expected:
    """The random values a seeded session draws, in the order it draws them."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)
        self.ids = self._r.randbytes(4).hex() + "."

    def draw(self, n: int) -> str:
        return self._r.randbytes(n).hex()


def make_worker(clock: Clock, **kwargs: Any) -> Session:
    return Session.worker(NAME, SECRET, clock.seconds, random=rng(WORKER_SEED), **kwargs)


def make_master(clock: Clock, credentials: Any = None, **kwargs: Any) -> Session:
    creds = credentials if credentials is not None else {NAME: SECRET}.get
    return Session.master(creds, clock.seconds, random=rng(MASTER_SEED), **kwargs)


def decode(data: bytes, codec: str = "json") -> dict[str, Any]:
    value = json.loads(data) if codec == "json" else msgpack.unpackb(data, raw=False)
    assert isinstance(value, dict)
    return value


def encode(frame: dict[str, Any], codec: str = "json") -> bytes:
    if codec == "json":
        return json.dumps(frame, separators=(",", ":")).encode()
    data: bytes = msgpack.packb(frame, use_bin_type=True)
    return data


def frames(session: Session, codec: str = "json") -> list[dict[str, Any]]:
    return [decode(f, codec) for f in session.take_frames()]


def move(src: Session, dst: Session) -> list[bytes]:
    """Deliver every frame ``src`` wrote to ``dst``; return them."""
    out = src.take_frames()
    for frame in out:
        dst.frame_received(frame)
    return out


def to_challenge_sent(clock: Clock, **worker_kwargs: Any) -> tuple[Session, Session]:
    w, m = make_worker(clock, **worker_kwargs), make_master(clock)
    w.connection_made()
    move(w, m)
    return w, m


def to_authenticated(clock: Clock, **kwargs: Any) -> tuple[Session, Session]:
    w, m = to_challenge_sent(clock, **kwargs)
    move(m, w)
    move(w, m)
    assert m.state is State.AUTHENTICATED
    return w, m


def opened(
    clock: Clock,
    worker_kwargs: dict[str, Any] | None = None,
    master_kwargs: dict[str, Any] | None = None,
) -> tuple[Session, Session]:
    """A worker and a master, handshake done, outputs drained."""
    w = make_worker(clock, **(worker_kwargs or {}))
    m = make_master(clock, **(master_kwargs or {}))
    w.connection_made()
    move(w, m)
    move(m, w)
    move(w, m)
    m.accept()
    move(m, w)
    assert (w.state, m.state) == (State.OPEN, State.OPEN)
    assert w.take_events() == [Attached(m.session_id, False)]
    assert m.take_events()[-1] == Attached(m.session_id, False)
    return w, m


def msg_frame(seq: int, ack: int = 0, **extra: Any) -> dict[str, Any]:
    frame = {"type": "msg", "seq": seq, "ack": ack, "id": f"x.{seq}", "kind": "k", "body": {}}
    frame.update(extra)
    return frame


def open_pair(**kwargs: Any) -> SessionPair:
    pair = SessionPair(NAME, SECRET, **kwargs)
    assert pair.master is not None
    assert pair.worker.state is State.OPEN and pair.master.state is State.OPEN
    pair.take_worker_events()
    pair.take_master_events()
    return pair


E = TypeVar("E")


def only(events: list[Event], cls: type[E]) -> E:
    """The one event in ``events``, which must be a ``cls``."""
    assert len(events) == 1 and isinstance(events[0], cls), events
    return events[0]


def received(events: list[Any]) -> list[Any]:
    return [e.message.body for e in events if isinstance(e, MessageReceived)]


# -- the handshake ----------------------------------------------------------------------------


def test_full_handshake_frames_and_events() -> None:
    clock = Clock()
    clock.advance(100)
    w = make_worker(clock, tags=["linux", "x86"], info={"os": "linux"})
    m = make_master(clock)
    wx, mx = Expected(WORKER_SEED), Expected(MASTER_SEED)
    assert (w.role, w.state, m.role, m.state) == (
        Role.WORKER,
        State.IDLE,
        Role.MASTER,
        State.AWAIT_HELLO,
    )
    assert m.next_deadline() == 110.0  # the master's handshake clock runs from its creation
    assert w.next_deadline() is None

    # connection_made → hello
    w.connection_made()
    wn = wx.draw(32)
    hello = w.take_frames()
    assert [decode(f) for f in hello] == [
        {
            "type": "hello",
            "protocol": 1,
            "worker": NAME,
            "codecs": ["json", "msgpack"],
            "tags": ["linux", "x86"],
            "info": {"os": "linux"},
            "nonce": wn,
            "resume": None,
        }
    ]
    assert (w.state, m.state) == (State.HELLO_SENT, State.AWAIT_HELLO)
    assert w.next_deadline() == 110.0

    # hello → challenge
    m.frame_received(hello[0])
    mn = mx.draw(32)
    challenge = m.take_frames()
    assert [decode(f) for f in challenge] == [{"type": "challenge", "nonce": mn}]
    assert (w.state, m.state) == (State.HELLO_SENT, State.CHALLENGE_SENT)
    assert m.take_events() == []

    # challenge → auth
    w.frame_received(challenge[0])
    proof = auth.worker_proof(SECRET, NAME, wn, mn)
    auth_frame = w.take_frames()
    assert [decode(f) for f in auth_frame] == [{"type": "auth", "proof": proof}]
    assert (w.state, m.state) == (State.AUTH_SENT, State.CHALLENGE_SENT)
    assert w.take_events() == []

    # auth → Authenticated: the driver decides
    m.frame_received(auth_frame[0])
    assert m.take_frames() == []
    assert m.take_events() == [Authenticated(NAME, ("linux", "x86"), {"os": "linux"}, None)]
    assert (w.state, m.state) == (State.AUTH_SENT, State.AUTHENTICATED)
    assert m.next_deadline() == 110.0

    # accept → welcome
    m.accept()
    session, token = mx.draw(8), mx.draw(16)
    welcome = m.take_frames()
    assert [decode(f) for f in welcome] == [
        {
            "type": "welcome",
            "session": session,
            "token": token,
            "codec": "json",
            "heartbeat": 5.0,
            "proof": auth.master_proof(SECRET, NAME, wn, mn),
            "resumed": False,
            "ack": 0,
        }
    ]
    assert m.take_events() == [Attached(session, False)]
    assert (m.state, m.session_id, m.name, m.tags, m.info) == (
        State.OPEN,
        session,
        NAME,
        ("linux", "x86"),
        {"os": "linux"},
    )

    w.frame_received(welcome[0])
    assert w.take_events() == [Attached(session, False)]
    assert w.take_frames() == []
    assert (w.state, w.session_id) == (State.OPEN, session)
    assert w.next_deadline() == 105.0  # heartbeat
    assert m.next_deadline() == 105.0


def test_handshake_through_the_pair() -> None:
    pair = SessionPair(NAME, SECRET)
    assert pair.master is not None and pair.master is pair.link
    sid = pair.master.session_id
    assert pair.take_worker_events() == [Attached(sid, False)]
    assert pair.take_master_events() == [
        Authenticated(NAME, (), {}, None),
        Attached(sid, False),
    ]
    assert pair.to_master == pair.to_worker == type(pair.to_master)()


def test_wrong_secret_is_rejected_on_both_sides() -> None:
    clock = Clock()
    w = make_worker(clock)
    m = make_master(clock, {NAME: "not-the-secret"}.get)
    w.connection_made()
    move(w, m)
    move(m, w)
    move(w, m)
    reason = f"authentication failed for worker {NAME!r}"
    reject = m.take_frames()
    assert [decode(f) for f in reject] == [
        {"type": "reject", "code": "auth_failed", "reason": reason}
    ]
    assert m.take_events() == [
        DropLink("auth_failed", reason),
        Closed("auth_failed", f"{reason} (wrong proof)"),
    ]
    assert m.state is State.CLOSED

    w.frame_received(reject[0])
    assert w.take_events() == [
        Rejected("auth_failed", reason),
        DropLink("auth_failed", reason),
        Detached(f"rejected: auth_failed: {reason}"),
    ]
    assert w.take_frames() == []
    assert w.state is State.DETACHED


def _reject_for(credentials: Any) -> list[bytes]:
    clock = Clock()
    w, m = make_worker(clock), make_master(clock, credentials)
    w.connection_made()
    move(w, m)
    move(m, w)
    move(w, m)
    assert m.state is State.CLOSED
    return m.take_frames()


def test_unknown_worker_is_answered_exactly_like_a_wrong_secret() -> None:
    wrong = _reject_for({NAME: "not-the-secret"}.get)
    unknown = _reject_for({"someone-else": SECRET}.get)
    assert len(wrong) == 1
    assert unknown == wrong  # byte for byte


def test_unknown_worker_with_an_empty_secret_proof_is_still_refused() -> None:
    # The master checks an unknown worker against a dummy (empty) secret to do the same
    # work; a worker proving that empty secret must not get in.
    clock = Clock()
    w = Session.worker("stranger", b"", clock.seconds, random=rng(WORKER_SEED))
    m = make_master(clock)
    w.connection_made()
    move(w, m)
    move(m, w)
    move(w, m)
    assert m.state is State.CLOSED
    assert [f["code"] for f in frames(m)] == ["auth_failed"]


def _impostor_welcome(w: Session, proof: str = "right", **changes: Any) -> list[Event]:
    """Play a master by hand: challenge, then a welcome (with ``changes``) whose proof is the
    right one, one made with a guessed secret, or the worker's own proof reflected back.
    Return the worker's events."""
    hello = decode(w.take_frames()[0])
    mn = "c" * 64
    w.frame_received(encode({"type": "challenge", "nonce": mn}))
    proofs = {
        "right": auth.master_proof(SECRET, NAME, hello["nonce"], mn),
        "wrong secret": auth.master_proof("guess", NAME, hello["nonce"], mn),
        "reflected worker proof": frames(w)[0]["proof"],
    }
    welcome = {
        "type": "welcome",
        "session": "s1",
        "token": "t1",
        "codec": "json",
        "heartbeat": 5,
        "proof": proofs[proof],
        "resumed": False,
        "ack": 0,
    }
    welcome.update(changes)
    w.frame_received(encode(welcome))
    return w.take_events()


def test_the_impostor_with_the_right_proof_gets_in() -> None:
    # The control for the next test: only the proof differs there.
    w = make_worker(Clock())
    w.connection_made()
    assert _impostor_welcome(w) == [Attached("s1", False)]


@pytest.mark.parametrize("how", ["wrong secret", "reflected worker proof"])
def test_a_master_that_cannot_prove_the_secret_is_refused(how: str) -> None:
    w = make_worker(Clock())
    w.connection_made()
    reason = "the master failed to prove the secret"
    assert _impostor_welcome(w, how) == [
        DropLink("auth_failed", reason),
        Rejected("auth_failed", reason),
        Detached(f"auth_failed: {reason}"),
    ]
    assert w.take_frames() == []  # a worker never answers the handshake with a frame
    assert (w.state, w.session_id) == (State.DETACHED, "")


# -- version and codec negotiation --------------------------------------------------------------


def test_unsupported_protocol_version_is_rejected() -> None:
    clock = Clock()
    w, m = make_worker(clock), make_master(clock)
    w.connection_made()
    hello = frames(w)[0]
    m.frame_received(encode({**hello, "protocol": 2}))
    reason = "protocol 2 not supported; this master speaks 1"
    assert frames(m) == [{"type": "reject", "code": "version", "reason": reason}]
    assert m.take_events() == [DropLink("version", reason), Closed("version", reason)]


@pytest.mark.parametrize(
    ("worker_codecs", "master_codecs", "chosen"),
    [
        (("msgpack", "json"), ("msgpack", "json"), "msgpack"),
        (("msgpack", "json"), ("json", "msgpack"), "msgpack"),  # the worker's order wins
        (("json", "msgpack"), ("msgpack", "json"), "json"),
        (("json",), ("msgpack", "json"), "json"),
        (("msgpack",), ("json", "msgpack"), "msgpack"),
    ],
)
def test_codec_negotiation(
    worker_codecs: tuple[str, ...], master_codecs: tuple[str, ...], chosen: str
) -> None:
    clock = Clock()
    w, m = opened(clock, {"codecs": worker_codecs}, {"codecs": master_codecs})
    w.send("k", {"n": 1})
    data = w.take_frames()
    assert decode(data[0], chosen) == {
        "type": "msg",
        "seq": 1,
        "ack": 0,
        "id": Expected(WORKER_SEED).ids + "1",
        "kind": "k",
        "body": {"n": 1},
    }
    m.frame_received(data[0])
    assert received(m.take_events()) == [{"n": 1}]
    m.send("k", {"n": 2})
    w.frame_received(m.take_frames()[0])
    assert received(w.take_events()) == [{"n": 2}]


def test_no_common_codec_is_rejected() -> None:
    clock = Clock()
    w = make_worker(clock, codecs=("msgpack",))
    m = make_master(clock, codecs=("json",))
    w.connection_made()
    move(w, m)
    reason = "no common codec; this master speaks json"
    assert frames(m) == [{"type": "reject", "code": "codec", "reason": reason}]
    assert m.take_events() == [DropLink("codec", reason), Closed("codec", reason)]


def test_unknown_codec_in_constructor() -> None:
    with pytest.raises(ValueError, match="unknown codec 'xml'"):
        make_worker(Clock(), codecs=("json", "xml"))


@pytest.mark.parametrize(
    ("changes", "code", "reason"),
    [
        (
            {"codec": "msgpack"},
            "codec",
            "master chose codec 'msgpack', which this worker did not offer",
        ),
        ({"resumed": True}, "bad_frame", "resumed a session this worker never had"),
    ],
)
def test_worker_checks_the_welcome(changes: dict[str, Any], code: str, reason: str) -> None:
    clock = Clock()
    w = make_worker(clock, codecs=("json",))
    w.connection_made()
    events = _impostor_welcome(w, **changes)
    assert events == [DropLink(code, reason), Detached(f"{code}: {reason}")]
    assert w.state is State.DETACHED


def test_worker_refuses_a_resumed_welcome_acknowledging_unsent_messages() -> None:
    pair = open_pair()
    pair.worker.send("k", {"n": 1})
    pair.pump()
    pair.cut()
    pair.take_worker_events()
    w = pair.worker
    session = w.session_id
    w.connection_made()
    events = _impostor_welcome(w, resumed=True, session=session, ack=5)
    reason = "welcome acknowledges messages never sent"
    assert events == [DropLink("bad_frame", reason), Detached(f"bad_frame: {reason}")]


# -- the transition table: everything not in it is refused --------------------------------------

SAMPLES: dict[str, dict[str, Any]] = {
    "hello": {
        "type": "hello",
        "protocol": 1,
        "worker": NAME,
        "codecs": ["json"],
        "tags": [],
        "info": {},
        "nonce": "d" * 64,
        "resume": None,
    },
    "challenge": {"type": "challenge", "nonce": "d" * 64},
    "auth": {"type": "auth", "proof": "d" * 64},
    "welcome": {
        "type": "welcome",
        "session": "s",
        "token": "t",
        "codec": "json",
        "heartbeat": 5,
        "proof": "d" * 64,
        "resumed": False,
        "ack": 0,
    },
    "reject": {"type": "reject", "code": "nope", "reason": ""},
    "msg": msg_frame(1),
    "ack": {"type": "ack", "ack": 0},
    "ping": {"type": "ping", "ack": 0, "time": 0},
    "pong": {"type": "pong", "ack": 0, "time": 0},
    "goodbye": {"type": "goodbye", "ack": 0, "reason": ""},
    "error": {"type": "error", "code": "oops", "reason": ""},
    "bogus": {"type": "bogus"},
}

LINKED_STATES = {
    Role.WORKER: (State.HELLO_SENT, State.AUTH_SENT, State.OPEN),
    Role.MASTER: (State.AWAIT_HELLO, State.CHALLENGE_SENT, State.AUTHENTICATED, State.OPEN),
}


def session_in(role: Role, state: State) -> Session:
    """A session of ``role`` in ``state`` with a link up, its outputs drained."""
    clock = Clock()
    w, m = make_worker(clock), make_master(clock)
    steps: list[tuple[Role, State, Callable[[], object]]] = [
        (Role.MASTER, State.AWAIT_HELLO, lambda: None),
        (Role.WORKER, State.HELLO_SENT, w.connection_made),
        (Role.MASTER, State.CHALLENGE_SENT, lambda: move(w, m)),
        (Role.WORKER, State.AUTH_SENT, lambda: move(m, w)),
        (Role.MASTER, State.AUTHENTICATED, lambda: move(w, m)),
        (Role.MASTER, State.OPEN, m.accept),
        (Role.WORKER, State.OPEN, lambda: move(m, w)),
    ]
    for step_role, step_state, action in steps:
        action()
        if (step_role, step_state) == (role, state):
            session = w if role is Role.WORKER else m
            assert session.state is state
            session.take_frames()
            session.take_events()
            return session
    raise AssertionError("unreachable")


def test_the_transition_table_is_exactly_the_documented_one() -> None:
    w, m = Role.WORKER, Role.MASTER
    expected = {
        (m, State.AWAIT_HELLO, "hello"),
        (m, State.CHALLENGE_SENT, "auth"),
        (w, State.HELLO_SENT, "challenge"),
        (w, State.HELLO_SENT, "reject"),
        (w, State.AUTH_SENT, "welcome"),
        (w, State.AUTH_SENT, "reject"),
    } | {(r, State.OPEN, t) for r in (w, m) for t in wire.DATA_TYPES}
    assert set(TRANSITIONS) == expected
    for (_, _, ftype), handler in TRANSITIONS.items():
        assert handler == f"_on_{ftype}"
        assert ftype in wire.CHECKS
    assert set(wire.CHECKS) == wire.HANDSHAKE_TYPES | wire.DATA_TYPES
    assert set(SAMPLES) == set(wire.CHECKS) | {"bogus"}


REFUSED = [
    (role, state, ftype)
    for role, states in LINKED_STATES.items()
    for state in states
    for ftype in sorted(SAMPLES)
    if (role, state, ftype) not in TRANSITIONS
]


@pytest.mark.parametrize(("role", "state", "ftype"), REFUSED)
def test_every_frame_not_in_the_table_is_a_protocol_error(
    role: Role, state: State, ftype: str
) -> None:
    session = session_in(role, state)
    session.frame_received(encode(SAMPLES[ftype]))
    if state is State.AUTHENTICATED:
        reason = "frame before welcome was sent"
    else:
        reason = f"{ftype!r} frame not allowed in state {state.value}"
    out = frames(session)
    events = session.take_events()
    assert events[0] == DropLink("unexpected", reason)
    if role is Role.MASTER:
        kind = "error" if state is State.OPEN else "reject"
        assert out == [{"type": kind, "code": "unexpected", "reason": reason}]
        assert events[1:] == [Closed("unexpected", reason)]
        assert session.state is State.CLOSED
    else:
        if state is State.OPEN:
            assert out == [{"type": "error", "code": "unexpected", "reason": reason}]
            assert session.session_id == ""  # a broken session is not resumed
        else:
            assert out == []
        assert events[1:] == [Detached(f"unexpected: {reason}")]
        assert session.state is State.DETACHED


@pytest.mark.parametrize(("role", "state", "ftype"), sorted(TRANSITIONS, key=str))
def test_every_frame_in_the_table_is_dispatched(role: Role, state: State, ftype: str) -> None:
    session = session_in(role, state)
    session.frame_received(encode(SAMPLES[ftype]))
    events = session.take_events()
    assert not any(getattr(e, "code", None) == "unexpected" for e in events), events


@pytest.mark.parametrize("state", [State.IDLE, State.DETACHED, State.CLOSED])
@pytest.mark.parametrize("ftype", sorted(SAMPLES))
def test_frames_without_a_link_are_ignored(state: State, ftype: str) -> None:
    clock = Clock()
    if state is State.IDLE:
        sessions = [make_worker(clock)]
    else:
        sessions = list(opened(clock))
        for session in sessions:
            session.connection_lost() if state is State.DETACHED else session.close()
    for session in sessions:
        session.take_events()
        stats = (session.stats.bytes_received, session.stats.messages_received)
        session.frame_received(encode(SAMPLES[ftype]))
        session.frame_received(b"\xff garbage")
        assert session.take_frames() == []
        assert session.take_events() == []
        assert session.state is state
        assert (session.stats.bytes_received, session.stats.messages_received) == stats


# -- malformed frames -----------------------------------------------------------------------------

HELLO = SAMPLES["hello"]

MALFORMED_HANDSHAKE = [
    pytest.param(b"\xff\xfe garbage", "bad_frame", "invalid JSON", id="garbage"),
    pytest.param(b"", "bad_frame", "invalid JSON", id="empty"),
    pytest.param(b"[1, 2]", "bad_frame", "frame: must be a map, not list", id="list"),
    pytest.param(b'"hello"', "bad_frame", "frame: must be a map, not str", id="string"),
    pytest.param(b"NaN", "bad_frame", "invalid JSON", id="nan"),
    pytest.param(b'{"no": "type"}', "bad_frame", "type: missing or not a string", id="no-type"),
    pytest.param(b'{"type": 5}', "bad_frame", "type: missing or not a string", id="int-type"),
    pytest.param(
        encode({k: v for k, v in HELLO.items() if k != "nonce"}),
        "bad_frame",
        "nonce: must be 64 lowercase hex digits",
        id="missing-nonce",
    ),
    pytest.param(
        encode({**HELLO, "nonce": "D" * 64}),
        "bad_frame",
        "nonce: must be 64 lowercase hex digits",
        id="uppercase-nonce",
    ),
    pytest.param(
        encode({**HELLO, "worker": 5}),
        "bad_frame",
        "worker: missing or not a string",
        id="int-worker",
    ),
    pytest.param(
        encode({**HELLO, "worker": ""}), "bad_frame", "worker: must not be empty", id="no-name"
    ),
    pytest.param(
        encode({**HELLO, "protocol": "1"}),
        "bad_frame",
        "protocol: missing or not a non-negative integer",
        id="str-protocol",
    ),
    pytest.param(
        encode({**HELLO, "codecs": []}),
        "bad_frame",
        "codecs: must name at least one codec",
        id="no-codecs",
    ),
    pytest.param(
        encode({**HELLO, "codecs": "json"}),
        "bad_frame",
        "codecs: must be a list of at most 8 strings",
        id="str-codecs",
    ),
    pytest.param(
        encode({**HELLO, "info": []}), "bad_frame", "info: missing or not a map", id="list-info"
    ),
    pytest.param(
        encode({**HELLO, "resume": "x"}),
        "bad_frame",
        "resume: must be a map or null",
        id="str-resume",
    ),
    pytest.param(
        encode({**HELLO, "resume": {"session": "s", "token": "t", "ack": -1}}),
        "bad_frame",
        "ack: missing or not a non-negative integer",
        id="negative-resume-ack",
    ),
    pytest.param(
        encode({**HELLO, "info": {"pad": "x" * wire.MAX_HANDSHAKE_FRAME}}),
        "too_large",
        "exceeds the limit of 65536",
        id="oversized",
    ),
]


@pytest.mark.parametrize(("data", "code", "reason"), MALFORMED_HANDSHAKE)
def test_malformed_handshake_frames_are_rejected(data: bytes, code: str, reason: str) -> None:
    clock = Clock()
    m = make_master(clock)
    m.frame_received(data)
    out = frames(m)
    assert len(out) == 1
    assert out[0]["type"] == "reject" and out[0]["code"] == code
    assert reason in out[0]["reason"]
    events = m.take_events()
    assert events == [DropLink(code, out[0]["reason"]), Closed(code, out[0]["reason"])]
    assert m.stats.bytes_received == len(data)


def test_oversized_handshake_frame_size_in_reason() -> None:
    m = make_master(Clock())
    data = b" " * (wire.MAX_HANDSHAKE_FRAME + 1)
    m.frame_received(data)
    assert frames(m) == [
        {
            "type": "reject",
            "code": "too_large",
            "reason": f"frame of {len(data)} bytes exceeds the limit of 65536",
        }
    ]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ({**msg_frame(1), "seq": "1"}, "seq: missing or not a positive integer"),
        (msg_frame(0), "seq: missing or not a positive integer"),
        (msg_frame(1, ack=True), "ack: missing or not a non-negative integer"),
        ({k: v for k, v in msg_frame(1).items() if k != "body"}, "body: missing"),
        (msg_frame(1, kind=""), "kind: must not be empty"),
        (msg_frame(1, request="yes"), "request: not a boolean"),
        (msg_frame(1, error="boom"), "error: must be a map"),
        (
            msg_frame(1, error={"code": "c", "reason": "r"}),
            "error: only a reply may carry an error",
        ),
        ({"type": "ping", "ack": 0, "time": "now"}, "time: missing or not a"),
        ({"type": "goodbye", "ack": 0, "reason": "", "masters": [1]}, "masters: must be a list"),
        ({"type": "error", "code": "", "reason": ""}, "code: must not be empty"),
    ],
)
def test_malformed_data_frames_are_errors(frame: dict[str, Any], reason: str) -> None:
    _w, m = opened(Clock())
    m.frame_received(encode(frame))
    out = frames(m)
    assert len(out) == 1 and out[0]["type"] == "error" and out[0]["code"] == "bad_frame"
    assert out[0]["reason"].startswith(reason)
    assert m.take_events() == [
        DropLink("bad_frame", out[0]["reason"]),
        Closed("bad_frame", out[0]["reason"]),
    ]


def test_data_frame_larger_than_max_frame_is_too_large() -> None:
    _w, m = opened(Clock(), master_kwargs={"max_frame": 1000})
    data = encode(msg_frame(1, body="x" * 2000))
    m.frame_received(data)
    reason = f"frame of {len(data)} bytes exceeds the limit of 1000"
    assert frames(m) == [{"type": "error", "code": "too_large", "reason": reason}]


def test_garbage_in_the_msgpack_phase() -> None:
    _w, m = opened(Clock(), {"codecs": ("msgpack",)})
    m.frame_received(b"\xc1")  # never used in msgpack
    (out,) = frames(m, "msgpack")
    assert (out["type"], out["code"]) == ("error", "bad_frame")
    assert out["reason"].startswith("invalid msgpack")


def test_worker_refuses_garbage_during_the_handshake() -> None:
    w = make_worker(Clock())
    w.connection_made()
    w.take_frames()
    w.frame_received(b"{not json")
    events = w.take_events()
    assert len(events) == 2
    assert isinstance(events[0], DropLink) and events[0].code == "bad_frame"
    assert events[1] == Detached(f"bad_frame: {events[0].reason}")
    assert w.take_frames() == []


def test_worker_answers_garbage_in_the_data_phase_with_an_error() -> None:
    w, _m = opened(Clock())
    w.frame_received(b"[]")
    reason = "frame: must be a map, not list"
    assert frames(w) == [{"type": "error", "code": "bad_frame", "reason": reason}]
    assert w.take_events() == [DropLink("bad_frame", reason), Detached(f"bad_frame: {reason}")]
    assert w.session_id == ""


# -- handshake timeout --------------------------------------------------------------------------


def test_master_handshake_timeout() -> None:
    clock = Clock()
    m = make_master(clock, handshake_timeout=3.0)
    assert m.next_deadline() == 3.0
    clock.advance(2.9)
    m.tick()
    assert m.take_frames() == [] and m.take_events() == []
    clock.advance(0.1)
    m.tick()
    reason = "handshake did not complete in time"
    assert frames(m) == [{"type": "reject", "code": "handshake_timeout", "reason": reason}]
    assert m.take_events() == [
        DropLink("handshake_timeout", reason),
        Closed("handshake_timeout", reason),
    ]
    assert m.next_deadline() is None


def test_master_handshake_timeout_while_the_driver_decides() -> None:
    clock = Clock()
    _w, m = to_authenticated(clock)
    m.take_events()
    clock.advance(10)
    m.tick()
    assert [f["code"] for f in frames(m)] == ["handshake_timeout"]
    assert m.state is State.CLOSED


def test_worker_handshake_timeout() -> None:
    clock = Clock()
    w = make_worker(clock, handshake_timeout=4.0)
    clock.advance(1)
    w.connection_made()
    w.take_frames()
    assert w.next_deadline() == 5.0
    clock.advance(4)
    w.tick()
    reason = "handshake did not complete in time"
    assert w.take_frames() == []
    assert w.take_events() == [
        DropLink("handshake_timeout", reason),
        Detached(f"handshake_timeout: {reason}"),
    ]
    assert w.state is State.DETACHED
    assert w.next_deadline() is None


# -- seq and ack ----------------------------------------------------------------------------------


def test_acks_piggyback_on_messages() -> None:
    clock = Clock()
    w, m = opened(clock)
    w.send("k", {"n": 1})
    w.send("k", {"n": 2})
    move(w, m)
    assert received(m.take_events()) == [{"n": 1}, {"n": 2}]
    assert w.in_flight == 2
    m.send("r", [1])
    out = frames(m)
    assert [(f["type"], f["seq"], f["ack"]) for f in out] == [("msg", 1, 2)]
    assert m.next_deadline() == 5.0  # no bare ack is due: it went with the message
    w.frame_received(encode(out[0]))
    assert w.in_flight == 0
    assert w.writable


def test_bare_ack_after_ack_delay() -> None:
    clock = Clock()
    w, m = opened(clock, master_kwargs={"ack_delay": 0.5})
    w.send("k")
    move(w, m)
    assert m.take_frames() == []
    assert m.next_deadline() == 0.5
    clock.advance(0.4)
    m.tick()
    assert m.take_frames() == []
    clock.advance(0.1)
    m.tick()
    assert frames(m) == [{"type": "ack", "ack": 1}]
    assert m.next_deadline() == 5.5  # heartbeat from the ack
    assert w.in_flight == 1
    w.frame_received(encode({"type": "ack", "ack": 1}))
    assert w.in_flight == 0


def test_immediate_ack_after_ack_every_messages() -> None:
    clock = Clock()
    w, m = opened(clock, master_kwargs={"ack_every": 3})
    for n in range(7):
        w.send("k", n)
    out = []
    for data in w.take_frames():
        m.frame_received(data)
        out.extend(frames(m))
    assert out == [{"type": "ack", "ack": 3}, {"type": "ack", "ack": 6}]
    assert received(m.take_events()) == list(range(7))
    assert m.next_deadline() == DEFAULT_ACK_DELAY


def test_immediate_ack_after_ack_bytes() -> None:
    clock = Clock()
    w, m = opened(clock, master_kwargs={"ack_bytes": 150})
    w.send("k", "x" * 100)  # one frame of ~150 bytes
    data = w.take_frames()[0]
    assert len(data) >= 150
    m.frame_received(data)
    assert frames(m) == [{"type": "ack", "ack": 1}]


def test_duplicate_seq_is_dropped() -> None:
    w, m = opened(Clock())
    w.send("k", {"n": 1})
    (data,) = w.take_frames()
    m.frame_received(data)
    m.frame_received(data)
    assert received(m.take_events()) == [{"n": 1}]
    assert m.take_frames() == []
    assert m.stats.duplicates_dropped == 1
    assert m.stats.messages_received == 1
    assert m.state is State.OPEN


def test_seq_gap_is_a_protocol_error() -> None:
    _w, m = opened(Clock())
    m.frame_received(encode(msg_frame(2)))
    reason = "seq 2 skips from 0"
    assert frames(m) == [{"type": "error", "code": "bad_frame", "reason": reason}]
    assert m.take_events() == [DropLink("bad_frame", reason), Closed("bad_frame", reason)]


@pytest.mark.parametrize("ftype", ["msg", "ack", "ping", "pong", "goodbye"])
def test_ack_beyond_sent_is_a_protocol_error(ftype: str) -> None:
    w, _m = opened(Clock())
    w.send("k")
    w.take_frames()
    frame = {**SAMPLES[ftype], "ack": 2}
    w.frame_received(encode(frame))
    reason = "ack 2 for messages never sent (last seq 1)"
    assert frames(w) == [{"type": "error", "code": "bad_frame", "reason": reason}]
    assert w.take_events() == [
        DropLink("bad_frame", reason),
        Paused(),  # the unacknowledged message waits for the next session
        Detached(f"bad_frame: {reason}"),
    ]


def test_old_acks_are_harmless() -> None:
    w, _m = opened(Clock())
    for n in range(3):
        w.send("k", n)
    w.take_frames()
    w.frame_received(encode({"type": "ack", "ack": 2}))
    assert w.in_flight == 1
    w.frame_received(encode({"type": "ack", "ack": 1}))
    w.frame_received(encode({"type": "ack", "ack": 0}))
    assert w.in_flight == 1
    assert w.take_events() == [] and w.take_frames() == []


# -- heartbeats ---------------------------------------------------------------------------------


def test_ping_after_idle_and_pong_gives_rtt() -> None:
    clock = Clock()
    w, m = opened(clock)
    assert w.next_deadline() == 5.0
    clock.advance(4.99)
    w.tick()
    assert w.take_frames() == []
    clock.advance(0.01)
    w.tick()
    ping = frames(w)
    assert ping == [{"type": "ping", "ack": 0, "time": 5.0}]
    m.frame_received(encode(ping[0]))
    pong = frames(m)
    assert pong == [{"type": "pong", "ack": 0, "time": 5.0}]
    clock.advance(0.25)
    assert w.stats.rtt is None
    w.frame_received(encode(pong[0]))
    assert w.stats.rtt == 0.25
    assert w.take_events() == [] and m.take_events() == []


def test_pong_from_the_future_is_ignored() -> None:
    clock = Clock()
    w, _m = opened(clock)
    w.frame_received(encode({"type": "pong", "ack": 0, "time": 100}))
    assert w.stats.rtt is None


def test_the_master_heartbeat_wins() -> None:
    clock = Clock()
    w, m = opened(clock, {"heartbeat": 1.0}, {"heartbeat": 2.5})
    assert (w.heartbeat, m.heartbeat) == (2.5, 2.5)
    assert w.next_deadline() == 2.5


def test_sending_defers_the_ping() -> None:
    clock = Clock()
    w, _m = opened(clock)
    clock.advance(3)
    w.send("k")
    w.take_frames()
    assert w.next_deadline() == 8.0
    clock.advance(5)
    w.tick()
    assert [f["type"] for f in frames(w)] == ["ping"]


@pytest.mark.parametrize("side", ["worker", "master"])
def test_dead_peer_after_dead_after_intervals(side: str) -> None:
    clock = Clock()
    w, m = opened(clock, {"dead_after": 4}, {"heartbeat": 2.0, "dead_after": 4, "grace": 30})
    session = w if side == "worker" else m
    pings = 0
    for _ in range(7):
        clock.advance(1.0)
        session.tick()
        pings += len(session.take_frames())
        assert session.take_events() == []
    assert pings == 3  # at 2, 4 and 6
    clock.advance(1.0)
    session.tick()
    assert session.take_events() == [
        DropLink("heartbeat_timeout", "peer silent for 8.0s"),
        Detached("heartbeat timeout after 8.0s"),
    ]
    assert session.state is State.DETACHED
    assert session.next_deadline() == (38.0 if side == "master" else None)


def test_any_frame_keeps_the_peer_alive() -> None:
    clock = Clock()
    w, m = opened(clock)
    for _ in range(10):
        clock.advance(5)
        w.tick()
        move(w, m)  # the worker's ping
        move(m, w)  # the master's pong
        m.tick()
    assert w.state is State.OPEN and m.state is State.OPEN
    assert w.take_events() == [] and m.take_events() == []


# -- request and reply --------------------------------------------------------------------------


def test_request_and_reply() -> None:
    clock = Clock()
    w, m = opened(clock)
    req = w.request("build", {"n": 1}, timeout=10)
    out = w.take_frames()
    assert decode(out[0])["request"] is True
    m.frame_received(out[0])
    event = only(m.take_events(), MessageReceived)
    assert event == MessageReceived(req, True)
    rep = m.reply(event.message, {"ok": True})
    assert rep.reply_to == req.id and rep.kind == "build"
    data = frames(m)
    assert data == [
        {
            "type": "msg",
            "seq": 1,
            "ack": 1,
            "id": rep.id,
            "kind": "build",
            "body": {"ok": True},
            "reply_to": req.id,
        }
    ]
    w.frame_received(encode(data[0]))
    assert w.take_events() == [ReplyReceived(rep)]
    clock.advance(10)
    w.tick()
    assert w.take_events() == []  # the request is done: no timeout follows


def test_error_reply_is_a_remote_error() -> None:
    w, m = opened(Clock())
    req = w.request("build")
    move(w, m)
    event = only(m.take_events(), MessageReceived)
    m.reply_error(event.message, "boom", "it broke")
    (data,) = m.take_frames()
    assert decode(data)["error"] == {"code": "boom", "reason": "it broke"}
    w.frame_received(data)
    failed = only(w.take_events(), RequestFailed)
    assert isinstance(failed, RequestFailed) and failed.request_id == req.id
    assert isinstance(failed.error, RemoteError)
    assert (failed.error.code, failed.error.reason) == ("boom", "it broke")


def test_error_reply_code_defaults_and_is_bounded() -> None:
    w, m = opened(Clock())
    w.request("build")
    move(w, m)
    event = only(m.take_events(), MessageReceived)
    m.reply_error(event.message, "", "r" * 5000)
    error = frames(m)[0]["error"]
    assert error == {"code": "handler_error", "reason": "r" * 4096}


def test_request_timeout_and_late_reply() -> None:
    clock = Clock()
    w, m = opened(clock)
    req = w.request("build", timeout=2.0)
    assert w.next_deadline() == 2.0
    move(w, m)
    event = only(m.take_events(), MessageReceived)
    clock.advance(2.0)
    w.tick()
    failed = only(w.take_events(), RequestFailed)
    assert isinstance(failed, RequestFailed) and failed.request_id == req.id
    assert isinstance(failed.error, Timeout)
    assert str(failed.error) == f"no reply to {req.id}"
    m.reply(event.message, "late")
    move(m, w)
    assert w.take_events() == []  # the late reply is dropped
    assert w.stats.messages_received == 1  # but it was received and is acknowledged


def test_cancelled_request_drops_the_reply() -> None:
    clock = Clock()
    w, m = opened(clock)
    req = w.request("build", timeout=2.0)
    move(w, m)
    event = only(m.take_events(), MessageReceived)
    w.cancel_request(req.id)
    w.cancel_request("no-such-id")
    assert w.next_deadline() == 5.0
    m.reply(event.message)
    move(m, w)
    assert w.take_events() == []


def test_reply_to_a_request_with_a_zero_deadline_is_not_lost() -> None:
    # Regression: a deadline of exactly 0.0 was mistaken for "no such request" and the reply
    # (and the request) vanished without an event.
    clock = Clock()
    w, m = opened(clock)
    req = w.request("build", timeout=0.0)
    move(w, m)
    event = only(m.take_events(), MessageReceived)
    m.reply(event.message, "ok")
    move(m, w)
    reply = only(w.take_events(), ReplyReceived)
    assert isinstance(reply, ReplyReceived) and reply.message.reply_to == req.id
    w.tick()
    assert w.take_events() == []


class _ErrorLike:
    """Compares equal to an exception of ``cls`` with text ``text`` (exceptions compare by
    identity, so events carrying them need this)."""

    def __init__(self, cls: type[BaseException], text: str) -> None:
        self.cls, self.text = cls, text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.cls) and str(other) == self.text

    def __hash__(self) -> int:  # pragma: no cover - never hashed
        return 0

    def __repr__(self) -> str:
        return f"{self.cls.__name__}({self.text!r})"


def test_close_fails_pending_requests() -> None:
    w, _m = opened(Clock())
    r1 = w.request("a")
    r2 = w.request("b", timeout=10)
    w.close("stopping")
    lost = _ErrorLike(LinkLost, "session closed: stopping")
    assert w.take_events() == [
        DropLink("shutdown", "stopping"),
        RequestFailed(r1.id, lost),  # type: ignore[arg-type]
        RequestFailed(r2.id, lost),  # type: ignore[arg-type]
        Closed("shutdown", "stopping"),
    ]
    assert w.next_deadline() is None


def test_requests_survive_a_detach() -> None:
    pair = open_pair()
    req = pair.worker.request("build", timeout=30)
    pair.cut()
    pair.reconnect()
    master = pair.master
    assert master is not None
    (got,) = [e for e in pair.take_master_events() if isinstance(e, MessageReceived)]
    assert got == MessageReceived(req, True)
    rep = master.reply(got.message, "done")
    pair.pump()
    assert [e for e in pair.take_worker_events() if isinstance(e, ReplyReceived)] == [
        ReplyReceived(rep)
    ]
    assert rep.reply_to == req.id


def test_request_times_out_while_detached() -> None:
    pair = open_pair()
    req = pair.worker.request("build", timeout=3)
    pair.cut()
    pair.take_worker_events()
    assert pair.worker.next_deadline() == 3.0
    pair.advance(3)
    assert pair.take_worker_events() == [
        RequestFailed(req.id, _ErrorLike(Timeout, f"no reply to {req.id}"))  # type: ignore[arg-type]
    ]


# -- flow control: the window ---------------------------------------------------------------------


def test_window_pauses_and_resumes() -> None:
    w, _m = opened(Clock(), {"window_messages": 2})
    assert w.writable
    w.send("k", 1)
    assert w.take_events() == []
    w.send("k", 2)
    assert w.take_events() == [Paused()]
    assert not w.writable
    w.send("k", 3)
    w.send("k", 4)
    assert w.take_events() == []
    assert [f["seq"] for f in frames(w)] == [1, 2]
    assert w.in_flight == 4
    w.frame_received(encode({"type": "ack", "ack": 1}))
    assert [f["seq"] for f in frames(w)] == [3]
    assert w.take_events() == []  # the window is full again
    w.frame_received(encode({"type": "ack", "ack": 3}))
    assert [f["seq"] for f in frames(w)] == [4]
    assert w.take_events() == [Resumed()]
    assert w.writable
    assert w.in_flight == 1


def test_window_bytes_bound() -> None:
    w, _m = opened(Clock(), {"window_bytes": 100})
    w.send("k", "x" * 80)  # about 120 bytes: alone it still goes
    assert w.take_events() == [Paused()]
    w.send("k", "y")
    assert len(w.take_frames()) == 1
    w.frame_received(encode({"type": "ack", "ack": 1}))
    assert [f["body"] for f in frames(w)] == ["y"]
    assert w.take_events() == [Resumed()]


def test_window_full_beyond_max_pending() -> None:
    w, _m = opened(Clock(), {"window_messages": 1, "max_pending": 2})
    w.send("k", 1)  # in flight
    w.send("k", 2)  # pending
    w.send("k", 3)  # pending
    with pytest.raises(WindowFull, match="2 messages already wait"):
        w.send("k", 4)
    with pytest.raises(WindowFull):
        w.request("k")
    assert w.in_flight == 3


def test_window_full_by_pending_bytes() -> None:
    w, _m = opened(Clock(), {"window_messages": 1, "max_pending_bytes": 100})
    w.send("k")
    w.send("k", "x" * 200)
    with pytest.raises(WindowFull):
        w.send("k")


def test_sends_queue_while_detached_and_pause() -> None:
    w = make_worker(Clock())
    assert not w.writable
    w.send("k", 1)
    assert w.take_events() == [Paused()]
    assert w.take_frames() == []
    assert w.in_flight == 1


# -- application input checks ---------------------------------------------------------------------


def test_invalid_messages_are_refused_before_a_byte_is_sent() -> None:
    w, _m = opened(Clock())
    with pytest.raises(MessageError, match="kind"):
        w.send("")
    with pytest.raises(MessageError, match=r"body\.x"):
        w.send("k", {"x": {1, 2}})
    assert w.take_frames() == []
    w.send("k")
    assert frames(w)[0]["body"] == {}


def test_an_oversized_message_uses_up_no_seq() -> None:
    # Regression: the seq was taken before encoding, so a message too large to encode left a
    # gap and the next message was a protocol error at the peer.
    kwargs = {"max_frame": 2000}
    w, m = opened(Clock(), kwargs, kwargs)
    with pytest.raises(MessageError, match="exceeds the limit of 2000"):
        w.send("k", "\u00fc" * 1500)  # under the size estimate, over the limit as UTF-8
    assert w.in_flight == 0
    w.send("k", "small")
    move(w, m)
    assert received(m.take_events()) == ["small"]
    assert m.state is State.OPEN


# -- resume ---------------------------------------------------------------------------------------


def test_resume_within_grace_loses_and_duplicates_nothing() -> None:
    pair = open_pair()
    master = pair.master
    assert master is not None
    sid = pair.worker.session_id
    to_worker = []
    for n in range(3):
        pair.worker.send("w", n)
        to_worker.append(master.send("m", n))
    pair.step()  # w0 arrives
    pair.step()  # m0 arrives
    lost = pair.cut()
    assert len(lost) == 4  # the rest was in flight and is gone
    assert pair.take_worker_events() == [
        MessageReceived(to_worker[0], False),
        Paused(),
        Detached("link cut"),
    ]
    assert pair.take_master_events() == [
        MessageReceived(Message.trusted("w", 0, pair.worker._ids + "1"), False),
        Paused(),
        Detached("link cut"),
    ]
    for n in range(3, 5):
        pair.worker.send("w", n)
        to_worker.append(master.send("m", n))
    pair.clock.advance(30)  # within the grace period
    pair.reconnect()
    worker_events = pair.take_worker_events()
    master_events = pair.take_master_events()
    assert (
        worker_events
        == [
            Attached(sid, True),
            Resumed(),  # w3 and w4 went out at once: nothing waits any more
            *(MessageReceived(m, False) for m in to_worker[1:]),
        ]
    )
    assert master_events[:2] == [
        Authenticated(NAME, (), {}, ResumeRequest(sid, _token(pair), 1)),
        Attached(sid, True),
    ]
    assert received(master_events) == [1, 2, 3, 4]
    assert master_events[2] == Resumed()
    assert pair.master is master and pair.link is master
    assert pair.masters[1].state is State.CLOSED
    assert pair.worker.stats.resumes == master.stats.resumes == 1
    assert pair.worker.stats.retransmitted == 2  # w1, w2 (w0 was received)
    assert master.stats.retransmitted == 2  # m1, m2
    assert pair.worker.stats.duplicates_dropped == master.stats.duplicates_dropped == 0
    pair.advance(1)
    assert pair.worker.in_flight == master.in_flight == 0


def _token(pair: SessionPair) -> str:
    return pair.worker._token  # the token is private; the test only compares it


def test_resume_welcome_carries_the_master_ack() -> None:
    pair = open_pair()
    pair.worker.send("w", 1)
    pair.pump()
    pair.cut()
    pair.connect(pump=False)
    (hello,) = [decode(f) for f in pair.to_master]
    assert hello["resume"] == {"session": pair.worker.session_id, "token": _token(pair), "ack": 0}
    pair.step()  # hello
    pair.step()  # challenge
    pair.step()  # auth → take_over → welcome
    welcome = decode(pair.to_worker[0])
    assert (welcome["resumed"], welcome["ack"], welcome["session"]) == (
        True,
        1,
        pair.worker.session_id,
    )


def test_grace_expiry_closes_the_master_session() -> None:
    pair = open_pair(master_options={"grace": 20})
    master = pair.master
    assert master is not None
    req = master.request("ask")
    pair.pump()
    pair.cut()
    pair.take_master_events()
    assert master.next_deadline() == 20.0
    pair.advance(19.9)
    assert pair.take_master_events() == []
    pair.advance(0.1)
    reason = "worker did not resume within 20s"
    assert pair.take_master_events() == [
        RequestFailed(req.id, _ErrorLike(LinkLost, f"session closed: {reason}")),  # type: ignore[arg-type]
        Closed("grace_expired", reason),
    ]
    assert master.state is State.CLOSED
    with pytest.raises(LinkLost, match="the session is closed"):
        master.send("k")
    # The worker comes back too late: it gets a fresh session.
    pair.take_worker_events()
    pair.reconnect()
    assert pair.master is not master
    assert [e for e in pair.take_worker_events() if isinstance(e, Attached)] == [
        Attached(pair.master.session_id, False)  # type: ignore[union-attr]
    ]


def test_fresh_session_after_master_loss_renumbers_and_loses_nothing() -> None:
    pair = open_pair(master_options={"ack_delay": 1.0})
    old_sid = pair.worker.session_id
    sent = [pair.worker.send("w", n) for n in range(3)]
    pair.pump()  # received by the master but not acknowledged (ack_delay)
    sent.append(pair.worker.send("w", 3))  # in flight when the master dies
    pair.crash_master()
    assert received(pair.take_master_events()) == [0, 1, 2]
    assert pair.take_worker_events() == [Paused(), Detached("link cut")]
    sent.append(pair.worker.send("w", 4))  # queued while detached
    assert pair.take_worker_events() == []
    pair.reconnect()
    assert pair.worker.session_id not in ("", old_sid)
    events = pair.take_master_events()
    assert isinstance(events[0], Authenticated) and events[0].resume is not None
    assert events[0].resume.session == old_sid
    # Nothing lost; the received-but-unacknowledged ones come again, renumbered from 1.
    assert events[1:] == [
        Attached(pair.worker.session_id, False),
        *(MessageReceived(m, False) for m in sent),
    ]
    assert pair.master is not None and pair.master.stats.messages_received == 5
    assert pair.worker.stats.messages_sent == 4 + 5
    assert pair.worker.stats.resumes == 0
    assert pair.take_worker_events() == [Attached(pair.worker.session_id, False), Resumed()]


def test_fresh_welcome_renumbers_frames_from_one() -> None:
    clock = Clock()
    w, _m = opened(clock)
    for n in range(3):
        w.send("w", n)
    w.take_frames()
    w.connection_lost()
    w2 = make_master(clock)  # a master that never heard of the session
    w.connection_made()
    move(w, w2)
    move(w2, w)
    move(w, w2)
    w2.accept()
    move(w2, w)
    assert [(f["seq"], f["ack"], f["body"]) for f in frames(w)] == [(1, 0, 0), (2, 0, 1), (3, 0, 2)]


def test_take_over_of_a_still_open_stale_session() -> None:
    pair = open_pair()
    old = pair.master
    assert old is not None
    old.send("m", 1)
    pair.worker.send("w", 1)
    pair.cut(master=False)  # the master does not notice: its session stays OPEN
    assert old.state is State.OPEN
    assert pair.take_master_events() == []
    old.send("m", 2)  # written to the stale link: lost
    pair.reconnect()
    assert pair.master is old and pair.link is old
    events = pair.take_master_events()
    assert events[1] == Attached(old.session_id, True)
    assert received(events) == [1]
    assert received(pair.take_worker_events()) == [1, 2]
    assert old.state is State.OPEN and old.stats.resumes == 1


def test_take_over_refuses_a_resume_acknowledging_unsent_messages() -> None:
    clock = Clock()
    pair = open_pair(clock=clock)
    old = pair.master
    assert old is not None
    pair.cut()
    new = make_master(clock)
    w = pair.worker
    w.connection_made()
    hello = frames(w)[0]
    hello["resume"]["ack"] = 7
    new.frame_received(encode(hello))
    move(new, w)
    move(w, new)
    (authenticated,) = new.take_events()
    assert isinstance(authenticated, Authenticated) and authenticated.resume is not None
    assert old.resume_matches(authenticated.resume, authenticated.worker)
    assert old.take_over(new) is False
    reason = "resume acknowledges messages never sent"
    assert frames(new) == [{"type": "reject", "code": "bad_frame", "reason": reason}]
    assert new.take_events() == [DropLink("bad_frame", reason), Closed("bad_frame", reason)]
    assert old.state is State.DETACHED and old.take_frames() == []


def test_resume_matches() -> None:
    pair = open_pair()
    master = pair.master
    assert master is not None
    sid, token = master.session_id, _token(pair)
    assert master.resume_matches(ResumeRequest(sid, token, 0), NAME)
    assert not master.resume_matches(ResumeRequest(sid, token, 0), "w2")
    assert not master.resume_matches(ResumeRequest("other", token, 0), NAME)
    assert not master.resume_matches(ResumeRequest(sid, token[:-1] + "x", 0), NAME)
    pair.cut()
    assert master.resume_matches(ResumeRequest(sid, token, 0), NAME)
    master.close()
    assert not master.resume_matches(ResumeRequest(sid, token, 0), NAME)


def test_unknown_resume_gets_a_fresh_session() -> None:
    pair = open_pair()
    first = pair.master
    pair.crash_master()
    pair.reconnect()
    assert pair.master is not first and pair.master is pair.masters[-1]
    assert pair.worker.stats.resumes == 0


def test_handshake_cut_keeps_the_session_resumable() -> None:
    pair = open_pair()
    sid = pair.worker.session_id
    pair.worker.send("w", 1)
    pair.cut()
    pair.connect(pump=False)
    pair.step()  # hello arrives
    pair.cut()  # the challenge is lost
    assert pair.masters[-1].state is State.CLOSED
    events = pair.take_master_events()
    assert events[-1] == Closed("link_lost", "link lost during handshake: link cut")
    pair.connect()
    assert pair.worker.session_id == sid and pair.master is pair.masters[0]
    assert received(pair.take_master_events()) == [1]


# -- goodbye and close --------------------------------------------------------------------------


def test_goodbye_frames() -> None:
    w, m = opened(Clock())
    m.send("m", 1)
    move(m, w)
    w.goodbye("bye now")
    assert frames(w) == [{"type": "goodbye", "ack": 1, "reason": "bye now", "masters": []}]
    m.goodbye("", masters=["tcp://m2:1234", "amqp://m3"])
    assert frames(m) == [
        {"type": "goodbye", "ack": 0, "reason": "", "masters": ["tcp://m2:1234", "amqp://m3"]}
    ]


def test_worker_goodbye_closes_the_master_session() -> None:
    pair = open_pair()
    master = pair.master
    assert master is not None
    req = master.request("ask")
    pair.worker.send("w", 1)
    pair.worker.goodbye("bye now")
    assert pair.take_worker_events() == [
        DropLink("shutdown", "bye now"),
        Closed("shutdown", "bye now"),
    ]
    # The pair wrote the goodbye, then closed the link: the master heard it all first.
    assert not pair.connected
    events = pair.take_master_events()
    assert received(events) == [1]
    reason = "worker said goodbye: bye now"
    assert events[1:] == [
        DropLink("shutdown", "bye now"),
        RequestFailed(req.id, _ErrorLike(LinkLost, f"session closed: {reason}")),  # type: ignore[arg-type]
        Closed("shutdown", reason),
    ]
    assert master.state is State.CLOSED
    assert pair.take_master_events() == []  # the link's loss is ignored once closed


def test_master_goodbye_detaches_the_worker_and_forgets_the_session() -> None:
    pair = open_pair()
    master = pair.master
    assert master is not None
    pair.worker.send("w", 1)  # in flight, unacknowledged: kept for the next master
    master.goodbye("", masters=["tcp://m2:1234"])
    assert pair.take_master_events() == [
        DropLink("shutdown", "goodbye"),
        Closed("shutdown", "goodbye"),
    ]
    assert pair.take_worker_events() == [
        DropLink("shutdown", "goodbye"),
        GoodbyeReceived("goodbye", ("tcp://m2:1234",)),
        Paused(),
        Detached("master said goodbye: goodbye"),
    ]
    assert pair.worker.session_id == "" and _token(pair) == ""
    assert pair.worker.in_flight == 1
    pair.connect()
    events = pair.take_master_events()
    assert events[0] == Authenticated(NAME, (), {}, None)  # no resume: the token is gone
    assert received(events) == [1]


def test_goodbye_without_masters_field() -> None:
    w, _m = opened(Clock())
    w.frame_received(encode({"type": "goodbye", "ack": 0, "reason": "going"}))
    assert w.take_events()[:2] == [DropLink("shutdown", "going"), GoodbyeReceived("going", ())]


def test_goodbye_in_other_states() -> None:
    clock = Clock()
    m = make_master(clock)
    m.goodbye("bye")
    assert m.take_frames() == []
    assert m.take_events() == [DropLink("shutdown", "bye"), Closed("shutdown", "bye")]
    m.goodbye("again")
    assert m.take_events() == []
    w = make_worker(clock)
    w.goodbye()
    assert w.take_events() == [Closed("shutdown", "goodbye")]


def test_peer_error_frames() -> None:
    w, m = opened(Clock())
    m.frame_received(encode({"type": "error", "code": "flood", "reason": "too fast"}))
    assert m.take_events() == [
        DropLink("flood", "too fast"),
        Closed("flood", "worker reported an error: too fast"),
    ]
    w.frame_received(encode({"type": "error", "code": "flood", "reason": "too fast"}))
    assert w.take_events() == [
        DropLink("flood", "too fast"),
        Detached("master reported an error: flood: too fast"),
    ]
    assert w.session_id == ""


def test_close_in_each_state() -> None:
    clock = Clock()
    w, m = opened(clock)
    m.close()
    assert m.take_events() == [DropLink("shutdown", "closed"), Closed("shutdown", "closed")]
    assert m.next_deadline() is None
    m.close()
    assert m.take_events() == []
    w.connection_lost()
    w.take_events()
    w.close("bye")
    assert w.take_events() == [Closed("shutdown", "bye")]
    idle = make_worker(clock)
    idle.close()
    assert idle.take_events() == [Closed("shutdown", "closed")]
    with pytest.raises(LinkLost):
        idle.request("k")


def test_master_refuse() -> None:
    clock = Clock()
    _w, m = to_authenticated(clock)
    m.take_events()
    m.refuse("duplicate", "w1 is already attached")
    assert frames(m) == [
        {"type": "reject", "code": "duplicate", "reason": "w1 is already attached"}
    ]
    assert m.take_events() == [
        DropLink("duplicate", "w1 is already attached"),
        Closed("duplicate", "w1 is already attached"),
    ]


# -- the link --------------------------------------------------------------------------------------


def test_connection_lost_is_idempotent_and_master_handshake_loss_closes() -> None:
    clock = Clock()
    w, m = to_challenge_sent(clock)
    m.connection_lost("reset")
    assert m.take_events() == [Closed("link_lost", "link lost during handshake: reset")]
    m.connection_lost("again")
    assert m.take_events() == []
    w.connection_lost("reset")
    assert w.take_events() == [Detached("reset")]
    w.connection_lost("again")
    assert w.take_events() == []
    idle = make_worker(clock)
    idle.connection_lost()
    assert idle.take_events() == [] and idle.state is State.IDLE


def test_worker_reconnects_from_detached() -> None:
    clock = Clock()
    w, m = opened(clock)
    w.connection_lost()
    w.take_events()
    w.connection_made()
    (hello,) = frames(w)
    assert hello["resume"] == {"session": m.session_id, "token": m._token, "ack": 0}


# -- misuse ---------------------------------------------------------------------------------------


def test_misuse_raises_runtime_error() -> None:
    clock = Clock()
    w, m = opened(clock)
    with pytest.raises(RuntimeError, match="master input in worker session"):
        w.accept()
    with pytest.raises(RuntimeError, match="allowed in authenticated"):
        m.accept()
    with pytest.raises(RuntimeError, match="allowed in authenticated"):
        m.refuse("x", "y")
    with pytest.raises(RuntimeError, match="master session is made per link"):
        m.connection_made()
    with pytest.raises(RuntimeError, match="connection_made in state open"):
        w.connection_made()
    with pytest.raises(RuntimeError, match="allowed in open/detached"):
        w.take_over(m)
    fresh = make_master(clock)
    with pytest.raises(RuntimeError, match="allowed in authenticated"):
        m.take_over(fresh)  # fresh has not authenticated anybody


def test_stats_count_bytes_and_messages() -> None:
    w, m = opened(Clock())
    sent_before = w.stats.bytes_sent
    w.send("k", {"n": 1})
    data = w.take_frames()
    m.frame_received(data[0])
    assert w.stats.bytes_sent == sent_before + len(data[0])
    assert w.stats.messages_sent == 1
    assert m.stats.messages_received == 1
    assert m.stats.bytes_received > len(data[0])  # the handshake counts too


# -- the SessionPair helper -------------------------------------------------------------------


def test_pair_misuse_and_quiet_link() -> None:
    pair = open_pair()
    with pytest.raises(RuntimeError, match="already up"):
        pair.connect()
    assert not pair.step()  # nothing in flight
    pair.cut()
    assert pair.cut() == []  # already down
    assert not pair.connected and pair.link is None


def test_pair_hook_decides_on_authenticated() -> None:
    seen: list[Authenticated] = []

    def refuse(pair: SessionPair, link: Session, event: Authenticated) -> None:
        seen.append(event)
        link.refuse("duplicate", f"{event.worker} is already attached")

    pair = SessionPair(NAME, SECRET, on_authenticated=refuse)
    reason = f"{NAME} is already attached"
    assert seen == [Authenticated(NAME, (), {}, None)]
    assert pair.master is None and not pair.connected
    assert pair.take_worker_events() == [
        Rejected("duplicate", reason),
        DropLink("duplicate", reason),
        Detached(f"rejected: duplicate: {reason}"),
    ]
    assert pair.take_master_events() == [
        Authenticated(NAME, (), {}, None),
        DropLink("duplicate", reason),
        Closed("duplicate", reason),
    ]


def test_pair_advance_runs_timers_in_order() -> None:
    pair = open_pair(master_options={"heartbeat": 1.0})
    pair.worker.send("w", 1)
    pair.advance(0.5)  # the bare ack (after ack_delay) went out and arrived
    assert pair.worker.in_flight == 0
    pair.advance(10)  # pings both ways: nobody is declared dead
    assert pair.worker.state is State.OPEN
    assert pair.master is not None and pair.master.stats.rtt == 0.0
    assert pair.clock.seconds() == 10.5
    assert pair.take_worker_events() == [] and pair.take_master_events()[-1:] == [
        MessageReceived(Message.trusted("w", 1, pair.worker._ids + "1"), False)
    ]


def test_pair_loses_frames_in_flight_when_cut() -> None:
    pair = open_pair()
    pair.worker.send("w", 1)
    pair.worker.send("w", 2)
    pair.step()
    lost = pair.cut()
    assert [decode(f)["body"] for f in lost] == [2]


def test_a_message_queued_behind_the_window_that_cannot_be_encoded_is_dropped_alone() -> None:
    pair = SessionPair(
        worker_options={"window_messages": 1, "max_frame": 4096}, master_options={"max_frame": 4096}
    )
    worker = pair.worker
    first = worker.send("n", {"i": 0})
    big = worker.request("n", {"blob": "\u00fc" * 2500})  # 5 KB once encoded as UTF-8
    big2 = worker.send("n", {"blob": "\u00fc" * 2500})
    last = worker.send("n", {"i": 2})
    assert worker.in_flight == 4
    pair.advance(1)
    events = pair.worker_events
    failed = [e for e in events if isinstance(e, SendFailed)]
    assert [e.message.id for e in failed] == [big.id, big2.id]
    assert any(
        isinstance(e, RequestFailed)
        and e.request_id == big.id
        and isinstance(e.error, MessageError)
        for e in events
    )
    got = [e.message.id for e in pair.master_events if isinstance(e, MessageReceived)]
    assert got == [first.id, last.id]


def test_a_body_estimated_over_the_frame_limit_is_refused_at_once() -> None:
    pair = SessionPair(worker_options={"max_frame": 4096})
    with pytest.raises(MessageError, match="over the frame limit"):
        pair.worker.send("n", {"blob": "x" * 5000})
    assert pair.worker.in_flight == 0


def test_small_floats_in_a_body_cross_in_the_standard_librarys_spelling() -> None:
    pair = SessionPair(worker_options={"codecs": ("json",)})
    pair.worker.send("n", {"tiny": 1e-05, "fine": [0.5, "1e-5"]})
    pair.worker.send("n", {"plain": "text", "list": [1, 2]})
    tiny, plain = pair.worker.take_frames()
    assert b'"tiny":1e-05' in tiny and b'"fine":[0.5,"1e-5"]' in tiny
    assert json.loads(plain)["body"] == {"plain": "text", "list": [1, 2]}


@pytest.mark.parametrize(
    ("name", "known", "why"), [("w1", True, "wrong proof"), ("mallory", False, "unknown worker")]
)
def test_the_master_knows_why_auth_failed_but_the_wire_does_not_say(
    name: str, known: bool, why: str
) -> None:
    pair = SessionPair(name, "guess", credentials={name: "real"}.get if known else {}.get)
    closed = [e for e in pair.master_events if isinstance(e, Closed)]
    assert len(closed) == 1 and why in closed[0].reason
    rejects = [e for e in pair.worker_events if isinstance(e, Rejected)]
    assert len(rejects) == 1 and why not in rejects[0].reason


def test_an_empty_secret_from_the_credentials_is_refused_cleanly() -> None:
    pair = SessionPair("w1", "", credentials={"w1": ""}.get)
    closed = [e for e in pair.master_events if isinstance(e, Closed)]
    assert [c.code for c in closed] == ["auth_failed"]
    assert [e.code for e in pair.worker_events if isinstance(e, Rejected)] == ["auth_failed"]


def test_a_rejected_worker_forgets_its_resume_token() -> None:
    clock = Clock()
    w = make_worker(clock)
    w.session_id, w._token = "old-session", "old-token"
    w.connection_made()
    hello = decode(w.take_frames()[0])
    assert hello["resume"]["session"] == "old-session"
    w.frame_received(json.dumps({"type": "reject", "code": "duplicate", "reason": "x"}).encode())
    assert w.state is State.DETACHED
    w.connection_made()
    assert decode(w.take_frames()[0])["resume"] is None


def test_next_deadline_when_open_is_the_earliest_of_heartbeat_ack_and_requests() -> None:
    pair = SessionPair()
    worker = pair.worker
    now = pair.clock.seconds()
    assert worker.next_deadline() == now + worker.heartbeat
    worker.request("slow", {}, timeout=None)  # no deadline of its own
    assert worker.next_deadline() == now + worker.heartbeat
    worker.request("quick", {}, timeout=0.5)
    assert worker.next_deadline() == now + 0.5


def test_next_deadline_is_the_dead_peer_time_when_we_keep_sending_to_a_silent_peer() -> None:
    pair = SessionPair()
    worker = pair.worker
    heard_at = pair.clock.seconds()
    pair.clock.advance(worker.heartbeat * 2.5)  # nothing received since the handshake
    worker.send("n", {})  # ... but we just sent: the heartbeat is not due
    assert worker.next_deadline() == heard_at + worker.heartbeat * worker.dead_after
