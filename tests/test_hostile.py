"""Hostile input: every bad byte gets a clear reject or close and one log line, and the master
goes on serving every other worker; nothing reaches an application handler before welcome."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from tests.clockwork import result, settle
from wiremsg import Master, Worker, auth
from wiremsg.backends.base import CloseReason, Link
from wiremsg.backends.memory import MemoryBackend


class Raw:
    """A raw memory link into the master: send bytes, see what comes back."""

    def __init__(self, clock: Clock, address: str) -> None:
        self.frames: list[bytes] = []
        self.closed: list[CloseReason] = []
        connecting = MemoryBackend(clock).connect(address)
        clock.advance(0)
        self.link: Link = result(connecting)
        self.link.attach(self)

    def frame_received(self, frame: bytes) -> None:
        self.frames.append(frame)

    def link_closed(self, reason: CloseReason) -> None:
        self.closed.append(reason)

    def send(self, *frames: bytes) -> None:
        for f in frames:
            if not self.link.closed:
                self.link.send(f)

    def decoded(self) -> list[dict[str, Any]]:
        return [json.loads(f) for f in self.frames]


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace", "").startswith("wiremsg"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def setup() -> Iterator[tuple[Clock, Master, Worker, list[Any]]]:
    clock = Clock()
    master = Master({"w1": "s1", "good": "g"}, reactor=clock)
    handled: list[Any] = []
    master.on("update", lambda peer, msg: handled.append((peer.name, msg.body)))
    master.on("echo", lambda peer, msg: msg.body)
    result(master.listen("memory://hostile"))
    good = Worker("good", "g", ["memory://hostile"], reactor=clock)
    d = good.start()
    settle(clock)
    result(d)
    yield clock, master, good, handled
    from twisted.internet.defer import Deferred

    Deferred.fromCoroutine(good.stop(drain_timeout=0))
    Deferred.fromCoroutine(master.stop())
    settle(clock, 1)


def hello(name: str = "w1", nonce: str = "ab" * 32, **extra: Any) -> dict[str, Any]:
    frame = {
        "type": "hello",
        "protocol": 1,
        "worker": name,
        "codecs": ["json"],
        "tags": [],
        "info": {},
        "nonce": nonce,
        "resume": None,
    }
    frame.update(extra)
    return frame


def enc(frame: Any) -> bytes:
    return json.dumps(frame).encode()


CASES: dict[str, tuple[list[bytes], str]] = {
    "garbage bytes": ([b"\xff\xfe\x00garbage"], "bad_frame"),
    "oversized frame": ([b"[" + b"1," * 40_000 + b"1]"], "too_large"),
    "json not a map": ([b"[1, 2, 3]"], "bad_frame"),
    "map without type": ([enc({"worker": "w1"})], "bad_frame"),
    "hello missing fields": ([enc({"type": "hello", "worker": "w1"})], "bad_frame"),
    "hello wrong types": ([enc(hello(codecs="json"))], "bad_frame"),
    "hello bad nonce": ([enc(hello(nonce="not-hex"))], "bad_frame"),
    "auth before hello": ([enc({"type": "auth", "proof": "00" * 32})], "unexpected"),
    "data before welcome": (
        [
            enc(
                {
                    "type": "msg",
                    "seq": 1,
                    "ack": 0,
                    "id": "x",
                    "kind": "update",
                    "body": {"evil": True},
                }
            )
        ],
        "unexpected",
    ),
    "welcome from a worker": ([enc(hello()), enc({"type": "welcome"})], "unexpected"),
    "unknown protocol version": ([enc(hello(protocol=99))], "version"),
    "no common codec": ([enc(hello(codecs=["pickle"]))], "codec"),
    "hello twice": ([enc(hello()), enc(hello())], "unexpected"),
    "wrong proof": ([enc(hello()), enc({"type": "auth", "proof": "00" * 32})], "auth_failed"),
    "unknown worker": (
        [enc(hello("mallory")), enc({"type": "auth", "proof": "00" * 32})],
        "auth_failed",
    ),
    "flood before auth": ([enc(hello())] + [b"x" * 100] * 1000, "bad_frame"),
    "flood of hellos": ([enc(hello())] * 1000, "unexpected"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_is_rejected_once_and_logged_once(
    case: str, setup: tuple[Clock, Master, Worker, list[Any]], logged: list[str]
) -> None:
    clock, master, good, handled = setup
    frames, code = CASES[case]
    raw = Raw(clock, "memory://hostile")
    settle(clock)
    raw.send(*frames)
    settle(clock)
    replies = raw.decoded()
    rejects = [f for f in replies if f["type"] == "reject"]
    assert len(rejects) == 1, replies
    assert rejects[0]["code"] == code and rejects[0]["reason"]
    assert replies[-1] == rejects[0]  # nothing after the reject
    assert len(raw.closed) == 1 and not raw.closed[0].local  # the master closed it
    refusals = [line for line in logged if "refused link" in line]
    assert len(refusals) == 1 and code in refusals[0]
    assert master.refused == 1
    assert handled == []  # nothing reached a handler
    # The good worker is unharmed and still served.
    reply = master.workers["good"].request("ping", {}, timeout=5)
    echo = good.request("echo", {"still": "here"}, timeout=5)
    good.on("ping", lambda msg: {"pong": 1})
    settle(clock, 0.1)
    assert result(reply).body == {"pong": 1}
    assert result(echo).body == {"still": "here"}
    assert sorted(master.workers) == ["good"]


def test_silent_link_times_out_in_the_handshake(
    setup: tuple[Clock, Master, Worker, list[Any]], logged: list[str]
) -> None:
    clock, master, _, _ = setup
    raw = Raw(clock, "memory://hostile")
    settle(clock, 9.9)
    assert not raw.closed
    settle(clock, 0.2)
    assert [f["code"] for f in raw.decoded()] == ["handshake_timeout"]
    assert len(raw.closed) == 1 and master.refused == 1
    assert len([line for line in logged if "refused link" in line]) == 1


def test_too_many_pending_handshakes_are_closed_at_once(logged: list[str]) -> None:
    clock = Clock()
    master = Master({"w1": "s1"}, reactor=clock, max_handshakes=3)
    result(master.listen("memory://crowd"))
    raws = [Raw(clock, "memory://crowd") for _ in range(5)]
    settle(clock)
    assert [len(r.closed) for r in raws] == [0, 0, 0, 1, 1]
    assert master.refused == 2
    assert len([line for line in logged if "handshakes already pending" in line]) == 2
    for r in raws:
        r.link.close()
    settle(clock, 1)
    assert master.status()["handshaking"] == 0


def test_a_valid_worker_after_wrong_proof_still_gets_in(
    setup: tuple[Clock, Master, Worker, list[Any]],
) -> None:
    clock, master, _, _ = setup
    raw = Raw(clock, "memory://hostile")
    raw.send(enc(hello()), enc({"type": "auth", "proof": "00" * 32}))
    settle(clock)
    w = Worker("w1", "s1", ["memory://hostile"], reactor=clock)
    d = w.start()
    settle(clock)
    result(d)
    assert master.workers["w1"].state == "attached"
    from twisted.internet.defer import Deferred

    Deferred.fromCoroutine(w.stop(drain_timeout=0))
    settle(clock, 1)


def test_a_master_that_cannot_prove_the_secret_is_refused_by_the_worker() -> None:
    """An impostor master (it lacks the secret) cannot get a worker to attach."""
    clock = Clock()

    class Impostor:
        def __init__(self, link: Link) -> None:
            self.link = link
            link.attach(self)

        def frame_received(self, frame: bytes) -> None:
            f = json.loads(frame)
            if f["type"] == "hello":
                self.link.send(enc({"type": "challenge", "nonce": "cd" * 32}))
            elif f["type"] == "auth":
                proof = auth.master_proof("guessed", "w1", "00" * 32, "cd" * 32)
                self.link.send(
                    enc(
                        {
                            "type": "welcome",
                            "session": "s",
                            "token": "t",
                            "codec": "json",
                            "heartbeat": 5,
                            "proof": proof,
                            "resumed": False,
                            "ack": 0,
                        }
                    )
                )

        def link_closed(self, reason: CloseReason) -> None:
            pass

    result(MemoryBackend(clock).listen("memory://impostor", Impostor))
    w = Worker("w1", "s1", ["memory://impostor"], reactor=clock)
    d = w.start()
    settle(clock)
    err = []
    d.addErrback(err.append)
    assert err and err[0].value.code == "auth_failed" and not w.attached
