"""The backend conformance suite: the definition of "a backend" (DESIGN §3).

Every built-in backend runs this suite, and a third-party backend runs it the same way, by
subclassing :class:`BackendConformance` in one of its own test modules and providing two
fixtures:

``backend``
    A :class:`~wiremsg.backends.base.Backend` instance built on the ``reactor`` fixture (which
    the class provides).
``listen_address``
    An address (string or :class:`~wiremsg.address.Address`) to listen on, fresh for each
    test: ``amp://127.0.0.1:0`` for a TCP-ish backend, a unique ``memory://<uuid>`` for one
    with names.

For example, in ``tests/test_conformance.py`` of a package that ships ``PigeonBackend``::

    import pytest
    from wiremsg.testing.conformance import BackendConformance
    from pigeon import PigeonBackend

    class TestPigeonConformance(BackendConformance):
        max_links = 20          # knobs are class attributes; see BackendConformance

        @pytest.fixture
        def backend(self, reactor):
            return PigeonBackend(reactor)

        @pytest.fixture
        def listen_address(self):
            return "pigeon://127.0.0.1:0"

The suite needs ``pytest-twisted`` (installed by ``wiremsg[test]``). Optionally override the
``unreachable_address`` fixture (an address where nothing listens; by default a listener's bound
address after it was closed). Each test waits at most :attr:`BackendConformance.timeout`
seconds for anything, and never sleeps.

The class also carries an autouse :func:`clean_reactor` check (trial's "dirty reactor" error,
which pytest-twisted lacks): a test that leaves delayed calls, readers or writers behind fails,
naming them. The same check is a module-level fixture, so a ``conftest.py`` can apply it to a
whole suite::

    from wiremsg.testing.conformance import clean_reactor, reactor  # noqa: F401

The helpers the suite is built from live in :mod:`wiremsg.testing.harness` (re-exported here):
:class:`LinkHarness` and :class:`FrameRecorder` suit any test that drives links.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import pytest
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from wiremsg.address import Address, parse_address
from wiremsg.backends.base import MIN_MAX_FRAME, Backend, CloseReason, Link
from wiremsg.errors import ConnectFailed, FrameTooLarge, LinkClosed
from wiremsg.testing.harness import (
    DEFAULT_TIMEOUT,
    FrameRecorder,
    LinkHarness,
    LinkPair,
    Server,
    WaitTimedOut,
    bounded,
    check_clean_reactor,
    clean_reactor,
    global_reactor,
    reactor,
    run_in_reactor,
)
from wiremsg.testing.harness import async_test as _async_test

_T = TypeVar("_T")

__all__ = [
    "BackendConformance",
    "FrameRecorder",
    "LinkHarness",
    "LinkPair",
    "Server",
    "WaitTimedOut",
    "bounded",
    "check_clean_reactor",
    "clean_reactor",
    "reactor",
    "run_in_reactor",
]


def _frame(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- the suite ------------------------------------------------------------------------------------


class BackendConformance:
    """Subclass this (with a ``Test`` name) and provide ``backend`` and ``listen_address``.

    The knobs below are class attributes a subclass may override.
    """

    timeout: ClassVar[float] = DEFAULT_TIMEOUT
    """Seconds any single wait may take."""
    max_links: ClassVar[int] = 100
    """How many links are opened at once by the concurrency test."""
    many_frames: ClassVar[int] = 10_000
    """How many frames the ordering test sends each way."""
    frame_sizes: ClassVar[tuple[int, ...]] = (0, 1, 64 * 1024 + 1)
    """Frame sizes sent both ways by the size test."""
    huge_frame_sizes: ClassVar[tuple[int, ...]] = (16 * 1024 * 1024, MIN_MAX_FRAME)
    """Large frame sizes (each sent both ways); the contract requires ``MIN_MAX_FRAME``."""
    connect_fail_within: ClassVar[float] = 5.0
    """Seconds within which connecting to ``unreachable_address`` must fail."""
    exclusive_listen: ClassVar[bool] = True
    """Whether listening on an address already bound must fail with ConnectFailed."""
    flushes_on_close: ClassVar[bool] = True
    """Whether frames sent before ``close()`` reach the peer (the contract says "if it can")."""
    settle_delay: ClassVar[float] = 0.05
    """Seconds to let frames travel before attaching late (the only deliberate pause)."""

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture
    def reactor(self) -> Any:
        """The reactor pytest-twisted installed."""
        return global_reactor()

    @pytest.fixture(autouse=True)
    def clean_reactor(self) -> Iterator[None]:
        """Fail a test that leaves the reactor dirty (see :func:`check_clean_reactor`)."""
        with check_clean_reactor(global_reactor()):
            yield

    @pytest.fixture
    def backend(self, reactor: Any) -> Backend:
        """Provided by the subclass: the backend under test, built on ``reactor``."""
        pytest.fail(f"{type(self).__name__} must define a 'backend' fixture")

    @pytest.fixture
    def listen_address(self) -> str | Address:
        """Provided by the subclass: a fresh address to listen on (port 0 where it applies)."""
        pytest.fail(f"{type(self).__name__} must define a 'listen_address' fixture")

    @pytest.fixture
    def unreachable_address(
        self, backend: Backend, listen_address: str | Address, reactor: Any
    ) -> Address:
        """An address nothing listens on: by default, a closed listener's bound address."""

        async def bind_and_release() -> Address:
            def refuse(link: Link) -> None:
                link.close("not accepting")

            listener = await bounded(
                backend.listen(parse_address(listen_address), refuse),
                reactor,
                self.timeout,
                "listen",
            )
            await bounded(listener.close(), reactor, self.timeout, "listener close")
            return listener.address

        return run_in_reactor(reactor, bind_and_release)

    @pytest.fixture
    def harness(self, backend: Backend, reactor: Any) -> Iterator[LinkHarness]:
        """A :class:`LinkHarness`; everything it opened is closed and checked afterwards."""
        h = LinkHarness(backend, reactor, self.timeout)
        yield h
        run_in_reactor(reactor, h.aclose)

    # -- listening and connecting ---------------------------------------------------------------

    @_async_test
    async def test_listener_reports_bound_address(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        requested = parse_address(listen_address)
        server = await harness.listen(requested)
        bound = server.listener.address
        assert isinstance(bound, Address)
        assert bound.scheme == requested.scheme
        if requested.port == 0:
            assert bound.port not in (0, None), f"port 0 not resolved in {bound}"
        pair = await harness.pair(server)
        harness.send(pair.client, b"via the bound address")
        assert await pair.server_rx.wait_frames(1) == [b"via the bound address"]

    @_async_test
    async def test_connect_and_accept(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        server = await harness.listen(listen_address)
        client, _ = await harness.connect(server.address)
        accepted, _ = await server.next_link()
        await harness.turns()
        assert len(server.accepted) == 1, "on_link must be called once per connect"
        for link in (client, accepted):
            assert isinstance(link.peer, str) and link.peer, f"{link!r} has no peer description"
            assert not link.closed
            assert link.local_address is None or isinstance(link.local_address, Address)

    @_async_test
    async def test_listen_on_bound_address_fails(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        if not self.exclusive_listen:
            pytest.skip("this backend allows several listeners on one address")
        server = await harness.listen(listen_address)
        with pytest.raises(ConnectFailed):
            await harness.listen(server.address)

    @_async_test
    async def test_connect_to_nothing_fails_quickly(
        self, harness: LinkHarness, unreachable_address: Address
    ) -> None:
        started = time.monotonic()
        with pytest.raises(ConnectFailed):
            await bounded(
                harness.backend.connect(unreachable_address),
                harness.reactor,
                self.connect_fail_within,
                f"connect({unreachable_address}) to fail",
            )
        assert time.monotonic() - started < self.connect_fail_within

    @_async_test
    async def test_cancelled_connect_leaves_nothing_open(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        server = await harness.listen(listen_address)
        d = harness.backend.connect(server.address)
        d.cancel()
        outcome: list[object] = []
        d.addBoth(outcome.append)
        assert outcome, "a cancelled connect must fire at once"
        if isinstance(outcome[0], Link):  # it had already connected: cancel was a no-op
            harness.links.append(outcome[0])
        else:
            assert isinstance(outcome[0], Failure)
            assert isinstance(outcome[0].value, CancelledError | ConnectFailed), outcome[0]
        await harness.bounded(deferLater(harness.reactor, self.settle_delay), "settle")
        if not isinstance(outcome[0], Link):
            for rx in server.recorders:  # an accepted half must be closed by the backend
                assert rx is not None
                assert (await rx.wait_closed()).local is False

    # -- frames ---------------------------------------------------------------------------------

    @_async_test
    async def test_frames_both_ways(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        p = await harness.pair(address=listen_address)
        harness.send(p.client, b"ping", b"", b"\x00\xff")
        harness.send(p.server, b"pong")
        assert await p.server_rx.wait_frames(3) == [b"ping", b"", b"\x00\xff"]
        assert await p.client_rx.wait_frames(1) == [b"pong"]
        harness.send(p.server, b"second")
        assert await p.client_rx.wait_frames(2) == [b"pong", b"second"]
        await harness.turns()
        assert len(p.server_rx.frames) == 3 and len(p.client_rx.frames) == 2, "duplicates"

    @_async_test
    async def test_many_frames_in_order(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        p = await harness.pair(address=listen_address)
        up = [i.to_bytes(4, "big") * (1 + i % 5) for i in range(self.many_frames)]
        down = [b"d" + i.to_bytes(4, "big") for i in range(self.many_frames)]
        harness.send(p.client, *up)
        harness.send(p.server, *down)
        assert await p.server_rx.wait_frames(len(up)) == up
        assert await p.client_rx.wait_frames(len(down)) == down
        await harness.turns()
        assert len(p.server_rx.frames) == len(up) and len(p.client_rx.frames) == len(down)

    async def _round_trip_sizes(self, p: LinkPair, sizes: tuple[int, ...]) -> None:
        up = [_frame(size, size) for size in sizes]
        down = [_frame(size + 1, size) for size in sizes]
        p.listener.harness.send(p.client, *up)
        p.listener.harness.send(p.server, *down)
        got_up = await p.server_rx.wait_frames(len(up))
        got_down = await p.client_rx.wait_frames(len(down))
        assert [len(f) for f in got_up] == list(sizes)
        assert [len(f) for f in got_down] == list(sizes)
        for size, sent, received in zip(sizes + sizes, up + down, got_up + got_down, strict=True):
            if sent != received:  # not a bare assert: pytest would diff megabytes
                first = next(
                    i for i, (x, y) in enumerate(zip(sent, received, strict=True)) if x != y
                )
                pytest.fail(f"a frame of {size} bytes arrived altered from offset {first}")

    @_async_test
    async def test_frame_sizes_intact(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        p = await harness.pair(address=listen_address)
        await self._round_trip_sizes(p, self.frame_sizes)

    @_async_test
    async def test_huge_frames_intact(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        assert harness.backend.max_frame >= MIN_MAX_FRAME
        p = await harness.pair(address=listen_address)
        await self._round_trip_sizes(p, self.huge_frame_sizes)

    @_async_test
    async def test_oversized_frame_refused_link_stays_open(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        p = await harness.pair(address=listen_address)
        with pytest.raises(FrameTooLarge):
            p.client.send(bytes(harness.backend.max_frame + 1))
        for wrong in ("text", bytearray(b"bytes-like")):
            with pytest.raises(TypeError):
                p.client.send(wrong)  # type: ignore[arg-type]
        assert not p.client.closed
        harness.send(p.client, b"after")
        assert await p.server_rx.wait_frames(1) == [b"after"]
        assert not p.client_rx.closes and not p.server_rx.closes

    @_async_test
    async def test_concurrent_links_do_not_cross_talk(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        per_link = 5
        server = await harness.listen(listen_address)
        connects = [
            Deferred.fromCoroutine(harness.connect(server.address)) for _ in range(self.max_links)
        ]
        clients = await harness.bounded(gatherResults(connects), f"{self.max_links} connects")
        for i, (link, _) in enumerate(clients):
            harness.send(link, *(b"%d:%d" % (i, j) for j in range(per_link)))
        seen: set[int] = set()
        for _ in range(self.max_links):
            accepted, rx = await server.next_link()
            assert rx is not None
            frames = await rx.wait_frames(per_link)
            owner = int(frames[0].split(b":")[0])
            assert frames == [b"%d:%d" % (owner, j) for j in range(per_link)], "cross-talk"
            assert owner not in seen
            seen.add(owner)
            harness.send(accepted, *(b"echo " + f for f in frames))
        assert seen == set(range(self.max_links))
        for i, (_, rx) in enumerate(clients):
            assert rx is not None
            expected = [b"echo %d:%d" % (i, j) for j in range(per_link)]
            assert await rx.wait_frames(per_link) == expected
        await harness.turns()
        assert len(server.accepted) == self.max_links
        assert all(rx is not None and len(rx.frames) == per_link for rx in server.recorders)

    # -- attaching ------------------------------------------------------------------------------

    @_async_test
    async def test_attach_twice_raises(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        p = await harness.pair(address=listen_address)
        for link in (p.client, p.server):
            with pytest.raises(RuntimeError):
                link.attach(harness.recorder("second receiver"))
        harness.send(p.client, b"to the first receiver")
        assert await p.server_rx.wait_frames(1) == [b"to the first receiver"]

    @_async_test
    async def test_frames_before_attach_are_delivered_in_order(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        server = await harness.listen(listen_address, attach=False)
        client, _ = await harness.connect(server.address)
        accepted, _ = await server.next_link()
        early = [b"early %d" % i for i in range(100)] + [b""]
        harness.send(client, *early)
        await harness.bounded(deferLater(harness.reactor, self.settle_delay), "settle")
        rx = harness.attach(accepted, "late receiver")
        harness.send(client, b"after attach")
        assert await rx.wait_frames(len(early) + 1) == [*early, b"after attach"]

    @_async_test
    async def test_close_before_attach_is_delivered_after_the_frames(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        server = await harness.listen(listen_address, attach=False)
        client, _ = await harness.connect(server.address)
        accepted, _ = await server.next_link()
        frames = [b"last words %d" % i for i in range(10)]
        harness.send(client, *frames)
        client.close("done before you listened")
        await harness.bounded(deferLater(harness.reactor, self.settle_delay), "settle")
        rx = harness.attach(accepted, "late receiver")
        reason = await rx.wait_closed()
        assert rx.frames == frames
        assert reason.local is False and reason.clean is True

    # -- closing --------------------------------------------------------------------------------

    @pytest.mark.parametrize("closer", ["client", "server"])
    @_async_test
    async def test_close_notifies_both_sides_once(
        self, harness: LinkHarness, listen_address: str | Address, closer: str
    ) -> None:
        p = await harness.pair(address=listen_address)
        a, a_rx, b, b_rx = (p.client, p.client_rx, p.server, p.server_rx)
        if closer == "server":
            a, a_rx, b, b_rx = b, b_rx, a, a_rx
        a.close("test is done")
        assert a.closed
        a.close("again")  # idempotent, never raises
        with pytest.raises(LinkClosed):
            a.send(b"after close")
        mine = await a_rx.wait_closed()
        theirs = await b_rx.wait_closed()
        assert isinstance(mine, CloseReason) and isinstance(theirs, CloseReason)
        assert isinstance(mine.text, str) and mine.text
        assert isinstance(theirs.text, str) and theirs.text
        assert (mine.local, mine.clean) == (True, True)
        assert (theirs.local, theirs.clean) == (False, True)
        assert b.closed
        with pytest.raises(LinkClosed):
            b.send(b"to a closed peer")
        b.close("too late")
        await harness.turns()
        assert a_rx.closes == [mine] and b_rx.closes == [theirs]
        assert not a_rx.frames and not b_rx.frames

    @_async_test
    async def test_frames_sent_before_close_arrive_before_it(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        p = await harness.pair(address=listen_address)
        frames = [b"frame %d" % i for i in range(200)] + [_frame(7, 70_000)]
        harness.send(p.client, *frames)
        p.client.close("flushed")
        reason = await p.server_rx.wait_closed()
        assert reason.local is False
        received = p.server_rx.frames
        if self.flushes_on_close:
            assert received == frames
        else:
            assert received == frames[: len(received)], "what arrives must be a prefix"

    @_async_test
    async def test_simultaneous_close(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        p = await harness.pair(address=listen_address)
        p.client.close("client quits")
        p.server.close("server quits")
        client_reason = await p.client_rx.wait_closed()
        server_reason = await p.server_rx.wait_closed()
        assert client_reason.local is True and server_reason.local is True
        await harness.turns()
        assert len(p.client_rx.closes) == 1 and len(p.server_rx.closes) == 1

    @_async_test
    async def test_when_closed_fires(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        p = await harness.pair(address=listen_address)
        before = p.client.when_closed()
        peer = p.server.when_closed()
        assert not before.called and not peer.called
        notified_first: list[bool] = []

        def check_order(reason: CloseReason) -> CloseReason:
            notified_first.append(p.client_rx.closes == [reason])
            return reason

        before.addCallback(check_order)
        p.client.close("bye")
        reason = await harness.bounded(before, "when_closed() of the closer")
        peer_reason = await harness.bounded(peer, "when_closed() of the peer")
        assert notified_first == [True], "when_closed fired before link_closed"
        assert reason.local is True and peer_reason.local is False
        assert peer_reason == p.server_rx.closes[0]
        after = p.client.when_closed()
        assert after.called, "when_closed() after the close must fire at once"
        assert await after == reason

    @_async_test
    async def test_receiver_exception_closes_link_uncleanly(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        server = await harness.listen(listen_address, attach=False)
        client, client_rx = await harness.connect(server.address)
        accepted, _ = await server.next_link()
        rx = harness.attach(accepted, "failing receiver")
        rx.fail_on_frame = RuntimeError("receiver bug (raised on purpose by the test)")
        await harness.turns()
        harness.send(client, b"boom", b"after boom")
        reason = await rx.wait_closed()
        assert rx.frames[:1] == [b"boom"]
        assert reason.clean is False
        assert client_rx is not None
        await client_rx.wait_closed()
        assert accepted.closed

    # -- listeners ------------------------------------------------------------------------------

    @_async_test
    async def test_closed_listener_refuses_new_links_keeps_old(
        self, harness: LinkHarness, listen_address: str | Address
    ) -> None:
        server = await harness.listen(listen_address)
        p = await harness.pair(server)
        await harness.bounded(server.listener.close(), "listener close")
        await harness.bounded(server.listener.close(), "second listener close (idempotent)")
        with pytest.raises(ConnectFailed):
            await harness.bounded(harness.backend.connect(server.address), "connect to fail")
        await harness.turns()
        assert len(server.accepted) == 1
        harness.send(p.client, b"still up")
        harness.send(p.server, b"still here")
        assert await p.server_rx.wait_frames(1) == [b"still up"]
        assert await p.client_rx.wait_frames(1) == [b"still here"]
        assert not p.client_rx.closes and not p.server_rx.closes
