"""The backend contract: a backend moves opaque byte frames over links (DESIGN §3).

A backend never sees a :class:`~wiremsg.message.Message`; it sees ``bytes``. Everything above
the frame — liveness, authentication, retransmission, flow control — is the session's job, so a
backend stays thin. A backend is three objects:

:class:`Backend`
    ``listen(address, on_link)`` and ``connect(address)``; constructed with the reactor.
:class:`Listener`
    What ``listen`` gives: the bound :attr:`~Listener.address` (port 0 resolved) and ``close()``.
:class:`Link`
    One bidirectional frame channel between two peers.

Guarantees a backend must give on one link (``wiremsg.testing.conformance`` checks each):

* **Whole frames.** A frame arrives exactly as sent, or not at all. Frames of 0 bytes and of at
  least :data:`MIN_MAX_FRAME` (16 MiB) pass; larger limits are the backend's choice.
* **In order, no duplicates.** Frames arrive in the order they were sent, each once.
* **Or the link closes and says why.** Any loss ends the link: the receiver's
  :meth:`LinkReceiver.link_closed` is called exactly once with a :class:`CloseReason`, on both
  sides, whoever closed. No frame is delivered after it.
* **No blocking.** No method blocks the reactor. ``send`` queues; ``close`` begins closing.
* **Reactor-threaded.** Every callback runs in the reactor thread, never re-entrantly from
  inside :meth:`Link.send` or :meth:`Link.attach`.

Native features a backend has (AMQP routing, ZeroMQ CURVE, broker TLS) are reached through the
address's query parameters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wiremsg.address import Address
from wiremsg.errors import FrameTooLarge, LinkClosed

_log = Logger()

MIN_MAX_FRAME = 16 * 1024 * 1024 + 64 * 1024
"""Every backend must carry frames at least this large (16 MiB of payload plus envelope)."""


@dataclass(frozen=True)
class CloseReason:
    """Why a link closed.

    :ivar text: a human-readable reason (``"closed by peer"``, ``"connection reset"``, ...).
    :ivar local: True if this side called :meth:`Link.close`, False if the peer or the network
        ended the link.
    :ivar clean: True for an orderly close by either side, False for a failure.
    """

    text: str
    local: bool = False
    clean: bool = True


class LinkReceiver(Protocol):
    """What a link delivers to. The session driver implements it."""

    def frame_received(self, frame: bytes) -> None:
        """One whole frame arrived. Must not raise; an exception is logged and closes the
        link with an unclean reason."""

    def link_closed(self, reason: CloseReason) -> None:
        """The link is closed: called exactly once, after the last ``frame_received``."""


class BatchReceiver(LinkReceiver, Protocol):
    """A :class:`LinkReceiver` that can also take the frames a backend received together.

    :class:`BaseLink` uses :meth:`frames_received` when the receiver has it and the backend
    delivers a batch (:meth:`BaseLink._deliver_all`); the session driver implements it, so that
    it acts on a whole batch (acks, timers) once instead of once per frame.
    """

    def frames_received(self, frames: list[bytes]) -> None:
        """Several whole frames arrived, in order: the same as calling ``frame_received`` for
        each in turn, except that the receiver may put off its own writes until the end of the
        batch. It must stop taking frames once it has closed the link. Must not raise; an
        exception is logged and closes the link with an unclean reason."""


class Link(ABC):
    """One bidirectional channel of frames between two peers.

    A link delivers nothing until :meth:`attach` is called; frames (and a close) that arrive
    before that are held and delivered, in order, right after ``attach`` returns (on the next
    reactor turn at the latest).
    """

    peer: str
    """A description of the other end (e.g. ``"127.0.0.1:52114"``), for logs and status."""

    local_address: Address | None = None
    """The address this link was made through (the listener's, or the one connected to)."""

    @abstractmethod
    def attach(self, receiver: LinkReceiver) -> None:
        """Start delivering frames and the close notification to ``receiver``.

        :raises RuntimeError: if a receiver is already attached (local misuse).
        """

    @abstractmethod
    def send(self, frame: bytes) -> None:
        """Queue ``frame`` for delivery; never blocks, never delivers synchronously.

        :raises LinkClosed: if the link is closed or closing (locally or by the peer).
        :raises FrameTooLarge: if ``frame`` exceeds the backend's limit; the link stays open.
        :raises TypeError: if ``frame`` is not ``bytes``.
        """

    def push(self) -> None:
        """Hand the frames already passed to :meth:`send` to the transport now, rather than at
        the end of this reactor turn: someone waits for them (a request, a reply). A hint: a
        backend that coalesces the frames of a turn may honour it; the default does nothing.
        Never raises, delivers or notifies from inside the call."""
        return  # a hint: sending at the end of the turn is always correct

    @abstractmethod
    def close(self, reason: str = "closed") -> None:
        """Begin closing. Idempotent; never raises. Frames already passed to :meth:`send` are
        flushed if the backend can. Both sides are then told, exactly once, via
        :meth:`LinkReceiver.link_closed` (this side with ``local=True``)."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called or the link was lost."""

    @abstractmethod
    def when_closed(self) -> Deferred[CloseReason]:
        """A new Deferred that fires with the :class:`CloseReason` once the close has been
        notified (at once if it already was). Never errbacks."""


class BaseLink(Link):
    """The machinery every backend's link shares; a backend implements three hooks.

    It holds frames and the close that arrive before :meth:`attach`, delivers them in order
    after it, and guarantees the close is notified exactly once. A backend subclass calls
    :meth:`_deliver` for each incoming frame and :meth:`_notify_closed` when the underlying
    channel is gone, and implements :meth:`_transmit` and :meth:`_shutdown`.
    """

    def __init__(self, reactor: Any, peer: str, max_frame: int = MIN_MAX_FRAME) -> None:
        self.reactor = reactor
        self.peer = peer
        self.max_frame = max_frame
        self._receiver: LinkReceiver | None = None
        self._held: deque[bytes] = deque()
        self._closing = False
        self._reason: CloseReason | None = None
        self._notified = False
        self._waiters: list[Deferred[CloseReason]] = []

    # -- the hooks a backend implements ----------------------------------------------------

    @abstractmethod
    def _transmit(self, frame: bytes) -> None:
        """Hand one frame to the underlying channel (only called while open)."""

    @abstractmethod
    def _shutdown(self, reason: str) -> None:
        """Close the underlying channel; the backend later calls :meth:`_notify_closed`."""

    def _abort(self, reason: str) -> None:
        """Close the channel because our receiver failed; the peer should hear of it as an
        unclean close. Defaults to :meth:`_shutdown`."""
        self._shutdown(reason)

    # -- the contract ----------------------------------------------------------------------

    def attach(self, receiver: LinkReceiver) -> None:
        if self._receiver is not None:
            raise RuntimeError("a receiver is already attached to this link")
        self._receiver = receiver
        if self._held or self._reason is not None:
            self.reactor.callLater(0, self._flush_held)

    def send(self, frame: bytes) -> None:
        if type(frame) is not bytes:
            if not isinstance(frame, bytes):
                raise TypeError(f"frames are bytes, not {type(frame).__name__}")
            frame = bytes(frame)
        if self._closing or self._reason is not None:
            raise LinkClosed(f"link to {self.peer} is closed")
        if len(frame) > self.max_frame:
            raise FrameTooLarge(len(frame), self.max_frame)
        self._transmit(frame)

    def close(self, reason: str = "closed") -> None:
        if self._closing or self._reason is not None:
            return
        self._closing = True
        self._shutdown(reason)

    @property
    def closed(self) -> bool:
        return self._closing or self._reason is not None

    def when_closed(self) -> Deferred[CloseReason]:
        d: Deferred[CloseReason] = Deferred()
        if self._reason is not None and (self._notified or self._receiver is None):
            d.callback(self._reason)
        else:
            self._waiters.append(d)
        return d

    # -- for the backend -------------------------------------------------------------------

    def _deliver(self, frame: bytes) -> None:
        """Pass one received frame up (or hold it until a receiver is attached)."""
        if self._reason is not None:
            return
        receiver = self._receiver
        if receiver is None or self._held:
            self._held.append(frame)
            return
        self._hand_over(receiver, frame)

    def _deliver_all(self, frames: list[bytes]) -> None:
        """Pass several frames received together up, in order (held until ``attach``). A
        receiver that closes the link part-way gets none of the rest."""
        if self._reason is not None or not frames:
            return
        receiver = self._receiver
        if receiver is None or self._held:
            self._held.extend(frames)
            return
        batch = getattr(receiver, "frames_received", None)
        if batch is None:
            for frame in frames:
                if self._closing or self._reason is not None:
                    return
                if not self._hand_over(receiver, frame):
                    return
            return
        try:
            batch(frames)
        except Exception as exc:
            self._receiver_failed(exc)

    def _hand_over(self, receiver: LinkReceiver, frame: bytes) -> bool:
        """Give ``frame`` to ``receiver``; a receiver that raises closes the link uncleanly."""
        try:
            receiver.frame_received(frame)
        except Exception as exc:
            self._receiver_failed(exc)
            return False
        return True

    def _receiver_failed(self, exc: Exception) -> None:
        """Our receiver raised ``exc`` (called from its ``except``): log, close uncleanly."""
        _log.failure("receiver of link to {peer} failed; closing it", peer=self.peer)
        self._held.clear()
        text = f"receiver failed: {exc!r}"
        if self._reason is None:
            self._reason = CloseReason(text, local=True, clean=False)
        if not self._closing:
            self._closing = True
            self._abort(text)
        self._finish_close()

    def _notify_closed(self, reason: CloseReason) -> None:
        """Record that the channel is gone; the receiver hears of it exactly once."""
        if self._reason is not None:
            return
        if self._closing and not reason.local:
            reason = CloseReason(reason.text, local=True, clean=reason.clean)
        self._reason = reason
        if self._receiver is None:
            self._fire_waiters()  # nobody attached: the close is still told on attach
        elif not self._held:
            self._finish_close()

    def _flush_held(self) -> None:
        receiver = self._receiver
        assert receiver is not None
        held = self._held
        while held:
            if not self._hand_over(receiver, held.popleft()):
                return
        if self._reason is not None:
            self._finish_close()

    def _finish_close(self) -> None:
        if self._notified:
            return
        self._notified = True
        reason = self._reason
        assert reason is not None and self._receiver is not None
        try:
            self._receiver.link_closed(reason)
        finally:
            self._fire_waiters()

    def _fire_waiters(self) -> None:
        reason = self._reason
        assert reason is not None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(reason)


class Listener(ABC):
    """What :meth:`Backend.listen` returns."""

    address: Address
    """The bound address, with port 0 resolved to the real port."""

    @abstractmethod
    def close(self) -> Deferred[None]:
        """Stop accepting new links; links already made stay open. Fires when the port is
        released. Idempotent; never errbacks."""


class Backend(ABC):
    """A transport for frames. One instance may listen and connect many times.

    :param reactor: the Twisted reactor (or a test reactor) to run on; never imported at module
        level by a backend.
    """

    schemes: tuple[str, ...] = ()
    """The URL schemes this backend serves, e.g. ``("amp", "amp+unix", "amp+tls")``."""

    max_frame: int = MIN_MAX_FRAME
    """The largest frame :meth:`Link.send` accepts."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    @abstractmethod
    def listen(self, address: Address, on_link: Callable[[Link], None]) -> Deferred[Listener]:
        """Accept links at ``address``; call ``on_link(link)`` for each, in the reactor thread.

        :returns: a Deferred firing with the :class:`Listener` once bound.
        :raises: (as a failed Deferred) :class:`~wiremsg.errors.ConnectFailed` if the address
            cannot be bound (in use, permission, bad interface), :class:`~wiremsg.errors.
            AddressError` if the address has parameters this backend does not accept.
        """

    @abstractmethod
    def connect(self, address: Address, timeout: float = 10.0) -> Deferred[Link]:
        """Make one link to a listener at ``address``.

        :returns: a Deferred firing with the :class:`Link` once the backend can carry frames.
        :raises: (as a failed Deferred) :class:`~wiremsg.errors.ConnectFailed` when nothing
            listens there, the peer refuses, or ``timeout`` seconds pass; it fails promptly
            (well under ``timeout``) when the refusal is immediate. Cancelling the Deferred
            abandons the attempt and leaves nothing open.
        """
