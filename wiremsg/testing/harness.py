"""Test plumbing for anything that drives links on a live reactor.

:func:`clean_reactor` is trial's "dirty reactor" check, which pytest-twisted lacks: a test that
leaves delayed calls, readers or writers behind fails, naming them. :class:`LinkHarness` and
:class:`FrameRecorder` open, watch and clean up links with every wait bounded. The conformance
suite (:mod:`wiremsg.testing.conformance`) is built from these; they suit any backend test.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from wiremsg.address import Address, parse_address
from wiremsg.backends.base import Backend, CloseReason, Link, Listener

__all__ = [
    "DEFAULT_TIMEOUT",
    "FrameRecorder",
    "LinkHarness",
    "LinkPair",
    "Server",
    "WaitTimedOut",
    "async_test",
    "bounded",
    "check_clean_reactor",
    "clean_reactor",
    "global_reactor",
    "reactor",
    "run_in_reactor",
]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_TIMEOUT = 10.0
"""Seconds any one wait in the suite may take before the test fails."""


def async_test(f: _F) -> _F:
    """Mark an ``async def`` test for pytest-twisted (a typed ``pytest_twisted.ensureDeferred``)."""
    marked: _F = pytest_twisted.ensureDeferred(f)
    return marked


def global_reactor() -> Any:
    """The reactor pytest-twisted installed, imported only when asked for."""
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
    return global_reactor()


@pytest.fixture(autouse=True)
def clean_reactor() -> Iterator[None]:
    """Fail a test that leaves the reactor dirty (autouse wherever it is imported).

    See :func:`check_clean_reactor`.
    """
    with check_clean_reactor(global_reactor()):
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
