"""The two ends of AMQP links: a master's listener and a worker's connection.

:class:`MasterEnd` is one listener: one broker connection consuming the fleet's first-contact
queue (shared by every master of the prefix: competing consumers) and the master's own queue,
where every link of this listener receives (demultiplexed by link id). When its connection
ends it ends every link, then reconnects with backoff (full jitter) and declares everything
again, until the listener is closed; the workers' sessions come back on new links.

:class:`WorkerEnd` is one ``connect()``: its own broker connection and queue, a ``hello``
through the first-contact queue, and the link once a master answers ``welcome``. The link ends
with the connection; the worker's session makes a new link (the worker has its own backoff).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from wiremsg.address import Address
from wiremsg.backends._amqp._broker import (
    BrokerChannel,
    BrokerConnection,
    BrokerOptions,
    PublishFailed,
    open_connection,
)
from wiremsg.backends._amqp._link import HELLO, WELCOME, AMQPLink, with_reason
from wiremsg.backends.base import CloseReason, Link, Listener
from wiremsg.backoff import full_jitter
from wiremsg.errors import ConnectFailed

__all__ = ["AMQPListener", "MasterEnd", "WorkerEnd", "first_contact_queue", "topology"]

_log = Logger()

HELLO_KEY = "masters"
"""The routing key of the first-contact queue (``<prefix>.masters``) on the prefix exchange."""
HELLO_PREFETCH = 16
"""Hellos a master takes from the first-contact queue at a time: small, so the broker spreads
a burst of workers over every master that consumes it."""
_LINK_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_QUEUE_NAME = 255


def first_contact_queue(prefix: str) -> str:
    """The durable queue every master of ``prefix`` consumes hellos from."""
    return f"{prefix}.{HELLO_KEY}"


def topology(prefix: str) -> tuple[str, list[str]]:
    """The durable names ``prefix`` leaves on the broker: its exchange and its queues (what
    to delete when a fleet is retired; own queues vanish with their connections)."""
    return prefix, [first_contact_queue(prefix)]


def _own_queue(prefix: str, role: str) -> str:
    return f"{prefix}.{role}.{os.urandom(8).hex()}"


class _End:
    """Publishing and the end-of-turn flush, shared by both ends."""

    def __init__(self, backend: Any, addr: Address, opts: BrokerOptions) -> None:
        self.backend = backend
        self.reactor = backend.reactor
        self.addr, self.opts = addr, opts
        self.prefix = opts.prefix
        self.conn: BrokerConnection | None = None
        self.channel: BrokerChannel | None = None
        self.own_queue = ""
        self._dirty: list[AMQPLink] = []
        self._flush_call: Any = None

    @property
    def prefetch(self) -> int:
        """Deliveries the own-queue consumer may hold unacknowledged."""
        return self.opts.prefetch or self.backend.prefetch

    def publish(self, link: AMQPLink, body: bytes) -> Deferred[None]:
        """Publish ``body`` to ``link``'s peer (see :class:`~._link.Carrier`)."""
        channel = self.channel
        if channel is None:
            return _no_broker()
        props = link.properties
        if props is None:
            props = link.properties = channel.properties(link.link_id, self.own_queue)
        return channel.publish(link.peer_queue, body, props)

    def _publish(
        self, queue: str, body: bytes, link_id: str, expiration_ms: int | None = None
    ) -> Deferred[None]:
        channel = self.channel
        if channel is None:
            return _no_broker()
        props = channel.properties(link_id, self.own_queue, expiration_ms)
        return channel.publish(queue, body, props)

    def mark(self, link: AMQPLink) -> None:
        """Flush ``link`` at the end of this reactor turn."""
        self._dirty.append(link)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush_dirty)

    def _flush_dirty(self) -> None:
        """Publish what every marked link has written: at the end of the turn, or at once when
        the consumer has handled the deliveries at hand (replies leave before the next wait)."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        dirty, self._dirty = self._dirty, []
        for link in dirty:
            link._flush()

    def release(self, link: AMQPLink, reason: CloseReason) -> None:
        """``link`` ended (see :class:`~._link.Carrier`)."""
        raise NotImplementedError

    def _on_message(self, link_id: str, reply_to: str, body: bytes, redelivered: bool) -> None:
        """A message on this end's own queue."""
        raise NotImplementedError

    def _consumer_ended(self, why: str) -> None:
        """A consumer of this end stopped (cancelled, or its channel or connection closed)."""
        raise NotImplementedError

    async def _consume_own(self, channel: BrokerChannel, role: str) -> None:
        """Declare this end's own queue (exclusive and auto-deleted: it vanishes with the
        connection, so a vanished peer is a returned message) and consume it."""
        own = self.own_queue = _own_queue(self.prefix, role)
        await channel.declare(own, exclusive=True, auto_delete=True, bind=own)
        await channel.consume(
            own,
            self.prefetch,
            self._on_message,
            self._consumer_ended,
            on_drained=self._flush_dirty,
        )

    def _new_link(self, link_id: str, peer_queue: str) -> AMQPLink:
        backend = self.backend
        link = AMQPLink(
            self,
            link_id,
            peer_queue,
            f"{peer_queue} on {self.opts.broker}",
            max_frame=backend.max_frame,
            max_queue=backend.max_queue,
            close_timeout=backend.close_timeout,
        )
        link.local_address = self.addr
        return link

    def _valid_queue(self, name: str, role: str) -> bool:
        """Whether ``name`` looks like an own queue of ``role`` in this prefix (answers go
        only there, never to another fleet's or the first-contact queue)."""
        return name.startswith(f"{self.prefix}.{role}.") and len(name) <= _MAX_QUEUE_NAME


class MasterEnd(_End):
    """A listener: the first-contact consumer, the master's own queue, its links."""

    def __init__(
        self, backend: Any, addr: Address, opts: BrokerOptions, on_link: Callable[[Link], None]
    ) -> None:
        super().__init__(backend, addr, opts)
        self.on_link = on_link
        self.links: dict[str, AMQPLink] = {}
        self.listening = True
        self.reconnects = 0
        self._hello_tag: str | None = None
        # Hellos are consumed on a channel of their own: acknowledgements are per channel, and
        # the hellos' prompt ones (``multiple``) would otherwise take along the own queue's
        # deliveries, whose bulk acknowledgement the broker would then refuse (406).
        self._hello_channel: BrokerChannel | None = None
        self._attempt = 0
        self._retry_call: Any = None
        self._opening: Deferred[BrokerConnection] | None = None

    async def open(self) -> None:
        """Connect, declare the topology and consume.

        :raises ConnectFailed: the broker cannot be reached, refuses us or the declarations.
        """
        self._opening = open_connection(
            self.reactor, self.opts, self.backend.connect_timeout, f"wiremsg master {self.prefix}"
        )
        try:
            conn = await self._opening
        finally:
            self._opening = None
        try:
            channel = await conn.channel()
            hellos = first_contact_queue(self.prefix)
            await channel.declare(hellos, durable=True, bind=HELLO_KEY)
            self.conn, self.channel = conn, channel  # deliveries may come once it consumes
            await self._consume_own(channel, "master")
            if self.listening:
                self._hello_channel = hello_channel = await conn.channel()
                self._hello_tag = await hello_channel.consume(
                    hellos, HELLO_PREFETCH, self._on_hello, self._consumer_ended, prompt_acks=True
                )
        except Exception as exc:
            self.conn = self.channel = self._hello_channel = None
            await conn.close()
            why = exc.args[0] if isinstance(exc, ConnectFailed) else _reason(exc)
            raise ConnectFailed(f"broker {self.opts.broker}: {why}") from None
        conn.on_lost(self._lost)
        if not self.listening and not self.links:
            await self._close_connection()

    # -- incoming ------------------------------------------------------------------------------

    def _on_hello(self, link_id: str, reply_to: str, body: bytes, redelivered: bool) -> None:
        if redelivered:
            # A master took it and lost its connection before acknowledging it: it may have
            # answered already, and that link is gone with it. The worker retries if need be.
            return
        if not self._valid_queue(reply_to, "worker") or not _LINK_ID.match(link_id):
            _log.warn(
                "{a}: dropped a malformed hello (reply_to {r!r}, id {i!r})",
                a=self.addr.redacted(),
                r=reply_to[:80],
                i=link_id[:40],
            )
            return
        if body != HELLO:
            _log.warn("{a}: refusing a hello {h!r}", a=self.addr.redacted(), h=body[:16])
            self._refuse(reply_to, link_id, "unsupported protocol version")
            return
        if not self.listening:
            self._refuse(reply_to, link_id, "the listener is closed")
            return
        if link_id in self.links:
            return  # a redelivered hello
        link = self.links[link_id] = self._new_link(link_id, reply_to)
        self._publish(reply_to, WELCOME, link_id).addErrback(link._refused)
        try:
            self.on_link(link)
        except Exception:
            _log.failure("on_link of the listener at {a} failed", a=self.addr.redacted())
            link._abort("the listener failed to accept the link")

    def _refuse(self, reply_to: str, link_id: str, why: str) -> None:
        self._publish(reply_to, with_reason(b"R", why), link_id).addErrback(lambda _: None)

    def _on_message(self, link_id: str, reply_to: str, body: bytes, redelivered: bool) -> None:
        link = self.links.get(link_id)
        if link is not None:
            link._receive(body)
            return
        if body[:1] in (b"A", b"X") or not self._valid_queue(reply_to, "worker"):
            return
        answer = b"A" if body[:1] == b"B" else with_reason(b"X", "unknown link")
        self._publish(reply_to, answer, link_id).addErrback(lambda _: None)

    def _consumer_ended(self, why: str) -> None:
        conn = self.conn
        if conn is not None and not conn.closing and self.listening:
            _log.warn("{a}: a consumer ended ({why})", a=self.addr.redacted(), why=why)
            conn.abort()  # start over: reconnect and declare again

    # -- links ---------------------------------------------------------------------------------

    def release(self, link: AMQPLink, reason: CloseReason) -> None:
        """``link`` ended: forget it and tell its receiver; a closed listener then closes the
        connection with its last link."""
        if self.links.get(link.link_id) is link:
            del self.links[link.link_id]
        link._notify_closed(reason)
        if not self.listening and not self.links:
            self._close_connection()

    # -- losing and regaining the broker -------------------------------------------------------

    def _lost(self, why: str) -> None:
        self.conn = self.channel = self._hello_channel = None
        self._hello_tag = None
        for link in list(self.links.values()):
            link._lost(f"lost the broker connection: {why}")
        if self.listening:
            _log.warn("{a}: lost the broker ({why}); reconnecting", a=self.addr.redacted(), why=why)
            self._schedule()

    def _schedule(self) -> None:
        backend = self.backend
        delay = full_jitter(
            self._attempt, backend.rng, base=backend.reconnect_base, cap=backend.reconnect_cap
        )
        self._attempt += 1
        self._retry_call = self.reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        Deferred.fromCoroutine(self.open()).addCallbacks(self._regained, self._retry_failed)

    def _regained(self, _: object) -> None:
        self._attempt = 0
        self.reconnects += 1
        if self.listening:
            _log.info("{a}: back on the broker", a=self.addr.redacted())

    def _retry_failed(self, failure: Failure) -> None:
        if not self.listening:
            return
        _log.info(
            "{a}: reconnecting failed ({why})",
            a=self.addr.redacted(),
            why=failure.getErrorMessage(),
        )
        self._schedule()

    # -- closing -------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop taking hellos; close the connection now if no link is left (else with the
        last link). Returns once the hello consumer is cancelled (and the connection closed,
        if it was)."""
        if self.listening:
            self.listening = False
            if self._retry_call is not None and self._retry_call.active():
                self._retry_call.cancel()
            self._retry_call = None
            if self._opening is not None:
                self._opening.cancel()
            tag, channel = self._hello_tag, self._hello_channel
            self._hello_tag = self._hello_channel = None
            if tag is not None and channel is not None and channel.closed is None:
                try:
                    await channel.cancel(tag)
                except Exception:
                    pass  # the connection went meanwhile
        if not self.links:
            await self._close_connection()

    def _close_connection(self) -> Deferred[None]:
        conn = self.conn
        if conn is None:
            return succeed(None)
        return conn.close()


class AMQPListener(Listener):
    """A master consuming a prefix's first-contact queue until closed.

    :ivar reconnects: how often its broker connection was lost and made again.
    """

    def __init__(self, end: MasterEnd) -> None:
        self.address = end.addr
        self._end = end

    @property
    def reconnects(self) -> int:
        """How often the listener regained the broker after losing it."""
        return self._end.reconnects

    def close(self) -> Deferred[None]:
        """Stop taking new links (the hello consumer is cancelled); links already made stay
        open, and so does the broker connection until the last of them closes."""
        return Deferred.fromCoroutine(self._end.stop())


class WorkerEnd(_End):
    """One ``connect()``: a broker connection, its own queue, and the link once welcomed."""

    def __init__(self, backend: Any, addr: Address, opts: BrokerOptions, timeout: float) -> None:
        super().__init__(backend, addr, opts)
        self.timeout = timeout
        self.link_id = os.urandom(16).hex()
        self.link: AMQPLink | None = None
        self.connecting: Deferred[Link] | None = None
        self._opening: Deferred[BrokerConnection] | None = None
        self._timer: Any = None

    def start(self) -> Deferred[Link]:
        """Begin; the Deferred fires with the link once a master welcomes it."""
        d: Deferred[Link] = Deferred(lambda _: self._abandon())
        self.connecting = d
        timeout = self.timeout
        self._timer = self.reactor.callLater(
            timeout, self._fail, f"no master answered within {timeout:g}s (timed out)"
        )
        Deferred.fromCoroutine(self._run()).addErrback(self._run_failed)
        return d

    async def _run(self) -> None:
        opts = self.opts
        self._opening = open_connection(
            self.reactor, opts, self.timeout, f"wiremsg worker {self.prefix}"
        )
        try:
            conn = await self._opening
        finally:
            self._opening = None
        if self.connecting is None:
            conn.abort()
            return
        self.conn = conn
        conn.on_lost(self._lost)
        channel = await conn.channel()
        hellos = first_contact_queue(self.prefix)
        masters = await channel.consumers(hellos)
        if not masters:
            what = "has ever listened" if masters is None else "is listening"
            raise ConnectFailed(f"no master {what} with prefix {self.prefix!r} on {opts.broker}")
        await self._consume_own(channel, "worker")
        self.channel = channel
        expiry = max(1, int(self.timeout * 1000))
        try:
            await self._publish(HELLO_KEY, HELLO, self.link_id, expiry)
        except PublishFailed as exc:
            if exc.returned:
                raise ConnectFailed(
                    f"no master queue is bound for prefix {self.prefix!r}"
                ) from None
            raise

    def _run_failed(self, failure: Failure) -> None:
        exc = failure.value
        assert exc is not None
        self._fail(exc.args[0] if isinstance(exc, ConnectFailed) else _reason(exc))

    def _on_message(self, link_id: str, reply_to: str, body: bytes, redelivered: bool) -> None:
        if link_id != self.link_id:
            _log.warn("{a}: dropped a message for another link", a=self.addr.redacted())
            return
        if self.link is not None:
            self.link._receive(body)
        elif self.connecting is None:
            return
        elif body == WELCOME and self._valid_queue(reply_to, "master"):
            self._cancel_timer()
            link = self.link = self._new_link(self.link_id, reply_to)
            d, self.connecting = self.connecting, None
            d.callback(link)
        elif body[:1] in (b"R", b"X"):
            self._fail(f"refused: {body[1:].decode('utf-8', 'replace')}")
        else:
            self._fail(f"the master does not speak this protocol (it sent {body[:16]!r})")

    def _consumer_ended(self, why: str) -> None:
        conn = self.conn
        if conn is not None and not conn.closing:
            conn.abort()

    def _lost(self, why: str) -> None:
        self.channel = None
        if self.connecting is not None:
            self._fail(f"lost the broker: {why}")
        elif self.link is not None:
            self.link._lost(f"lost the broker connection: {why}")

    def release(self, link: AMQPLink, reason: CloseReason) -> None:
        """The link ended: close the connection (its queue goes with it), then tell."""
        conn, self.channel = self.conn, None
        if conn is None:
            link._notify_closed(reason)
            return
        conn.close().addCallback(lambda _: link._notify_closed(reason))

    # -- failing -------------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _fail(self, why: str) -> None:
        """The connect failed: close what is open, then fail the Deferred."""
        d, self.connecting = self.connecting, None
        self._cancel_timer()
        if d is None:
            return
        error = ConnectFailed(f"cannot connect to {self.addr.redacted()}: {why}")
        if self._opening is not None:
            self._opening.cancel()
        conn, self.channel = self.conn, None
        if conn is None:
            d.errback(error)
        else:
            conn.close().addCallback(lambda _: d.errback(error))

    def _abandon(self) -> None:
        """The connect was cancelled: leave nothing open (the Deferred fails at once)."""
        self.connecting = None
        self._cancel_timer()
        if self._opening is not None:
            self._opening.cancel()
        if self.conn is not None:
            self.conn.abort()


def _no_broker() -> Deferred[None]:
    failed: Deferred[None] = Deferred()
    failed.errback(PublishFailed("no broker connection", returned=False))
    return failed


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."
