"""The ZeroMQ backend: the conformance suite over TCP, IPC and CURVE, plus what only zmq has
(coalescing, high-water marks, vanished peers, CURVE allow-lists, hostile peers, many links)."""

from __future__ import annotations

import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import quote

import pytest
import zmq
import zmq.auth
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from wiremsg import keys
from wiremsg.address import Address, parse_address
from wiremsg.backends import backend_class
from wiremsg.backends._zmq import BATCH_BYTES, ZMQBackend, ZMQLink
from wiremsg.backends.base import Backend, CloseReason, Link
from wiremsg.errors import AddressError, ConnectFailed
from wiremsg.testing.conformance import BackendConformance, LinkHarness, run_in_reactor
from wiremsg.testing.harness import async_test

TCP = "zmq://127.0.0.1:0"


@pytest.fixture
def ipc_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="wmz", dir="/tmp")  # AF_UNIX paths are limited to ~107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


class TestZMQConformanceTCP(BackendConformance):
    @pytest.fixture
    def backend(self, reactor: Any) -> ZMQBackend:
        return ZMQBackend(reactor)

    @pytest.fixture
    def listen_address(self) -> str:
        return TCP


class TestZMQConformanceIPC(BackendConformance):
    @pytest.fixture
    def backend(self, reactor: Any) -> ZMQBackend:
        return ZMQBackend(reactor)

    @pytest.fixture
    def listen_address(self, ipc_dir: str) -> str:
        return f"zmq+ipc://{ipc_dir}/s"


class _CurveClient(ZMQBackend):
    """Connects with a worker's key pair to where its CURVE listeners listen."""

    client_secret = ""
    server_public = ""

    def connect(self, address: Address | str, timeout: float = 10.0) -> Deferred[Link]:
        addr = parse_address(address)
        params = {"curve_secret": self.client_secret, "curve_server": self.server_public}
        return super().connect(replace(addr, params=MappingProxyType(params)), timeout)


class TestZMQConformanceCURVE(BackendConformance):
    @pytest.fixture
    def backend(self, reactor: Any, tmp_path: Path) -> ZMQBackend:
        backend = _CurveClient(reactor)
        backend.client_secret = str(keys.write_keypair(tmp_path / "workers", "w1")[1])
        return backend

    @pytest.fixture
    def listen_address(self, tmp_path: Path, backend: _CurveClient) -> str:
        backend.server_public, secret = map(str, keys.write_keypair(tmp_path, "master"))
        return f"{TCP}?curve_secret={secret}&curve_clients={tmp_path / 'workers'}"


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def harness(reactor: Any) -> Iterator[LinkHarness]:
    h = LinkHarness(ZMQBackend(reactor), reactor, timeout=10.0)
    yield h
    run_in_reactor(reactor, h.aclose)


@pytest.fixture(params=["tcp", "ipc"])
def address(request: pytest.FixtureRequest, ipc_dir: str) -> str:
    return TCP if request.param == "tcp" else f"zmq+ipc://{ipc_dir}/s"


async def _sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def _until(reactor: Any, what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        await _sleep(reactor, 0.01)


class _Logged:
    """Collects twisted.logger events while in use."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._observer = self.events.append

    def __enter__(self) -> _Logged:
        globalLogPublisher.addObserver(self._observer)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observer)

    def text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)


def _endpoint(address: Address) -> str:
    if address.scheme == "zmq+ipc":
        return f"ipc://{address.path}"
    return f"tcp://{address.host}:{address.port}"


class RawDealer:
    """A bare pyzmq DEALER in its own Context, off the reactor: a hand-written (hostile) peer."""

    def __init__(self, address: Address, ident: bytes = b"raw-dealer") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.routing_id = ident
        self.sock.connect(_endpoint(address))

    async def recv(self, reactor: Any) -> bytes:
        await _until(reactor, "a message to the raw DEALER", lambda: self.sock.poll(0))
        return self.sock.recv()

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


# -- coalescing and big frames ------------------------------------------------------------------


@async_test
async def test_a_burst_is_coalesced_into_few_messages(harness: LinkHarness, address: str) -> None:
    p = await harness.pair(address=address)
    client = cast(ZMQLink, p.client)
    sent: list[bytes] = []
    send_to = client._conn.send_to

    def counting(ident: bytes | None, msg: bytes) -> None:
        send_to(ident, msg)
        sent.append(msg)

    client._conn.send_to = counting  # type: ignore[method-assign]
    frames = [b"%04d" % i + bytes(100) for i in range(1000)]
    harness.send(client, *frames)
    assert await p.server_rx.wait_frames(1000) == frames
    assert len(sent) == 1, "1,000 small frames sent in one turn make one ZeroMQ message"
    big = [bytes([i % 256]) * 200 for i in range(20_000)]  # 4 MB in one turn
    harness.send(client, *big)
    assert await p.server_rx.wait_frames(21_000) == frames + big
    assert len(sent) <= 1 + 4_000_000 // BATCH_BYTES + 2, len(sent)


@async_test
async def test_16_mib_frame_between_small_ones(harness: LinkHarness, address: str) -> None:
    p = await harness.pair(address=address)
    frame = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    for a, a_rx in ((p.client, p.server_rx), (p.server, p.client_rx)):
        harness.send(a, b"before", frame, b"", b"after")
        got = await a_rx.wait_frames(4)
        assert got[0] == b"before" and got[2:] == [b"", b"after"]
        assert len(got[1]) == len(frame) and got[1] == frame


# -- high-water marks: queue, never drop -----------------------------------------------------


@async_test
async def test_hwm_with_a_stalled_peer_queues_boundedly_and_loses_nothing(
    reactor: Any, address: str
) -> None:
    harness = LinkHarness(ZMQBackend(reactor, max_queue=80 << 20), reactor, timeout=20.0)
    try:
        server = await harness.listen(f"{address}?sndhwm=2&rcvhwm=2")
        for stall_client in (True, False):
            p = await harness.pair(server)
            sender = cast(ZMQLink, p.server if stall_client else p.client)
            staller = cast(ZMQLink, p.client if stall_client else p.server)
            rx = p.client_rx if stall_client else p.server_rx
            staller.pause_reading()
            chunks = [bytes([i]) * (1 << 20) for i in range(64)]
            harness.send(sender, *chunks)
            blocked = sender._conn.blocked
            await _until(reactor, "the sender to block", lambda: blocked)  # noqa: B023
            await _sleep(reactor, 0.2)
            assert sender._queued > 0, "frames wait in the link's queue"
            assert sender._queued <= 80 << 20
            assert not rx.frames or len(rx.frames) < 64
            staller.resume_reading()
            got = await rx.wait_frames(64)
            assert [f[0] for f in got] == list(range(64)) and got == chunks
            assert sender._queued == 0 and sender not in sender._conn.blocked
            assert not p.client_rx.closes and not p.server_rx.closes
    finally:
        await harness.aclose()


@async_test
async def test_pushed_frames_at_the_high_water_mark_wait_in_order(
    reactor: Any, address: str
) -> None:
    """push() sends a lone batch straight to ZeroMQ; at the high-water mark (zmq.Again) it
    falls back to the backlog, and later pushes queue behind it: nothing lost or reordered."""
    harness = LinkHarness(ZMQBackend(reactor), reactor, timeout=20.0)
    try:
        server = await harness.listen(f"{address}?sndhwm=2&rcvhwm=2")
        p = await harness.pair(server)
        sender, staller = cast(ZMQLink, p.client), cast(ZMQLink, p.server)
        staller.pause_reading()
        frames = [bytes([i % 256]) * (BATCH_BYTES // 2) for i in range(400)]
        for frame in frames:  # one batch each, pushed at once, as requests are
            sender.send(frame)
            sender.push()
        assert sender._conn.blocked, "the high-water mark was reached"
        assert sender._backlog and sender._queued > 0
        staller.resume_reading()
        got = await p.server_rx.wait_frames(len(frames))
        assert got == frames
        await _until(reactor, "the backlog to drain", lambda: not sender._queued)
        assert not sender._backlog and sender not in sender._conn.blocked
        assert not p.client_rx.closes and not p.server_rx.closes
    finally:
        await harness.aclose()


@async_test
async def test_queue_overflow_closes_the_link_with_a_reason(reactor: Any, address: str) -> None:
    harness = LinkHarness(ZMQBackend(reactor, max_queue=20 << 20), reactor, timeout=10.0)
    try:
        p = await harness.pair(address=f"{address}?sndhwm=2&rcvhwm=2")
        cast(ZMQLink, p.server).pause_reading()
        chunk = bytes(1 << 20)
        for _ in range(200):
            if p.client_rx.closes:
                break
            harness.send(p.client, chunk)
            await _sleep(reactor, 0)
        mine = await p.client_rx.wait_closed()
        assert (mine.local, mine.clean) == (True, False) and "overflow" in mine.text
        cast(ZMQLink, p.server).resume_reading()
        theirs = await p.server_rx.wait_closed()
        assert (theirs.local, theirs.clean) == (False, False)
    finally:
        await harness.aclose()


# -- peers that vanish ---------------------------------------------------------------------------

_PEER = """
import sys, time, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(sys.argv[1]); s.send(b"H\\x01")
assert s.recv() == b"W\\x01"
s.send(b"D\\x00\\x00\\x00\\x05hello"); print("ready", flush=True); time.sleep(60)
"""


async def _peer_process(harness: LinkHarness, address: str) -> tuple[subprocess.Popen[str], Any]:
    server = await harness.listen(address)
    target = _endpoint(server.address)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PEER, target], stdout=subprocess.PIPE, text=True
    )
    _, rx = await server.next_link()
    assert rx is not None
    assert await rx.wait_frames(1) == [b"hello"]
    return proc, rx


@async_test
async def test_a_killed_peer_is_noticed_by_the_listener(harness: LinkHarness, address: str) -> None:
    proc, rx = await _peer_process(harness, f"{address}?heartbeat=0.5")
    try:
        started = time.monotonic()
        proc.kill()
        reason = await rx.wait_closed()
        assert time.monotonic() - started < 1.5, "within the heartbeat timeout"
        assert (reason.local, reason.clean) == (False, False)
        assert "connection lost" in reason.text
    finally:
        proc.kill()
        proc.wait()


@async_test
async def test_sending_to_a_vanished_identity_ends_the_link(harness: LinkHarness) -> None:
    proc, rx = await _peer_process(harness, TCP)
    server = harness.servers[0]
    link = cast(ZMQLink, server.accepted[0])
    try:
        cast(Any, link._conn).by_fd.clear()  # blind the monitor: only ROUTER_MANDATORY can tell now
        proc.kill()
        proc.wait()
        await _sleep(harness.reactor, 0.2)
        assert not rx.closes
        harness.send(link, b"anyone there?")
        reason = await rx.wait_closed()
        assert (reason.local, reason.clean) == (False, False)
        assert "unreachable" in reason.text, reason
    finally:
        proc.kill()
        proc.wait()


@async_test
async def test_a_close_finishes_when_the_peer_vanishes_before_acknowledging(
    reactor: Any, address: str
) -> None:
    harness = LinkHarness(ZMQBackend(reactor), reactor)
    far = LinkHarness(ZMQBackend(reactor), reactor)
    try:
        server = await harness.listen(address)
        client, _ = await far.connect(server.address)
        accepted, rx = await server.next_link()
        client.pause_reading()  # type: ignore[attr-defined]  # the bye is never read
        accepted.close("going")
        await _sleep(reactor, 0.1)
        cast(ZMQLink, client)._conn.fail_all("vanished")
        assert rx is not None
        assert await rx.wait_closed() == CloseReason("going", local=True, clean=True)
    finally:
        await harness.aclose()
        await far.aclose()


@async_test
async def test_on_link_failure_ends_that_link_and_keeps_listening(
    harness: LinkHarness, address: str
) -> None:
    calls: list[Link] = []

    def on_link(link: Link) -> None:
        calls.append(link)
        if len(calls) == 1:
            raise RuntimeError("listener bug (on purpose)")
        harness.attach(link, "second")

    backend = harness.backend
    listener = await harness.bounded(backend.listen(parse_address(address), on_link), "listen")
    try:
        _, rx = await harness.connect(listener.address)
        assert rx is not None
        reason = await rx.wait_closed()
        assert not reason.clean and "failed to accept" in reason.text
        second, _ = await harness.connect(listener.address)
        harness.send(second, b"hi")
        await _until(harness.reactor, "the second link", lambda: len(calls) == 2)
        harness.links.append(calls[1])
    finally:
        await harness.bounded(listener.close(), "listener close")


@async_test
async def test_a_frozen_peer_is_dropped_by_zmtp_heartbeats(harness: LinkHarness) -> None:
    proc, rx = await _peer_process(harness, f"{TCP}?heartbeat=0.2&heartbeat_timeout=0.6")
    try:
        started = time.monotonic()
        proc.send_signal(signal.SIGSTOP)  # TCP stays up; ZMTP pings go unanswered
        reason = await rx.wait_closed()
        assert 0.5 < time.monotonic() - started < 3
        assert (reason.local, reason.clean) == (False, False)
    finally:
        proc.kill()
        proc.wait()


@async_test
async def test_a_dealer_link_ends_when_the_listener_goes(reactor: Any, address: str) -> None:
    harness = LinkHarness(ZMQBackend(reactor), reactor)
    far = LinkHarness(ZMQBackend(reactor), reactor)  # another Context: like another process
    try:
        server = await far.listen(address)
        _, rx = await harness.connect(server.address)
        accepted, _ = await server.next_link()
        far.send(accepted, b"last words")
        assert rx is not None
        assert await rx.wait_frames(1) == [b"last words"]
        cast(ZMQLink, accepted)._conn.fail_all("gone")  # the socket goes, without bye
        reason = await rx.wait_closed()
        assert (reason.local, reason.clean) == (False, False)
        assert "disconnected" in reason.text
    finally:
        await harness.aclose()
        await far.aclose()


# -- CURVE ----------------------------------------------------------------------------------------


@async_test
async def test_curve_allowed_key_passes_and_unknown_key_is_refused_and_logged(
    harness: LinkHarness, tmp_path: Path
) -> None:
    _, master_secret = keys.write_keypair(tmp_path, "master")
    worker_public, worker_secret = keys.write_keypair(tmp_path / "workers", "w1")
    stranger_public, stranger_secret = keys.generate_keypair()
    url = f"{TCP}?curve_secret={master_secret}&curve_clients={tmp_path / 'workers'}"
    server = await harness.listen(url)
    bound = server.address
    assert cast(Any, server.listener).curve_public == keys.load_key(master_secret, secret=False)
    base = f"zmq://127.0.0.1:{bound.port}?curve_server={tmp_path / 'master.key'}"

    client, rx = await harness.connect(f"{base}&curve_secret={worker_secret}")
    accepted, srx = await server.next_link()
    assert cast(ZMQLink, accepted).curve_key == keys.load_key(worker_public)
    harness.send(client, b"encrypted")
    harness.send(accepted, b"likewise")
    assert rx is not None and srx is not None
    assert await srx.wait_frames(1) == [b"encrypted"]
    assert await rx.wait_frames(1) == [b"likewise"]

    with _Logged() as logged:
        inline = quote(stranger_secret, safe="")
        with pytest.raises(ConnectFailed, match="refused our CURVE key"):
            await harness.connect(f"{base}&curve_secret={inline}")
    assert stranger_public in logged.text() and "not allowed" in logged.text()
    with pytest.raises(ConnectFailed, match="handshake failed"):  # no CURVE at all
        await harness.connect(f"zmq://127.0.0.1:{bound.port}")
    assert len(server.accepted) == 1


@async_test
async def test_curve_with_a_wrong_server_key_fails_cleanly(
    harness: LinkHarness, tmp_path: Path
) -> None:
    _, master_secret = keys.write_keypair(tmp_path, "master")
    worker_public, worker_secret = keys.write_keypair(tmp_path, "w1")
    server = await harness.listen(
        f"{TCP}?curve_secret={master_secret}&curve_clients={worker_public}"
    )
    other = quote(keys.generate_keypair()[0], safe="")
    url = f"zmq://127.0.0.1:{server.address.port}?curve_server={other}&curve_secret={worker_secret}"
    with pytest.raises(ConnectFailed, match="handshake failed"):
        await harness.connect(url)
    assert not server.accepted


def test_keys_files_load_and_interoperate_with_zmq_auth(tmp_path: Path) -> None:
    public_path, secret_path = keys.write_keypair(tmp_path / "k", "m")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(secret_path)
    assert secret is not None
    assert keys.load_key(public_path) == public.decode() == keys.load_key(secret_path, secret=False)
    assert keys.load_key(secret_path) == secret.decode() == keys.load_key(secret_path, secret=True)
    assert keys.public_key(secret.decode()) == public.decode()
    assert zmq.auth.load_certificate(public_path) == (public, None)
    with pytest.raises(ValueError, match="no valid secret key"):
        keys.load_key(public_path, secret=True)
    bare = tmp_path / "bare"
    bare.write_text(public.decode() + "\n")
    assert keys.load_key(bare) == public.decode() == keys.load_key(public.decode())
    assert keys.load_public_keys(f"{tmp_path / 'k'}, {bare}") == {public.decode()}
    with pytest.raises(FileExistsError):
        keys.write_keypair(tmp_path / "k", "m")
    keys.write_keypair(tmp_path / "k", "m", overwrite=True)
    for bad in ("short", str(tmp_path / "missing"), str(tmp_path)):
        with pytest.raises(ValueError):
            keys.load_key(bad)
    with pytest.raises(ValueError):
        keys.write_keypair(tmp_path, "../escape")


# -- hostile peers -------------------------------------------------------------------------------


async def _good_pair_survives(harness: LinkHarness, server: Any) -> None:
    p = await harness.pair(server)
    harness.send(p.client, b"still fine")
    harness.send(p.server, b"likewise")
    assert await p.server_rx.wait_frames(1) == [b"still fine"]
    assert await p.client_rx.wait_frames(1) == [b"likewise"]


class _Garbage(Protocol):
    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 20)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


@async_test
async def test_raw_garbage_only_drops_that_connection(harness: LinkHarness) -> None:
    server = await harness.listen(TCP)
    good = await harness.pair(server)
    peer = _Garbage()
    endpoint = TCP4ClientEndpoint(harness.reactor, "127.0.0.1", server.address.port or 0)
    await harness.bounded(connectProtocol(endpoint, peer), "dial")
    await harness.bounded(peer.lost, "the garbage connection to be dropped")
    harness.send(good.client, b"unharmed")
    assert await good.server_rx.wait_frames(1) == [b"unharmed"]
    assert len(server.accepted) == 1 and not good.server_rx.closes
    await _good_pair_survives(harness, server)


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([b"D\x00\x00\x00\x09short"], "bad record"),
        ([b"D\x00\x00"], "bad record"),
        ([b"D" + (17 << 20).to_bytes(4, "big") + b"x"], "bad record"),
        ([b"Qwhat"], "unexpected message"),
        ([b""], "unexpected message"),
        ([b"H\x01"], "unexpected message"),
        ([[b"D", b"two parts"]], "multipart"),
    ],
)
@async_test
async def test_malformed_messages_end_only_that_link(
    harness: LinkHarness, address: str, messages: list[Any], words: str
) -> None:
    server = await harness.listen(address)
    good = await harness.pair(server)
    raw = RawDealer(server.address)
    try:
        raw.sock.send(b"H\x01")
        assert await raw.recv(harness.reactor) == b"W\x01"
        _, rx = await server.next_link()
        assert rx is not None
        for message in messages:
            if isinstance(message, list):
                raw.sock.send_multipart(message)
            else:
                raw.sock.send(message)
        reason = await rx.wait_closed()
        assert (reason.local, reason.clean) == (False, False) and words in reason.text, reason
        answer = await raw.recv(harness.reactor)
        assert answer.startswith(b"Xprotocol violation"), answer
        raw.sock.send(b"D\x00\x00\x00\x01x")  # an ended link's identity is ignored now
        await harness.turns()
        assert len(server.accepted) == 2
    finally:
        raw.close()
    harness.send(good.client, b"unharmed")
    assert await good.server_rx.wait_frames(1) == [b"unharmed"]
    await _good_pair_survives(harness, server)


@async_test
async def test_strangers_get_no_link(harness: LinkHarness) -> None:
    server = await harness.listen(TCP)
    bad_version, no_hello = RawDealer(server.address, b"v2"), RawDealer(server.address, b"nh")
    try:
        bad_version.sock.send(b"H\x02")
        assert await bad_version.recv(harness.reactor) == b"Runsupported protocol version"
        no_hello.sock.send(b"D\x00\x00\x00\x01x")
        assert await no_hello.recv(harness.reactor) == b"Xunknown link"
        no_hello.sock.send(b"Bbye")
        assert await no_hello.recv(harness.reactor) == b"A"
    finally:
        bad_version.close()
        no_hello.close()
    assert not server.accepted
    await _good_pair_survives(harness, server)


@async_test
async def test_a_listener_that_does_not_speak_wiremsg(reactor: Any) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        d = ZMQBackend(reactor).connect(f"zmq://127.0.0.1:{port}")
        await _until(reactor, "a hello", lambda: router.poll(0))
        ident, hello = router.recv_multipart()
        assert hello == b"H\x01"
        router.send_multipart([ident, b"HTTP/1.1 200 OK"])
        with pytest.raises(ConnectFailed, match="does not speak"):
            await d
        d = ZMQBackend(reactor).connect(f"zmq://127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(ConnectFailed, match="timed out"):
            await d  # nobody answers the hello
    finally:
        router.close()
        ctx.term()


# -- the per-message path ----------------------------------------------------------------------


class _CountingSocket(zmq.Socket):  # type: ignore[type-arg]
    """A shadow of a conn's pyzmq socket (the same libzmq socket) that counts its ``EVENTS``
    reads: each is a ``poll`` and a ``getpid`` syscall inside libzmq, the dearest step of a
    round trip."""

    events_reads = 0

    def get(self, option: int) -> Any:
        if option == zmq.EVENTS:
            self.events_reads += 1
        return super().get(option)


@async_test
async def test_a_round_trip_reads_events_once_per_wakeup_and_once_after_sending(
    reactor: Any,
) -> None:
    """Each side of a request/reply reads ``EVENTS`` twice: on the FD's wakeup, and after its
    send (PITFALLS (b)), not a third time for a conn already pumped since that send."""
    from wiremsg import Master, Worker

    master = Master({"w": "s"}, reactor=reactor)
    listener = await master.listen(TCP)
    worker = Worker("w", "s", [f"zmq://127.0.0.1:{listener.address.port}"], reactor=reactor)
    worker.on("echo", lambda msg: msg.body)
    try:
        await worker.start()
        peer = await master.wait_for_worker("w", timeout=10)
        for _ in range(20):  # the handshake's and the window's first acks settle
            await peer.request("echo", {"n": 0})
        conns = [cast(ZMQLink, peer._driver.link)._conn]
        conns.append(cast(ZMQLink, worker._driver.link)._conn)
        originals = [conn.sock for conn in conns]
        counters = [_CountingSocket.shadow(sock.underlying) for sock in originals]
        for conn, counter in zip(conns, counters, strict=True):
            conn.sock = counter
        rounds = 200
        try:
            for i in range(rounds):
                assert (await peer.request("echo", {"n": i})).body == {"n": i}
        finally:
            for conn, sock in zip(conns, originals, strict=True):
                conn.sock = sock
        reads = [c.events_reads for c in counters]
        assert all(r <= 2.2 * rounds for r in reads), f"EVENTS reads per side: {reads}"
    finally:
        await worker.stop(drain_timeout=1)
        await master.stop()


# -- many links, lifecycle, addresses -----------------------------------------------------------


@async_test
async def test_a_thousand_links_on_one_listener(harness: LinkHarness) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 6000:
        if hard != resource.RLIM_INFINITY and hard < 6000:
            pytest.skip(f"needs ~6,000 file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (6000, hard))
    started = time.monotonic()
    server = await harness.listen(TCP)
    connects = [Deferred.fromCoroutine(harness.connect(server.address)) for _ in range(1000)]
    clients = await harness.bounded(gatherResults(connects), "1,000 connects")
    for i, (link, _) in enumerate(clients):
        harness.send(link, b"%d" % i)
    for _ in range(1000):
        accepted, rx = await server.next_link()
        assert rx is not None
        (frame,) = await rx.wait_frames(1)
        harness.send(accepted, b"echo " + frame)
    for i, (_, rx) in enumerate(clients):
        assert rx is not None
        assert await rx.wait_frames(1) == [b"echo %d" % i]
    await harness.aclose()
    harness.links, harness.servers = [], []
    assert time.monotonic() - started < 20


@async_test
async def test_close_waits_for_a_stalled_peer_then_aborts(reactor: Any) -> None:
    harness = LinkHarness(ZMQBackend(reactor, close_timeout=0.3), reactor)
    try:
        p = await harness.pair(address=f"{TCP}?sndhwm=1&rcvhwm=1")
        cast(ZMQLink, p.server).pause_reading()
        harness.send(p.client, *[bytes(1 << 20)] * 40)
        p.client.close("leaving")
        reason = await p.client_rx.wait_closed()
        assert (reason.local, reason.clean) == (True, False) and "aborted" in reason.text
        cast(ZMQLink, p.server).resume_reading()
        theirs = await p.server_rx.wait_closed()
        assert (theirs.local, theirs.clean) == (False, False)
    finally:
        await harness.aclose()


@async_test
async def test_peers_and_local_addresses(harness: LinkHarness, ipc_dir: str) -> None:
    p = await harness.pair(address=TCP)
    port = p.listener.address.port
    assert p.client.peer == f"127.0.0.1:{port}"
    assert p.server.peer.startswith("127.0.0.1:") and p.server.peer != p.client.peer
    assert p.client.local_address == p.server.local_address == p.listener.address
    q = await harness.pair(address=f"zmq+ipc://{ipc_dir}/s")
    assert q.client.peer == f"{ipc_dir}/s" and q.server.peer == f"{ipc_dir}/s client #1"


@async_test
async def test_ipv6(harness: LinkHarness) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    p = await harness.pair(address="zmq://[::1]:0")
    assert p.client.peer == f"[::1]:{p.listener.address.port}"
    harness.send(p.client, b"six")
    assert await p.server_rx.wait_frames(1) == [b"six"]


@async_test
async def test_listening_where_something_else_is_fails(harness: LinkHarness, ipc_dir: str) -> None:
    existing = Path(ipc_dir) / "f"
    existing.write_text("not a socket")
    with pytest.raises(ConnectFailed, match="not a socket"):
        await harness.listen(f"zmq+ipc://{existing}")
    stale = Path(ipc_dir) / "stale"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(stale))  # bound, never listening, then closed: a stale socket file
    await _good_pair_survives(harness, await harness.listen(f"zmq+ipc://{stale}"))


@pytest.mark.parametrize(
    "bad",
    [
        "amp://127.0.0.1:1",
        "zmq://127.0.0.1:1?x=1",
        "zmq://127.0.0.1:1?sndhwm=-1",
        "zmq://127.0.0.1:1?heartbeat=soon",
        "zmq://127.0.0.1:1?via=ssh://gw",
        "zmq://127.0.0.1:1?curve_secret=nonsense",
        "zmq://127.0.0.1:1?curve_clients=/nowhere",
    ],
)
@async_test
async def test_bad_addresses_fail_the_deferred(reactor: Any, bad: str) -> None:
    backend = ZMQBackend(reactor)
    with pytest.raises(AddressError):
        await backend.listen(bad, lambda link: None)
    with pytest.raises(AddressError):
        await backend.connect(bad)


@async_test
async def test_curve_parameters_go_in_pairs(reactor: Any) -> None:
    public, secret = (quote(k, safe="") for k in keys.generate_keypair())
    other = quote(keys.generate_keypair()[0], safe="")
    backend = ZMQBackend(reactor)
    for url in (f"{TCP}?curve_secret={secret}", f"{TCP}?curve_clients={public}"):
        with pytest.raises(AddressError, match="curve_clients"):
            await backend.listen(url, lambda link: None)
    with pytest.raises(AddressError, match="curve_server"):
        await backend.connect(f"zmq://127.0.0.1:1?curve_secret={secret}")
    with pytest.raises(AddressError, match="not the public key"):
        await backend.connect(
            f"zmq://127.0.0.1:1?curve_secret={secret}&curve_server={public}&curve_public={other}"
        )


@pytest.mark.parametrize("scheme", ["zmq", "zmq+ipc", "ZMQ"])
def test_the_registry_finds_it(scheme: str) -> None:
    assert backend_class(scheme) is ZMQBackend
    assert issubclass(ZMQBackend, Backend)


def test_limits_are_checked(reactor: Any) -> None:
    with pytest.raises(ValueError, match="32 bits"):
        ZMQBackend(reactor, max_frame=2**32)
    with pytest.raises(ValueError, match="max_queue"):
        ZMQBackend(reactor, max_queue=1000)


def test_no_module_level_reactor() -> None:
    code = "import sys, wiremsg.backends._zmq; sys.exit('twisted.internet.reactor' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
