"""Master and Worker over the memory backend, on a task.Clock: the public API end to end."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from tests.clockwork import failure, pending, result, settle
from wiremsg import (
    AuthError,
    LinkLost,
    Master,
    Message,
    MessageError,
    NotAttached,
    RemoteError,
    Timeout,
    Worker,
)
from wiremsg.backends.memory import network_for


class Fleet:
    """Masters and workers sharing one clock; stops them all at the end."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.masters: list[Master] = []
        self.workers: list[Worker] = []

    def master(self, *addresses: str, workers: dict[str, str] | None = None, **kw: Any) -> Master:
        m = Master(
            workers or {"w1": "s1", "w2": "s2", "w3": "s3"},
            reactor=self.clock,
            random=_counter_bytes(),
            **kw,
        )
        for a in addresses:
            result(m.listen(a))
        self.masters.append(m)
        return m

    def worker(self, name: str, secret: str, masters: list[str], **kw: Any) -> Worker:
        kw.setdefault("rng", lambda: 0.5)
        w = Worker(name, secret, masters, reactor=self.clock, **kw)
        self.workers.append(w)
        return w

    def start(self, w: Worker) -> None:
        d = w.start()
        self.settle()
        result(d)

    def settle(self, seconds: float = 0.0) -> None:
        settle(self.clock, seconds)

    def stop(self) -> None:
        for w in self.workers:
            Deferred.fromCoroutine(w.stop(drain_timeout=0))
        for m in self.masters:
            Deferred.fromCoroutine(m.stop())
        self.settle(1)
        for d in self.clock.getDelayedCalls():
            d.cancel()


def _counter_bytes() -> Any:
    n = [0]

    def random(size: int) -> bytes:
        n[0] += 1
        return n[0].to_bytes(size, "big") if size >= 8 else bytes(size)

    return random


@pytest.fixture
def fleet() -> Any:
    f = Fleet()
    yield f
    f.stop()


def sever(worker: Worker) -> None:
    """Cut the worker's current link uncleanly on both sides (a network failure)."""
    link = worker._driver.link
    assert link is not None
    link.sever("network cut")  # type: ignore[attr-defined]


def test_attach_registers_worker_with_tags_and_info(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"], tags=["linux", "x86"], info={"os": "debian"})
    fleet.start(w)
    assert w.attached and w.master == "memory://m"
    peer = m.workers["w1"]
    assert (peer.name, peer.tags, dict(peer.info), peer.state, peer.backend) == (
        "w1",
        ("linux", "x86"),
        {"os": "debian"},
        "attached",
        "memory",
    )
    assert result(m.wait_for_worker("w1")) is peer
    status = m.status()["workers"][0]
    assert {k: status[k] for k in ("name", "state", "backend", "tags")} == {
        "name": "w1",
        "state": "attached",
        "backend": "memory",
        "tags": ["linux", "x86"],
    }


def test_requests_and_messages_both_ways(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    got: list[tuple[str, Any]] = []
    m.on("update", lambda peer, msg: got.append((peer.name, msg.body)))
    m.on("add", lambda peer, msg: {"sum": msg.body["a"] + msg.body["b"]})
    w = fleet.worker("w1", "s1", ["memory://m"])
    w.on("echo", lambda msg: {"echo": msg.body})
    w.on("print", lambda msg: got.append(("worker", msg.body)))
    fleet.start(w)
    peer = m.workers["w1"]

    reply = peer.request("echo", {"x": [1, "ü"]}, timeout=5)
    back = w.request("add", {"a": 2, "b": 3})
    w.send("update", {"line": 1})
    sent = peer.send("print", {"message": "hi"})
    fleet.settle()
    echoed = result(reply)
    assert isinstance(echoed, Message) and echoed.body == {"echo": {"x": [1, "ü"]}}
    assert result(back).body == {"sum": 5}
    assert sorted(got, key=str) == [("w1", {"line": 1}), ("worker", {"message": "hi"})]
    assert sent.kind == "print" and sent.id


def test_handler_may_return_deferred_or_coroutine(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"])

    async def slow(msg: Message) -> dict[str, int]:
        await succeed(None)
        return {"n": msg.body["n"] * 2}  # type: ignore[index]

    w.on("double", slow)
    w.on("later", lambda msg: succeed({"ok": True}))
    fleet.start(w)
    peer = m.workers["w1"]
    a, b = peer.request("double", {"n": 21}), peer.request("later")
    fleet.settle()
    assert result(a).body == {"n": 42}
    assert result(b).body == {"ok": True}


def test_handler_errors_become_remote_errors(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"])

    def boom(msg: Message) -> None:
        raise ValueError("no such branch")

    def refuse(msg: Message) -> None:
        raise RemoteError("busy", "try later")

    w.on("boom", boom)
    w.on("refuse", refuse)
    w.on("bad", lambda msg: {"x": float("nan")})
    fleet.start(w)
    peer = m.workers["w1"]
    ds = [peer.request(k) for k in ("boom", "refuse", "bad", "missing")]
    fleet.settle()
    errors = [failure(d).value for d in ds]
    assert all(isinstance(e, RemoteError) for e in errors)
    assert [(e.code, e.reason) for e in errors] == [  # type: ignore[attr-defined]
        ("handler_error", "ValueError: no such branch"),
        ("busy", "try later"),
        ("handler_error", "bad reply: body.x: nan is not valid JSON"),
        ("no_handler", "worker w1 has no handler for 'missing'"),
    ]


def test_invalid_messages_are_refused_locally(fleet: Fleet) -> None:
    fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"])
    fleet.start(w)
    with pytest.raises(MessageError, match=r"body\.when"):
        w.send("update", {"when": object()})
    with pytest.raises(MessageError, match="kind"):
        w.send("", {})


def test_request_timeout(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"])
    w.on("hang", lambda msg: Deferred())
    fleet.start(w)
    d = m.workers["w1"].request("hang", {}, timeout=2)
    fleet.settle(1.9)
    assert pending(d)
    fleet.settle(0.2)
    assert isinstance(failure(d).value, Timeout)


def test_master_listens_on_several_addresses(fleet: Fleet) -> None:
    m = fleet.master("memory://a", "memory://b")
    w1 = fleet.worker("w1", "s1", ["memory://a"])
    w2 = fleet.worker("w2", "s2", ["memory://b"])
    fleet.start(w1)
    fleet.start(w2)
    assert sorted(m.workers) == ["w1", "w2"]
    assert m.status()["listeners"] == ["memory://a", "memory://b"]


def test_broadcast_by_tag_gathers_results_and_failures(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    ws = [
        fleet.worker("w1", "s1", ["memory://m"], tags=["linux"]),
        fleet.worker("w2", "s2", ["memory://m"], tags=["linux", "arm"]),
        fleet.worker("w3", "s3", ["memory://m"], tags=["windows"]),
    ]
    ws[0].on("uname", lambda msg: {"os": "linux"})
    ws[1].on("uname", lambda msg: 1 / 0)
    ws[2].on("uname", lambda msg: {"os": "windows"})
    for w in ws:
        fleet.start(w)
    d = m.broadcast("uname", {}, tags=["linux"], timeout=5)
    fleet.settle()
    results = result(d)
    assert sorted(results) == ["w1", "w2"]
    assert results["w1"].body == {"os": "linux"}  # type: ignore[union-attr]
    assert isinstance(results["w2"].value, RemoteError)  # type: ignore[union-attr]
    everyone = m.broadcast("uname", {})
    fleet.settle()
    assert sorted(result(everyone)) == ["w1", "w2", "w3"]
    nobody = m.broadcast("uname", {}, tags=["sparc"])
    assert result(nobody) == {}


def test_duplicate_name_refused_while_first_alive(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    first = fleet.worker("w1", "s1", ["memory://m"])
    fleet.start(first)
    peer = m.workers["w1"]
    second = fleet.worker("w1", "s1", ["memory://m"])
    d = second.start()
    fleet.settle(3)
    assert pending(d) and not second.attached  # refused, and retrying with backoff
    assert m.workers["w1"] is peer and m.refused >= 1
    assert result_of_echo(fleet, first, peer)
    Deferred.fromCoroutine(first.stop())
    fleet.settle(60)
    result(d)  # the first one left cleanly: the second gets the name
    assert m.workers["w1"] is not peer and second.attached


def result_of_echo(fleet: Fleet, w: Worker, peer: Any) -> bool:
    w.on("ping", lambda msg: {"pong": True})
    d = peer.request("ping", {}, timeout=5)
    fleet.settle()
    return bool(result(d).body == {"pong": True})


def test_clean_stop_deregisters(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"])
    fleet.start(w)
    peer = m.workers["w1"]
    for i in range(5):
        w.send("update", {"i": i})
    got: list[int] = []
    m.on("update", lambda p, msg: got.append(msg.body["i"]))
    stopping = Deferred.fromCoroutine(w.stop())
    fleet.settle(0.01)
    assert pending(stopping)  # waiting for the master to acknowledge what was sent
    fleet.settle(1)
    result(stopping)
    assert "w1" not in m.workers and peer.state == "lost"
    assert got == [0, 1, 2, 3, 4]  # drained before the goodbye
    with pytest.raises(LinkLost):
        w.send("update", {})
    with pytest.raises(NotAttached):
        m.peer("w1")


def test_start_fails_with_auth_error(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    wrong = fleet.worker("w1", "not-the-secret", ["memory://m"])
    stranger = fleet.worker("mallory", "whatever", ["memory://m"])
    d1, d2 = wrong.start(), stranger.start()
    fleet.settle()
    e1, e2 = failure(d1).value, failure(d2).value
    assert isinstance(e1, AuthError) and e1.code == "auth_failed"
    assert isinstance(e2, AuthError) and e2.code == "auth_failed"
    assert not m.workers and m.refused == 2
    assert wrong.attempts == 1  # a refusal of the credentials is not retried


def test_wait_for_worker_times_out(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    d = m.wait_for_worker("w1", timeout=3)
    fleet.settle(2.9)
    assert pending(d)
    fleet.settle(0.2)
    assert isinstance(failure(d).value, Timeout)


def test_wait_for_worker_fires_on_attach(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    d = m.wait_for_worker("w1", timeout=3)
    fleet.start(fleet.worker("w1", "s1", ["memory://m"]))
    assert result(d).name == "w1"


def test_link_cut_resumes_without_loss_or_duplicates(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"])
    to_master: list[int] = []
    to_worker: list[int] = []
    m.on("n", lambda p, msg: to_master.append(msg.body["i"]))
    w.on("n", lambda msg: to_worker.append(msg.body["i"]))
    fleet.start(w)
    peer = m.workers["w1"]
    for i in range(300):
        w.send("n", {"i": i})
        peer.send("n", {"i": i})
        if i in (100, 200):
            fleet.clock.advance(0)  # deliver some frames, not their acks
            sever(w)
            assert peer.state == "attached" or peer.state == "detached"
        if i == 150:
            fleet.settle(1)
    fleet.settle(2)
    assert to_master == list(range(300))
    assert to_worker == list(range(300))
    assert m.workers["w1"] is peer and peer.state == "attached"
    assert peer.stats.resumes == 2 and w.stats.resumes == 2


def test_detached_worker_replaced_by_new_process(fleet: Fleet) -> None:
    m = fleet.master("memory://m", grace=60)
    old = fleet.worker("w1", "s1", ["memory://m"])
    fleet.start(old)
    old_peer = m.workers["w1"]
    pending_request = old_peer.request("anything", {})
    sever(old)
    Deferred.fromCoroutine(old.stop())  # the process dies: it never comes back
    fleet.settle()
    assert old_peer.state == "detached"
    new = fleet.worker("w1", "s1", ["memory://m"])
    fleet.start(new)
    assert m.workers["w1"] is not old_peer and old_peer.state == "lost"
    assert isinstance(failure(pending_request).value, LinkLost)


def test_stale_link_displaced_by_resume_token(fleet: Fleet) -> None:
    m = fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"])
    fleet.start(w)
    peer = m.workers["w1"]
    stale_link = peer._driver.link
    assert stale_link is not None
    # The worker loses the link but the master never hears of it (a half-open TCP link).
    receiver = w._driver._receiver
    assert receiver is not None
    receiver.driver = None
    w._driver.link = None
    w._driver._receiver = None
    w.session.connection_lost("half-open")
    w._driver.flush()
    fleet.settle(1)
    assert w.attached and m.workers["w1"] is peer and peer.state == "attached"
    assert stale_link.closed and peer._driver.link is not stale_link
    assert peer.stats.resumes == 1
    assert result_of_echo(fleet, w, peer)


def test_grace_expiry_loses_the_worker(fleet: Fleet) -> None:
    m = fleet.master("memory://m", grace=30)
    w = fleet.worker("w1", "s1", ["memory://m"])
    fleet.start(w)
    peer = m.workers["w1"]
    d = peer.request("x", {})
    sever(w)
    Deferred.fromCoroutine(w.stop())
    fleet.settle(29)
    assert peer.state == "detached" and pending(d)
    fleet.settle(2)
    assert "w1" not in m.workers and peer.state == "lost"
    assert isinstance(failure(d).value, LinkLost)


def test_failover_backoff_with_full_jitter(fleet: Fleet) -> None:
    addrs = ["memory://x", "memory://y", "memory://z"]
    w = fleet.worker("w1", "s1", addrs, backoff={"base": 1, "factor": 2, "cap": 8, "hop": 0.1})
    tried: list[tuple[float, str]] = []
    real = w._attempt

    def spy() -> None:
        tried.append((round(fleet.clock.seconds(), 3), w._failover.current))
        real()

    w._attempt = spy  # type: ignore[method-assign]
    d = w.start()
    fleet.settle(10)
    # rng is 0.5: the wait after a failed cycle is 0.5 * min(8, 1 * 2 ** cycles).
    assert tried[:9] == [
        (0.0, "memory://x"),
        (0.1, "memory://y"),
        (0.2, "memory://z"),
        (1.2, "memory://x"),
        (1.3, "memory://y"),
        (1.4, "memory://z"),
        (3.4, "memory://x"),
        (3.5, "memory://y"),
        (3.6, "memory://z"),
    ]
    assert pending(d)
    fleet.master("memory://y")
    fleet.settle(10)
    result(d)
    assert w.master == "memory://y"


def test_goodbye_fails_over_at_once_without_loss(fleet: Fleet) -> None:
    m1 = fleet.master("memory://m1")
    m2 = fleet.master("memory://m2")
    got: list[tuple[str, int]] = []
    m1.on("n", lambda p, msg: got.append(("m1", msg.body["i"])))
    m2.on("n", lambda p, msg: got.append(("m2", msg.body["i"])))
    w = fleet.worker("w1", "s1", ["memory://m1", "memory://m2"])
    fleet.start(w)
    Deferred.fromCoroutine(m1.stop(masters=["memory://m2"]))
    for i in range(3):
        w.send("n", {"i": i})  # queued while between masters
    fleet.settle()
    assert w.master == "memory://m2" and "w1" in m2.workers
    assert got == [("m2", 0), ("m2", 1), ("m2", 2)]


def test_master_crash_carries_unacked_messages_to_the_next(fleet: Fleet) -> None:
    m1 = fleet.master("memory://m1")
    m2 = fleet.master("memory://m2")
    seen: list[int] = []
    m2.on("n", lambda p, msg: seen.append(msg.body["i"]))
    m1.on("n", lambda p, msg: None)
    w = fleet.worker("w1", "s1", ["memory://m1", "memory://m2"])
    fleet.start(w)
    for i in range(5):
        w.send("n", {"i": i})
    # m1 crashes: its listener vanishes and the link breaks before any ack is sent.
    network_for(fleet.clock).listeners.pop("m1")
    sever(w)
    for i in range(5, 8):
        w.send("n", {"i": i})
    fleet.settle(5)
    assert w.master == "memory://m2"
    assert seen == list(range(8))  # nothing lost; the first 5 went again, renumbered


def test_backpressure_pauses_and_resumes(fleet: Fleet) -> None:
    fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"], session_options={"window_messages": 2})
    fleet.start(w)
    assert w.writable
    for i in range(5):
        w.send("n", {"i": i})
    assert not w.writable
    ready = w.when_writable()
    assert pending(ready)
    fleet.settle(1)
    assert w.writable
    result(ready)


def test_start_twice_is_refused(fleet: Fleet) -> None:
    fleet.master("memory://m")
    w = fleet.worker("w1", "s1", ["memory://m"])
    fleet.start(w)
    with pytest.raises(RuntimeError):
        w.start()


def test_bad_worker_configuration() -> None:
    clock = Clock()
    with pytest.raises(ValueError):
        Worker("w1", "", ["memory://m"], reactor=clock)
    with pytest.raises(ValueError):
        Worker("w1", "s", [], reactor=clock)
    with pytest.raises(ValueError):
        Worker("w1", "s", ["memory://m"], reactor=clock, policy="sometimes")
    with pytest.raises(ValueError):
        Master({"w1": ""}, reactor=clock)


def test_worker_entries_with_tags_add_to_the_declared_tags(fleet: Fleet) -> None:
    from wiremsg.config import WorkerEntry

    m = Master({"w1": WorkerEntry("w1", "s1", ("gpu", "linux"))}, reactor=fleet.clock)
    fleet.masters.append(m)
    result(m.listen("memory://tagged"))
    fleet.start(fleet.worker("w1", "s1", ["memory://tagged"], tags=["linux"]))
    assert m.workers["w1"].tags == ("linux", "gpu")
