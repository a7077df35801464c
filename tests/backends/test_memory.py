"""The memory backend: the conformance suite, plus what only memory has (names, sever).

The last section runs the conformance suite on deliberately broken memory backends, in a
subprocess, to show that the suite (and its dirty-reactor check) can fail.
"""

from __future__ import annotations

import textwrap
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from wiremsg.address import parse_address
from wiremsg.backends.base import CloseReason, Link
from wiremsg.backends.memory import MemoryBackend, MemoryLink, MemoryNetwork, network_for
from wiremsg.errors import AddressError, ConnectFailed, FrameTooLarge, LinkClosed
from wiremsg.testing.conformance import BackendConformance, LinkHarness


class TestMemoryConformance(BackendConformance):
    @pytest.fixture
    def backend(self, reactor: Any) -> MemoryBackend:
        return MemoryBackend(reactor)

    @pytest.fixture
    def listen_address(self) -> str:
        return f"memory://{uuid.uuid4().hex}"


def _name() -> str:
    return f"memory://{uuid.uuid4().hex}"


class Receiver:
    """A plain LinkReceiver for the clock-driven tests."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closes: list[CloseReason] = []

    def frame_received(self, frame: bytes) -> None:
        self.frames.append(frame)

    def link_closed(self, reason: CloseReason) -> None:
        self.closes.append(reason)


class ClockPair:
    """A memory link on a fake clock: nothing happens until ``turn()``."""

    def __init__(self, server_rx: Receiver | None = None) -> None:
        self.clock = Clock()
        self.backend = MemoryBackend(self.clock)
        self.address = _name()
        self.accepted: list[Link] = []
        self.listener = self._result(self.backend.listen(parse_address(self.address), self._on))
        connecting = self.backend.connect(parse_address(self.address))
        assert not connecting.called, "connect must not complete synchronously"
        self.turn()
        link = self._result(connecting)
        assert isinstance(link, MemoryLink) and len(self.accepted) == 1
        server = self.accepted[0]
        assert isinstance(server, MemoryLink)
        self.client, self.server = link, server
        self.client_rx, self.server_rx = Receiver(), server_rx or Receiver()
        self.client.attach(self.client_rx)
        self.server.attach(self.server_rx)

    def _on(self, link: Link) -> None:
        self.accepted.append(link)

    @staticmethod
    def _result(d: Deferred[Any]) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "Deferred has not fired"
        if hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]

    def turn(self) -> None:
        self.clock.advance(0)


# -- delivery ----------------------------------------------------------------------------------


def test_send_delivers_on_a_later_turn_only() -> None:
    p = ClockPair()
    p.client.send(b"one")
    p.client.send(b"two")
    assert p.server_rx.frames == []
    p.turn()
    assert p.server_rx.frames == [b"one", b"two"]


def test_one_delayed_call_per_batch() -> None:
    p = ClockPair()
    before = len(p.clock.getDelayedCalls())
    for i in range(10_000):
        p.client.send(b"%d" % i)
    assert len(p.clock.getDelayedCalls()) == before + 1
    p.turn()
    assert len(p.server_rx.frames) == 10_000
    assert p.clock.getDelayedCalls() == []


def test_close_flushes_then_notifies_and_closer_stops_receiving() -> None:
    p = ClockPair()
    p.server.send(b"in flight to the closer")
    p.client.send(b"last")
    p.client.close("bye")
    assert p.client_rx.closes == [] and p.server_rx.frames == []  # nothing synchronous
    p.turn()
    assert p.server_rx.frames == [b"last"]
    assert p.server_rx.closes == [CloseReason("closed by peer: bye", local=False, clean=True)]
    assert p.client_rx.closes == [CloseReason("bye", local=True, clean=True)]
    assert p.client_rx.frames == [], "the closer stops reading, as TCP does"
    assert p.clock.getDelayedCalls() == []


def test_close_from_inside_frame_received_stops_the_batch() -> None:
    class Closer(Receiver):
        def frame_received(self, frame: bytes) -> None:
            super().frame_received(frame)
            p.server.close("enough")

    rx = Closer()
    p = ClockPair(server_rx=rx)
    p.client.send(b"first")
    p.client.send(b"second")
    p.turn()
    assert rx.frames == [b"first"]
    assert rx.closes == [CloseReason("enough", local=True, clean=True)]
    assert p.clock.getDelayedCalls() == [], "the redundant flush was cancelled"
    p.turn()
    assert p.client_rx.closes[0].local is False


def test_receiver_exception_is_logged_and_closes_both_ends() -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        p = ClockPair()
        p.server_rx.frame_received = _raise  # type: ignore[method-assign]
        p.client.send(b"boom")
        p.client.send(b"never delivered")
        p.turn()
        p.turn()
    finally:
        globalLogPublisher.removeObserver(events.append)
    (reason,) = p.server_rx.closes
    assert reason.local is True and reason.clean is False and "receiver bug" in reason.text
    (peer_reason,) = p.client_rx.closes
    assert peer_reason.local is False and peer_reason.clean is False
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and "receiver bug" in str(failures[0]["log_failure"].value)
    with pytest.raises(LinkClosed):
        p.client.send(b"x")


def test_receiver_failure_outranks_a_clean_close_on_the_way() -> None:
    p = ClockPair()
    p.server_rx.frame_received = _raise  # type: ignore[method-assign]
    p.client.send(b"boom")
    p.client.close("done")
    p.turn()
    (reason,) = p.server_rx.closes
    assert reason.clean is False and reason.local is True
    assert p.client_rx.closes == [CloseReason("done", local=True, clean=True)]


def _raise(frame: bytes) -> None:
    raise ValueError("receiver bug")


# -- sever ---------------------------------------------------------------------------------


def test_sever_is_unclean_on_both_sides_and_loses_frames_in_flight() -> None:
    p = ClockPair()
    p.client.send(b"lost")
    p.server.send(b"lost too")
    p.client.sever("cable cut")
    assert not p.client_rx.closes, "the cut is noticed on a later turn"
    p.turn()
    cut = CloseReason("cable cut", local=False, clean=False)
    assert p.client_rx.closes == [cut] and p.server_rx.closes == [cut]
    assert p.client_rx.frames == [] and p.server_rx.frames == []
    for link in (p.client, p.server):
        assert link.closed
        with pytest.raises(LinkClosed):
            link.send(b"x")
    p.server.sever("again")  # no-op on a closed link
    p.turn()
    assert len(p.client_rx.closes) == 1 and len(p.server_rx.closes) == 1


def test_sever_after_a_local_close_keeps_local_true() -> None:
    p = ClockPair()
    p.client.close("leaving")
    p.client.sever("cut while closing")
    p.turn()
    assert p.client_rx.closes == [CloseReason("leaving", local=True, clean=True)]
    assert p.server_rx.closes[0].local is False


def test_sever_before_attach_is_held() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    address = _name()
    accepted: list[Link] = []
    backend.listen(parse_address(address), accepted.append)
    d = backend.connect(address)
    clock.advance(0)
    client = ClockPair._result(d)
    client.send(b"before the cut")
    clock.advance(0)
    client.sever("cut")
    clock.advance(0)
    rx = Receiver()
    accepted[0].attach(rx)
    clock.advance(0)
    assert rx.frames == [b"before the cut"]
    assert rx.closes == [CloseReason("cut", local=False, clean=False)]


# -- names, listeners, addresses ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_name_in_use_then_free_after_close(reactor: Any) -> None:
    backend = MemoryBackend(reactor)
    address = parse_address(_name())
    listener = await backend.listen(address, lambda link: None)
    with pytest.raises(ConnectFailed, match="in use"):
        await MemoryBackend(reactor).listen(address, lambda link: None)
    await listener.close()
    again = await backend.listen(address, lambda link: None)
    assert again.address == address
    await listener.close()  # closing the old listener must not release the new one
    assert backend.network.listeners[address.name] is again
    await again.close()
    assert address.name not in backend.network.listeners


def test_backends_on_one_reactor_share_names_others_do_not() -> None:
    clock = Clock()
    a, b = MemoryBackend(clock), MemoryBackend(clock)
    assert a.network is b.network is network_for(clock)
    assert MemoryBackend(Clock()).network is not a.network
    private = MemoryBackend(clock, network=MemoryNetwork())
    address = _name()
    a.listen(parse_address(address), lambda link: None)
    failed = private.connect(address)
    clock.advance(0)
    with pytest.raises(ConnectFailed, match="nothing listens"):
        ClockPair._result(failed)
    linked = b.connect(address)
    clock.advance(0)
    assert isinstance(ClockPair._result(linked), MemoryLink)


@pytest.mark.parametrize(
    "address", ["amp://127.0.0.1:0", "memory://name?secure=1"], ids=["scheme", "query"]
)
def test_bad_addresses_fail_the_deferred(address: str) -> None:
    backend = MemoryBackend(Clock())
    for d in (backend.listen(parse_address(address), lambda link: None), backend.connect(address)):
        with pytest.raises(AddressError):
            ClockPair._result(d)


def test_on_link_raising_fails_the_connect() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    address = _name()

    def on_link(link: Link) -> None:
        raise RuntimeError("listener bug")

    backend.listen(parse_address(address), on_link)
    d = backend.connect(address)
    clock.advance(0)
    with pytest.raises(ConnectFailed, match="listener bug"):
        ClockPair._result(d)
    clock.advance(0)
    assert clock.getDelayedCalls() == []


def test_cancelled_connect_never_reaches_the_listener() -> None:
    clock = Clock()
    backend = MemoryBackend(clock)
    address = _name()
    accepted: list[Link] = []
    backend.listen(parse_address(address), accepted.append)
    d = backend.connect(address)
    d.cancel()
    with pytest.raises(CancelledError):
        ClockPair._result(d)
    assert clock.getDelayedCalls() == []
    clock.advance(0)
    assert accepted == []


def test_peers_describe_each_other() -> None:
    p = ClockPair()
    assert p.client.peer == p.address
    assert p.server.peer == f"{p.address} client #1"
    assert p.client.local_address == p.server.local_address == parse_address(p.address)


@pytest_twisted.ensureDeferred
async def test_harness_on_memory_with_max_frame(reactor: Any) -> None:
    harness = LinkHarness(MemoryBackend(reactor, max_frame=10), reactor, timeout=2.0)
    p = await harness.pair(address=_name())
    with pytest.raises(FrameTooLarge):
        p.client.send(b"x" * 11)
    harness.send(p.client, b"x" * 10)
    assert await p.server_rx.wait_frames(1) == [b"x" * 10]
    await harness.aclose()


# -- the suite and its reactor check can fail ---------------------------------------------

_BROKEN = textwrap.dedent(
    """
    import uuid

    import pytest

    from wiremsg.backends.memory import MemoryBackend, MemoryLink
    from wiremsg.testing.conformance import BackendConformance


    class Base(BackendConformance):
        link_class = MemoryLink
        timeout = 2.0
        max_links = 10
        many_frames = 200
        huge_frame_sizes = ()

        @pytest.fixture
        def backend(self, reactor):
            backend = MemoryBackend(reactor)
            backend.link_class = self.link_class
            return backend

        @pytest.fixture
        def listen_address(self):
            return f"memory://{uuid.uuid4().hex}"


    class SyncLink(MemoryLink):
        def _transmit(self, frame):
            self._twin._deliver(frame)


    class ReorderLink(MemoryLink):
        def _transmit(self, frame):
            super()._transmit(frame)
            inbox = self._twin._inbox
            if len(inbox) == 3:
                inbox[0], inbox[2] = inbox[2], inbox[0]


    class DoubleCloseLink(MemoryLink):
        def _finish_close(self):
            super()._finish_close()
            self._receiver.link_closed(self._reason)


    class NoFlushLink(MemoryLink):
        def _shutdown(self, reason):
            if self._twin is not None:
                self._twin._inbox.clear()
            super()._shutdown(reason)


    class LeakyLink(MemoryLink):
        def _shutdown(self, reason):
            self.reactor.callLater(30, lambda: None)
            super()._shutdown(reason)


    class TestSync(Base):
        link_class = SyncLink


    class TestReorder(Base):
        link_class = ReorderLink


    class TestDoubleClose(Base):
        link_class = DoubleCloseLink


    class TestNoFlush(Base):
        link_class = NoFlushLink


    class TestLeaky(Base):
        link_class = LeakyLink
    """
)


def test_conformance_catches_broken_backends(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=_BROKEN)
    chosen = (
        "frames_both_ways or many_frames or attach_twice or close_notifies or sent_before_close"
    )
    chosen += " or when_closed"
    args = ("-p", "no:cacheprovider", "-q", "-rfE", "--tb=short", "-k", chosen)
    result = pytester.runpytest_subprocess(*args)
    out = result.stdout.str()

    def flagged(cls: str, test: str) -> bool:
        return any(
            line.startswith(("FAILED", "ERROR")) and f"::{cls}::{test}" in line
            for line in out.splitlines()
        )

    assert flagged("TestSync", "test_frames_both_ways"), out
    assert "frame_received called from inside send()" in out
    assert flagged("TestReorder", "test_many_frames_in_order"), out
    assert not flagged("TestReorder", "test_attach_twice_raises"), out
    assert flagged("TestDoubleClose", "test_close_notifies_both_sides_once[client]"), out
    assert "link_closed again" in out
    assert flagged("TestNoFlush", "test_frames_sent_before_close_arrive_before_it"), out
    assert not flagged("TestNoFlush", "test_frames_both_ways"), out
    assert flagged("TestLeaky", "test_when_closed_fires"), out
    assert "the test left the reactor dirty" in out and "delayed call" in out


_DIRTY = textwrap.dedent(
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol


    def test_leaves_a_timer():
        reactor.callLater(30, print, "left behind")


    def test_leaves_a_port():
        reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")


    def test_clean_afterwards():
        reactor.callLater(0, lambda: None)  # runs during the check's turns: not a leak
    """
)


def test_clean_reactor_fails_dirty_tests_and_cleans_up(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "from wiremsg.testing.conformance import clean_reactor, reactor  # noqa: F401\n"
    )
    pytester.makepyfile(test_dirty=_DIRTY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rE")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaves_a_timer*",
            "*delayed call: <DelayedCall*print*",
            "*ERROR at teardown of test_leaves_a_port*",
            "*reader: <*Port*",
        ]
    )
