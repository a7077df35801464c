"""The ZeroMQ backend: ``zmq://host:port`` (TCP) and ``zmq+ipc:///path`` links, on pyzmq.

Topology. A listener binds one ROUTER socket; every :meth:`ZMQBackend.connect` makes its own
DEALER socket, with a fresh random routing id, so a link is one DEALER identity at the ROUTER
(and one TCP or IPC connection). ZeroMQ has no accept event per identity, so the DEALER's
first message is ``hello``; the ROUTER then makes the link, answers ``welcome`` and calls
``on_link``; ``connect()`` fires on ``welcome``.

Wire layout. Every ZeroMQ message is one part (besides the ROUTER's routing-id part), and its
first byte says what it is::

    H v     hello    DEALER -> ROUTER, first message; v = VERSION (one byte)
    W v     welcome  ROUTER -> DEALER: the link exists
    R text  refused  ROUTER -> DEALER: no link (listener closed, other version)
    D recs  data     frames, each record a u32 big-endian length || the frame
    B text  bye      orderly close, UTF-8 reason (<= MAX_REASON bytes); nothing follows it
    A       ack      answers a bye: all before it arrived; the bye's sender may now close
    X text  abort    unclean close (receiver failed, protocol broken, link unknown)
    P       probe    ROUTER -> DEALER, ignored: tests whether the identity is still routable

Frames sent in one reactor turn are coalesced into ``D`` messages of about BATCH_BYTES; a
larger frame travels in a ``D`` of its own. A received message larger than ZeroMQ's
``MAXMSGSIZE`` (one ``D`` holding ``max_frame``) drops the connection; a record longer than
``max_frame``, an unknown kind or a multipart message ends the link (``X`` to the peer).
ZeroMQ cannot cut one connection of a ROUTER, so a listener then ignores that identity (the
last MAX_GONE are remembered; others get ``X`` again); a compliant DEALER closes on ``X``.

Reactor integration (PITFALLS (b)). Each socket's ``zmq.FD`` is an IReadDescriptor; reads loop
while ``EVENTS & POLLIN``, every socket is drained once right after ``addReader``, and every
send is followed by a re-check of ``EVENTS`` (sends only mark the socket; the pump runs at the
end of the current read or on the next turn). ``LINGER`` is 0, or CLOSE_LINGER_MS where an
``A``/``X`` must get out; ``removeReader`` comes before ``close``. One Context per backend,
made on demand and terminated when its last socket closes (its sockets never linger longer).

Cost per message. Reading ``EVENTS`` is the dearest step of a round trip: libzmq makes a
``poll`` and a ``getpid`` system call for it, and pyzmq builds an enum for the option. A conn
therefore reads it once per wake-up and once after its last send, no more: a conn pumped since
its last send is not pumped again at the end of the read (``stale``), and a link written to
while its conn's pump is on the stack is flushed by that pump. A request or a reply is sent at
once (:meth:`ZMQLink.push`), straight to ZeroMQ when nothing waits before it.

No silent loss. ``ROUTER_MANDATORY`` is on. A send that meets a full high-water mark (EAGAIN)
leaves the message at the head of the link's queue, retried when ``EVENTS`` shows ``POLLOUT``
(and every RETRY_INTERVAL while blocked). The queue is bounded (``max_queue`` bytes): beyond it
the link closes with a reason rather than grow. The session's send window (32 MiB by default)
keeps a healthy session far below that bound: a peer that stops reading stops acking, so the
session stops sending; the queue only absorbs what the window let through.

Lifecycle. A DEALER never reconnects (``RECONNECT_IVL=-1``): when its connection drops the
link ends, and the session resumes on a new link with a new identity. Disconnects are seen by
the socket monitors: a DEALER link ends on ``DISCONNECTED``; the ROUTER maps each link to its
connection's fd (``SRCFD`` of the hello) and, on ``DISCONNECTED`` for that fd, probes the
identity (``P``) until ROUTER_MANDATORY says ``EHOSTUNREACH`` (the link ends) or PROBE_DELAYS
run out (the fd was reused by a live connection). ZMTP heartbeats (``heartbeat`` parameter)
turn a silent peer into a disconnect; the session's heartbeats decide for the rest. Closing
flushes the queue, sends ``B`` and waits for ``A`` (or the peer's ``B``, or its disconnect) for
at most ``close_timeout`` seconds. A listener that is closed refuses new hellos with ``R`` but
keeps its socket, and port, until its last link closes (ZeroMQ cannot stop accepting without
cutting the connections it accepted).

Address parameters (both sides unless noted): ``sndhwm``, ``rcvhwm`` (messages);
``heartbeat`` (seconds, ZMTP heartbeat interval, 0 disables) and ``heartbeat_timeout``
(default 3 intervals); ``curve_secret`` (this side's secret key, Z85 or key file) and optionally
``curve_public`` (checked against it); listener: ``curve_clients`` (the allow-list: Z85 keys,
key files or directories of ``*.key``, comma-separated); connector: ``curve_server`` (the
listener's public key). CURVE is checked by a ZAP handler on ``inproc://zeromq.zap.01`` in the
backend's Context, read by the reactor like any socket; unknown keys are refused and logged,
and the connect fails with :class:`ConnectFailed`. Every listener has a ZAP domain (NULL
connections are simply allowed): with ZAP on, libzmq also refuses ZMTP 1.0/2.0 peers, which it
would otherwise accept from any bytes not starting with 0xFF. See :mod:`wiremsg.keys`.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any, cast

import zmq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zmq.utils import z85
from zope.interface import implementer  # type: ignore[import-untyped]

from wiremsg import keys
from wiremsg.address import Address, parse_address
from wiremsg.backends.base import MIN_MAX_FRAME, Backend, CloseReason, Link, Listener
from wiremsg.backends.batching import BATCH_BYTES, BatchLink
from wiremsg.errors import AddressError, ConnectFailed

__all__ = ["ZMQBackend", "ZMQLink", "ZMQListener"]

_log = Logger()

VERSION = 1
"""The wire layout's version, carried by ``hello`` and ``welcome``."""
MAX_QUEUE = 64 * 1024 * 1024
"""Default bound on a link's queued bytes (not yet taken by ZeroMQ); beyond it the link ends."""
CLOSE_TIMEOUT = 30.0
"""Seconds ``close()`` may wait for the peer's ``A`` before the link is aborted."""
CLOSE_LINGER_MS = 200
"""LINGER of a socket closed right after sending ``A`` or ``X``; 0 everywhere else."""
HEARTBEAT = 5.0
"""Default ZMTP heartbeat interval, seconds (the ``heartbeat`` parameter)."""
READ_BUDGET = 4096
"""Messages read from one socket per wakeup before the reactor gets a turn."""
RETRY_INTERVAL = 0.05
"""Seconds between retries of a link blocked by a high-water mark (besides ``POLLOUT``)."""
PROBE_DELAYS = (0.002, 0.01, 0.05, 0.25, 1.0)
"""Delays between probes of a ROUTER link whose connection's fd reported a disconnect."""
MAX_GONE = 4096
"""Identities of ended links remembered by a listener, whose messages are dropped quietly."""

_HELLO, _WELCOME = b"H" + bytes([VERSION]), b"W" + bytes([VERSION])
_ACK, _PROBE = b"A", b"P"
_EVENT = struct.Struct("=HI").unpack_from
_COPY_BELOW = 1024 * 1024  # zero-copy sends above this size
_CURVE_SLACK = 1024  # MAXMSGSIZE counts CURVE's box too
_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_ROUTER_EVENTS = zmq.EVENT_DISCONNECTED | _FAILED
_DEALER_EVENTS = zmq.EVENT_CLOSED | zmq.EVENT_DISCONNECTED | _FAILED
_PARAMS = {"sndhwm", "rcvhwm", "heartbeat", "heartbeat_timeout", "curve_secret", "curve_public"}
_ZAP = "inproc://zeromq.zap.01"
# Plain ints: pyzmq's IntEnum/IntFlag members cost an enum construction per operation
# (``events & zmq.POLLIN`` builds a PollEvent), which shows on the per-message path.
_EVENTS, _RCVMORE = int(zmq.EVENTS), int(zmq.RCVMORE)
_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
_NOBLOCK, _NOBLOCK_MORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)
# The Cython send, without pyzmq's Python wrapper (which only adds routing_id/group options
# this backend never uses): it is on the path of every message.
_send: Callable[..., Any] = zmq.backend.Socket.send


def _event_text(event: int, value: int) -> str:
    if event == zmq.EVENT_CLOSED:
        return "the connection was refused, unreachable or timed out"
    if event == zmq.EVENT_DISCONNECTED:
        return "the peer disconnected"
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"the listener refused our CURVE key (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return f"the ZeroMQ handshake failed ({os.strerror(value)}; mismatched CURVE keys?)"
    return f"the ZeroMQ handshake failed (protocol error {value:#x}; not wiremsg, or CURVE?)"


@implementer(IReadDescriptor)
class _Watch:
    """The reactor's view of one ZeroMQ socket: its (edge-triggered) FD."""

    def __init__(
        self, backend: ZMQBackend, sock: zmq.Socket[bytes], ready: Callable[[], None], name: str
    ) -> None:
        self._backend, self._ready, self._name = backend, ready, name
        self._fd = cast(int, sock.get(zmq.FD))  # cached: the socket may close before removeReader
        self.on_lost: Callable[[str], None] = lambda why: None

    def fileno(self) -> int:
        """The socket's signalling FD."""
        return self._fd

    def doRead(self) -> None:
        """The FD fired: pump the socket, then flush sockets written to meanwhile."""
        backend = self._backend
        backend._depth += 1
        try:
            self._ready()
        finally:
            backend._depth -= 1
        if not backend._depth and backend._dirty:
            backend._run_dirty()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped us (shutdown, or a bug in ``doRead``)."""
        self.on_lost(f"the reactor dropped the socket ({reason.getErrorMessage()})")

    def logPrefix(self) -> str:
        """For Twisted's logs."""
        return self._name


class _Conn:
    """One data socket (ROUTER or DEALER) and its monitor, on the reactor."""

    def __init__(self, backend: ZMQBackend, kind: int, address: Address) -> None:
        self.backend, self.reactor, self.address = backend, backend.reactor, address
        self.sock = backend._socket(kind)
        self.monitor: zmq.Socket[bytes] | None = None
        self.watches: list[_Watch] = []
        self.dirty: list[ZMQLink] = []
        self.blocked: dict[ZMQLink, None] = {}
        self.paused = self.closed = False
        # True from a _mark() (a send, or more to read) until pump() next reads EVENTS:
        # _run_dirty skips a conn whose EVENTS were read after its last send.
        self.stale = True
        self.pumping = 0  # pump() frames on the stack: such a pump flushes before it returns
        self._retry: Any = None

    def start(self, events: int, hook: Callable[[zmq.Socket[bytes]], object]) -> None:
        """Monitor ``events``, call ``hook`` (bind or connect), then watch both sockets."""
        self.monitor = self.backend._monitor(self.sock, events)
        hook(self.sock)
        for sock, ready in ((self.monitor, self._read_monitor), (self.sock, self.pump)):
            watch = _Watch(self.backend, sock, ready, f"zmq {self.address}")
            watch.on_lost = self.fail_all
            self.watches.append(watch)
            self.reactor.addReader(watch)
        self._read_monitor()  # the FD is edge-triggered: drain once after addReader
        self.pump()

    def send_to(self, ident: bytes | None, msg: bytes) -> None:
        """Send one message without blocking (raises ``zmq.Again`` at the high-water mark)."""
        _send(self.sock, msg, _NOBLOCK, len(msg) < _COPY_BELOW)

    def try_send(self, ident: bytes | None, msg: bytes) -> bool:
        """Send a control message, best effort; the socket is pumped afterwards."""
        if self.closed:
            return False
        self.backend._mark(self)
        try:
            self.send_to(ident, msg)
        except zmq.ZMQError:
            return False
        return True

    def pump(self) -> None:
        """Send what waits, read what arrived; loop while ``EVENTS`` says there is more."""
        budget, sock = READ_BUDGET, self.sock
        self.pumping += 1
        try:
            while not self.closed:
                if self.dirty:
                    dirty, self.dirty = self.dirty, []
                    for link in dirty:
                        link._flush()
                    continue
                self.stale = False
                events: int = sock.get(_EVENTS)  # type: ignore[assignment]
                if self.blocked and events & _POLLOUT and self._unblock():
                    continue
                if self.paused or not events & _POLLIN:
                    break
                if budget <= 0:
                    self.backend._mark(self)
                    break
                budget -= self._read(budget)
        except zmq.ZMQError as exc:
            if not self.closed:
                _log.failure("ZeroMQ socket for {address} failed", address=self.address.redacted())
                self.fail_all(f"ZeroMQ error: {exc}")
            return
        finally:
            self.pumping -= 1
        if self.blocked and not self.closed:
            if self._retry is None:
                self._retry = self.reactor.callLater(RETRY_INTERVAL, self._retried)
        elif self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _retried(self) -> None:
        self._retry = None
        self.pump()

    def _unblock(self) -> bool:
        before = len(self.blocked)
        for link in list(self.blocked):
            link._flush()
        return len(self.blocked) < before

    def _skip(self) -> None:
        while self.sock.get(_RCVMORE):
            self.sock.recv(_NOBLOCK)

    def _read_monitor(self) -> None:
        monitor = self.monitor
        while not self.closed and monitor is not None:
            if not cast(int, monitor.get(_EVENTS)) & _POLLIN:
                return
            try:
                parts = monitor.recv_multipart(_NOBLOCK)
            except zmq.Again:
                continue
            event, value = _EVENT(parts[0])
            self._event(event, value)

    def close(self, linger: int = 0) -> None:
        """removeReader, then close the socket and its monitor (the Context may end)."""
        if self.closed:
            return
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.backend._dirty.pop(self, None)
        for watch in self.watches:
            self.reactor.removeReader(watch)
        self.watches, self.dirty = [], []
        self.blocked.clear()
        self.backend._close(self.sock, linger)
        if self.monitor is not None:
            self.backend._close(self.monitor, 0)

    # -- for subclasses ------------------------------------------------------------------------

    def _read(self, budget: int) -> int:
        raise NotImplementedError

    def _event(self, event: int, value: int) -> None:
        raise NotImplementedError

    def release(self, link: ZMQLink, linger: int) -> None:
        """``link`` ended: forget it."""
        raise NotImplementedError

    def fail_all(self, why: str) -> None:
        """End every link (and the connect in progress) and close."""
        raise NotImplementedError


class ZMQLink(BatchLink):
    """One link: a DEALER socket, or one DEALER identity at a listener's ROUTER.

    :ivar curve_key: the peer's CURVE public key (Z85) on a CURVE listener's links, else None.
    """

    overflow_where = "a peer that does not read"

    def __init__(self, conn: _Conn, ident: bytes | None, peer: str) -> None:
        backend = conn.backend
        super().__init__(
            backend.reactor,
            peer,
            backend.max_frame,
            max_queue=backend.max_queue,
            close_timeout=backend.close_timeout,
        )
        self.local_address = conn.address
        self.curve_key: str | None = None
        self._conn, self._ident = conn, ident
        self._bye_sent = False  # our B was taken by ZeroMQ
        self._probe_call: Any = None
        self._probes = 0
        self._fd = -1

    def pause_reading(self) -> None:
        """Test hook: stop reading the socket under this link (on a listener's link, the
        ROUTER: every link of that listener), so that ZeroMQ's buffers fill up."""
        self._conn.paused = True

    def resume_reading(self) -> None:
        """Test hook: undo :meth:`pause_reading` (and drain at once: the FD will not fire
        again for what already waits)."""
        self._conn.paused = False
        self._conn.backend._mark(self._conn)

    # -- BatchLink hooks -----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        conn = self._conn  # flush this link in the conn's next pump
        conn.dirty.append(self)
        if not conn.pumping:  # else the pump on the stack flushes it, then reads EVENTS
            conn.backend._mark(conn)

    def _hand_out(self) -> None:
        """Hand queued messages to ZeroMQ until it takes no more."""
        backlog, conn, ident = self._backlog, self._conn, self._ident
        while backlog:
            msg = backlog[0]
            try:
                conn.send_to(ident, msg)
            except zmq.Again:
                conn.blocked[self] = None
                return
            except zmq.ZMQError as exc:
                self._fail(self._lost_reason(f"connection lost: {exc.strerror}"))
                return
            backlog.popleft()
            self._queued -= len(msg)
        conn.blocked.pop(self, None)
        self._bye_sent = self._bye

    def push(self) -> None:
        """Send the open batch now. With nothing queued before it (the usual request or
        reply) it goes straight to ZeroMQ, without the backlog; the flush scheduled when
        its first frame was written still runs, and re-reads ``EVENTS`` after this send."""
        if self._backlog or not self._batch_bytes or self._doom is not None or self._released:
            super().push()
            return
        try:
            self._conn.send_to(self._ident, b"".join(self._batch))
        except zmq.ZMQError:  # Again at the high-water mark, or worse: the backlog's way
            super().push()
            return
        self._queued -= self._batch_bytes
        self._batch, self._batch_bytes = [b"D"], 0

    def _send_control(self, message: bytes) -> None:
        self._conn.try_send(self._ident, message)

    def _drop(self) -> None:
        super()._drop()
        self._conn.blocked.pop(self, None)

    def _unexpected(self, data: bytes) -> None:
        if not (data[:1] == _PROBE and self._ident is None):  # a DEALER ignores probes
            super()._unexpected(data)

    # -- ending --------------------------------------------------------------------------------

    def _lost_reason(self, text: str) -> CloseReason:
        if self._closing:
            return CloseReason(self._close_text, local=True, clean=self._bye_sent)
        return CloseReason(text, clean=False)

    def _lost(self, text: str) -> None:
        self._finish(self._lost_reason(text))

    def _suspect(self) -> None:
        """The connection's fd reported a disconnect: probe this identity (ROUTER side)."""
        self._probes = 0
        if self._probe_call is None:
            self._probe()

    def _probe(self) -> None:
        self._probe_call = None
        if self._released:
            return
        self._conn.backend._mark(self._conn)
        try:
            self._conn.send_to(self._ident, _PROBE)
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            self._lost(f"connection lost: the peer disconnected ({exc.strerror})")
            return
        if self._probes < len(PROBE_DELAYS):
            self._probe_call = self.reactor.callLater(PROBE_DELAYS[self._probes], self._probe)
            self._probes += 1

    def _finish(self, reason: CloseReason, linger: bool = False) -> None:
        """Release everything, then tell the receiver (exactly once: BaseLink sees to it)."""
        if not self._released:
            self._released = True
            self._drop()
            self._cancel_close()
            if self._probe_call is not None and self._probe_call.active():
                self._probe_call.cancel()
            self._probe_call = None
            self._conn.release(self, CLOSE_LINGER_MS if linger else 0)
        self._notify_closed(reason)


class _RouterConn(_Conn):
    """A listener's ROUTER socket and the links of its DEALER identities."""

    def __init__(
        self, backend: ZMQBackend, address: Address, on_link: Callable[[Link], None]
    ) -> None:
        super().__init__(backend, zmq.ROUTER, address)
        self.on_link = on_link
        self.links: dict[bytes, ZMQLink] = {}
        self.by_fd: dict[int, set[ZMQLink]] = {}
        self.gone: dict[bytes, None] = {}
        self.listening = True
        self.accepted = 0
        self.allowed: frozenset[bytes] | None = None  # Z85 client keys, for CURVE
        self.domain = b""

    def send_to(self, ident: bytes | None, msg: bytes) -> None:
        """Send to one identity (EHOSTUNREACH if it is gone, thanks to ROUTER_MANDATORY)."""
        assert ident is not None
        sock = self.sock
        _send(sock, ident, _NOBLOCK_MORE)
        _send(sock, msg, _NOBLOCK, len(msg) < _COPY_BELOW)

    def _read(self, budget: int) -> int:
        sock, links, n = self.sock, self.links, 0
        recv = sock.recv
        while n < budget and not self.closed:
            try:
                ident = recv(_NOBLOCK)
            except zmq.Again:
                break
            n += 1
            link = links.get(ident)
            if link is None:
                self._stranger(ident)
                continue
            data = recv(_NOBLOCK)
            if sock.get(_RCVMORE):
                self._skip()
                link._violate("a multipart message")
            else:
                link._receive(data)
            if self.dirty:
                break  # send what this message produced (acks, replies) before reading on
        return n

    def _stranger(self, ident: bytes) -> None:
        """A message from an identity without a link: a hello, or one to answer with X."""
        frame = self.sock.recv(_NOBLOCK, copy=False)
        multipart = bool(self.sock.get(_RCVMORE))
        self._skip()
        data = b"" if multipart else frame.bytes
        if data[:1] == b"H":
            self._hello(ident, data, frame)
        elif data[:1] == b"B":
            self.try_send(ident, _ACK)  # a late bye from a link we already ended
        elif ident not in self.gone and data[:1] not in (b"A", b"X"):
            self._forget(ident)
            self.try_send(ident, b"Xunknown link")

    def _hello(self, ident: bytes, data: bytes, frame: zmq.Frame) -> None:
        if data != _HELLO:
            _log.warn(
                "refusing a hello {hello!r} on {a}", hello=data[:16], a=self.address.redacted()
            )
            self.try_send(ident, b"Runsupported protocol version")
            return
        if not self.listening:
            self.try_send(ident, b"Rthe listener is closed")
            return
        if not self.try_send(ident, _WELCOME):
            return  # gone already
        try:
            fd: int = frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            fd = -1
        self.accepted += 1
        link = ZMQLink(self, ident, self._describe(fd, frame))
        if self.allowed is not None:
            link.curve_key = str(frame.get("User-Id"))
        link._fd = fd
        self.links[ident] = link
        self.by_fd.setdefault(fd, set()).add(link)
        try:
            self.on_link(link)
        except Exception:
            _log.failure(
                "on_link of the listener at {address} failed", address=self.address.redacted()
            )
            link._abort("the listener failed to accept the link")

    def _describe(self, fd: int, frame: zmq.Frame) -> str:
        if self.address.scheme == "zmq+ipc":
            return f"{self.address.path} client #{self.accepted}"
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                host, port = sock.getpeername()[:2]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except (OSError, ValueError):
            return f"{frame.get('Peer-Address')} (identity {self.accepted})"

    def _event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return  # the ZAP handler logged it
        if event != zmq.EVENT_DISCONNECTED:
            why = _event_text(event, value)
            _log.info("{a}: dropped a connection: {why}", a=self.address.redacted(), why=why)
            return
        self.pump()  # drain first: what the peer sent before it went comes first
        for link in list(self.by_fd.get(value, ())):
            link._suspect()

    def _forget(self, ident: bytes) -> None:
        gone = self.gone
        gone[ident] = None
        if len(gone) > MAX_GONE:
            del gone[next(iter(gone))]

    def release(self, link: ZMQLink, linger: int) -> None:
        """Forget ``link``; a closed listener closes its socket with its last link."""
        ident = link._ident
        assert ident is not None
        if self.links.get(ident) is link:
            del self.links[ident]
        fds = self.by_fd.get(link._fd)
        if fds is not None:
            fds.discard(link)
            if not fds:
                del self.by_fd[link._fd]
        self._forget(ident)
        if not self.listening and not self.links:
            self.close(CLOSE_LINGER_MS)

    def stop_listening(self) -> None:
        """Refuse new links; close the socket now if no link is left."""
        self.listening = False
        if not self.links:
            self.close()

    def close(self, linger: int = 0) -> None:
        """Close the socket (and the ZAP handler, if no other listener needs it)."""
        if not self.closed:
            super().close(linger)
            self.backend._zap_remove(self.domain)

    def fail_all(self, why: str) -> None:
        """End every link and close."""
        self.listening = False
        for link in list(self.links.values()):
            link._lost(why)
        self.close()


class _DealerConn(_Conn):
    """One ``connect()``: a DEALER socket, its link once welcomed."""

    def __init__(self, backend: ZMQBackend, address: Address) -> None:
        super().__init__(backend, zmq.DEALER, address)
        self.link: ZMQLink | None = None
        self.connecting: Deferred[Link] | None = None
        self.timeout: Any = None
        host = f"[{address.host}]" if ":" in address.host else address.host
        self.peer = address.path if address.scheme == "zmq+ipc" else f"{host}:{address.port}"

    def _read(self, budget: int) -> int:
        sock, n = self.sock, 0
        while n < budget and not self.closed:
            try:
                data = sock.recv(_NOBLOCK)
            except zmq.Again:
                break
            n += 1
            if sock.get(_RCVMORE):
                self._skip()
                data = b"?multipart"
            if self.link is not None:
                self.link._receive(data)
            elif data == _WELCOME:
                self._welcomed()
            elif data[:1] in (b"R", b"X"):
                self._fail(f"refused: {data[1:].decode('utf-8', 'replace')}")
            elif data != _PROBE:
                self._fail(f"the listener does not speak this protocol (it sent {data[:16]!r})")
            if self.dirty:
                break  # send what this message produced (acks, replies) before reading on
        return n

    def _welcomed(self) -> None:
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        link = self.link = ZMQLink(self, None, self.peer)
        d, self.connecting = self.connecting, None
        if d is not None:
            d.callback(link)

    def _fail(self, why: str) -> None:
        d, self.connecting = self.connecting, None
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        self.close()
        if d is not None:
            d.errback(ConnectFailed(f"cannot connect to {self.address.redacted()}: {why}"))

    def abandon(self) -> None:
        """The connect was cancelled: leave nothing open."""
        self.connecting = None
        self._fail("cancelled")

    def _event(self, event: int, value: int) -> None:
        why = _event_text(event, value)
        if self.connecting is not None:
            self._fail(why)
        elif self.link is not None:
            self.pump()  # drain first: what the peer sent before it went comes first
            self.link._lost(f"connection lost: {why}")

    def release(self, link: ZMQLink, linger: int) -> None:
        """The link ended: close the socket."""
        self.close(linger)

    def fail_all(self, why: str) -> None:
        """End the link or the connect, and close."""
        if self.link is not None:
            self.link._lost(why)
        self._fail(why)


class ZMQListener(Listener):
    """A bound ROUTER socket accepting links until closed.

    :ivar curve_public: the listener's CURVE public key (Z85), what workers give as
        ``curve_server``; None without CURVE.
    """

    def __init__(self, conn: _RouterConn) -> None:
        self.address = conn.address
        self.curve_public: str | None = None
        self._conn = conn

    def close(self) -> Deferred[None]:
        """Refuse new links (with ``R``); links already made stay open, and so does the port
        until the last of them closes. Fires at once."""
        self._conn.stop_listening()
        return succeed(None)


@dataclass
class _Options:
    sndhwm: int | None = None
    rcvhwm: int | None = None
    heartbeat: float = HEARTBEAT
    heartbeat_timeout: float | None = None
    secret: bytes | None = None
    public: bytes | None = None
    server: bytes | None = None
    clients: frozenset[bytes] | None = None


def _ipc_in_use(path: str) -> str | None:
    """Why ``path`` cannot be bound (ZeroMQ would silently replace a live socket)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return f"{path} exists and is not a socket"
    except FileNotFoundError:
        return None
    with socket.socket(socket.AF_UNIX) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except BlockingIOError:
            pass  # a full backlog: something listens
        except OSError:
            return None  # refused: a stale socket file, which ZeroMQ replaces
    return f"something already listens at {path}"


class ZMQBackend(Backend):
    """Links over ZeroMQ: ``zmq://host:port`` and ``zmq+ipc:///path`` (see the module doc).

    :param reactor: the reactor to run on.
    :param max_frame: the largest frame sent or accepted (at most 4 GiB - 1).
    :param max_queue: bytes a link may queue while ZeroMQ's high-water mark is reached.
    :param close_timeout: seconds ``close()`` waits for the peer's acknowledgement.
    :param io_threads: ZeroMQ I/O threads of the backend's Context.
    """

    schemes = ("zmq", "zmq+ipc")

    def __init__(
        self,
        reactor: Any,
        *,
        max_frame: int = MIN_MAX_FRAME,
        max_queue: int = MAX_QUEUE,
        close_timeout: float = CLOSE_TIMEOUT,
        io_threads: int = 1,
    ) -> None:
        super().__init__(reactor)
        if not 0 <= max_frame <= 0xFFFFFFFF:
            raise ValueError(f"max_frame must fit in 32 bits, not {max_frame}")
        if max_queue < max_frame + 5:
            raise ValueError("max_queue must hold at least one frame of max_frame bytes")
        self.max_frame, self.max_queue = max_frame, max_queue
        self.close_timeout, self.io_threads = close_timeout, io_threads
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sockets = 0
        self._dirty: dict[_Conn, None] = {}
        self._pump_call: Any = None
        self._depth = 0
        self._zap: tuple[zmq.Socket[bytes], _Watch] | None = None
        self._domains: dict[bytes, _RouterConn] = {}
        self._domain_ids = count(1)

    # -- the contract --------------------------------------------------------------------------

    def listen(self, address: Address | str, on_link: Callable[[Link], None]) -> Deferred[Listener]:
        """Bind a ROUTER at ``address``; fires with a :class:`ZMQListener` (port 0 resolved).

        :raises: (as a failed Deferred) :class:`ConnectFailed` if it cannot be bound,
            :class:`AddressError` for a non-zmq address or bad parameters.
        """
        try:
            addr, endpoint, opts = self._check(address, listening=True)
        except AddressError:
            return fail()
        busy = _ipc_in_use(addr.path) if addr.scheme == "zmq+ipc" else None
        if busy is not None:
            return fail(ConnectFailed(f"cannot listen on {addr}: {busy}"))
        conn: _RouterConn | None = None
        try:
            conn = _RouterConn(self, addr, on_link)
            conn.sock.set(zmq.ROUTER_MANDATORY, 1)
            conn.allowed = opts.clients
            conn.domain = self._zap_add(conn)  # ZAP also makes libzmq refuse ZMTP 1.0/2.0 peers
            self._configure(conn.sock, addr, opts, conn.domain)
            conn.start(_ROUTER_EVENTS, lambda sock: sock.bind(endpoint))
        except zmq.ZMQError as exc:
            if conn is not None:
                conn.close()
            return fail(ConnectFailed(f"cannot listen on {addr}: {exc}"))
        if addr.scheme == "zmq":
            last = cast(bytes, conn.sock.get(zmq.LAST_ENDPOINT)).decode()
            conn.address = addr.with_port(int(last.rsplit(":", 1)[1]))
        listener = ZMQListener(conn)
        listener.curve_public = None if opts.public is None else opts.public.decode("ascii")
        return succeed(listener)

    def connect(self, address: Address | str, timeout: float = 10.0) -> Deferred[Link]:
        """Connect a new DEALER to ``address``; fires with the :class:`ZMQLink` once welcomed.

        :raises: (as a failed Deferred) :class:`ConnectFailed` when refused (by the listener,
            or by CURVE), unreachable or timed out; ``CancelledError`` when cancelled;
            :class:`AddressError` for a bad address.
        """
        try:
            addr, endpoint, opts = self._check(address, listening=False)
        except AddressError:
            return fail()
        try:
            conn = _DealerConn(self, addr)
        except zmq.ZMQError as exc:
            return fail(ConnectFailed(f"cannot connect to {addr}: {exc}"))
        d: Deferred[Link] = Deferred(lambda _: conn.abandon())
        conn.connecting = d
        try:
            sock = conn.sock
            sock.set(zmq.ROUTING_ID, b"w" + os.urandom(15))
            sock.set(zmq.RECONNECT_IVL, -1)
            sock.set(zmq.CONNECT_TIMEOUT, max(1, int(timeout * 1000)))
            self._configure(sock, addr, opts, b"")

            def dial(sock: zmq.Socket[bytes]) -> None:
                sock.connect(endpoint)
                try:
                    sock.send(_HELLO, _NOBLOCK)
                except zmq.Again:
                    pass  # the connection failed already; its monitor event says why

            conn.start(_DEALER_EVENTS, dial)
        except zmq.ZMQError as exc:
            conn._fail(str(exc))
            return d
        if conn.connecting is not None:
            conn.timeout = self.reactor.callLater(
                timeout, conn._fail, f"no welcome within {timeout:g}s (timed out)"
            )
        return d

    # -- addresses and options -----------------------------------------------------------------

    def _check(self, address: Address | str, listening: bool) -> tuple[Address, str, _Options]:
        addr = parse_address(address)
        url, params = str(addr), addr.params
        if addr.scheme not in self.schemes:
            why = "the zmq backend serves zmq://HOST:PORT and zmq+ipc:///PATH"
            raise AddressError("scheme", url, why)
        if "via" in params:
            why = "ZeroMQ owns its sockets and cannot be tunnelled here; forward with ssh -L"
            raise AddressError("via", url, why)
        known = _PARAMS | {"curve_clients" if listening else "curve_server"}
        unknown = sorted(set(params) - known)
        if unknown:
            why = f"unknown parameter {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            raise AddressError("query", url, why)
        opts = _Options()
        try:
            for name in ("sndhwm", "rcvhwm", "heartbeat", "heartbeat_timeout"):
                if name in params:
                    value = float(params[name])
                    if not 0 <= value < 1e7:
                        raise ValueError(f"{name} must be a number >= 0")
                    setattr(opts, name, int(value) if name.endswith("hwm") else value)
            if "curve_secret" in params:
                opts.secret = keys.load_key(params["curve_secret"], secret=True).encode()
                opts.public = zmq.curve_public(opts.secret)
                if "curve_public" in params:
                    if keys.load_key(params["curve_public"], secret=False).encode() != opts.public:
                        raise ValueError("curve_public is not the public key of curve_secret")
            elif "curve_public" in params:
                raise ValueError("curve_public needs curve_secret")
            other = "curve_clients" if listening else "curve_server"
            if (opts.secret is None) != (other not in params):
                raise ValueError(f"CURVE needs both curve_secret and {other}")
            if listening and opts.secret is not None:
                found = keys.load_public_keys(params["curve_clients"])
                opts.clients = frozenset(k.encode() for k in found)
            elif opts.secret is not None:
                opts.server = keys.load_key(params["curve_server"], secret=False).encode()
        except (ValueError, zmq.ZMQError) as exc:
            raise AddressError("query", url, str(exc)) from None
        if addr.scheme == "zmq+ipc":
            return addr, f"ipc://{addr.path}", opts
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        port = "*" if listening and not addr.port else str(addr.port)
        return addr, f"tcp://{host}:{port}", opts

    def _configure(
        self, sock: zmq.Socket[bytes], addr: Address, opts: _Options, domain: bytes
    ) -> None:
        sock.set(zmq.MAXMSGSIZE, 1 + max(BATCH_BYTES, 4 + self.max_frame) + _CURVE_SLACK)
        if opts.sndhwm is not None:
            sock.set(zmq.SNDHWM, opts.sndhwm)
        if opts.rcvhwm is not None:
            sock.set(zmq.RCVHWM, opts.rcvhwm)
        if opts.heartbeat > 0:
            timeout = opts.heartbeat_timeout or 3 * opts.heartbeat
            sock.set(zmq.HEARTBEAT_IVL, max(1, int(opts.heartbeat * 1000)))
            sock.set(zmq.HEARTBEAT_TIMEOUT, max(1, int(timeout * 1000)))
            sock.set(zmq.HEARTBEAT_TTL, min(max(100, int(timeout * 1000)), 6_553_500))
        if addr.scheme == "zmq":
            sock.set(zmq.TCP_KEEPALIVE, 1)
            sock.set(zmq.IPV6, int(":" in addr.host))
        if domain:
            sock.set(zmq.ZAP_DOMAIN, domain)
            sock.set(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler: refuse, never accept all
        if opts.secret is not None and domain:
            sock.set(zmq.CURVE_SERVER, 1)
            sock.set(zmq.CURVE_SECRETKEY, opts.secret)
        elif opts.secret is not None and opts.public is not None and opts.server is not None:
            sock.set(zmq.CURVE_SECRETKEY, opts.secret)
            sock.set(zmq.CURVE_PUBLICKEY, opts.public)
            sock.set(zmq.CURVE_SERVERKEY, opts.server)

    # -- the Context, sockets and the pump -----------------------------------------------------

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        if self._ctx is None:
            ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(self.io_threads)
            ctx.set(zmq.MAX_SOCKETS, ctx.get(zmq.SOCKET_LIMIT))
            self._ctx = ctx
        sock = self._ctx.socket(kind)
        self._sockets += 1
        sock.set(zmq.LINGER, 0)
        return sock

    def _monitor(self, sock: zmq.Socket[bytes], events: int) -> zmq.Socket[bytes]:
        monitor: zmq.Socket[bytes] = sock.get_monitor_socket(events)
        self._sockets += 1
        monitor.set(zmq.LINGER, 0)
        return monitor

    def _close(self, sock: zmq.Socket[bytes], linger: int) -> None:
        sock.close(linger=linger)
        self._sockets -= 1
        if not self._sockets and self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.term()  # last: every socket is closed, none lingers beyond CLOSE_LINGER_MS

    def _mark(self, conn: _Conn) -> None:
        """Pump ``conn`` at the end of the current read, or on the next turn."""
        conn.stale = True
        self._dirty[conn] = None
        if self._pump_call is None and not self._depth:  # else doRead/_run_dirty see to it
            self._pump_call = self.reactor.callLater(0, self._run_dirty)

    def _run_dirty(self) -> None:
        call, self._pump_call = self._pump_call, None
        if call is not None and call.active():
            call.cancel()
        dirty, self._dirty = self._dirty, {}
        self._depth += 1
        try:
            for conn in dirty:
                if conn.stale or conn.dirty:  # else pumped since: its EVENTS are current
                    conn.pump()
        finally:
            self._depth -= 1
        if self._dirty and self._pump_call is None:
            self._pump_call = self.reactor.callLater(0, self._run_dirty)

    # -- CURVE: the ZAP handler ----------------------------------------------------------------

    def _zap_add(self, conn: _RouterConn) -> bytes:
        if self._zap is None:
            sock = self._socket(zmq.ROUTER)
            sock.bind(_ZAP)
            watch = _Watch(self, sock, self._zap_ready, "zmq ZAP handler")
            self._zap = (sock, watch)
            self.reactor.addReader(watch)
            self._zap_ready()
        domain = b"wiremsg-%d" % next(self._domain_ids)
        self._domains[domain] = conn
        return domain

    def _zap_remove(self, domain: bytes) -> None:
        self._domains.pop(domain, None)
        if not self._domains and self._zap is not None:
            (sock, watch), self._zap = self._zap, None
            self.reactor.removeReader(watch)
            self._close(sock, 0)

    def _zap_ready(self) -> None:
        while self._zap is not None:
            sock = self._zap[0]
            if not cast(int, sock.get(_EVENTS)) & _POLLIN:
                return
            try:
                request = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                continue
            if len(request) < 8:
                continue
            rid, _, version, request_id, domain, address, _, mechanism, *credentials = request
            conn = self._domains.get(domain)
            key = z85.encode(credentials[0]) if credentials and len(credentials[0]) == 32 else b""
            allowed = None if conn is None else conn.allowed
            if version == b"1.0" and conn is not None:
                if (mechanism, allowed) == (b"NULL", None) or (
                    mechanism == b"CURVE" and allowed is not None and key in allowed
                ):
                    sock.send_multipart([rid, b"", b"1.0", request_id, b"200", b"OK", key, b""])
                    continue
            where = conn.address.redacted() if conn is not None else domain
            _log.warn(
                "refused a CURVE client at {where}: key {key} from {peer} is not allowed",
                where=where,
                key=key.decode("ascii"),
                peer=address.decode("ascii", "replace"),
            )
            sock.send_multipart([rid, b"", b"1.0", request_id, b"400", b"not allowed", b"", b""])
