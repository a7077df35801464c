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

The helpers the suite is built from, :class:`LinkHarness` and :class:`FrameRecorder`, are public
too: they suit any test that drives links.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from wiremsg.address import Address, parse_address
from wiremsg.backends.base import MIN_MAX_FRAME, Backend, CloseReason, Link, Listener
from wiremsg.errors import ConnectFailed, FrameTooLarge, LinkClosed

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

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_TIMEOUT = 10.0
"""Seconds any one wait in the suite may take before the test fails."""


def _async_test(f: _F) -> _F:
    """Mark an ``async def`` test for pytest-twisted (a typed ``pytest_twisted.ensureDeferred``)."""
    marked: _F = pytest_twisted.ensureDeferred(f)
    return marked


def _global_reactor() -> Any:
    from twisted.internet import reactor as installed  # lazily: pytest-twisted installs it

    return installed


class WaitTimedOut(AssertionError):
    """A bounded wait in a test ran out of time; the message says what was awaited."""


def bounded(
    d: Deferred[_T], reactor: Any, timeout: float, what: str | Callable[[], str]
) -> Deferred[_T]:
    """Return ``d`` made to fail with :class:`WaitTimedOut` after ``timeout`` seconds.

    :param what: what is awaited, for the failure message (a callable is asked at timeout).
    """

    def timed_out(result: _T | Failure, seconds: float) -> _T | Failure:
        if isinstance(result, Failure) and isinstance(result.value, CancelledError):
            text = what() if callable(what) else what
            raise WaitTimedOut(f"gave up after {seconds:g}s waiting for {text}")
        return result

    return d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)


def run_in_reactor(reactor: Any, work: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """From a synchronous fixture, run the coroutine ``work()`` in the reactor and wait for it.

    ``work`` must bound its own waits; this returns (or raises) what it does.
    """
    done: Deferred[_T] = Deferred()

    def start() -> None:
        Deferred.fromCoroutine(work()).chainDeferred(done)

    reactor.callFromThread(start)
    result: _T = pytest_twisted.blockon(done)
    return result


# -- the dirty-reactor check ------------------------------------------------------------------


def _selectables(reactor: Any, kind: str) -> dict[int, Any]:
    getter = getattr(reactor, kind, None)
    if getter is None:
        return {}
    internal = {id(s) for s in getattr(reactor, "_internalReaders", ())}
    return {id(s): s for s in getter() if id(s) not in internal}


def _close_selectable(reactor: Any, selectable: Any) -> None:
    reactor.removeReader(selectable)
    reactor.removeWriter(selectable)
    try:
        if IProcessTransport.providedBy(selectable):
            selectable.signalProcess("KILL")
        lost = getattr(selectable, "connectionLost", None)
        if lost is not None:
            done = ConnectionDone("left open by a test; closed by clean_reactor")
            lost(Failure(done))  # type: ignore[no-untyped-call]
    except Exception:  # best effort: the test fails anyway
        pass


async def _spin(reactor: Any, turns: int) -> None:
    for _ in range(turns):
        await deferLater(reactor, 0, lambda: None)


@contextmanager
def check_clean_reactor(reactor: Any, turns: int = 2) -> Iterator[None]:
    """Around a test, fail if it left the reactor dirty (trial's ``DirtyReactorAggregateError``).

    After the body, the reactor spins ``turns`` turns; then delayed calls and readers/writers
    that appeared during the body (the reactor's internal wakers excepted) are cancelled or
    closed, and :func:`pytest.fail` names them.
    """
    calls_before = {id(c) for c in reactor.getDelayedCalls()}
    readers_before = _selectables(reactor, "getReaders")
    writers_before = _selectables(reactor, "getWriters")
    yield
    run_in_reactor(reactor, lambda: _spin(reactor, turns))
    calls = [c for c in reactor.getDelayedCalls() if id(c) not in calls_before and c.active()]
    readers = [s for k, s in _selectables(reactor, "getReaders").items() if k not in readers_before]
    writers = [s for k, s in _selectables(reactor, "getWriters").items() if k not in writers_before]
    if not (calls or readers or writers):
        return
    lines = [f"  delayed call: {c!r}" for c in calls]
    lines += [f"  reader: {s!r}" for s in readers]
    lines += [f"  writer: {s!r}" for s in writers if id(s) not in {id(r) for r in readers}]
    for call in calls:
        call.cancel()
    for selectable in {id(s): s for s in readers + writers}.values():
        _close_selectable(reactor, selectable)
    pytest.fail("the test left the reactor dirty (now cleaned up):\n" + "\n".join(lines))


@pytest.fixture
def reactor() -> Any:
    """The reactor pytest-twisted installed (imported lazily, so ``--reactor`` still works)."""
    return _global_reactor()


@pytest.fixture(autouse=True)
def clean_reactor() -> Iterator[None]:
    """Fail a test that leaves the reactor dirty (autouse wherever it is imported).

    See :func:`check_clean_reactor`.
    """
    with check_clean_reactor(_global_reactor()):
        yield


# -- recording what a link delivers -----------------------------------------------------------


class _Guard:
    """Names the link call in progress, so a receiver can tell it was called re-entrantly."""

    def __init__(self) -> None:
        self.inside: str | None = None

    @contextmanager
    def during(self, what: str) -> Iterator[None]:
        outer, self.inside = self.inside, what
        try:
            yield
        finally:
            self.inside = outer


class FrameRecorder:
    """A :class:`~wiremsg.backends.base.LinkReceiver` that records and checks deliveries.

    It notes contract violations in :attr:`problems` rather than raising into the backend: a
    frame after the close, a second close, a callback from inside ``send``/``attach``.

    :ivar frames: the frames received, in order.
    :ivar closes: the close reasons received (one, if the backend is right).
    :ivar problems: contract violations seen.
    :ivar fail_on_frame: if set, ``frame_received`` records the frame, then raises this.
    """

    def __init__(
        self, reactor: Any, name: str, timeout: float = DEFAULT_TIMEOUT, guard: Any = None
    ) -> None:
        self.reactor = reactor
        self.name = name
        self.timeout = timeout
        self.frames: list[bytes] = []
        self.closes: list[CloseReason] = []
        self.problems: list[str] = []
        self.fail_on_frame: Exception | None = None
        self._guard: _Guard | None = guard
        self._frame_waiters: list[tuple[int, Deferred[list[bytes]]]] = []
        self._close_waiters: list[Deferred[CloseReason]] = []

    def _check_reentrancy(self, callback: str) -> None:
        if self._guard is not None and self._guard.inside is not None:
            self.problems.append(f"{self.name}: {callback} called from inside {self._guard.inside}")

    def frame_received(self, frame: bytes) -> None:
        """Record ``frame``; wake waiters."""
        self._check_reentrancy("frame_received")
        if self.closes:
            self.problems.append(f"{self.name}: frame of {len(frame)} bytes after link_closed")
        if type(frame) is not bytes:
            self.problems.append(f"{self.name}: frame delivered as {type(frame).__name__}")
        self.frames.append(frame)
        ready = [w for w in self._frame_waiters if len(self.frames) >= w[0]]
        for waiter in ready:
            self._frame_waiters.remove(waiter)
            waiter[1].callback(list(self.frames))
        if self.fail_on_frame is not None:
            raise self.fail_on_frame

    def link_closed(self, reason: CloseReason) -> None:
        """Record the close; a second one is a problem."""
        self._check_reentrancy("link_closed")
        if self.closes:
            self.problems.append(f"{self.name}: link_closed again ({self.closes[0]} then {reason})")
        if not isinstance(reason, CloseReason):
            self.problems.append(f"{self.name}: link_closed with {reason!r}, not a CloseReason")
        self.closes.append(reason)
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(reason)

    def wait_frames(self, count: int) -> Deferred[list[bytes]]:
        """Fire with all frames received once there are at least ``count`` (bounded)."""
        if len(self.frames) >= count:
            d: Deferred[list[bytes]] = Deferred()
            d.callback(list(self.frames))
            return d
        d = Deferred(lambda d: self._frame_waiters.remove((count, d)))
        self._frame_waiters.append((count, d))
        return bounded(
            d,
            self.reactor,
            self.timeout,
            lambda: f"{count} frames on {self.name} (got {len(self.frames)})",
        )

    def wait_closed(self) -> Deferred[CloseReason]:
        """Fire with the close reason once ``link_closed`` was called (bounded)."""
        d: Deferred[CloseReason] = Deferred(lambda d: self._close_waiters.remove(d))
        if self.closes:
            d.callback(self.closes[0])
            return d
        self._close_waiters.append(d)
        return bounded(d, self.reactor, self.timeout, f"link_closed on {self.name}")


# -- driving links ------------------------------------------------------------------------------


@dataclass
class Server:
    """A listener opened by :meth:`LinkHarness.listen` and the links it accepted, in order.

    ``recorders[i]`` is the receiver attached to ``accepted[i]``, or None if not attached.
    """

    listener: Listener
    harness: LinkHarness
    accepted: list[Link] = field(default_factory=list)
    recorders: list[FrameRecorder | None] = field(default_factory=list)
    _handed: int = 0
    _waiters: list[Deferred[None]] = field(default_factory=list)

    @property
    def address(self) -> Address:
        """The bound address."""
        return self.listener.address

    def _accepted(self, link: Link, recorder: FrameRecorder | None) -> None:
        self.accepted.append(link)
        self.recorders.append(recorder)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    async def next_link(self) -> tuple[Link, FrameRecorder | None]:
        """The next accepted link not yet handed out by this method (bounded wait)."""
        while len(self.accepted) <= self._handed:
            d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
            self._waiters.append(d)
            await bounded(d, self.harness.reactor, self.harness.timeout, "an accepted link")
        index, self._handed = self._handed, self._handed + 1
        return self.accepted[index], self.recorders[index]


@dataclass
class LinkPair:
    """Both ends of one link with their recorders."""

    client: Link
    client_rx: FrameRecorder
    server: Link
    server_rx: FrameRecorder
    listener: Server


class LinkHarness:
    """Opens listeners and links on a backend, records them, and closes them all at the end.

    Frames go through :meth:`send` and receivers through :meth:`attach`, which mark the call
    in progress so a receiver called re-entrantly from inside them records a problem.
    :meth:`aclose` closes everything, waits (bounded) for each close to be notified, and fails
    if any recorder saw a contract violation.
    """

    def __init__(self, backend: Backend, reactor: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.backend = backend
        self.reactor = reactor
        self.timeout = timeout
        self.guard = _Guard()
        self.servers: list[Server] = []
        self.links: list[Link] = []
        self.recorders: list[FrameRecorder] = []
        self._attached: dict[int, FrameRecorder] = {}

    def bounded(self, d: Deferred[_T], what: str | Callable[[], str]) -> Deferred[_T]:
        """:func:`bounded` with this harness's reactor and timeout."""
        return bounded(d, self.reactor, self.timeout, what)

    def recorder(self, name: str) -> FrameRecorder:
        """A new recorder, tracked for the final contract check."""
        rx = FrameRecorder(self.reactor, name, self.timeout, self.guard)
        self.recorders.append(rx)
        return rx

    def attach(self, link: Link, name: str) -> FrameRecorder:
        """Attach a new recorder called ``name`` to ``link`` and return it."""
        rx = self.recorder(name)
        with self.guard.during(f"attach() on {name}"):
            link.attach(rx)
        self._attached[id(link)] = rx
        return rx

    def send(self, link: Link, *frames: bytes) -> None:
        """Send each of ``frames`` on ``link``, in order."""
        with self.guard.during(f"send() to {link.peer}"):
            for frame in frames:
                link.send(frame)

    async def listen(self, address: str | Address, *, attach: bool = True) -> Server:
        """Listen at ``address``; accepted links get a recorder unless ``attach`` is False."""
        server: Server | None = None
        early: list[Link] = []

        def on_link(link: Link) -> None:
            self.links.append(link)
            if server is None:  # the backend accepted before listen's Deferred fired
                early.append(link)
                return
            self._on_link(server, link, attach)

        listener = await self.bounded(
            self.backend.listen(parse_address(address), on_link), f"listen({address})"
        )
        server = Server(listener, self)
        self.servers.append(server)
        for link in early:
            self._on_link(server, link, attach)
        return server

    def _on_link(self, server: Server, link: Link, attach: bool) -> None:
        name = f"server link #{len(server.accepted)}"
        server._accepted(link, self.attach(link, name) if attach else None)

    async def connect(
        self, address: str | Address, *, attach: bool = True
    ) -> tuple[Link, FrameRecorder | None]:
        """Connect to ``address``; the link gets a recorder unless ``attach`` is False."""
        connecting = self.backend.connect(parse_address(address))
        link = await self.bounded(connecting, f"connect({address})")
        self.links.append(link)
        return link, (self.attach(link, f"client link #{len(self.links)}") if attach else None)

    async def pair(self, server: Server | None = None, address: str | Address = "") -> LinkPair:
        """One attached link: listen at ``address`` first unless ``server`` is given."""
        if server is None:
            server = await self.listen(address)
        client, client_rx = await self.connect(server.address)
        accepted, server_rx = await server.next_link()
        assert client_rx is not None and server_rx is not None, "pair() needs attached servers"
        return LinkPair(client, client_rx, accepted, server_rx, server)

    async def turns(self, count: int = 3) -> None:
        """Let the reactor run ``count`` turns (never a sleep)."""
        await _spin(self.reactor, count)

    def problems(self) -> list[str]:
        """Every contract violation the recorders saw."""
        return [p for rx in self.recorders for p in rx.problems]

    async def aclose(self) -> None:
        """Close every link and listener, wait for it, and check the recorders."""
        errors: list[str] = []
        waits: list[Deferred[CloseReason]] = []
        for link in self.links:
            if id(link) not in self._attached:
                self.attach(link, f"teardown of {link.peer}")
            link.close("conformance teardown")
            waits.append(self.bounded(link.when_closed(), f"when_closed() of {link.peer}"))
        closes: list[tuple[bool, Any]] = await DeferredList(waits, consumeErrors=True)
        for ok, result in closes:
            if not ok:
                errors.append(str(result.value))
        listener_closes = [
            self.bounded(s.listener.close(), f"close() of listener {s.address}")
            for s in self.servers
        ]
        released: list[tuple[bool, Any]] = await DeferredList(listener_closes, consumeErrors=True)
        for ok, result in released:
            if not ok:
                errors.append(str(result.value))
        errors += self.problems()
        if errors:
            raise AssertionError("link contract violated:\n  " + "\n  ".join(errors))


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
        return _global_reactor()

    @pytest.fixture(autouse=True)
    def clean_reactor(self) -> Iterator[None]:
        """Fail a test that leaves the reactor dirty (see :func:`check_clean_reactor`)."""
        with check_clean_reactor(_global_reactor()):
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
