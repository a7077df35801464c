"""The thin Twisted glue between a sans-IO :class:`~wiremsg.session.Session` and a link.

A :class:`SessionDriver` owns one session for its whole life (which may span several links).
It feeds the session the frames and close of its *current* link, writes the frames the session
produces, keeps one reactor timer at the session's next deadline, turns requests into
Deferreds, and hands every other event to its owner (the Master or the Worker). Frames from a
link that is no longer current are ignored, so a late close of a displaced link cannot disturb
a resumed session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wiremsg.backends.base import CloseReason, Link
from wiremsg.errors import LinkClosed, WiremsgError
from wiremsg.events import (
    DropLink,
    Event,
    MessageReceived,
    ReplyReceived,
    RequestFailed,
    SendFailed,
)
from wiremsg.message import JSON, Message
from wiremsg.session import Session

log = Logger()

EventHandler = Callable[["SessionDriver", Event], None]
MessageHandler = Callable[["SessionDriver", Message, bool], None]
"""``on_message(driver, message, request)``: an application message arrived."""


class _Receiver:
    """The LinkReceiver attached to one link; forwards to whichever driver now owns it."""

    __slots__ = ("driver", "link")

    def __init__(self, driver: SessionDriver, link: Link) -> None:
        self.driver: SessionDriver | None = driver
        self.link = link

    def frame_received(self, frame: bytes) -> None:
        driver = self.driver
        if driver is not None and driver._receiver is self:
            driver._frame(frame)

    def frames_received(self, frames: list[bytes]) -> None:
        """Feed each frame to the current driver's session and act on what it produced at
        once, as for single frames; drain waiters and the timer are seen to once per batch
        (and per driver: a resume mid-batch hands the link, and the rest, to another one)."""
        driver: SessionDriver | None = None
        try:
            for frame in frames:
                current = self.driver
                if current is None or current._receiver is not self:
                    return
                if current is not driver:
                    if driver is not None:
                        driver.flush()
                    driver = current
                driver.session.frame_received(frame)
                driver._pump()
        finally:
            if driver is not None:
                driver.flush()

    def link_closed(self, reason: CloseReason) -> None:
        driver = self.driver
        self.driver = None
        if driver is not None and driver._receiver is self:
            driver._lost(reason)


class SessionDriver:
    """Runs one session on the reactor.

    :param session: the sans-IO session to drive.
    :param reactor: provides ``callLater`` and ``seconds`` (the session's clock must agree).
    :param on_event: called with ``(driver, event)`` for each event other than replies.
    :param on_message: if given, called instead of ``on_event`` for each
        :class:`~wiremsg.events.MessageReceived`, with ``(driver, message, request)``: the hot
        path of every message, one call shorter.
    """

    def __init__(
        self,
        session: Session,
        reactor: Any,
        on_event: EventHandler,
        on_message: MessageHandler | None = None,
    ) -> None:
        self.session = session
        self.reactor = reactor
        self.on_event = on_event
        self.on_message = on_message
        self.link: Link | None = None
        self._receiver: _Receiver | None = None
        self._timer: DelayedCall | None = None
        self._timer_at = 0.0  # when _timer fires (meaningful while it is set)
        self._waiting: dict[str, Deferred[Message]] = {}
        self._drain_waiters: list[Deferred[None]] = []
        self.peer = ""
        """The current (or last) link's peer description, for logs and status."""
        self.reconnects = 0

    # -- links ----------------------------------------------------------------------------

    def attach(self, link: Link) -> None:
        """Make ``link`` (new, not yet attached to anything) this session's current link."""
        receiver = _Receiver(self, link)
        self._use(link, receiver)
        link.attach(receiver)

    def adopt(self, other: SessionDriver) -> None:
        """Take over ``other``'s current link (a resume): our old link, if any, is closed."""
        receiver, link = other._receiver, other.link
        assert receiver is not None and link is not None
        other._receiver = None
        other.link = None
        other.stop_timer()
        self._drop_current("displaced by a resumed link")
        receiver.driver = self
        self._use(link, receiver)
        self.reconnects += 1

    def _use(self, link: Link, receiver: _Receiver) -> None:
        self.link = link
        self.peer = link.peer
        self._receiver = receiver

    def _drop_current(self, reason: str) -> None:
        link, self.link, self._receiver = self.link, None, None
        if link is not None:
            link.close(reason)

    def _frame(self, frame: bytes) -> None:
        self.session.frame_received(frame)
        self.flush()

    def _lost(self, reason: CloseReason) -> None:
        self.link = None
        self._receiver = None
        self.session.connection_lost(reason.text)
        self.flush()

    # -- requests -------------------------------------------------------------------------

    def send(self, kind: str, body: JSON = None) -> Message:
        """Send a one-way message (queued if the window is full or the link is down)."""
        msg = self.session.send(kind, body)
        self.write()
        return msg

    def request(
        self, kind: str, body: JSON = None, timeout: float | None = None
    ) -> Deferred[Message]:
        """Send a request; the Deferred fires with the reply :class:`Message` or fails with
        :class:`~wiremsg.errors.RemoteError`, :class:`~wiremsg.errors.Timeout` or
        :class:`~wiremsg.errors.LinkLost`. Cancelling it forgets the request."""
        msg = self.session.request(kind, body, timeout)

        def cancel(_: Deferred[Message]) -> None:
            self._waiting.pop(msg.id, None)
            self.session.cancel_request(msg.id)

        d: Deferred[Message] = Deferred(cancel)
        self._waiting[msg.id] = d
        if timeout is None:  # no new deadline, and nothing to drain: the fast path
            self.write(push=True)  # someone waits for the answer: do not wait for the turn
            return d
        self.flush()
        if self.link is not None:
            self.link.push()
        return d

    # -- output ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the session's frames, act on its events, and re-arm the timer.

        Loops until the session is quiet: an event handler may produce more frames (the
        master's ``accept()`` after ``Authenticated`` writes ``welcome``).
        """
        session = self.session
        if session.frames_out or session.events_out:
            self._pump()
        if self._drain_waiters and session.in_flight == 0:
            waiters, self._drain_waiters = self._drain_waiters, []
            for w in waiters:
                w.callback(None)
        self._arm()

    def write(self, push: bool = False) -> None:
        """Write what the session produced by a send or a reply: :meth:`flush` without its
        drain check, and without re-arming a timer that is already set.

        A send only moves deadlines later (the heartbeat), so the armed timer stays valid: at
        worst it fires early and tick() re-arms. A send acknowledges nothing, so no drain
        waiter can be due either. This is the send path's fast path. ``push``: a requester
        waits for what was written (a reply): ask the link to send it now (:meth:`Link.push`).
        """
        session = self.session
        if session.frames_out or session.events_out:
            self._pump()
        if push and self.link is not None:
            self.link.push()
        if self._timer is None:
            self._arm()

    def _pump(self) -> None:
        """Write the session's frames and act on its events until it is quiet."""
        session = self.session
        while True:
            if session.frames_out:  # looked at, not taken, when empty: the hot path
                frames = session.take_frames()
                link = self.link
                if link is not None:
                    try:
                        for frame in frames:
                            link.send(frame)
                    except LinkClosed:
                        pass  # the close notification is on its way; it detaches the session
            if not session.events_out:
                return
            for event in session.take_events():
                self._handle(event)

    def when_drained(self) -> Deferred[None]:
        """Fires once every message sent so far has been acknowledged by the peer."""
        d: Deferred[None] = Deferred(lambda d: self._drain_waiters.remove(d))
        if self.session.in_flight == 0:
            d.callback(None)
        else:
            self._drain_waiters.append(d)
        return d

    def _handle(self, event: Event) -> None:
        if type(event) is MessageReceived:  # the hot path: straight to the owner
            try:
                if self.on_message is not None:
                    self.on_message(self, event.message, event.request)
                else:
                    self.on_event(self, event)
            except Exception:
                log.failure("event handler failed on {event!r}", event=event)
        elif type(event) is ReplyReceived:
            d = self._waiting.pop(event.message.reply_to or "", None)
            if d is not None:
                d.callback(event.message)
        elif type(event) is RequestFailed:
            d = self._waiting.pop(event.request_id, None)
            if d is not None:
                d.errback(event.error)
        else:
            if type(event) is DropLink:
                self._drop_current(f"{event.code}: {event.reason}")
            elif type(event) is SendFailed:
                log.error(
                    "dropped message {id} ({kind}) to {peer}: {reason}",
                    id=event.message.id,
                    kind=event.message.kind,
                    peer=self.peer,
                    reason=event.reason,
                )
            try:
                self.on_event(self, event)
            except Exception:
                log.failure("event handler failed on {event!r}", event=event)

    def fail_waiting(self, error: WiremsgError) -> None:
        """Fail every request still waiting (the owner is shutting down)."""
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(error)

    def _arm(self) -> None:
        deadline = self.session.next_deadline()
        timer = self._timer
        if timer is not None:  # ours, and active: _tick and stop_timer clear it
            if deadline is not None and self._timer_at <= deadline:
                return  # fires early at worst; tick() then re-arms
            timer.cancel()
            self._timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self.reactor.seconds())
            self._timer = self.reactor.callLater(delay, self._tick)
            self._timer_at = deadline

    def _tick(self) -> None:
        self._timer = None
        self.session.tick()
        self.flush()

    def stop_timer(self) -> None:
        """Cancel the timer (the session is finished or was handed over)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def close_link(self, reason: str) -> Deferred[None]:
        """Close the current link, if any; fires once its close is notified."""
        link = self.link
        if link is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        done = link.when_closed().addCallback(lambda _: None)
        link.close(reason)
        return done
