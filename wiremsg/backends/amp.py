"""The AMP backend: ``amp://host:port`` (TCP) and ``amp+unix:///path`` (UNIX socket) links.

One connection is one link. Frames travel in one AMP command, :class:`Frames`, sent with
``requiresAnswer=False`` (the session does its own acknowledgements), so the connection is
plain AMP on the wire and a stock ``twisted.protocols.amp.AMP`` peer can send frames with
``callRemote(Frames, data=...)``.

Wire layout (every box, both directions)::

    _command  b"Frames"
    data      the first <= 65,535 bytes of this box's share of the record stream  (optional)
    data.2    the next  <= 65,535 bytes, and so on up to data.16                  (optional)
    bye       the sender's close reason, UTF-8, <= 1,024 bytes: its last box     (optional)

The ``data`` values of all the boxes one side sends, concatenated in order, form one stream of
records, each ``u32 big-endian length || frame``. A box holds up to :data:`BOX_DATA` stream
bytes, so many small frames share a box (frames sent in one reactor turn are coalesced) and a
frame larger than a box spans several. A box with ``bye`` ends the stream on a record boundary;
the connection then closes and the peer reports a clean close. A connection that ends without
``bye`` is reported unclean (a crash, a reset, an abort).

Limits, enforced on receipt: AMP's own parser bounds keys at 255 and values at 65,535 bytes; a
box with more than :data:`MAX_BOX_KEYS` keys, any key other than those above, any other AMP
command, answer or error, or a record longer than ``max_frame`` (checked on its length prefix,
before any of it is buffered) ends the connection at once (an unknown command that asked for
an answer first gets AMP's ``UNKNOWN`` error). So a link holds at most one box plus one partial
frame of at most ``max_frame`` bytes.

Sending writes at most one box per check of the transport's buffer: the link is the transport's
push producer, and frames queue in the link (not in the transport) while the transport is
paused. ``close()`` flushes the queue, sends ``bye`` and closes; a flush stuck longer than
``close_timeout`` seconds aborts the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectingCancelledError, ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from wiremsg.address import Address, parse_address
from wiremsg.backends.base import MIN_MAX_FRAME, Backend, BaseLink, CloseReason, Link, Listener
from wiremsg.errors import AddressError, ConnectFailed

__all__ = ["AMPBackend", "AMPLink", "AMPListener", "BigBytes", "FrameProtocol", "Frames"]

_log = Logger()

MAX_VALUE = 0xFFFF
"""The longest AMP value (``amp.MAX_VALUE_LENGTH``); longer raises ``TooLong`` in AMP."""
VALUES_PER_BOX = 16
"""The most ``data`` values (``data``, ``data.2`` ... ``data.16``) in one box."""
BOX_DATA = VALUES_PER_BOX * MAX_VALUE
"""The most record-stream bytes one box carries (1,048,560)."""
MAX_BOX_KEYS = VALUES_PER_BOX + 2
"""The most keys a received box may have (the data values, ``_command`` and ``bye``)."""
MAX_BYE = 1024
"""The most bytes of close reason sent in ``bye``."""
FLUSH_AT = 256 * 1024
"""Queued bytes at which ``send`` writes a box at once instead of at the end of the turn."""
LISTEN_BACKLOG = 1024
"""The listen backlog (Twisted's default of 50 overflows on connection bursts)."""
CLOSE_TIMEOUT = 30.0
"""Seconds ``close()`` may spend flushing before the connection is aborted."""

_COMMAND = b"Frames"
_U16 = struct.Struct("!H").pack
_U32 = struct.Struct("!I").pack
_U32_FROM = struct.Struct("!I").unpack_from
_DATA_KEYS = [b"data"] + [b"data.%d" % i for i in range(2, VALUES_PER_BOX + 1)]
_KEY_HEADS = [_U16(len(k)) + k for k in _DATA_KEYS]
_BOX_HEAD = _U16(8) + amp.COMMAND + _U16(len(_COMMAND)) + _COMMAND
_BYE_HEAD = _U16(3) + b"bye"
_BOX_END = _U16(0)


class BigBytes(amp.Argument):
    """An AMP argument of any length, spread over keys ``name``, ``name.2``, ``name.3`` ...

    Each value holds at most :data:`MAX_VALUE` bytes (the "BigString" recipe). Optional: a
    missing key gives None.
    """

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        """Put ``objects[name]`` into ``strings`` as one or more values."""
        value = objects.get(name.decode("ascii"))
        if value is None:
            return
        for i, start in enumerate(range(0, max(len(value), 1), MAX_VALUE)):
            key = name if i == 0 else b"%s.%d" % (name, i + 1)
            strings[key] = value[start : start + MAX_VALUE]

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        """Join the values of ``name``, ``name.2`` ... into ``objects[name]``."""
        parts, key = [], name
        while key in strings:
            parts.append(strings[key])
            key = b"%s.%d" % (name, len(parts) + 1)
        objects[name.decode("ascii")] = b"".join(parts) if parts else None


class Frames(amp.Command):
    """The one command of the protocol: a share of the record stream, and maybe goodbye.

    A stock AMP peer sends frames ``fs`` with ``callRemote(Frames, data=b"".join(len(f).to_bytes(
    4, "big") + f for f in fs))``, at most :data:`BOX_DATA` bytes of ``data`` per call.
    """

    commandName = _COMMAND
    arguments = [
        (b"data", BigBytes(optional=True)),  # type: ignore[no-untyped-call]
        (b"bye", amp.Unicode(optional=True)),  # type: ignore[no-untyped-call]
    ]
    requiresAnswer = False


def _box(stream: bytes, start: int, end: int, bye: bytes | None = None) -> bytes:
    """Serialize one Frames box carrying ``stream[start:end]`` (at most BOX_DATA bytes)."""
    view = memoryview(stream)
    parts: list[bytes | memoryview] = [_BOX_HEAD]
    i = 0
    while start < end:
        stop = min(start + MAX_VALUE, end)
        parts += (_KEY_HEADS[i], _U16(stop - start), view[start:stop])
        start, i = stop, i + 1
    if bye is not None:
        parts += (_BYE_HEAD, _U16(len(bye)), bye)
    parts.append(_BOX_END)
    return b"".join(parts)


@implementer(IPushProducer)
class AMPLink(BaseLink):
    """One AMP connection as a link; also the push producer of its transport.

    :ivar protocol: the :class:`FrameProtocol` carrying this link.
    :ivar boxes_sent: how many boxes this side wrote (coalescing makes it far fewer than frames).
    """

    def __init__(self, protocol: FrameProtocol, peer: str, backend: AMPBackend) -> None:
        super().__init__(backend.reactor, peer, backend.max_frame)
        self.local_address = protocol.factory.address
        self.protocol = protocol
        self.boxes_sent = 0
        self._transport: Any = protocol.transport
        self._close_timeout = backend.close_timeout
        self._queue: list[bytes | memoryview] = []  # length prefixes and frames, not yet joined
        self._queued = 0  # bytes in _queue
        self._out, self._out_pos = b"", 0  # the joined stream being cut into boxes
        self._flush_call: Any = None
        self._paused = False
        self._sending = True  # False once the transport is closing, aborted or gone
        self._bye: bytes | None = None  # set by close(): sent once the queue is flushed
        self._close_text = "closed"
        self._close_timer: Any = None
        self._timed_out = False

    # -- BaseLink hooks ----------------------------------------------------------------------

    def _transmit(self, frame: bytes) -> None:
        if not self._sending:
            return  # the connection is ending; its close notification is on the way
        queue = self._queue
        queue.append(_U32(len(frame)))
        queue.append(frame)
        self._queued += len(frame) + 4
        if self._paused:
            return  # resumeProducing flushes
        if self._queued >= FLUSH_AT:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _shutdown(self, reason: str) -> None:
        self._close_text = reason
        if not self._sending:
            return
        self._bye = reason.encode("utf-8", "replace")[:MAX_BYE] or b"closed"
        self._close_timer = self.reactor.callLater(self._close_timeout, self._close_timed_out)
        self._flush()

    def _abort(self, reason: str) -> None:
        self._halt()
        self._transport.abortConnection()

    # -- IPushProducer (the transport's write buffer) ------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: queue frames here until it drains."""
        self._paused = True

    def resumeProducing(self) -> None:
        """The transport's buffer drained: write more."""
        self._paused = False
        if self._sending:
            self._flush()

    def stopProducing(self) -> None:
        """The connection is gone: write nothing more."""
        self._paused = True
        self._sending = False

    # -- internals -------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write boxes until the queue is empty or the transport's buffer is full."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        write = self._transport.write
        while self._sending and not self._paused:
            out, pos = self._out, self._out_pos
            left = len(out) - pos
            if left < BOX_DATA and self._queue:
                queue = self._queue
                if left:
                    queue.insert(0, memoryview(out)[pos:])
                out = self._out = b"".join(queue)
                self._queue, self._queued, pos, left = [], 0, 0, len(out)
            elif not left:
                break
            end = self._out_pos = pos + min(left, BOX_DATA)
            self.boxes_sent += 1
            write(_box(out, pos, end))  # may pause us at once
        if self._out_pos >= len(self._out):
            self._out, self._out_pos = b"", 0
            if self._bye is not None and self._sending and not self._paused and not self._queue:
                self._send_bye(self._bye)

    def _send_bye(self, bye: bytes) -> None:
        self.boxes_sent += 1
        self._transport.write(_box(b"", 0, 0, bye))
        self._halt()
        self._transport.loseConnection()

    def _halt(self) -> None:
        """Stop sending: drop the queue and stop producing (so ``loseConnection`` can finish)."""
        if self._sending:
            self._sending = False
            self._transport.unregisterProducer()
        self._bye = None
        self._queue, self._queued, self._out, self._out_pos = [], 0, b"", 0
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    def _close_timed_out(self) -> None:
        self._timed_out = True
        self._abort("flush timed out")

    def _lost(self, failure: Failure) -> None:
        """The connection is gone: say why, exactly once (BaseLink ignores repeats)."""
        self._halt()
        self._paused = True
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        fault, bye = self.protocol.fault, self.protocol.bye
        done = isinstance(failure.value, ConnectionDone)
        if fault is not None:
            reason = CloseReason(f"peer broke the protocol: {fault}", clean=False)
        elif bye is not None:
            reason = CloseReason(f"closed by peer: {bye}")
        elif self._timed_out:
            text = f"{self._close_text} (flush took over {self._close_timeout:g}s; aborted)"
            reason = CloseReason(text, local=True, clean=False)
        elif self._closing:
            text = self._close_text + ("" if done else f" ({failure.getErrorMessage()})")
            reason = CloseReason(text, local=True, clean=done)
        else:
            text = "closed by peer without goodbye" if done else failure.getErrorMessage()
            reason = CloseReason(f"connection lost: {text}", clean=False)
        self._notify_closed(reason)


class FrameProtocol(amp.BinaryBoxProtocol):
    """AMP's box parser with :class:`Frames` as the only command; parses the record stream.

    :ivar link: the :class:`AMPLink` (made on ``connectionMade``).
    :ivar boxes_received: how many boxes arrived.
    :ivar fault: why the peer was cut off for breaking the protocol, or None.
    :ivar bye: the peer's close reason once its ``bye`` arrived, or None.
    """

    link: AMPLink

    def __init__(self, factory: _LinkFactory) -> None:
        super().__init__(self)  # type: ignore[no-untyped-call]
        self.factory = factory
        self.boxes_received = 0
        self.fault: str | None = None
        self.bye: str | None = None
        self._keys = 0  # keys in the box being parsed
        self._want = 0  # bytes still missing from the frame in progress
        self._parts: list[bytes] = []  # what arrived of the frame in progress
        self._head = b""  # a length prefix split between boxes

    def connectionMade(self) -> None:
        """Make the link, set TCP options, register the producer, hand the link out."""
        transport: Any = self.transport
        factory = self.factory
        peer = transport.getPeer()
        if isinstance(peer, IPv4Address | IPv6Address):  # (a UNIX transport is ITCPTransport too)
            transport.setTcpKeepAlive(True)
            transport.setTcpNoDelay(True)  # boxes are coalesced already; Nagle only adds delay
            host = f"[{peer.host}]" if ":" in peer.host else peer.host
            description = f"{host}:{peer.port}"
        else:
            description = factory.address.path
            if factory.on_link is not None:
                description += f" client #{factory.accepted + 1}"
        self.link = AMPLink(self, description, factory.backend)
        transport.registerProducer(self.link, True)
        if factory.on_link is not None:
            factory.accepted += 1
            try:
                factory.on_link(self.link)
            except Exception:
                _log.failure("on_link of the listener at {address} failed", address=factory.address)
                self.link._abort("the listener failed to accept the link")

    # -- IBoxReceiver (this protocol receives its own boxes) -----------------------------------

    def startReceivingBoxes(self, box_sender: Any) -> None:
        """Part of IBoxReceiver: nothing to do."""

    def stopReceivingBoxes(self, reason: Any) -> None:
        """The connection is gone (called from ``connectionLost``)."""
        self._parts = []
        if isinstance(reason, BaseException):
            reason = Failure(reason)  # type: ignore[no-untyped-call]
        self.link._lost(reason)

    def ampBoxReceived(self, box: dict[bytes, bytes]) -> None:
        """Check one box and feed its data to the record stream."""
        self._keys = 0
        self.boxes_received += 1
        if self.fault is not None or self.bye is not None or self.link._closing:
            return  # cut off, said goodbye, or we are closing (and so stop reading)
        if box.get(amp.COMMAND) != _COMMAND:
            self._refuse(box)
            return
        bye = box.get(b"bye")
        count = len(box) - (1 if bye is None else 2)
        keys = _DATA_KEYS[:count]
        if len(keys) != count or not all(k in box for k in keys):
            shown = b", ".join(sorted(k[:40] for k in box)).decode("ascii", "replace")
            self._violate(f"unexpected keys in a Frames box: {shown}")
            return
        if count:
            self._feed(box[b"data"] if count == 1 else b"".join([box[k] for k in keys]))
        if bye is not None and self.fault is None and not self.link._closing:
            if self._want or self._head:
                self._violate("goodbye in the middle of a frame")
                return
            self.bye = bye.decode("utf-8", "replace")
            self.link._halt()
            transport: Any = self.transport
            transport.loseConnection()

    # -- the AMP parser's hooks --------------------------------------------------------------

    def proto_value(self, string: bytes) -> str:
        """Count keys, so that a box (which AMP buffers whole) stays bounded."""
        self._keys += 1
        if self._keys > MAX_BOX_KEYS:
            self._violate(f"a box with more than {MAX_BOX_KEYS} keys")
        result: str = super().proto_value(string)  # type: ignore[no-untyped-call]
        return result

    def lengthLimitExceeded(self, length: int) -> None:
        """A key longer than AMP allows: not AMP, or not our AMP."""
        self._violate(f"an AMP key of {length} bytes (at most 255); not speaking AMP?")

    # -- internals -------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse records from the next piece of the stream and deliver whole frames, all the
        frames of one piece together (:meth:`BaseLink._deliver_all`)."""
        link = self.link
        if self._head:
            data, self._head = self._head + data, b""
        pos, end, want = 0, len(data), self._want
        frames: list[bytes] = []
        if want:
            if end < want:
                self._parts.append(data)
                self._want = want - end
                return
            self._parts.append(data[:want])
            frames.append(b"".join(self._parts))
            self._parts, self._want, pos = [], 0, want
        limit = link.max_frame
        while pos + 4 <= end:
            (length,) = _U32_FROM(data, pos)
            if length > limit:
                link._deliver_all(frames)  # what came before the bad record is good
                if not link._closing:
                    self._violate(f"a frame of {length} bytes (the limit is {limit})")
                return
            pos += 4
            stop = pos + length
            if stop > end:
                self._parts = [data[pos:]]
                self._want = stop - end
                break
            frames.append(data[pos:stop])
            pos = stop
        else:
            if pos < end:
                self._head = data[pos:]
        link._deliver_all(frames)

    def _refuse(self, box: dict[bytes, bytes]) -> None:
        command, ask = box.get(amp.COMMAND), box.get(amp.ASK)
        if command is not None and ask is not None:
            why = b"only Frames (requiresAnswer=False) is served"
            answer = {amp.ERROR: ask, amp.ERROR_CODE: amp.UNKNOWN_ERROR_CODE}
            answer[amp.ERROR_DESCRIPTION] = why
            last_words = b"".join(_U16(len(x)) + x for kv in answer.items() for x in kv)
            self._violate(f"unknown AMP command {command[:40]!r}", last_words + _BOX_END)
        elif amp.ERROR in box:
            code, text = box.get(amp.ERROR_CODE, b"?"), box.get(amp.ERROR_DESCRIPTION, b"")
            self._violate(f"AMP error {code[:40]!r}: {text[:200]!r}")
        elif command is not None:
            self._violate(f"unknown AMP command {command[:40]!r}")
        else:
            self._violate("an AMP box that is not a command (we never ask)")

    def _violate(self, text: str, last_words: bytes | None = None) -> None:
        """Cut the peer off: it broke the protocol. The close is told from connectionLost."""
        if self.fault is not None:
            return
        self.fault = text
        self._parts, self._want, self._head = [], 0, b""
        _log.warn("cutting off {peer}: {text}", peer=self.link.peer, text=text)
        self.link._halt()
        transport: Any = self.transport
        if last_words is None:
            transport.abortConnection()
        else:
            transport.write(last_words)
            transport.loseConnection()


class _LinkFactory(Factory):
    noisy = False

    def __init__(
        self, backend: AMPBackend, address: Address, on_link: Callable[[Link], None] | None
    ) -> None:
        self.backend = backend
        self.address = address
        self.on_link = on_link
        self.accepted = 0

    def buildProtocol(self, addr: Any) -> FrameProtocol:
        return FrameProtocol(self)


class AMPListener(Listener):
    """A bound port accepting AMP links until closed."""

    def __init__(self, port: Any, address: Address) -> None:
        self.address = address
        self._port = port
        self._stopped: Deferred[None] | None = None

    def close(self) -> Deferred[None]:
        """Stop listening (a UNIX socket file is removed); links already made stay open."""
        if self._stopped is None:
            self._stopped = maybeDeferred(self._port.stopListening)
            self._stopped.addErrback(
                lambda f: _log.failure("closing {a} failed", f, a=self.address)
            )
        done: Deferred[None] = Deferred()
        self._stopped.addBoth(lambda _: done.callback(None))
        return done


class AMPBackend(Backend):
    """Links over Twisted AMP: ``amp://host:port`` and ``amp+unix:///path``.

    :param reactor: the reactor to run on.
    :param max_frame: the largest frame sent or accepted (at most 4 GiB - 1).
    :param close_timeout: seconds ``close()`` may spend flushing before aborting.
    :param backlog: the listen backlog.
    """

    schemes = ("amp", "amp+unix")

    def __init__(
        self,
        reactor: Any,
        *,
        max_frame: int = MIN_MAX_FRAME,
        close_timeout: float = CLOSE_TIMEOUT,
        backlog: int = LISTEN_BACKLOG,
    ) -> None:
        super().__init__(reactor)
        if not 0 <= max_frame <= 0xFFFFFFFF:
            raise ValueError(f"max_frame must fit in 32 bits, not {max_frame}")
        self.max_frame = max_frame
        self.close_timeout = close_timeout
        self.backlog = backlog

    def listen(self, address: Address | str, on_link: Callable[[Link], None]) -> Deferred[Listener]:
        """Listen at ``address``; fires with an :class:`AMPListener` (port 0 resolved).

        :raises: (as a failed Deferred) :class:`ConnectFailed` if it cannot be bound,
            :class:`AddressError` for a non-AMP address or one with query parameters.
        """
        try:
            addr = self._check(address)
        except AddressError:
            return fail()
        endpoint: Any
        if addr.scheme == "amp+unix":
            unix = endpoints.UNIXServerEndpoint
            endpoint = unix(self.reactor, addr.path, self.backlog)  # type: ignore[no-untyped-call]
        else:
            v6 = ":" in addr.host
            tcp = endpoints.TCP6ServerEndpoint if v6 else endpoints.TCP4ServerEndpoint
            endpoint = tcp(self.reactor, addr.port or 0, self.backlog, addr.host)
        factory = _LinkFactory(self, addr, on_link)

        def bound(port: Any) -> Listener:
            if addr.scheme != "amp+unix":
                factory.address = addr.with_port(port.getHost().port)
            return AMPListener(port, factory.address)

        def failed(failure: Failure) -> Failure:
            if isinstance(failure.value, CancelledError):
                return failure
            raise ConnectFailed(f"cannot listen on {addr}: {failure.getErrorMessage()}")

        d: Deferred[Listener] = endpoint.listen(factory).addCallbacks(bound, failed)
        return d

    def connect(self, address: Address | str, timeout: float = 10.0) -> Deferred[Link]:
        """Connect to ``address``; fires with the :class:`AMPLink` once connected.

        :raises: (as a failed Deferred) :class:`ConnectFailed` when refused, unreachable or
            timed out; ``CancelledError`` when cancelled; :class:`AddressError` for a bad
            address.
        """
        try:
            addr = self._check(address)
        except AddressError:
            return fail()
        endpoint: Any
        if addr.scheme == "amp+unix":
            unix = endpoints.UNIXClientEndpoint
            endpoint = unix(self.reactor, addr.path, timeout=timeout)  # type: ignore[no-untyped-call]
        else:
            v6 = ":" in addr.host
            tcp = endpoints.TCP6ClientEndpoint if v6 else endpoints.TCP4ClientEndpoint
            endpoint = tcp(self.reactor, addr.host, addr.port or 0, timeout=timeout)

        def failed(failure: Failure) -> Failure:
            if isinstance(failure.value, ConnectingCancelledError | CancelledError):
                raise CancelledError(f"connect to {addr} cancelled")
            raise ConnectFailed(f"cannot connect to {addr}: {failure.getErrorMessage()}")

        d: Deferred[Link] = endpoint.connect(_LinkFactory(self, addr, None))
        return d.addCallbacks(lambda protocol: protocol.link, failed)

    def _check(self, address: Address | str) -> Address:
        addr = parse_address(address)
        if addr.scheme not in self.schemes:
            why = "the amp backend serves amp://HOST:PORT and amp+unix:///PATH"
            raise AddressError("scheme", str(addr), why)
        if addr.params:
            raise AddressError("query", str(addr), "amp addresses take no parameters")
        return addr
