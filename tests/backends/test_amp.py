"""The AMP backend: the conformance suite over TCP and UNIX sockets, plus what only AMP has
(the wire layout, coalescing, chunking, hostile peers, TCP options, back-pressure)."""

from __future__ import annotations

import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.python.failure import Failure

from wiremsg.address import parse_address
from wiremsg.backends import backend_class
from wiremsg.backends.amp import (
    BOX_DATA,
    MAX_BOX_KEYS,
    MAX_VALUE,
    AMPBackend,
    AMPLink,
    BigBytes,
    Frames,
    _box,
)
from wiremsg.backends.base import MIN_MAX_FRAME, CloseReason, Link
from wiremsg.errors import AddressError, ConnectFailed
from wiremsg.testing.conformance import BackendConformance, LinkHarness, run_in_reactor
from wiremsg.testing.harness import Server, async_test

TCP = "amp://127.0.0.1:0"


def _unix_address(tmp_path: Path) -> str:
    path = str(tmp_path / "s")
    if len(path) > 100:  # AF_UNIX paths are limited to ~107 bytes
        path = tempfile.mkdtemp(prefix="wm", dir="/tmp") + "/s"
    return f"amp+unix://{path}"


class TestAMPConformanceTCP(BackendConformance):
    @pytest.fixture
    def backend(self, reactor: Any) -> AMPBackend:
        return AMPBackend(reactor)

    @pytest.fixture
    def listen_address(self) -> str:
        return TCP


class TestAMPConformanceUnix(BackendConformance):
    @pytest.fixture
    def backend(self, reactor: Any) -> AMPBackend:
        return AMPBackend(reactor)

    @pytest.fixture
    def listen_address(self, tmp_path: Path) -> str:
        return _unix_address(tmp_path)


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(params=["tcp", "unix"])
def address(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return TCP if request.param == "tcp" else _unix_address(tmp_path)


@pytest.fixture
def harness(reactor: Any) -> Iterator[LinkHarness]:
    h = LinkHarness(AMPBackend(reactor), reactor, timeout=10.0)
    yield h
    run_in_reactor(reactor, h.aclose)


def _records(*frames: bytes) -> bytes:
    return b"".join(struct.pack("!I", len(f)) + f for f in frames)


def _buffered(link: AMPLink) -> int:
    """Bytes waiting in the transport's own write buffer."""
    t = link._transport
    return len(t.dataBuffer) - t.offset + t._tempDataLen  # type: ignore[no-any-return]


async def _sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class StockAMP(amp.AMP):
    """A plain Twisted AMP peer, as a third party would write one."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: Deferred[BaseException] = Deferred()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.lost.callback(reason.value)


class RawPeer(Protocol):
    """Writes ``data`` on connect; records what it gets back."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.lost: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(reason.value)


async def _dial(harness: LinkHarness, address: str, protocol: Protocol) -> None:
    addr = parse_address(address)
    if addr.scheme == "amp+unix":
        endpoint: Any = UNIXClientEndpoint(harness.reactor, addr.path)
    else:
        endpoint = TCP4ClientEndpoint(harness.reactor, addr.host, addr.port or 0)
    await harness.bounded(connectProtocol(endpoint, protocol), f"dial {address}")


# -- the wire layout ---------------------------------------------------------------------------


def test_box_is_plain_amp_and_bigbytes_reads_it() -> None:
    stream = _records(b"x" * 200_000, b"", b"tail")
    (box,) = amp.parseString(_box(stream, 0, len(stream), b"see you"))
    assert box[b"_command"] == b"Frames" and box[b"bye"] == b"see you"
    assert sorted(box) == sorted([b"_command", b"bye", b"data", b"data.2", b"data.3", b"data.4"])
    assert all(len(v) <= MAX_VALUE for v in box.values())
    objects: dict[str, Any] = {}
    BigBytes().fromBox(b"data", box, objects, None)
    assert objects["data"] == stream


def test_bigbytes_splits_over_numbered_keys() -> None:
    strings: dict[bytes, bytes] = {}
    value = bytes(range(256)) * 600  # 153,600 bytes
    BigBytes().toBox(b"data", strings, {"data": value}, None)
    assert sorted(strings) == [b"data", b"data.2", b"data.3"]
    assert b"".join(strings[k] for k in (b"data", b"data.2", b"data.3")) == value
    empty: dict[bytes, bytes] = {}
    BigBytes().toBox(b"data", empty, {"data": b""}, None)
    assert empty == {b"data": b""}


# -- frames: coalescing and chunking -----------------------------------------------------------


@async_test
async def test_a_burst_is_coalesced_into_few_boxes(harness: LinkHarness, address: str) -> None:
    p = await harness.pair(address=address)
    client, server = cast(AMPLink, p.client), cast(AMPLink, p.server)
    frames = [b"%04d" % i + bytes(100) for i in range(1000)]
    harness.send(client, *frames)
    assert await p.server_rx.wait_frames(1000) == frames
    assert client.boxes_sent == 1, "1,000 small frames sent in one turn take one box"
    assert server.protocol.boxes_received == 1
    big = [bytes([i % 256]) * 200 for i in range(50_000)]  # 10 MB in one turn
    harness.send(client, *big)
    assert await p.server_rx.wait_frames(51_000) == frames + big
    assert client.boxes_sent < 50, client.boxes_sent


@async_test
async def test_16_mib_frame_is_chunked_and_intact(harness: LinkHarness, address: str) -> None:
    p = await harness.pair(address=address)
    client, server = cast(AMPLink, p.client), cast(AMPLink, p.server)
    frame = bytes(range(256)) * (MIN_MAX_FRAME // 256)
    harness.send(client, b"before", frame, b"after")
    got = await p.server_rx.wait_frames(3)
    assert got[0] == b"before" and got[2] == b"after"
    assert len(got[1]) == len(frame) and got[1] == frame
    assert server.protocol.boxes_received >= len(frame) // BOX_DATA
    assert client.boxes_sent == server.protocol.boxes_received


@async_test
async def test_frames_queue_in_the_link_while_the_peer_does_not_read(
    harness: LinkHarness, reactor: Any
) -> None:
    p = await harness.pair(address=TCP)
    client, server = cast(AMPLink, p.client), cast(AMPLink, p.server)
    server._transport.stopReading()
    chunk = bytes(1 << 20)
    harness.send(client, *[chunk] * 40)
    await _sleep(reactor, 0.2)
    assert client._paused, "the transport's full buffer pauses the link"
    assert _buffered(client) <= 2 * BOX_DATA, "frames wait in the link, not the transport"
    assert client._queued + len(client._out) - client._out_pos > 0
    server._transport.startReading()
    assert len(await p.server_rx.wait_frames(40)) == 40
    assert all(f == chunk for f in p.server_rx.frames)


# -- closing -----------------------------------------------------------------------------------


@async_test
async def test_close_sends_the_reason_and_flushes_a_paused_queue(
    harness: LinkHarness, address: str, reactor: Any
) -> None:
    p = await harness.pair(address=address)
    client, server = cast(AMPLink, p.client), cast(AMPLink, p.server)
    server._transport.stopReading()
    frames = [bytes([i]) * (1 << 20) for i in range(24)]
    harness.send(client, *frames)
    client.close("worker shutting down")
    await _sleep(reactor, 0.1)
    server._transport.startReading()
    assert await p.server_rx.wait_closed() == CloseReason(
        "closed by peer: worker shutting down", local=False, clean=True
    )
    assert p.server_rx.frames == frames
    assert await p.client_rx.wait_closed() == CloseReason("worker shutting down", local=True)


@async_test
async def test_a_stuck_close_is_aborted_after_close_timeout(reactor: Any) -> None:
    harness = LinkHarness(AMPBackend(reactor, close_timeout=0.3), reactor, timeout=10.0)
    try:
        p = await harness.pair(address=TCP)
        server = cast(AMPLink, p.server)
        server._transport.stopReading()
        harness.send(p.client, *[bytes(1 << 20)] * 40)
        started = time.monotonic()
        p.client.close("leaving")
        reason = await p.client_rx.wait_closed()
        assert time.monotonic() - started < 5
        assert reason.local and not reason.clean and "aborted" in reason.text
        server._transport.startReading()
        peer = await p.server_rx.wait_closed()
        assert not peer.local and not peer.clean
    finally:
        await harness.aclose()


@async_test
async def test_a_reset_is_unclean_on_both_sides(harness: LinkHarness, address: str) -> None:
    p = await harness.pair(address=address)
    cast(AMPLink, p.client)._transport.abortConnection()
    mine, theirs = await p.client_rx.wait_closed(), await p.server_rx.wait_closed()
    assert (mine.local, mine.clean) == (False, False)
    assert (theirs.local, theirs.clean) == (False, False)


@async_test
async def test_receiver_failure_is_unclean_for_the_peer_too(
    harness: LinkHarness, address: str
) -> None:
    p = await harness.pair(address=address)
    p.server_rx.fail_on_frame = RuntimeError("receiver bug (on purpose)")
    harness.send(p.client, b"boom")
    assert (await p.server_rx.wait_closed()).clean is False
    theirs = await p.client_rx.wait_closed()
    assert (theirs.local, theirs.clean) == (False, False)


# -- hostile peers -----------------------------------------------------------------------------


async def _good_pair_survives(harness: LinkHarness, server: Server) -> None:
    p = await harness.pair(server)
    harness.send(p.client, b"still fine")
    harness.send(p.server, b"likewise")
    assert await p.server_rx.wait_frames(1) == [b"still fine"]
    assert await p.client_rx.wait_frames(1) == [b"likewise"]
    assert not p.client_rx.closes and not p.server_rx.closes


async def _cut_off(harness: LinkHarness, address: str, peer: Any, *words: str) -> CloseReason:
    """Dial ``peer`` into a listener beside a good link; return the accepted link's close."""
    server = await harness.listen(address)
    await _good_pair_survives(harness, server)
    await _dial(harness, str(server.address), peer)
    _, rx = await server.next_link()
    assert rx is not None
    reason = await rx.wait_closed()
    assert (reason.local, reason.clean) == (False, False)
    for word in words:
        assert word in reason.text, reason
    await harness.bounded(peer.lost, "the hostile peer to be disconnected")
    await _good_pair_survives(harness, server)
    return reason


@async_test
async def test_raw_bytes_are_cut_off(harness: LinkHarness, address: str) -> None:
    await _cut_off(harness, address, RawPeer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "AMP key")


@async_test
async def test_unknown_command_is_refused_and_cut_off(harness: LinkHarness, address: str) -> None:
    class Hello(amp.Command):
        arguments = [(b"name", amp.Unicode())]

    peer = StockAMP()
    server = await harness.listen(address)
    await _dial(harness, str(server.address), peer)
    with pytest.raises(amp.UnknownRemoteError):
        await harness.bounded(peer.callRemote(Hello, name="x"), "the refusal")
    _, rx = await server.next_link()
    assert rx is not None
    reason = await rx.wait_closed()
    assert not reason.clean and "unknown AMP command b'Hello'" in reason.text
    await harness.bounded(peer.lost, "the disconnect")
    await _good_pair_survives(harness, server)


@async_test
async def test_an_unanswerable_box_is_cut_off(harness: LinkHarness, address: str) -> None:
    box = amp.AmpBox(_answer=b"1", result=b"x").serialize()
    await _cut_off(harness, address, RawPeer(box), "not a command")


@async_test
async def test_a_box_with_too_many_keys_is_cut_off(harness: LinkHarness, address: str) -> None:
    keys = {b"k%03d" % i: b"v" * 1000 for i in range(MAX_BOX_KEYS + 5)}
    box = amp.AmpBox(_command=b"Frames", **{k.decode(): v for k, v in keys.items()})
    await _cut_off(harness, address, RawPeer(box.serialize()), f"more than {MAX_BOX_KEYS} keys")


@async_test
async def test_unknown_keys_in_frames_are_cut_off(harness: LinkHarness, address: str) -> None:
    box = amp.AmpBox(_command=b"Frames", data=_records(b"x"), extra=b"?").serialize()
    await _cut_off(harness, address, RawPeer(box), "unexpected keys", "extra")


@async_test
async def test_an_oversized_frame_is_refused_on_its_length(
    harness: LinkHarness, address: str
) -> None:
    claim = struct.pack("!I", MIN_MAX_FRAME + 1) + b"x" * 1000
    box = amp.AmpBox(_command=b"Frames", data=claim).serialize()
    reason = await _cut_off(harness, address, RawPeer(box), f"{MIN_MAX_FRAME + 1} bytes")
    assert "limit" in reason.text


@async_test
async def test_chunks_beyond_a_small_max_frame_are_refused(reactor: Any, address: str) -> None:
    harness = LinkHarness(AMPBackend(reactor, max_frame=100_000), reactor, timeout=10.0)
    try:
        server = await harness.listen(address)
        peer = StockAMP()
        await _dial(harness, str(server.address), peer)
        _, rx = await server.next_link()
        assert rx is not None
        whole = _records(b"a" * 100_000)  # exactly the limit, spread over three commands
        for start in range(0, len(whole), 40_000):
            peer.callRemote(Frames, data=whole[start : start + 40_000])
        assert await rx.wait_frames(1) == [b"a" * 100_000]
        peer.callRemote(Frames, data=_records(b"b" * 100_001)[:50_000])
        reason = await rx.wait_closed()
        assert not reason.clean and "100001 bytes" in reason.text
        link = cast(AMPLink, server.accepted[0])
        assert link.protocol._parts == [], "nothing of the refused frame was kept"
        await harness.bounded(peer.lost, "the disconnect")
    finally:
        await harness.aclose()


@async_test
async def test_a_stock_amp_peer_can_send_frames_and_say_goodbye(
    harness: LinkHarness, address: str
) -> None:
    server = await harness.listen(address)
    peer = StockAMP()
    await _dial(harness, str(server.address), peer)
    _, rx = await server.next_link()
    assert rx is not None
    peer.callRemote(Frames, data=_records(b"one", b"", b"three"))
    peer.callRemote(Frames, data=_records(b"x" * 70_000))
    split = _records(b"split prefix")  # a length prefix and a frame cut across commands
    for piece in (split[:2], split[2:6], split[6:]):
        peer.callRemote(Frames, data=piece)
    peer.callRemote(Frames, bye="done")
    expected = [b"one", b"", b"three", b"x" * 70_000, b"split prefix"]
    assert await rx.wait_frames(5) == expected
    assert await rx.wait_closed() == CloseReason("closed by peer: done", local=False, clean=True)
    await harness.bounded(peer.lost, "the disconnect")


@async_test
async def test_goodbye_mid_frame_is_unclean(harness: LinkHarness, address: str) -> None:
    box = amp.AmpBox(_command=b"Frames", data=_records(b"abc")[:5], bye=b"x").serialize()
    await _cut_off(harness, address, RawPeer(box), "middle of a frame")


@async_test
async def test_on_link_failure_cuts_the_connection_keeps_listening(
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
        assert (await rx.wait_closed()).clean is False
        second, _ = await harness.connect(listener.address)
        harness.send(second, b"hi")
        await harness.turns()
        assert len(calls) == 2
        harness.links.append(calls[1])  # closed by aclose
    finally:
        await harness.bounded(listener.close(), "listener close")


# -- addresses, TCP options, peers -------------------------------------------------------------


@async_test
async def test_tcp_keepalive_and_nodelay_are_set(harness: LinkHarness) -> None:
    p = await harness.pair(address=TCP)
    for link in (p.client, p.server):
        sock = cast(AMPLink, link)._transport.getHandle()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@async_test
async def test_unix_sockets_get_no_tcp_options(harness: LinkHarness, tmp_path: Path) -> None:
    p = await harness.pair(address=_unix_address(tmp_path))
    sock = cast(AMPLink, p.client)._transport.getHandle()
    assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


@async_test
async def test_peers_describe_the_other_end(harness: LinkHarness, tmp_path: Path) -> None:
    p = await harness.pair(address=TCP)
    port = p.listener.address.port
    assert p.client.peer == f"127.0.0.1:{port}"
    client_port = cast(AMPLink, p.client)._transport.getHost().port
    assert p.server.peer == f"127.0.0.1:{client_port}"
    assert p.client.local_address == p.server.local_address == p.listener.address
    unix = _unix_address(tmp_path)
    q = await harness.pair(address=unix)
    path = parse_address(unix).path
    assert q.client.peer == path
    assert q.server.peer == f"{path} client #1"


@async_test
async def test_ipv6(harness: LinkHarness) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    p = await harness.pair(address="amp://[::1]:0")
    assert p.client.peer == f"[::1]:{p.listener.address.port}"
    harness.send(p.client, b"six")
    assert await p.server_rx.wait_frames(1) == [b"six"]


@async_test
async def test_listening_where_something_listens_fails(
    harness: LinkHarness, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConnectFailed, match="cannot listen"):
            await harness.listen(f"amp://127.0.0.1:{port}")
    existing = tmp_path / "f"
    existing.write_text("not a socket")
    with pytest.raises(ConnectFailed):
        await harness.listen(f"amp+unix://{existing}")


@async_test
async def test_connect_timeout_is_honoured(harness: LinkHarness) -> None:
    with socket.socket() as full:  # a listener whose accept queue is full drops SYNs
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            started = time.monotonic()
            with pytest.raises(ConnectFailed, match=r"timeout|timed out"):
                await harness.bounded(
                    harness.backend.connect(parse_address(f"amp://127.0.0.1:{port}"), 0.3),
                    "connect to time out",
                )
            assert 0.25 < time.monotonic() - started < 3
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.parametrize(
    "bad", ["amp+tls://127.0.0.1:1", "amp://127.0.0.1:1?x=1", "memory://name", "zmq://h:1"]
)
@async_test
async def test_bad_addresses_fail_the_deferred(reactor: Any, bad: str) -> None:
    backend = AMPBackend(reactor)
    with pytest.raises(AddressError):
        await backend.listen(bad, lambda link: None)
    with pytest.raises(AddressError):
        await backend.connect(bad)


@pytest.mark.parametrize("scheme", ["amp", "amp+unix", "AMP"])
def test_the_registry_finds_it(scheme: str) -> None:
    assert backend_class(scheme) is AMPBackend
    assert set(AMPBackend.schemes) == {"amp", "amp+unix"}


def test_max_frame_must_fit_the_length_prefix(reactor: Any) -> None:
    with pytest.raises(ValueError, match="32 bits"):
        AMPBackend(reactor, max_frame=2**32)
