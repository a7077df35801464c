"""The PB bridge in this process with a real ``buildbot-worker`` 4.3.0: transfers byte for
byte, file commands, duplicate-connection arbitration, print and shutdown."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from wiremsg.compat.pbmaster import BUILDDIR, PBBridge

from tests.compat.legacy import BuildbotWorker, require_buildbot
from wiremsg.commands import CommandTracker
from wiremsg.master import Master, Peer
from wiremsg.testing.harness import bounded
from wiremsg.transfer import DirectoryWriter, FileReader, FileWriter
from wiremsg.vocabulary import PRINT, SHUTDOWN, WORKER_INFO

WAIT = 30.0
SECRET = "pb-secret"


class Rig:
    def __init__(self, reactor: Any, tmp: Path) -> None:
        self.reactor = reactor
        self.tmp = tmp
        self.master = Master({"legacy1": SECRET}, reactor=reactor)
        self.bridge = PBBridge(self.master, {"legacy1": SECRET}, reactor)
        self.tracker = CommandTracker(self.master)
        self.workers: list[BuildbotWorker] = []
        self.port = 0

    def worker(self, name: str = "legacy1", keepalive: int = 600) -> BuildbotWorker:
        basedir = self.tmp / f"{name}-{len(self.workers)}"
        w = BuildbotWorker(basedir, self.port, name, SECRET, keepalive=keepalive)
        self.workers.append(w)
        w.start()
        return w

    async def peer(self) -> Peer:
        return await self.master.wait_for_worker("legacy1", timeout=WAIT)

    async def run(self, command: str, args: dict[str, Any], **kw: Any) -> tuple[int, list[Any]]:
        updates: list[Any] = []
        cmd = self.tracker.start(await self.peer(), args, updates.append, command, **kw)
        return await bounded(cmd.done, self.reactor, WAIT, command), updates

    async def gone(self) -> None:
        """Wait until every legacy worker's connection is closed on our side."""
        for legacy in list(self.bridge.legacy.values()):
            await bounded(legacy.lost, self.reactor, WAIT, f"loss of {legacy.name}")


@pytest_twisted.async_yield_fixture()
async def rig(reactor: Any, tmp_path: Path) -> AsyncIterator[Rig]:
    require_buildbot()
    r = Rig(reactor, tmp_path)
    port = await r.bridge.listen("tcp:0:interface=127.0.0.1")
    r.port = port.getHost().port
    try:
        yield r
    finally:
        for w in r.workers:
            w.kill()
        await r.gone()
        await r.bridge.stop()
        await r.master.stop()


@pytest_twisted.ensureDeferred
async def test_transfers_round_trip_byte_for_byte(rig: Rig) -> None:
    legacy = rig.worker()
    peer = await rig.peer()
    info = await peer.request(WORKER_INFO, {}, timeout=WAIT)
    assert info.body["basedir"] == str(legacy.basedir / BUILDDIR)
    assert {"shell", "uploadFile", "downloadFile", "stat"} <= set(info.body["commands"])
    payload = os.urandom(1024 * 1024 + 11)
    source = rig.tmp / "to-worker.bin"
    source.write_bytes(payload)
    rc, _ = await rig.run(
        "downloadFile",
        {"workdir": "build", "workerdest": "in.bin", "blocksize": 64 * 1024, "mode": 0o600},
        reader=FileReader(source),
    )
    on_worker = legacy.basedir / BUILDDIR / "build" / "in.bin"
    assert rc == 0 and on_worker.read_bytes() == payload
    back = rig.tmp / "from-worker.bin"
    rc, updates = await rig.run(
        "uploadFile",
        {"workdir": "build", "workersrc": "in.bin", "blocksize": 256 * 1024, "keepstamp": True},
        writer=FileWriter(back),
    )
    assert rc == 0 and back.read_bytes() == payload
    assert back.stat().st_mtime == on_worker.stat().st_mtime
    assert any(str(u.get("header", "")).startswith("sending ") for u in updates)
    rc, updates = await rig.run("stat", {"file": "in.bin", "workdir": "build"})
    assert rc == 0 and [u["stat"][6] for u in updates if "stat" in u] == [len(payload)]
    (legacy.basedir / BUILDDIR / "build" / "tree" / "sub").mkdir(parents=True)
    (legacy.basedir / BUILDDIR / "build" / "tree" / "sub" / "x.txt").write_text("x")
    rc, _ = await rig.run(
        "uploadDirectory",
        {"workdir": "build", "workersrc": "tree", "compress": "gz"},
        writer=DirectoryWriter(rig.tmp / "tree"),
    )
    assert rc == 0 and (rig.tmp / "tree" / "sub" / "x.txt").read_text() == "x"


@pytest_twisted.ensureDeferred
async def test_duplicate_connection_is_refused_while_the_first_answers(rig: Rig) -> None:
    rig.worker()
    first = await rig.peer()
    second = rig.worker()
    assert second.popen is not None
    for _ in range(int(WAIT / 0.2)):  # Buildbot's worker stops itself on this refusal
        if second.popen.poll() is not None:
            break
        await deferLater(rig.reactor, 0.2, lambda: None)  # polling another process
    assert second.popen.poll() is not None, second.log()
    assert "rejecting duplicate worker" in second.log()
    assert rig.master.workers["legacy1"] is first and first.state == "attached"


@pytest_twisted.ensureDeferred
async def test_keepalive_print_and_shutdown(rig: Rig) -> None:
    legacy = rig.worker(keepalive=1)
    peer = await rig.peer()
    pending = rig.bridge._factory.pending  # the peer attaches before the login returns
    await _until(rig.reactor, "the completed login not to count", lambda: not pending)
    for _ in range(int(WAIT / 0.2)):  # the worker's own keepalive, every second here
        if rig.bridge.legacy["legacy1"].last_keepalive is not None:
            break
        await deferLater(rig.reactor, 0.2, lambda: None)  # polling another process
    assert rig.bridge.legacy["legacy1"].last_keepalive is not None
    peer.send(PRINT, {"message": "hello from wiremsg"})
    lost: Deferred[Peer] = peer.when_lost()
    assert (await peer.request(SHUTDOWN, {}, timeout=WAIT)).body == {}
    await bounded(lost, rig.reactor, WAIT, "the worker to leave")
    assert legacy.popen is not None and legacy.popen.wait(timeout=WAIT) == 0
    assert "message from master: hello from wiremsg" in legacy.log()


@pytest_twisted.ensureDeferred
async def test_a_refused_login_is_one_log_line_not_a_traceback(reactor: Any) -> None:
    """A wrong secret or an unknown name is refused as a PB error: the client is told
    ``UnauthorizedLogin``; the master logs one line per refusal, never a traceback."""
    from twisted.cred.credentials import UsernamePassword
    from twisted.cred.error import UnauthorizedLogin
    from twisted.logger import globalLogPublisher
    from twisted.python.failure import Failure
    from twisted.spread import pb

    master = Master({"legacy1": SECRET}, reactor=reactor)
    bridge = PBBridge(master, {"legacy1": SECRET}, reactor)
    port = await bridge.listen("tcp:0:interface=127.0.0.1")
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for name, secret in ((b"legacy1", b"wrong"), (b"nobody", SECRET.encode())):
            factory = pb.PBClientFactory()
            connector = reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
            try:
                login = factory.login(UsernamePassword(name, secret), client=pb.Referenceable())
                outcome = await bounded(login.addBoth(lambda r: [r]), reactor, WAIT, "login")
                assert isinstance(outcome[0], Failure), outcome
                assert outcome[0].check(UnauthorizedLogin), outcome[0]
            finally:
                connector.disconnect()
    finally:
        globalLogPublisher.removeObserver(events.append)
        await bridge.stop()
        await master.stop()
    from twisted.logger import formatEvent

    texts = [formatEvent(e) for e in events]
    assert not [e for e in events if e.get("isError") or e.get("log_failure")], texts
    refused = [t for t in texts if "refused a PB login" in t]
    assert len(refused) == 2 and "legacy1" in refused[0] and "nobody" in refused[1], texts


class _Knock(Protocol):
    """A TCP client that connects to the PB port and never logs in."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


async def _knock(reactor: Any, port: int) -> _Knock:
    knock = _Knock()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await bounded(connectProtocol(endpoint, knock), reactor, WAIT, "connect")
    return knock


async def _until(reactor: Any, what: str, check: Any) -> None:
    for _ in range(int(WAIT / 0.01)):
        if check():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"gave up waiting for {what}")


@pytest_twisted.ensureDeferred
async def test_connections_without_a_login_are_bounded_in_number_and_time(
    reactor: Any,
) -> None:
    """Beyond max_pending connections without a completed login, a new one is closed at
    once (one warning per burst); a connection that does not log in within login_timeout
    is closed."""
    from twisted.logger import formatEvent, globalLogPublisher

    master = Master({"legacy1": SECRET}, reactor=reactor)
    bridge = PBBridge(master, {"legacy1": SECRET}, reactor, max_pending=2, login_timeout=1.0)
    port = (await bridge.listen("tcp:0:interface=127.0.0.1")).getHost().port
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    knocks: list[_Knock] = []
    try:
        pending = bridge._factory.pending
        knocks += [await _knock(reactor, port), await _knock(reactor, port)]
        await _until(reactor, "two pending connections", lambda: len(pending) == 2)
        extra = [await _knock(reactor, port), await _knock(reactor, port)]
        for knock in extra:
            await bounded(knock.lost, reactor, WAIT, "the refused connection to close")
        assert not any(k.lost.called for k in knocks)
        knocks[0].transport.loseConnection()  # type: ignore[union-attr]
        await _until(reactor, "a slot to free", lambda: len(pending) == 1)
        knocks.append(await _knock(reactor, port))
        await _until(reactor, "the slot to be taken", lambda: len(pending) == 2)
        assert not knocks[2].lost.called
        started = reactor.seconds()
        for knock in (knocks[1], knocks[2]):  # nobody logs in: the login timeout closes them
            await bounded(knock.lost, reactor, WAIT, "the login timeout")
        assert reactor.seconds() - started < 5 and not pending
    finally:
        globalLogPublisher.removeObserver(events.append)
        for knock in knocks:
            if not knock.lost.called and knock.transport is not None:
                knock.transport.loseConnection()
        await bridge.stop()
        await master.stop()
    texts = [formatEvent(e) for e in events]
    assert sum("logins in progress already" in t for t in texts) == 1, texts
    assert sum("no login within 1s" in t for t in texts) == 2, texts
