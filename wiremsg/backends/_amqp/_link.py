"""One AMQP link: frames coalesced into AMQP messages, confirmed, closed with a handshake.

A link's two ends each publish to the other's own queue (the routing key), with the link's
id as ``correlation_id`` and their own queue as ``reply_to``. The first byte of a message's
body says what it is (the wire layout is in the package docstring). A link runs on a
:class:`Carrier`: the channel it publishes on and the end (master listener or worker
connection) that routes incoming messages to it by link id.

Sending. Frames written in one reactor turn are coalesced into ``D`` messages of up to about
:data:`BATCH_BYTES`; a larger frame travels in a ``D`` of its own. Every message is published
``mandatory`` on a channel in confirm mode: a returned message (the peer's queue is gone: the
peer closed or lost its broker connection) or a ``nack`` ends the link with that reason. At
most :data:`MAX_UNCONFIRMED` bytes are unconfirmed at a time (one message always may be); the
rest waits in the link, up to ``max_queue`` bytes, beyond which the link ends rather than grow.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from wiremsg.backends._amqp._broker import PublishFailed
from wiremsg.backends.base import MIN_MAX_FRAME, BaseLink, CloseReason, split_records

__all__ = ["AMQPLink", "Carrier"]

_log = Logger()

VERSION = 1
"""The wire layout's version, carried by ``hello`` and ``welcome``."""
BATCH_BYTES = 128 * 1024
"""Record bytes after which a ``D`` message is sealed."""
MAX_UNCONFIRMED = 8 * 1024 * 1024
"""Bytes a link may have published and not yet confirmed by the broker."""
MAX_QUEUE = 64 * 1024 * 1024
"""Default bound on a link's bytes waiting to be published; beyond it the link ends."""
MAX_REASON = 1024
"""The most bytes of close reason carried by ``B``, ``R`` or ``X``."""
CLOSE_TIMEOUT = 30.0
"""Seconds ``close()`` may wait for the peer's ``A`` before the link is aborted."""

HELLO = b"H" + bytes([VERSION])
WELCOME = b"W" + bytes([VERSION])
ACK = b"A"
_D, _B, _A, _X = b"DBAX"
_U32 = struct.Struct("!I").pack


def with_reason(kind: bytes, reason: str) -> bytes:
    """A ``B``, ``R`` or ``X`` message carrying ``reason`` (truncated to MAX_REASON bytes)."""
    return kind + reason.encode("utf-8", "replace")[:MAX_REASON]


class Carrier(Protocol):
    """What a link runs on: the end that owns the channel and routes messages to links."""

    reactor: Any

    def publish(self, link: AMQPLink, body: bytes) -> Any:
        """Publish ``body`` to ``link``'s peer; a Deferred of the broker's confirmation that
        fails with :class:`PublishFailed`."""

    def mark(self, link: AMQPLink) -> None:
        """Call ``link._flush()`` at the end of this reactor turn."""

    def release(self, link: AMQPLink, reason: CloseReason) -> None:
        """``link`` ended: forget it, then call ``link._notify_closed(reason)`` (at once, or
        once what it holds open is closed)."""


class AMQPLink(BaseLink):
    """One link through the broker (see the module docstring).

    :ivar link_id: the id both ends put in ``correlation_id``.
    :ivar peer_queue: the other end's own queue (where this end publishes).
    """

    def __init__(
        self,
        carrier: Carrier,
        link_id: str,
        peer_queue: str,
        peer: str,
        *,
        max_frame: int = MIN_MAX_FRAME,
        max_queue: int = MAX_QUEUE,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        super().__init__(carrier.reactor, peer, max_frame)
        self.link_id = link_id
        self.peer_queue = peer_queue
        self._carrier = carrier
        self._max_queue, self._close_timeout = max_queue, close_timeout
        self._batch: list[bytes] = [b"D"]
        self._batch_bytes = 0
        self._backlog: deque[bytes] = deque()  # sealed messages not yet published
        self._queued = 0  # bytes in _batch and _backlog
        self._unconfirmed = 0
        self._dirty = self._released = self._bye = False
        self._doom: CloseReason | None = None  # a failure found inside send(), told at flush
        self._close_text = "closed"
        self._close_call: Any = None
        self.messages_sent = self.messages_received = 0
        self.properties: Any = None
        """The AMQP message properties this end publishes with (set by the carrier)."""

    # -- BaseLink hooks ------------------------------------------------------------------------

    def _transmit(self, frame: bytes) -> None:
        if self._released or self._doom is not None:
            return  # the close notification is on its way
        size = len(frame) + 4
        if self._batch_bytes and self._batch_bytes + size > BATCH_BYTES:
            self._seal()
        self._batch += (_U32(size - 4), frame)
        self._batch_bytes += size
        self._queued += size
        if self._queued > self._max_queue:
            text = f"send queue overflow: {self._queued} bytes wait for the broker"
            self._fail(CloseReason(f"{text} (max_queue={self._max_queue})", True, False))
            return
        if not self._dirty:
            self._dirty = True
            self._carrier.mark(self)

    def _shutdown(self, reason: str) -> None:
        self._close_text = reason
        if self._released or self._doom is not None:
            return
        if self._batch_bytes:
            self._seal()
        bye = with_reason(b"B", reason)
        self._backlog.append(bye)
        self._queued += len(bye)
        self._bye = True
        timeout = self._close_timeout
        self._close_call = self.reactor.callLater(timeout, self._close_timed_out, timeout)
        if not self._dirty:
            self._dirty = True
            self._carrier.mark(self)

    def _abort(self, reason: str) -> None:
        self._drop()
        self._send_quietly(with_reason(b"X", reason))
        self._finish(CloseReason(reason, local=True, clean=False))

    # -- sending -------------------------------------------------------------------------------

    def _seal(self) -> None:
        self._backlog.append(b"".join(self._batch))
        self._queued += 1
        self._batch, self._batch_bytes = [b"D"], 0

    def _flush(self) -> None:
        """Publish what waits, as far as the unconfirmed-bytes bound allows."""
        self._dirty = False
        if self._doom is not None:
            self._finish(self._doom)
            return
        if self._released:
            return
        if self._batch_bytes:
            self._seal()
        backlog = self._backlog
        while backlog:
            body = backlog[0]
            size = len(body)
            if self._unconfirmed and self._unconfirmed + size > MAX_UNCONFIRMED:
                return  # resumed by the next confirmation
            backlog.popleft()
            self._queued -= size
            self._unconfirmed += size
            self.messages_sent += 1
            d = self._carrier.publish(self, body)
            d.addCallbacks(self._confirmed, self._refused, callbackArgs=(size,))

    def _confirmed(self, _: object, size: int) -> None:
        self._unconfirmed -= size
        if self._backlog and not self._dirty and not self._released:
            self._flush()

    def _refused(self, failure: Failure) -> None:
        exc = failure.value
        if self._released or not isinstance(exc, PublishFailed):
            return
        if exc.returned:
            text = f"the peer's queue {self.peer_queue} is gone (it closed or lost the broker)"
        elif str(exc).startswith("the broker refused"):
            text = str(exc)
        else:
            return  # the channel or connection closed: the carrier reports that
        self._lost(text)

    def _send_quietly(self, body: bytes) -> None:
        """Publish a control message whose fate does not matter (``A``, ``X``)."""
        self._carrier.publish(self, body).addErrback(lambda _: None)

    def _fail(self, reason: CloseReason) -> None:
        """End the link with ``reason`` at the next flush (never inside ``send``)."""
        self._drop()
        self._doom = reason
        if not self._dirty:
            self._dirty = True
            self._carrier.mark(self)

    def _drop(self) -> None:
        self._batch, self._batch_bytes, self._queued = [b"D"], 0, 0
        self._backlog.clear()

    # -- receiving -----------------------------------------------------------------------------

    def _receive(self, body: bytes) -> None:
        """One message from the peer, in order."""
        if self._released:
            return
        self.messages_received += 1
        kind = body[0] if body else -1
        if kind == _D:
            frames, bad = split_records(body, 1, self.max_frame)
            self._deliver_all(frames)  # the receiver takes them as one batch
            if bad and not self._released:
                self._violate(bad)
        elif kind == _B:
            self._send_quietly(ACK)
            if self._bye:  # both closed at once: the peer's bye answers ours
                self._finish(CloseReason(self._close_text, local=True))
            else:
                text = body[1:].decode("utf-8", "replace")
                self._finish(CloseReason(f"closed by peer: {text}"))
        elif kind == _A and self._bye:
            self._finish(CloseReason(self._close_text, local=True))
        elif kind == _X:
            text = body[1:].decode("utf-8", "replace")
            self._finish(CloseReason(f"peer failed: {text}", clean=False))
        else:
            self._violate(f"an unexpected message {body[:16]!r}")

    def _violate(self, what: str) -> None:
        _log.warn("cutting off {peer}: {what}", peer=self.peer, what=what)
        self._drop()
        self._send_quietly(with_reason(b"X", f"protocol violation: {what}"))
        self._finish(CloseReason(f"peer broke the protocol: {what}", clean=False))

    # -- ending --------------------------------------------------------------------------------

    def _lost(self, text: str) -> None:
        """The peer or the broker connection is gone."""
        if self._closing:
            self._finish(CloseReason(self._close_text, local=True, clean=False))
        else:
            self._finish(CloseReason(text, clean=False))

    def _close_timed_out(self, timeout: float) -> None:
        self._close_call = None
        text = f"{self._close_text} (no acknowledgement within {timeout:g}s; aborted)"
        self._finish(CloseReason(text, local=True, clean=False))

    def _finish(self, reason: CloseReason) -> None:
        """Release everything; the carrier then tells the receiver (exactly once)."""
        if self._released:
            return
        self._released = True
        self._drop()
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        self._close_call = None
        self._carrier.release(self, reason)
