"""Regenerate the wire-format test vectors in this directory (docs/PROTOCOL.md, "Test vectors").

    .venv/bin/python tests/vectors/generate.py          # rewrite the *.json files
    .venv/bin/python tests/vectors/generate.py --check  # exit 1 if they would change

Everything is deterministic: every session gets ``random.Random(seed).randbytes`` as its random
source and all sessions share one :class:`twisted.internet.task.Clock` starting at 0. The
vectors are produced by the real :class:`~wiremsg.session.Session` code, so they show what this
implementation puts on the wire; ``tests/test_vectors.py`` checks that the code still does.

Files written:

``frames.json``
    Data-phase frames (``msg``, ``ack``, ``ping``, ``pong``, ``goodbye``, ``error``) with their
    exact bytes in both codecs, hex-encoded.
``proofs.json``
    HMAC-SHA256 proofs: secret, worker, nonces, the exact HMAC input, both proofs.
``handshakes.json``
    Whole conversations as a list of steps. A step is either an action on the sessions
    (``{"do": ...}``) or a frame (``{"from": "worker"|"master", "codec", "hex", "frame"}``)
    that the sender must have produced, byte for byte, and that is then delivered to the other
    side (unless ``"lost": true``: the link broke first, or the other side is a hand-written
    peer rather than a session). A frame with ``"injected": true`` was
    written by hand, not by a session, and is delivered as is. Actions:

    ``new_link {seed}``    a master-side session for a new incoming link (``Session.master``)
    ``connect``            the worker's link is up: ``worker.connection_made()``
    ``accept``             master: ``accept()`` the authenticated worker (a fresh session)
    ``take_over``          master: the previous session resumes on the new link's handshake
    ``link_lost``          the link breaks: ``connection_lost()`` on the worker and the master
    ``master_crash``       the master process dies: its sessions are gone; worker: link lost
    ``send {side, kind, body}`` / ``request {side, kind, body}``
    ``reply {side, body}`` / ``reply_error {side, code, reason}``  answer the last request
                           that side received
    ``goodbye {side, reason, masters}``
    ``advance {seconds}``  move the clock, then ``tick()`` the worker and the master
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import random
import sys
from collections import deque
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from wiremsg import auth, wire
from wiremsg.codec import Codec, JSONCodec, MsgpackCodec
from wiremsg.errors import ProtocolError
from wiremsg.events import MessageReceived
from wiremsg.session import Session

HERE = Path(__file__).resolve().parent

WORKER = "w1"
SECRET = "s3cret-w1"
SECRETS = {WORKER: SECRET, "wörker-日本": "sécret 🔑"}
CODECS: dict[str, Codec] = {"json": JSONCodec(), "msgpack": MsgpackCodec()}


def seeded(seed: int) -> auth.RandomSource:
    """The random source every vector session uses: ``random.Random(seed).randbytes``."""
    return random.Random(seed).randbytes


# -- the driver ---------------------------------------------------------------------------


class Rig:
    """A worker session and the master-side session(s) of one scenario, driven step by step.

    ``config`` holds ``worker`` (name, secret, seed, codecs, tags, info) and ``master``
    (codecs, heartbeat, secrets). The transcript of what happened is collected in ``steps``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.clock = Clock()
        w = config["worker"]
        self.worker = Session.worker(
            w["name"],
            w["secret"],
            self.clock.seconds,
            random=seeded(w["seed"]),
            codecs=w["codecs"],
            tags=w["tags"],
            info=w["info"],
        )
        self.master: Session | None = None  # the session of the current link
        self.old: Session | None = None  # the session a resume may take over
        self.fifo: dict[str, deque[bytes]] = {"worker": deque(), "master": deque()}
        self.codec = {"worker": "json", "master": "json"}
        self.last_request: dict[str, Any] = {"worker": None, "master": None}
        self.steps: list[dict[str, Any]] = []

    def session(self, side: str) -> Session:
        s = self.worker if side == "worker" else self.master
        assert s is not None, f"no {side} session"
        return s

    def sessions(self) -> list[tuple[str, Session]]:
        out = [("worker", self.worker)]
        out += [("master", s) for s in (self.master, self.old) if s is not None]
        return out

    def drain(self) -> None:
        """Move every produced frame to its side's queue; remember received requests."""
        for side, s in self.sessions():
            self.fifo[side].extend(s.take_frames())
            for event in s.take_events():
                if isinstance(event, MessageReceived) and event.request:
                    self.last_request[side] = event.message

    def new_master(self, seed: int) -> Session:
        m = self.config["master"]
        secrets = m["secrets"]
        return Session.master(
            secrets.get,
            self.clock.seconds,
            random=seeded(seed),
            codecs=m["codecs"],
            heartbeat=m["heartbeat"],
        )

    # -- actions --------------------------------------------------------------------------

    def act(self, step: dict[str, Any]) -> None:
        do = step["do"]
        if do == "new_link":
            assert not self.fifo["master"], "frames left on the old link"
            if self.master is not None:
                self.old = self.master
            self.master = self.new_master(step["seed"])
        elif do == "connect":
            self.worker.connection_made()
        elif do == "accept":
            self.session("master").accept()
        elif do == "take_over":
            assert self.old is not None and self.master is not None
            self.old.take_over(self.master)
            self.master, self.old = self.old, None
        elif do == "link_lost":
            self.drain()
            assert not self.fifo["worker"] and not self.fifo["master"], "unaccounted frames"
            self.worker.connection_lost("link lost")
            self.session("master").connection_lost("link lost")
        elif do == "master_crash":
            self.drain()
            assert not self.fifo["worker"] and not self.fifo["master"], "unaccounted frames"
            self.master = self.old = None
            self.worker.connection_lost("link lost")
        elif do == "send":
            self.session(step["side"]).send(step["kind"], step["body"])
        elif do == "request":
            self.session(step["side"]).request(step["kind"], step["body"])
        elif do == "reply":
            request = self.last_request[step["side"]]
            self.session(step["side"]).reply(request, step["body"])
        elif do == "reply_error":
            request = self.last_request[step["side"]]
            self.session(step["side"]).reply_error(request, step["code"], step["reason"])
        elif do == "goodbye":
            self.session(step["side"]).goodbye(step["reason"], step["masters"])
        elif do == "advance":
            self.clock.advance(step["seconds"])
            for _, s in self.sessions():
                s.tick()
        else:
            raise ValueError(f"unknown action {do!r}")
        self.drain()

    # -- recording ------------------------------------------------------------------------

    def record_frame(self, side: str, data: bytes, **extra: Any) -> dict[str, Any]:
        codec = "json" if _is_handshake(data) else self.codec[side]
        frame = CODECS[codec].decode(data)
        if frame["type"] == "welcome":
            self.codec = {"worker": frame["codec"], "master": frame["codec"]}
        step = {"from": side, "codec": codec, "hex": data.hex(), "frame": frame, **extra}
        self.steps.append(step)
        return step

    def deliver(self, side: str, *, lost: bool = False, note: str = "") -> None:
        self.drain()
        data = self.fifo[side].popleft()
        extra: dict[str, Any] = {"lost": True} if lost else {}
        if note:
            extra["note"] = note
        self.record_frame(side, data, **extra)
        if not lost:
            self.session("master" if side == "worker" else "worker").frame_received(data)
        self.drain()

    def inject(self, side: str, frame: dict[str, Any], note: str) -> None:
        data = CODECS[self.codec[side]].encode(frame)
        self.record_frame(side, data, injected=True, note=note)
        self.session("master" if side == "worker" else "worker").frame_received(data)
        self.drain()

    def pump(self) -> None:
        """Deliver frames both ways until neither side has anything to say."""
        self.drain()
        while self.fifo["worker"] or self.fifo["master"]:
            for side in ("worker", "master"):
                while self.fifo[side]:
                    self.deliver(side)

    def run(self, script: list[dict[str, Any]]) -> None:
        for step in script:
            if "pump" in step:
                self.pump()
            elif "deliver" in step:
                self.deliver(step["deliver"], note=step.get("note", ""))
            elif "lose" in step:
                self.deliver(step["lose"], lost=True, note=step.get("note", ""))
            elif "inject" in step:
                self.inject(step["inject"], step["frame"], step["note"])
            else:
                self.steps.append(dict(step))
                self.act(step)
        self.drain()
        assert not self.fifo["worker"] and not self.fifo["master"], "frames left over"

    def final(self) -> dict[str, str]:
        states = {"worker": self.worker.state.value}
        if self.master is not None:
            states["master"] = self.master.state.value
        return states


def _is_handshake(data: bytes) -> bool:
    if not data.startswith(b"{"):
        return False
    try:
        frame = CODECS["json"].decode(data)
    except ProtocolError:  # pragma: no cover - a msgpack map never starts with "{"
        return False
    return isinstance(frame, dict) and frame.get("type") in wire.HANDSHAKE_TYPES


# -- scenarios ----------------------------------------------------------------------------


def worker_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": WORKER,
        "secret": SECRET,
        "seed": 1,
        "codecs": ["json", "msgpack"],
        "tags": ["linux", "x86_64"],
        "info": {"os": "linux", "admin": "ci@example.org"},
    }
    config.update(overrides)
    return config


def master_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "codecs": ["json", "msgpack"],
        "heartbeat": 5.0,
        "secrets": {WORKER: SECRET},
    }
    config.update(overrides)
    return config


HANDSHAKE: list[dict[str, Any]] = [
    {"do": "new_link", "seed": 2},
    {"do": "connect"},
    {"pump": True},
    {"do": "accept"},
    {"pump": True},
]

SCENARIOS: list[dict[str, Any]] = [
    {
        "name": "handshake_json",
        "description": "A successful handshake; the worker prefers json. Then one message "
        "each way and the bare acks that follow 20 ms of quiet.",
        "worker": worker_config(),
        "master": master_config(),
        "script": [
            *HANDSHAKE,
            {"do": "send", "side": "worker", "kind": "hello_world", "body": {"n": 1}},
            {"do": "send", "side": "master", "kind": "print", "body": {"message": "héllo"}},
            {"pump": True},
            {"do": "advance", "seconds": 0.02},
            {"pump": True},
        ],
    },
    {
        "name": "handshake_msgpack",
        "description": "The worker lists msgpack first, so the master picks it although the "
        "master lists json first: every frame after welcome is msgpack.",
        "worker": worker_config(codecs=["msgpack", "json"], seed=3),
        "master": master_config(),
        "script": [
            *HANDSHAKE,
            {"do": "request", "side": "master", "kind": "echo", "body": {"x": [1, 2.5, "ü"]}},
            {"pump": True},
            {"do": "reply", "side": "worker", "body": {"echo": {"x": [1, 2.5, "ü"]}}},
            {"pump": True},
            {"do": "advance", "seconds": 0.02},
            {"pump": True},
            {"do": "advance", "seconds": 5.0},
            {"pump": True},
        ],
    },
    {
        "name": "wrong_secret",
        "description": "The worker's proof is made with the wrong secret: the master answers "
        "reject auth_failed and closes; the worker does not get to see a welcome.",
        "worker": worker_config(secret="not-the-secret", seed=4),
        "master": master_config(),
        "script": [
            {"do": "new_link", "seed": 5},
            {"do": "connect"},
            {"pump": True},
        ],
    },
    {
        "name": "unknown_version",
        "description": "A hello for protocol 2 (written by hand): the master refuses it with "
        "reject code version before any challenge.",
        "worker": worker_config(seed=6),
        "master": master_config(),
        "script": [
            {"do": "new_link", "seed": 7},
            {
                "inject": "worker",
                "note": "a v2 worker; the fields must still pass the v1 hello check",
                "frame": {
                    "type": "hello",
                    "protocol": 2,
                    "worker": WORKER,
                    "codecs": ["json"],
                    "tags": [],
                    "info": {},
                    "nonce": "00" * 32,
                    "resume": None,
                    "future_field": "ignored",
                },
            },
            {"lose": "master", "note": "for the hand-written worker, not fed to a session"},
        ],
    },
    {
        "name": "resume",
        "description": "The link breaks with messages in flight both ways; the worker "
        "reconnects, presents its resume token, and the master's old session takes the new "
        "link over. Each side retransmits what the other's ack shows missing; nothing is "
        "lost or duplicated. A message sent while detached follows the retransmissions.",
        "worker": worker_config(seed=8),
        "master": master_config(),
        "script": [
            {"do": "new_link", "seed": 9},
            {"do": "connect"},
            {"pump": True},
            {"do": "accept"},
            {"pump": True},
            {"do": "send", "side": "worker", "kind": "update", "body": {"step": 1}},
            {"do": "send", "side": "worker", "kind": "update", "body": {"step": 2}},
            {"do": "send", "side": "master", "kind": "print", "body": {"message": "one"}},
            {"deliver": "worker", "note": "arrives: the master's in-order seq is now 1"},
            {"lose": "worker", "note": "written, but the link broke before it arrived"},
            {"lose": "master", "note": "lost too (its ack 1 never reached the worker)"},
            {"do": "link_lost"},
            {"do": "send", "side": "worker", "kind": "update", "body": {"step": 3}},
            {"do": "new_link", "seed": 10},
            {"do": "connect"},
            {"pump": True},
            {"do": "take_over"},
            {"pump": True},
            {"do": "advance", "seconds": 0.02},
            {"pump": True},
        ],
    },
    {
        "name": "resume_unknown_session",
        "description": "The master crashed after receiving (but before acknowledging) seq 1. "
        "A new master process does not know the resume token and starts a fresh session "
        "(welcome resumed false); the worker renumbers its unacknowledged message from seq 1 "
        "and sends it again with the same id: the one duplicate the protocol allows.",
        "worker": worker_config(seed=11),
        "master": master_config(),
        "script": [
            {"do": "new_link", "seed": 12},
            {"do": "connect"},
            {"pump": True},
            {"do": "accept"},
            {"pump": True},
            {"do": "send", "side": "worker", "kind": "update", "body": {"step": 1}},
            {"deliver": "worker", "note": "the master application sees id .1"},
            {"do": "master_crash"},
            {"do": "send", "side": "worker", "kind": "update", "body": {"step": 2}},
            {"do": "new_link", "seed": 13},
            {"do": "connect"},
            {"pump": True},
            {"do": "accept"},
            {"pump": True},
            {"do": "advance", "seconds": 0.02},
            {"pump": True},
        ],
    },
]


def handshakes() -> dict[str, Any]:
    out = []
    for scenario in SCENARIOS:
        rig = Rig(scenario)
        rig.run(scenario["script"])
        out.append(
            {
                "name": scenario["name"],
                "description": scenario["description"],
                "worker": scenario["worker"],
                "master": scenario["master"],
                "steps": rig.steps,
                "final": rig.final(),
            }
        )
    return {
        "about": "Whole conversations, replayed by tests/test_vectors.py; see generate.py "
        "for the step format and docs/PROTOCOL.md for the rules.",
        "clock": "twisted.internet.task.Clock, starting at 0.0",
        "random": "random.Random(seed).randbytes per session",
        "scenarios": out,
    }


# -- data-phase frames ----------------------------------------------------------------------

NESTED = {
    "builder": "linux-py311",
    "steps": [
        {"name": "compile", "argv": ["make", "-j4"], "env": {"CC": "gcc"}, "rc": 0},
        {"name": "test", "timeout": 1.5, "ok": True, "rc": None, "deep": [[[{"x": []}]]]},
    ],
    "u64_max": 2**64 - 1,
    "i64_min": -(2**63),
    "floats": [0.1, -0.0, 1e-05, 1e16, 1.7976931348623157e308],
    "empty": {"map": {}, "list": [], "text": ""},
}

FRAME_SCRIPT: list[tuple[str, str, dict[str, Any]]] = [
    # (vector name, description, action); the frames an action produces are named in order.
    (
        "msg_request",
        "a request from the master: request is true",
        {"do": "request", "side": "master", "kind": "echo", "body": {"x": 1}},
    ),
    (
        "msg_non_ascii",
        "non-ASCII text: raw UTF-8 in JSON (not \\u-escaped), a str in msgpack",
        {
            "do": "send",
            "side": "worker",
            "kind": "print",
            "body": {"message": "héllo wörld — 日本語 ✓ 🎉"},
        },
    ),
    (
        "msg_escapes",
        "the characters JSON must escape: quote, backslash and C0 controls",
        {
            "do": "send",
            "side": "worker",
            "kind": "stdout",
            "body": {"text": 'tab\there\nquote " backslash \\ nul \x00 bell \x07 del \x7f'},
        },
    ),
    (
        "msg_nested",
        "nested maps and lists, the 64-bit integer limits, floats, null, booleans",
        {"do": "send", "side": "worker", "kind": "build_report", "body": NESTED},
    ),
    (
        "msg_reply",
        "the worker's reply to msg_request: reply_to is the request's id, kind is the same",
        {"do": "reply", "side": "worker", "body": {"echo": {"x": 1}}},
    ),
    (
        "msg_request_2",
        "another request, answered with an error",
        {"do": "request", "side": "master", "kind": "frobnicate", "body": {}},
    ),
    (
        "msg_error_reply",
        "an error reply: error {code, reason}, body {}",
        {
            "do": "reply_error",
            "side": "worker",
            "code": "no_handler",
            "reason": "no handler for 'frobnicate'",
        },
    ),
]


def frames_for(codec: str) -> list[tuple[str, str, str, bytes]]:
    """Run the frame script over a session pair that negotiated ``codec``."""
    rig = Rig(
        {
            "worker": worker_config(codecs=[codec], seed=40),
            "master": master_config(),
        }
    )
    rig.run(HANDSHAKE)
    rig.steps.clear()
    out: list[tuple[str, str, str, bytes]] = []

    def take(side: str, name: str, description: str) -> None:
        rig.drain()
        data = rig.fifo[side].popleft()
        out.append((name, description, side, data))
        peer = "master" if side == "worker" else "worker"
        rig.session(peer).frame_received(data)
        rig.drain()

    for name, description, action in FRAME_SCRIPT:
        rig.act(action)
        take(action["side"], name, description)
    rig.act({"do": "advance", "seconds": 0.02})
    take("master", "ack", "a bare ack: nothing to piggyback it on came within 20 ms")
    rig.act({"do": "advance", "seconds": 5.0})
    take("worker", "ping", "a heartbeat: time is the sender's clock, in seconds")
    take("master", "ping_2", "the master's own heartbeat, sent at the same tick")
    take("master", "pong", "the answer to the worker's ping echoes its time")
    take("worker", "pong_2", "the worker's answer to the master's ping")
    rig.act(
        {
            "do": "goodbye",
            "side": "master",
            "reason": "master shutting down",
            "masters": ["amp://m2.example.org:9989", "zmq://m3.example.org:5555"],
        }
    )
    rig.drain()
    out.append(
        (
            "goodbye",
            "a master going away names others to fail over to",
            "master",
            rig.fifo["master"].popleft(),
        )
    )
    # Feed the worker a msg whose seq skips one: it answers with error and drops the link.
    rig.worker.frame_received(
        CODECS[codec].encode(
            {"type": "msg", "seq": 9, "ack": 0, "id": "x.9", "kind": "k", "body": {}}
        )
    )
    rig.drain()
    out.append(
        (
            "error",
            "the worker got seq 9 after 2: a gap is a protocol error",
            "worker",
            rig.fifo["worker"].popleft(),
        )
    )
    rig.drain()
    assert not rig.fifo["worker"] and not rig.fifo["master"]
    return out


def frames() -> dict[str, Any]:
    by_codec = {codec: frames_for(codec) for codec in CODECS}
    vectors = []
    for (name, description, side, j), (*_, m) in zip(
        by_codec["json"], by_codec["msgpack"], strict=True
    ):
        frame = CODECS["json"].decode(j)
        assert CODECS["msgpack"].decode(m) == frame, name
        vectors.append(
            {
                "name": name,
                "description": description,
                "from": side,
                "frame": frame,
                "json": j.hex(),
                "msgpack": m.hex(),
            }
        )
    return {
        "about": "Data-phase frames and their exact bytes in each codec (hex). A number "
        "written with a '.' or an exponent in 'frame' is a float, otherwise an integer.",
        "frames": vectors,
    }


# -- proofs ---------------------------------------------------------------------------------


def proofs() -> dict[str, Any]:
    rng = random.Random(50)
    cases: list[tuple[str, str | bytes, str]] = [
        ("ascii", SECRET, WORKER),
        ("utf8", "sécret 🔑", "wörker-日本"),
        ("binary_secret", rng.randbytes(32), "w2"),
        ("long_secret", "x" * 100, "w3"),  # longer than SHA-256's 64-byte block: hashed first
    ]
    out = []
    for name, secret, worker in cases:
        wn, mn = auth.new_nonce(rng.randbytes), auth.new_nonce(rng.randbytes)
        key = secret.encode() if isinstance(secret, str) else secret
        vector: dict[str, Any] = {"name": name}
        if isinstance(secret, str):
            vector["secret"] = secret
        vector.update({"secret_hex": key.hex(), "worker": worker})
        vector.update({"worker_nonce": wn, "master_nonce": mn})
        for role in ("worker", "master"):
            message = b"\0".join(
                (f"wiremsg/1 {role}".encode(), worker.encode(), wn.encode(), mn.encode())
            )
            proof = hmac.new(key, message, hashlib.sha256).hexdigest()
            make = auth.worker_proof if role == "worker" else auth.master_proof
            assert make(secret, worker, wn, mn) == proof
            vector[f"{role}_message_hex"] = message.hex()
            vector[f"{role}_proof"] = proof
        out.append(vector)
    return {
        "about": "proof = lowercase hex of HMAC-SHA256(key = secret's UTF-8 bytes, message = "
        "label NUL worker-name-UTF-8 NUL worker_nonce NUL master_nonce), label 'wiremsg/1 "
        "worker' or 'wiremsg/1 master'",
        "proofs": out,
    }


# -- main -----------------------------------------------------------------------------------


def render(value: dict[str, Any]) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False) + "\n"


def build() -> dict[str, str]:
    return {
        "frames.json": render(frames()),
        "proofs.json": render(proofs()),
        "handshakes.json": render(handshakes()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file would change")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build().items():
        path = HERE / name
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != text:
            stale.append(name)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"stale vectors: {', '.join(stale)}", file=sys.stderr)
        return 1
    print("changed: " + (", ".join(stale) if stale else "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
