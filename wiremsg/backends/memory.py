"""The in-process backend: ``memory://name`` links between objects in one process.

For tests and embedding. A listener registers its name in a :class:`MemoryNetwork`; every
:class:`MemoryBackend` built on the same reactor shares that reactor's network by default (so a
master and a worker made separately still meet), and a test may pass its own network to be
isolated. A link is a pair of :class:`MemoryLink` objects. Frames are queued and delivered on a
later reactor turn, one ``callLater(0)`` per batch, never from inside :meth:`MemoryLink.send`.

Closing is orderly: frames the closer sent before :meth:`~MemoryLink.close` reach the peer before
its close notification, and the closer stops receiving (as TCP stops reading). For fault tests,
:meth:`MemoryLink.sever` cuts a link as a network failure would, losing what is in flight.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from itertools import count
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from wiremsg.address import Address, parse_address
from wiremsg.backends.base import MIN_MAX_FRAME, Backend, BaseLink, CloseReason, Link, Listener
from wiremsg.errors import AddressError, ConnectFailed

__all__ = ["MemoryBackend", "MemoryLink", "MemoryListener", "MemoryNetwork", "network_for"]

_log = Logger()


class MemoryNetwork:
    """A namespace of ``memory://`` names: who listens where.

    :ivar listeners: the open listeners by name.
    """

    def __init__(self) -> None:
        self.listeners: dict[str, MemoryListener] = {}


_NETWORKS: weakref.WeakKeyDictionary[Any, MemoryNetwork] = weakref.WeakKeyDictionary()
_SHARED = MemoryNetwork()


def network_for(reactor: Any) -> MemoryNetwork:
    """Return the network shared by every :class:`MemoryBackend` on ``reactor``.

    Keying by reactor keeps a test on a fake clock apart from one on the real reactor. A reactor
    that cannot be weakly referenced shares one process-wide network.
    """
    try:
        network = _NETWORKS.get(reactor)
        if network is None:
            network = _NETWORKS[reactor] = MemoryNetwork()
    except TypeError:
        return _SHARED
    return network


class MemoryLink(BaseLink):
    """One end of an in-process link. Its twin is the other end.

    Frames sent here are appended to the twin's inbox; the twin flushes its inbox on the next
    reactor turn. A pending close is delivered after the frames queued before it.
    """

    def __init__(self, reactor: Any, peer: str, address: Address, max_frame: int) -> None:
        super().__init__(reactor, peer, max_frame)
        self.local_address = address
        self._twin: MemoryLink | None = None
        self._inbox: deque[bytes] = deque()
        self._pending_close: CloseReason | None = None
        self._flush_call: DelayedCall | None = None

    @classmethod
    def pair(
        cls, reactor: Any, address: Address, client_peer: str, server_peer: str, max_frame: int
    ) -> tuple[MemoryLink, MemoryLink]:
        """Make two linked ends: ``(client, server)``; ``*_peer`` describe the other end."""
        client = cls(reactor, client_peer, address, max_frame)
        server = cls(reactor, server_peer, address, max_frame)
        client._twin, server._twin = server, client
        return client, server

    def sever(self, reason: str = "link severed") -> None:
        """Break the link as a network failure would (a test helper).

        Both ends are told ``CloseReason(reason, local=False, clean=False)`` on a later turn and
        frames in flight are lost. An end whose close is already under way (it called
        :meth:`close`, or its peer's close is on the way) keeps that close instead; so severing
        a closed link does nothing.
        """
        cut = CloseReason(reason, local=False, clean=False)
        self._cut(cut, cut, peer_keeps_inbox=False)

    # -- BaseLink hooks ----------------------------------------------------------------------

    def _transmit(self, frame: bytes) -> None:
        twin = self._twin
        if twin is not None:
            twin._inbox.append(frame)
            twin._schedule()

    def _shutdown(self, reason: str) -> None:
        self._cut(
            CloseReason(reason, local=True, clean=True),
            CloseReason(f"closed by peer: {reason}", local=False, clean=True),
            peer_keeps_inbox=True,
        )

    def _abort(self, reason: str) -> None:
        self._pending_close = None  # the failure outranks a close already on the way
        self._cut(
            CloseReason(reason, local=True, clean=False),
            CloseReason(f"peer failed: {reason}", local=False, clean=False),
            peer_keeps_inbox=True,
        )

    # -- internals -----------------------------------------------------------------------------

    def _cut(self, mine: CloseReason, theirs: CloseReason, *, peer_keeps_inbox: bool) -> None:
        twin, self._twin = self._twin, None
        if twin is not None:
            twin._twin = None
            twin._end(theirs, drop_inbox=not peer_keeps_inbox)
        self._end(mine, drop_inbox=True)

    def _end(self, reason: CloseReason, *, drop_inbox: bool) -> None:
        if drop_inbox:
            self._inbox.clear()
        if self._pending_close is None and self._reason is None:
            self._pending_close = reason
            self._schedule()

    def _schedule(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        inbox = self._inbox
        while inbox:  # frames that arrive during a delivery make the next batch
            frames = list(inbox)
            inbox.clear()
            self._deliver_all(frames)  # BaseLink turns a receiver's failure into _abort
        reason, self._pending_close = self._pending_close, None
        if reason is not None:
            if self._flush_call is not None:  # scheduled by a close made during delivery
                self._flush_call.cancel()
                self._flush_call = None
            self._notify_closed(reason)


class MemoryListener(Listener):
    """A name registered in a :class:`MemoryNetwork`, accepting links until closed."""

    def __init__(
        self, backend: MemoryBackend, address: Address, on_link: Callable[[Link], None]
    ) -> None:
        self.address = address
        self._backend = backend
        self._on_link = on_link
        self._accepted = count(1)

    def close(self) -> Deferred[None]:
        """Release the name; links already made stay open. Idempotent; fires at once."""
        listeners = self._backend.network.listeners
        if listeners.get(self.address.name) is self:
            del listeners[self.address.name]
        return succeed(None)

    def _accept(self) -> MemoryLink:
        backend = self._backend
        number = next(self._accepted)
        client, server = backend.link_class.pair(
            backend.reactor,
            self.address,
            client_peer=str(self.address),
            server_peer=f"{self.address} client #{number}",
            max_frame=backend.max_frame,
        )
        try:
            self._on_link(server)
        except Exception:
            client.sever("the listener failed to accept the link")
            raise
        return client


class MemoryBackend(Backend):
    """Links within one process, addressed ``memory://name``.

    :param reactor: the reactor (or a ``twisted.internet.task.Clock``) that runs deliveries.
    :param max_frame: the largest frame :meth:`Link.send` accepts.
    :param network: the namespace of names; by default the one shared by ``reactor``
        (:func:`network_for`).
    """

    schemes = ("memory",)

    link_class: type[MemoryLink] = MemoryLink
    """The class of both ends of a link (a test may subclass :class:`MemoryLink` to add faults)."""

    def __init__(
        self,
        reactor: Any,
        *,
        max_frame: int = MIN_MAX_FRAME,
        network: MemoryNetwork | None = None,
    ) -> None:
        super().__init__(reactor)
        self.max_frame = max_frame
        self.network = network if network is not None else network_for(reactor)

    def listen(self, address: Address | str, on_link: Callable[[Link], None]) -> Deferred[Listener]:
        """Register ``address``'s name; fires at once with the :class:`MemoryListener`.

        :raises: (as a failed Deferred) :class:`ConnectFailed` if the name is in use,
            :class:`AddressError` for a non-memory address or one with query parameters.
        """
        try:
            addr = self._check(address)
        except AddressError:
            return fail()
        listeners = self.network.listeners
        if addr.name in listeners:
            return fail(ConnectFailed(f"{addr} is already in use"))
        listener = MemoryListener(self, addr, on_link)
        listeners[addr.name] = listener
        return succeed(listener)

    def connect(self, address: Address | str, timeout: float = 10.0) -> Deferred[Link]:
        """Link to the listener at ``address`` on the next reactor turn.

        The listener's ``on_link`` is called first, then the Deferred fires with this end.

        :raises: (as a failed Deferred) :class:`ConnectFailed` if nobody listens there (or the
            listener's ``on_link`` raised), :class:`AddressError` for a bad address.
            ``timeout`` is accepted for the contract; a memory connect never waits.
        """
        try:
            addr = self._check(address)
        except AddressError:
            return fail()

        def cancel(_: Deferred[Link]) -> None:
            if call.active():
                call.cancel()

        d: Deferred[Link] = Deferred(cancel)

        def complete() -> None:
            listener = self.network.listeners.get(addr.name)
            if listener is None:
                d.errback(ConnectFailed(f"nothing listens at {addr}"))
                return
            try:
                link = listener._accept()
            except Exception as exc:
                _log.failure("on_link of the listener at {address} failed", address=addr)
                d.errback(ConnectFailed(f"the listener at {addr} failed to accept: {exc!r}"))
                return
            d.callback(link)

        call = self.reactor.callLater(0, complete)
        return d

    def _check(self, address: Address | str) -> Address:
        addr = parse_address(address)
        if addr.scheme not in self.schemes:
            raise AddressError("scheme", str(addr), "the memory backend serves memory://NAME")
        if addr.params:
            raise AddressError("query", str(addr), "memory addresses take no parameters")
        return addr
