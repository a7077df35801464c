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

from typing import Any, Protocol

from twisted.python.failure import Failure

from wiremsg.backends._amqp._broker import PublishFailed
from wiremsg.backends.base import MIN_MAX_FRAME, CloseReason
from wiremsg.backends.batching import BATCH_BYTES, MAX_REASON, BatchLink, with_reason

__all__ = ["BATCH_BYTES", "MAX_REASON", "AMQPLink", "Carrier", "with_reason"]


VERSION = 1
"""The wire layout's version, carried by ``hello`` and ``welcome``."""
MAX_UNCONFIRMED = 8 * 1024 * 1024
"""Bytes a link may have published and not yet confirmed by the broker."""
MAX_QUEUE = 64 * 1024 * 1024
"""Default bound on a link's bytes waiting to be published; beyond it the link ends."""
CLOSE_TIMEOUT = 30.0
"""Seconds ``close()`` may wait for the peer's ``A`` before the link is aborted."""

HELLO = b"H" + bytes([VERSION])
WELCOME = b"W" + bytes([VERSION])


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


class AMQPLink(BatchLink):
    """One link through the broker (see the module docstring).

    :ivar link_id: the id both ends put in ``correlation_id``.
    :ivar peer_queue: the other end's own queue (where this end publishes).
    """

    flush_full_batches = False  # a publish may fail at once: never inside send() or push()
    overflow_where = "the broker"

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
        super().__init__(
            carrier.reactor, peer, max_frame, max_queue=max_queue, close_timeout=close_timeout
        )
        self.link_id = link_id
        self.peer_queue = peer_queue
        self._carrier = carrier
        self._unconfirmed = 0
        self.messages_sent = self.messages_received = 0
        self.properties: Any = None
        """The AMQP message properties this end publishes with (set by the carrier)."""

    # -- BatchLink hooks -----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        self._carrier.mark(self)

    def _hand_out(self) -> None:
        """Publish what waits, as far as the unconfirmed-bytes bound allows."""
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

    def _send_control(self, message: bytes) -> None:
        """Publish ``A`` or ``X``, whose fate does not matter."""
        self._carrier.publish(self, message).addErrback(lambda _: None)

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

    # -- receiving and ending ------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        """One message from the peer, in order."""
        if not self._released:
            self.messages_received += 1
        super()._receive(data)

    def _lost(self, text: str) -> None:
        """The peer or the broker connection is gone."""
        if self._closing:
            self._finish(CloseReason(self._close_text, local=True, clean=False))
        else:
            self._finish(CloseReason(text, clean=False))

    def _finish(self, reason: CloseReason, linger: bool = False) -> None:
        """Release everything; the carrier then tells the receiver (exactly once)."""
        if self._released:
            return
        self._released = True
        self._drop()
        self._cancel_close()
        self._carrier.release(self, reason)
