"""Links over message-based transports: frames batched into messages, and an in-band close.

ZeroMQ and AMQP carry whole messages rather than a stream, and neither says when the other
end of a "connection" is gone. :class:`BatchLink` is the part of a link they share (and that a
third-party backend over a similar transport can reuse): it coalesces the frames written in
one reactor turn into ``D`` messages, bounds what waits, and closes with an explicit
handshake so that both sides know every frame before the close arrived. Every message's
first byte says what it is::

    D recs  data: records, each a u32 big-endian length || the frame (:func:`split_records`)
    B text  bye: an orderly close, UTF-8 reason (at most MAX_REASON bytes); nothing follows
    A       answers a bye: everything before it arrived; the bye's sender may now let go
    X text  abort: an unclean close (a receiver failed, the protocol was broken)

How a link starts (``H``/``W``/``R`` in both built-in backends) and how messages travel are
the backend's: a subclass implements :meth:`BatchLink._schedule_flush`,
:meth:`BatchLink._hand_out`, :meth:`BatchLink._send_control` and :meth:`BatchLink._finish`.
"""

from __future__ import annotations

import struct
from abc import abstractmethod
from collections import deque
from typing import Any

from twisted.logger import Logger

from wiremsg.backends.base import MIN_MAX_FRAME, BaseLink, CloseReason

__all__ = ["BATCH_BYTES", "MAX_REASON", "BatchLink", "split_records", "with_reason"]

_log = Logger()

BATCH_BYTES = 128 * 1024
"""Record bytes after which a ``D`` message is sealed; a larger frame travels alone."""

MAX_REASON = 1024
"""The most bytes of reason a ``B`` or ``X`` (or a backend's refusal) carries."""

_D, _B, _A, _X = b"DBAX"
_ACK = b"A"
_U32 = struct.Struct("!I").pack
_U32_FROM = struct.Struct("!I").unpack_from


def split_records(data: bytes, start: int, limit: int) -> tuple[list[bytes], str]:
    """Split ``data[start:]`` into records, each a u32 big-endian length and that many bytes.

    :param limit: the largest record allowed (the backend's ``max_frame``).
    :returns: ``(frames, problem)``: the whole, valid records before anything wrong, and ``""``
        or what is wrong with the rest (a length over ``limit``, or a truncated record).
    """
    end = len(data)
    if end - start >= 4 and _U32_FROM(data, start)[0] == end - start - 4 <= limit:
        return [data[start + 4 :]], ""  # one record: a request's or a reply's usual message
    frames: list[bytes] = []
    append = frames.append
    pos = start
    while pos < end:
        stop = pos + 4
        (size,) = _U32_FROM(data, pos) if stop <= end else (-1,)
        if size > limit or size < 0 or stop + size > end:
            return frames, f"a bad record (length {size}, limit {limit}, {end - pos} left)"
        pos = stop + size
        append(data[stop:pos])
    return frames, ""


def with_reason(kind: bytes, reason: str) -> bytes:
    """A control message of ``kind`` carrying ``reason``, truncated to MAX_REASON bytes."""
    return kind + reason.encode("utf-8", "replace")[:MAX_REASON]


class BatchLink(BaseLink):
    """A link whose frames travel in ``D`` messages (see the module docstring).

    Sending: :meth:`_transmit` appends the frame to the open batch and asks the backend, once
    per turn, to :meth:`_flush`; a batch is sealed at :data:`BATCH_BYTES`. Sealed messages wait
    in ``_backlog`` until :meth:`_hand_out` gives them to the transport. At most ``max_queue``
    bytes may wait: beyond that the link ends rather than grow. A failure found while sending
    is kept (``_doom``) and told at the next flush, never from inside :meth:`send`.

    Closing: :meth:`close` queues a ``B`` behind the data and waits up to ``close_timeout``
    seconds for the peer's ``A`` (or its own ``B``); then the backend's :meth:`_finish` lets go.

    :param max_queue: bytes that may wait to be handed to the transport.
    :param close_timeout: seconds a close waits for the peer's acknowledgement.
    """

    flush_full_batches = True
    """Hand a batch to the transport as soon as it is sealed, and honour :meth:`push`, not
    only at the end of the turn (only if :meth:`_hand_out` never ends the link
    synchronously)."""

    overflow_where = "a peer that does not read"
    """Completes "send queue overflow: N bytes wait for ..." in the close reason."""

    def __init__(
        self,
        reactor: Any,
        peer: str,
        max_frame: int = MIN_MAX_FRAME,
        *,
        max_queue: int,
        close_timeout: float,
    ) -> None:
        super().__init__(reactor, peer, max_frame)
        self._max_queue, self._close_timeout = max_queue, close_timeout
        self._batch: list[bytes] = [b"D"]  # the D message being built: kind, then records
        self._batch_bytes = 0
        self._backlog: deque[bytes] = deque()  # sealed messages the transport has not taken
        self._queued = 0  # bytes in _batch and _backlog
        self._dirty = self._released = False
        self._bye = False  # our B is queued
        self._doom: CloseReason | None = None  # a failure found while sending, told at flush
        self._close_text = "closed"
        self._close_call: Any = None

    # -- what a backend implements -------------------------------------------------------------

    @abstractmethod
    def _schedule_flush(self) -> None:
        """Arrange for :meth:`_flush` to run at the end of this reactor turn."""

    @abstractmethod
    def _hand_out(self) -> None:
        """Give the messages in ``_backlog`` (never empty here) to the transport, as many as
        it takes now (pop each one taken and subtract its length from ``_queued``)."""

    @abstractmethod
    def _send_control(self, message: bytes) -> None:
        """Send ``A`` or ``X`` at once, best effort (the link may be ending)."""

    @abstractmethod
    def _finish(self, reason: CloseReason, linger: bool = False) -> None:
        """Release the link (``_released``, :meth:`_drop`, :meth:`_cancel_close`), then see
        that the receiver is told ``reason`` (``linger``: a last control message is on its
        way)."""

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
            text = f"send queue overflow: {self._queued} bytes wait for {self.overflow_where}"
            self._fail(CloseReason(f"{text} (max_queue={self._max_queue})", True, False))
            return
        if self.flush_full_batches and self._batch_bytes >= BATCH_BYTES:
            self._seal()
            self._flush()
        if not self._dirty:
            self._dirty = True
            self._schedule_flush()

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
        self._mark_dirty()

    def _abort(self, reason: str) -> None:
        self._drop()
        self._send_control(with_reason(b"X", reason))
        self._finish(CloseReason(reason, local=True, clean=False), linger=True)

    # -- sending -------------------------------------------------------------------------------

    def push(self) -> None:
        """Hand the open batch to the transport now (see :meth:`Link.push`): a request or a
        reply need not wait for the turn to unwind. The flush at the end of the turn still
        runs (it re-reads the transport's state after this send): an open batch means a
        :meth:`_transmit` since the last flush, which scheduled it."""
        if self.flush_full_batches and self._batch_bytes and self._doom is None:
            self._seal()
            if not self._released:
                self._hand_out()

    def _mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            self._schedule_flush()

    def _seal(self) -> None:
        self._backlog.append(b"".join(self._batch))
        self._queued += 1
        self._batch, self._batch_bytes = [b"D"], 0

    def _flush(self) -> None:
        """Tell a failure found while sending, else hand what waits to the transport."""
        self._dirty = False
        if self._doom is not None:
            self._finish(self._doom)
            return
        if self._released:
            return
        if self._batch_bytes:
            self._seal()
        if self._backlog:  # often empty: a push() sent the turn's batch already
            self._hand_out()

    def _fail(self, reason: CloseReason) -> None:
        """End the link with ``reason`` at the next flush (never inside ``send``)."""
        self._drop()
        self._doom = reason
        self._mark_dirty()

    def _drop(self) -> None:
        """Forget everything that waits to be sent."""
        self._batch, self._batch_bytes, self._queued = [b"D"], 0, 0
        self._backlog.clear()

    # -- receiving -----------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        """One message from the peer, in order."""
        if self._released:
            return
        kind = data[0] if data else -1
        if kind == _D:
            if self._closing:
                return  # the closer stops receiving
            frames, bad = split_records(data, 1, self.max_frame)
            self._deliver_all(frames)  # what came before a bad record is good
            if bad and not (self._closing or self._released):
                self._violate(bad)
        elif kind == _B:
            self._send_control(_ACK)
            if self._bye:  # both closed at once: the peer's bye answers ours
                self._finish(CloseReason(self._close_text, local=True))
            else:
                text = data[1:].decode("utf-8", "replace")
                self._finish(CloseReason(f"closed by peer: {text}"), linger=True)
        elif kind == _A and self._bye:
            self._finish(CloseReason(self._close_text, local=True))
        elif kind == _X:
            text = data[1:].decode("utf-8", "replace")
            self._finish(CloseReason(f"peer failed: {text}", clean=False))
        else:
            self._unexpected(data)

    def _unexpected(self, data: bytes) -> None:
        """A message of a kind this link does not know: the peer broke the protocol."""
        self._violate(f"an unexpected message {data[:16]!r}")

    def _violate(self, what: str) -> None:
        _log.warn("cutting off {peer}: {what}", peer=self.peer, what=what)
        self._drop()
        self._send_control(with_reason(b"X", f"protocol violation: {what}"))
        self._finish(CloseReason(f"peer broke the protocol: {what}", clean=False), linger=True)

    # -- ending --------------------------------------------------------------------------------

    def _close_timed_out(self, timeout: float) -> None:
        self._close_call = None
        text = f"{self._close_text} (no acknowledgement within {timeout:g}s; aborted)"
        self._finish(CloseReason(text, local=True, clean=False))

    def _cancel_close(self) -> None:
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        self._close_call = None
