"""The wire format is frozen by the vectors in tests/vectors/ (docs/PROTOCOL.md, "Test vectors").

Each check recomputes a vector with the current code and compares it exactly: frame bytes in
both codecs, decoded values (types included: 1 is not 1.0 is not True), HMAC proofs and their
inputs, and whole conversations replayed through fresh, identically seeded sessions. If one of
these fails, the bytes on the wire changed: either fix the regression, or — for an intended
change — regenerate with ``tests/vectors/generate.py``, bump the protocol version if old peers
can no longer talk to new ones, and update docs/PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from wiremsg import auth, wire
from wiremsg.codec import Codec, JSONCodec, MsgpackCodec
from wiremsg.events import MessageReceived
from wiremsg.session import Session

VECTORS = Path(__file__).parent / "vectors"
CODECS: dict[str, Codec] = {"json": JSONCodec(), "msgpack": MsgpackCodec()}


def load(name: str) -> dict[str, Any]:
    with open(VECTORS / name, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


FRAMES = load("frames.json")["frames"]
PROOFS = load("proofs.json")["proofs"]
SCENARIOS = load("handshakes.json")["scenarios"]


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types all the way down (``1 == 1.0 == True`` is not)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float and a != a:  # pragma: no cover - no NaN in vectors
        return bool(b != b)
    return bool(a == b)


def test_vector_files_are_small() -> None:
    total = sum(p.stat().st_size for p in VECTORS.glob("*.json"))
    assert total < 100_000


def test_vectors_cover_every_frame_type() -> None:
    seen = {v["frame"]["type"] for v in FRAMES}
    for scenario in SCENARIOS:
        seen |= {s["frame"]["type"] for s in scenario["steps"] if "from" in s}
    assert seen == wire.HANDSHAKE_TYPES | wire.DATA_TYPES


# -- data-phase frames ----------------------------------------------------------------------


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("vector", FRAMES, ids=[v["name"] for v in FRAMES])
def test_frame_encodes_to_exact_bytes(vector: dict[str, Any], codec: str) -> None:
    assert CODECS[codec].encode(vector["frame"]).hex() == vector[codec]


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("vector", FRAMES, ids=[v["name"] for v in FRAMES])
def test_frame_decodes_to_exact_value(vector: dict[str, Any], codec: str) -> None:
    decoded = CODECS[codec].decode(bytes.fromhex(vector[codec]))
    assert same(decoded, vector["frame"]), decoded
    assert wire.CHECKS[wire.frame_type(decoded)](decoded) is decoded


def test_json_vectors_are_utf8_not_escaped() -> None:
    (vector,) = [v for v in FRAMES if v["name"] == "msg_non_ascii"]
    data = bytes.fromhex(vector["json"])
    assert "日本語 ✓ 🎉".encode() in data
    assert b"\\u" not in data


def test_json_vectors_are_compact() -> None:
    for vector in FRAMES:
        data = bytes.fromhex(vector["json"])
        expected = json.dumps(vector["frame"], separators=(",", ":"), ensure_ascii=False)
        assert data == expected.encode()


# -- proofs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", PROOFS, ids=[v["name"] for v in PROOFS])
def test_proofs(vector: dict[str, Any]) -> None:
    key = bytes.fromhex(vector["secret_hex"])
    if "secret" in vector:
        assert vector["secret"].encode() == key
    args = (vector["worker"], vector["worker_nonce"], vector["master_nonce"])
    for role, make in (("worker", auth.worker_proof), ("master", auth.master_proof)):
        message = b"\0".join([f"wiremsg/1 {role}".encode(), *(a.encode() for a in args)])
        assert message.hex() == vector[f"{role}_message_hex"]
        expected = vector[f"{role}_proof"]
        assert hmac.new(key, message, hashlib.sha256).hexdigest() == expected
        assert make(key, *args) == expected
        if "secret" in vector:
            assert make(vector["secret"], *args) == expected
    assert vector["worker_proof"] != vector["master_proof"]


# -- conversations ----------------------------------------------------------------------------


class Replay:
    """Replays one scenario's steps through fresh sessions, checking every frame."""

    def __init__(self, scenario: dict[str, Any]) -> None:
        self.scenario = scenario
        self.clock = Clock()
        w = scenario["worker"]
        self.worker = Session.worker(
            w["name"],
            w["secret"],
            self.clock.seconds,
            random=random.Random(w["seed"]).randbytes,
            codecs=w["codecs"],
            tags=w["tags"],
            info=w["info"],
        )
        self.master: Session | None = None
        self.old: Session | None = None
        self.fifo: dict[str, deque[bytes]] = {"worker": deque(), "master": deque()}
        self.last_request: dict[str, Any] = {}

    def side(self, name: str) -> Session:
        session = self.worker if name == "worker" else self.master
        assert session is not None
        return session

    def drain(self) -> None:
        sessions = [("worker", self.worker), ("master", self.master), ("master", self.old)]
        for name, session in sessions:
            if session is None:
                continue
            self.fifo[name].extend(session.take_frames())
            for event in session.take_events():
                if isinstance(event, MessageReceived) and event.request:
                    self.last_request[name] = event.message

    def nothing_in_flight(self) -> None:
        self.drain()
        assert not self.fifo["worker"], f"unexpected worker frames {list(self.fifo['worker'])}"
        assert not self.fifo["master"], f"unexpected master frames {list(self.fifo['master'])}"

    def frame(self, index: int, step: dict[str, Any]) -> None:
        sender, expected = step["from"], bytes.fromhex(step["hex"])
        where = f"step {index} ({sender} {step['frame']['type']})"
        decoded = CODECS[step["codec"]].decode(expected)
        assert same(decoded, step["frame"]), f"{where}: hex and frame disagree"
        if not step.get("injected"):
            self.drain()
            assert self.fifo[sender], f"{where}: the {sender} sent nothing"
            produced = self.fifo[sender].popleft()
            assert produced == expected, (
                f"{where}: wire bytes changed\n  expected {expected!r}\n  produced {produced!r}"
            )
        if not step.get("lost"):
            self.side("master" if sender == "worker" else "worker").frame_received(expected)
        self.drain()

    def act(self, step: dict[str, Any]) -> None:
        do = step["do"]
        m = self.scenario["master"]
        if do == "new_link":
            assert not self.fifo["master"]
            self.old = self.master or self.old
            self.master = Session.master(
                m["secrets"].get,
                self.clock.seconds,
                random=random.Random(step["seed"]).randbytes,
                codecs=m["codecs"],
                heartbeat=m["heartbeat"],
            )
        elif do == "connect":
            self.worker.connection_made()
        elif do == "accept":
            self.side("master").accept()
        elif do == "take_over":
            assert self.old is not None and self.master is not None
            self.old.take_over(self.master)
            self.master, self.old = self.old, None
        elif do in ("link_lost", "master_crash"):
            self.nothing_in_flight()
            if do == "link_lost":
                self.side("master").connection_lost("link lost")
            else:
                self.master = self.old = None
            self.worker.connection_lost("link lost")
        elif do in ("send", "request"):
            getattr(self.side(step["side"]), do)(step["kind"], step["body"])
        elif do == "reply":
            self.side(step["side"]).reply(self.last_request[step["side"]], step["body"])
        elif do == "reply_error":
            request = self.last_request[step["side"]]
            self.side(step["side"]).reply_error(request, step["code"], step["reason"])
        elif do == "goodbye":  # pragma: no cover - no scenario says goodbye yet
            self.side(step["side"]).goodbye(step["reason"], step["masters"])
        elif do == "advance":
            self.clock.advance(step["seconds"])
            for session in (self.worker, self.master, self.old):
                if session is not None:
                    session.tick()
        else:  # pragma: no cover
            raise AssertionError(f"unknown action {do!r}")
        self.drain()

    def run(self) -> None:
        for index, step in enumerate(self.scenario["steps"]):
            if "do" in step:
                self.act(step)
            else:
                self.frame(index, step)
        self.nothing_in_flight()
        final = {"worker": self.worker.state.value}
        if self.master is not None:
            final["master"] = self.master.state.value
        assert final == self.scenario["final"]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_conversation_replays_byte_for_byte(scenario: dict[str, Any]) -> None:
    Replay(scenario).run()


def test_expected_conversations_exist() -> None:
    names = {s["name"] for s in SCENARIOS}
    assert {"handshake_json", "handshake_msgpack", "wrong_secret", "resume"} <= names


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_handshake_frames_are_json_and_valid(scenario: dict[str, Any]) -> None:
    for step in scenario["steps"]:
        if "from" not in step:
            continue
        frame = step["frame"]
        if frame["type"] in wire.HANDSHAKE_TYPES:
            assert step["codec"] == "json"
            assert len(bytes.fromhex(step["hex"])) <= wire.MAX_HANDSHAKE_FRAME
        assert wire.CHECKS[frame["type"]](frame) is frame


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_transcript_proofs_verify(scenario: dict[str, Any]) -> None:
    """Every auth and welcome proof in a transcript follows from the nonces beside it."""
    hello: dict[str, Any] = {}
    challenge: dict[str, Any] = {}
    secret = scenario["worker"]["secret"]
    master_secret = scenario["master"]["secrets"].get(scenario["worker"]["name"])
    for step in scenario["steps"]:
        frame = step.get("frame", {})
        kind = frame.get("type")
        if kind == "hello":
            hello = frame
        elif kind == "challenge":
            challenge = frame
        elif kind in ("auth", "welcome"):
            args = (hello["worker"], hello["nonce"], challenge["nonce"])
            if kind == "auth":
                assert frame["proof"] == auth.worker_proof(secret, *args)
            else:
                assert frame["proof"] == auth.master_proof(master_secret, *args)
