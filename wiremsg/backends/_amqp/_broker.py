"""The broker side of the AMQP backend: addresses, connections and channels, over pika.

This is the only module of the backend that imports pika, and it uses pika's Twisted adapter
(``TwistedProtocolConnection``) through three small objects, so that moving to another client
later (pika's thread-based connection, aio-pika) touches this file alone:

:class:`BrokerOptions`
    What an ``amqp://`` / ``amqps://`` address says: broker, vhost, credentials, TLS, the
    ``prefix`` naming the exchange and queues, heartbeat and prefetch.
:func:`open_connection` → :class:`BrokerConnection`
    TCP (or TLS) to the broker and the AMQP handshake, bounded by a timeout and cancellable;
    a failure is a :class:`~wiremsg.errors.ConnectFailed` naming the broker's own reason (pika's
    Twisted adapter reports every handshake failure as ``ConnectionDone``; the reason is
    recovered here, see PITFALLS (c)). ``on_lost`` tells, once, why an open connection ended.
:class:`BrokerChannel`
    One channel in confirm mode: declare, publish (``mandatory``; the Deferred fails with
    :class:`PublishFailed` when the broker returns or refuses the message) and consume with a
    plain callback (messages are acknowledged in bulk once the ones that arrived together are
    handled).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
from pika import exceptions as pika_errors
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.internet import endpoints, ssl
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from wiremsg.address import Address
from wiremsg.errors import AddressError, ConnectFailed

__all__ = [
    "BrokerChannel",
    "BrokerConnection",
    "BrokerOptions",
    "PublishFailed",
    "open_connection",
    "parse_options",
]

_log = Logger()

# pika logs returned messages and lost connections as warnings and errors; with no handler of
# its own, Python's last-resort handler would print them on stderr. What matters reaches the
# links as close reasons instead. An application that configures logging still sees them.
logging.getLogger("pika").addHandler(logging.NullHandler())

DEFAULT_PREFIX = "wiremsg"
"""The ``prefix`` when the address has none."""
DEFAULT_HEARTBEAT = 10
"""AMQP heartbeat (seconds) asked of the broker: how soon a silent broker is noticed."""
MAX_PREFETCH = 65535
"""The largest ``prefetch`` AMQP can express (a short)."""
CLOSE_TIMEOUT = 5.0
"""Seconds an orderly connection close may take before the TCP connection is aborted."""
ACK_DELAY = 0.05
"""Seconds a consumer may hold deliveries unacknowledged (below half its prefetch)."""

_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_COMMON_PARAMS = frozenset({"prefix", "heartbeat", "prefetch"})
_TLS_PARAMS = frozenset({"ca", "cert", "key", "sasl", "server_name"})


@dataclass(frozen=True)
class BrokerOptions:
    """What an AMQP address asks for.

    :ivar prefix: names the exchange and every queue (several fleets share one broker).
    :ivar heartbeat: AMQP heartbeat in seconds (0: none).
    :ivar prefetch: unacknowledged deliveries a consumer may hold, or None for the backend's
        default (aligned with the session window).
    :ivar tls: ``amqps``: TLS to the broker.
    :ivar ca: a PEM file of CA certificates to trust (default: the platform's).
    :ivar cert: a PEM client certificate (and key, unless ``key`` is given).
    :ivar key: the client certificate's PEM key.
    :ivar external: log in with SASL EXTERNAL (the client certificate), not a password.
    :ivar server_name: the name the broker's certificate must carry (default: the host).
    """

    host: str
    port: int
    vhost: str
    user: str | None
    password: str | None
    prefix: str = DEFAULT_PREFIX
    heartbeat: int = DEFAULT_HEARTBEAT
    prefetch: int | None = None
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    external: bool = False
    server_name: str | None = None

    @property
    def broker(self) -> str:
        """``host:port/vhost`` for messages and peer descriptions (no credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}{self.vhost if self.vhost.startswith('/') else '/' + self.vhost}"


def parse_options(addr: Address) -> BrokerOptions:
    """Read an ``amqp://`` or ``amqps://`` address.

    :raises AddressError: for another scheme, a tunnel, an unknown or malformed parameter.
    """
    url = addr.redacted()
    if addr.scheme not in ("amqp", "amqps"):
        why = "the amqp backend serves amqp://USER:PASS@HOST:PORT/VHOST and amqps://..."
        raise AddressError("scheme", url, why)
    params = dict(addr.params)
    if "via" in params:
        raise AddressError("via", url, "tunnel to the broker with TLS (amqps://) instead")
    known = _COMMON_PARAMS | (_TLS_PARAMS if addr.scheme == "amqps" else frozenset())
    unknown = sorted(set(params) - known)
    if unknown:
        why = f"unknown parameter {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        if set(unknown) & _TLS_PARAMS:
            why += "; TLS parameters need amqps://"
        raise AddressError("query", url, why)
    prefix = params.get("prefix", DEFAULT_PREFIX)
    if not _PREFIX_RE.match(prefix) or prefix.startswith("amq."):
        why = f"prefix {prefix!r} must be 1-100 of A-Z a-z 0-9 _ . : - and not start with amq."
        raise AddressError("query", url, why)
    try:
        heartbeat = int(params.get("heartbeat", DEFAULT_HEARTBEAT))
        prefetch = int(params["prefetch"]) if "prefetch" in params else None
        if not 0 <= heartbeat <= 65535:
            raise ValueError("heartbeat must be 0-65535 seconds")
        if prefetch is not None and not 1 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be 1-{MAX_PREFETCH}")
    except ValueError as exc:
        raise AddressError("query", url, str(exc)) from None
    sasl = params.get("sasl", "plain").lower()
    if sasl not in ("plain", "external"):
        raise AddressError("query", url, f"sasl must be plain or external, not {sasl!r}")
    for name in ("ca", "cert", "key"):
        if name in params and not Path(params[name]).is_file():
            raise AddressError("query", url, f"{name}: no such file {params[name]!r}")
    if "key" in params and "cert" not in params:
        raise AddressError("query", url, "key needs cert")
    if sasl == "external" and "cert" not in params:
        raise AddressError("query", url, "sasl=external logs in with a client cert: give cert")
    vhost = addr.path or "/"
    vhost = vhost[1:] if vhost.startswith("/") and len(vhost) > 1 else vhost
    return BrokerOptions(
        host=addr.host,
        port=addr.port or (5671 if addr.scheme == "amqps" else 5672),
        vhost=vhost,
        user=addr.user,
        password=addr.password,
        prefix=prefix,
        heartbeat=heartbeat,
        prefetch=prefetch,
        tls=addr.scheme == "amqps",
        ca=params.get("ca"),
        cert=params.get("cert"),
        key=params.get("key"),
        external=sasl == "external",
        server_name=params.get("server_name"),
    )


class PublishFailed(Exception):
    """A published message did not reach a queue.

    :ivar returned: True when the broker returned it (``mandatory``: no queue is bound to its
        routing key, i.e. the addressee's queue is gone); False for a ``nack`` or a closed
        channel.
    """

    def __init__(self, text: str, returned: bool) -> None:
        super().__init__(text)
        self.returned = returned


def _describe_close(exc: BaseException | None) -> str:
    """Words for why a connection or channel ended (pika or Twisted exception)."""
    if isinstance(exc, pika_errors.ConnectionClosedByBroker | pika_errors.ChannelClosedByBroker):
        return f"the broker closed it ({exc.reply_code} {exc.reply_text})"
    if isinstance(exc, pika_errors.ConnectionClosedByClient | pika_errors.ChannelClosedByClient):
        return "closed here"
    if exc is None or isinstance(exc, ConnectionDone):
        return "the broker connection closed"
    return f"the broker connection was lost ({type(exc).__name__}: {exc})"


class _Protocol(TwistedProtocolConnection):  # type: ignore[misc]
    """pika's Twisted protocol, keeping the broker's reason for ending the handshake.

    pika's adapter replaces that reason with ``ConnectionDone`` before anyone can see it (a
    refused login looks like a closed socket); this subclass reads it back first.
    """

    broker_error: BaseException | None = None
    transport_error: BaseException | None = None

    def connectionLost(self, reason: Failure) -> None:
        """Note the broker's own close reason, then let pika handle the loss."""
        self.transport_error = reason.value
        error = getattr(getattr(self, "_impl", None), "_error", None)
        if isinstance(error, pika_errors.ConnectionClosedByBroker):
            self.broker_error = error
        super().connectionLost(reason)


def _tls_options(opts: BrokerOptions) -> Any:
    trust: Any = None
    if opts.ca is not None:
        trust = ssl.Certificate.loadPEM(Path(opts.ca).read_bytes())
    client: Any = None
    if opts.cert is not None:
        pem = Path(opts.cert).read_bytes()
        if opts.key is not None:
            pem += b"\n" + Path(opts.key).read_bytes()
        client = ssl.PrivateCertificate.loadPEM(pem)  # type: ignore[no-untyped-call]
    return ssl.optionsForClientTLS(
        opts.server_name or opts.host, trustRoot=trust, clientCertificate=client
    )


def _parameters(opts: BrokerOptions, name: str) -> Any:
    credentials: Any
    if opts.external:
        credentials = pika.credentials.ExternalCredentials()
    else:
        credentials = pika.PlainCredentials(opts.user or "guest", opts.password or "guest")
    return pika.ConnectionParameters(
        virtual_host=opts.vhost,
        credentials=credentials,
        heartbeat=opts.heartbeat,
        client_properties={"connection_name": name, "product": "wiremsg"},
    )


def open_connection(
    reactor: Any, opts: BrokerOptions, timeout: float, name: str
) -> Deferred[BrokerConnection]:
    """Connect to the broker and log in, within ``timeout`` seconds.

    :param name: the connection's name in the broker's management tools.
    :returns: a Deferred of the open :class:`BrokerConnection`; it fails with
        :class:`ConnectFailed` saying why (refused, timed out, TLS, login, vhost), and
        cancelling it aborts the attempt and leaves nothing open.
    """
    where = f"the broker at {opts.broker}"
    tcp = endpoints.TCP6ClientEndpoint if ":" in opts.host else endpoints.TCP4ClientEndpoint
    endpoint: Any = tcp(reactor, opts.host, opts.port, timeout=timeout)
    if opts.tls:
        endpoint = endpoints.wrapClientTLS(_tls_options(opts), endpoint)
    protocol = _Protocol(_parameters(opts, name), custom_reactor=reactor)
    state = {"connected": False, "timed_out": False}

    def stop(d: object = None) -> None:
        # Never cancel pika's ``ready``: pika fires it itself when the connection goes.
        if not connecting.called:
            connecting.cancel()
        elif protocol.transport is not None:
            protocol.transport.abortConnection()

    result: Deferred[BrokerConnection] = Deferred(stop)

    def connected(_: object) -> None:
        state["connected"] = True
        ready = protocol.ready
        assert ready is not None
        ready.addCallbacks(opened, failed)

    def opened(_: object) -> None:
        if not result.called:
            _no_delay(protocol.transport)
            result.callback(BrokerConnection(reactor, protocol, opts))
        elif protocol.transport is not None:  # abandoned meanwhile
            protocol.transport.abortConnection()

    def failed(failure: Failure) -> None:
        if result.called:
            return
        exc = protocol.transport_error or failure.value
        if state["timed_out"]:
            why = f"no answer within {timeout:g}s (timed out)"
        elif protocol.broker_error is not None:
            error = protocol.broker_error
            code = getattr(error, "reply_code", 0)
            text = getattr(error, "reply_text", str(error))
            what = {403: "refused the login", 530: "refused the vhost"}.get(code, "refused us")
            if code == 403 and opts.external:
                what = "refused the SASL EXTERNAL login (client certificate)"
            why = f"{what}: {code} {text}"
        elif not state["connected"]:
            why = f"no broker answers ({failure.getErrorMessage()})"
        elif opts.tls and "SSL" in repr(exc):
            why = f"the TLS handshake failed ({exc})"
        else:
            why = (
                "the broker closed the connection during the AMQP handshake (wrong user or "
                f"password, no access to vhost {opts.vhost!r}, or not an AMQP 0-9-1 broker)"
            )
        if protocol.transport is not None:
            protocol.transport.abortConnection()
        result.errback(ConnectFailed(f"cannot connect to {where}: {why}"))

    def timed_out() -> None:
        state["timed_out"] = True
        stop()

    factory = Factory.forProtocol(lambda: protocol)
    factory.noisy = False  # no "Starting factory" line per (re)connection attempt
    connecting: Deferred[Any] = endpoint.connect(factory)
    connecting.addCallbacks(connected, failed)
    timer = reactor.callLater(timeout, timed_out)
    result.addBoth(_cancel_timer, timer)
    return result


def _no_delay(transport: Any) -> None:
    """Turn Nagle off: publishes, confirms and acks are small and must not wait for each
    other (under TLS the TCP transport is one level down)."""
    for candidate in (transport, getattr(transport, "transport", None)):
        set_no_delay = getattr(candidate, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
            return


def _cancel_timer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


class BrokerConnection:
    """One open AMQP connection.

    :ivar opts: the options it was opened with.
    """

    def __init__(self, reactor: Any, protocol: _Protocol, opts: BrokerOptions) -> None:
        self.reactor = reactor
        self.opts = opts
        self._protocol = protocol
        self._lost: str | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._gone: list[Deferred[None]] = []
        self._abort_call: Any = None
        self._closing = False
        closed = protocol.closed
        assert closed is not None
        closed.addBoth(self._ended)

    @property
    def lost(self) -> str | None:
        """Why the connection ended, or None while it is open."""
        return self._lost

    @property
    def closing(self) -> bool:
        """True once :meth:`close` or :meth:`abort` was called (or the connection ended)."""
        return self._closing or self._lost is not None

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(why)`` once when the connection ends (at once if it has)."""
        if self._lost is not None:
            callback(self._lost)
        else:
            self._listeners.append(callback)

    def _ended(self, result: Any) -> None:
        exc = result.value if isinstance(result, Failure) else result
        self._lost = _describe_close(exc)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        listeners, self._listeners = self._listeners, []
        for callback in listeners:
            try:
                callback(self._lost)
            except Exception:
                _log.failure("a broker connection-loss handler failed")
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)

    def channel(self) -> Deferred[BrokerChannel]:
        """Open a channel in publisher-confirm mode.

        :returns: a Deferred of the :class:`BrokerChannel`; fails if the connection ends first.
        """

        async def open_channel() -> BrokerChannel:
            channel = await self._protocol.channel()
            await channel.confirm_delivery()
            return BrokerChannel(self.reactor, channel, self.opts.prefix)

        return Deferred.fromCoroutine(open_channel())

    def close(self, timeout: float = CLOSE_TIMEOUT) -> Deferred[None]:
        """Close in order (the broker confirms), aborting after ``timeout`` seconds.

        :returns: a Deferred that fires once the TCP connection is gone. Never fails.
        """
        d: Deferred[None] = Deferred()
        if self._lost is not None:
            d.callback(None)
            return d
        self._gone.append(d)
        self._closing = True
        if self._abort_call is None:
            self._abort_call = self.reactor.callLater(timeout, self.abort)
            try:
                self._protocol.close()
            except pika_errors.AMQPError:
                self.abort()
        return d

    def abort(self) -> None:
        """Drop the TCP connection at once (the loss is reported as usual)."""
        self._closing = True
        transport = self._protocol.transport
        if transport is not None and self._lost is None:
            transport.abortConnection()


class BrokerChannel:
    """A channel in confirm mode, publishing to the ``prefix`` exchange."""

    def __init__(self, reactor: Any, channel: Any, exchange: str) -> None:
        self._reactor = reactor
        self._channel = channel
        self.exchange = exchange
        self._closed: str | None = None
        channel.on_closed.addBoth(self._channel_closed)

    def _channel_closed(self, result: Any) -> None:
        exc = result.value if isinstance(result, Failure) else result
        self._closed = _describe_close(exc)

    @property
    def closed(self) -> str | None:
        """Why the channel closed, or None while it is open."""
        return self._closed

    async def declare(
        self,
        queue: str,
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        bind: str | None = None,
    ) -> None:
        """Declare ``queue`` (and the exchange), and bind it with routing key ``bind``."""
        await self._channel.exchange_declare(self.exchange, exchange_type="direct", durable=True)
        await self._channel.queue_declare(
            queue, durable=durable, exclusive=exclusive, auto_delete=auto_delete
        )
        if bind is not None:
            await self._channel.queue_bind(queue, self.exchange, routing_key=bind)

    async def delete(self, queues: list[str]) -> None:
        """Delete ``queues`` (with their messages) and the exchange; missing ones are fine."""
        for queue in queues:
            await self._channel.queue_delete(queue)
        await self._channel.exchange_delete(self.exchange)

    async def consumers(self, queue: str) -> int | None:
        """How many consumers ``queue`` has, or None if it does not exist (which closes this
        channel: the broker answers a passive declare of a missing queue with an error)."""
        try:
            frame = await self._channel.queue_declare(queue, passive=True)
        except pika_errors.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise
        count: int = frame.method.consumer_count
        return count

    @staticmethod
    def properties(link_id: str, reply_to: str, expiration_ms: int | None = None) -> Any:
        """The message properties :meth:`publish` takes: ``correlation_id`` and ``reply_to``,
        and a TTL when given (build them once per link: they do not change)."""
        return pika.BasicProperties(
            correlation_id=link_id,
            reply_to=reply_to,
            expiration=None if expiration_ms is None else str(expiration_ms),
        )

    def publish(self, routing_key: str, body: bytes, properties: Any) -> Deferred[None]:
        """Publish ``body`` with ``mandatory`` set; fires once the broker confirms it.

        :param properties: from :meth:`properties`.
        :returns: a Deferred that fails with :class:`PublishFailed` if the broker returns the
            message (no queue for ``routing_key``), refuses it, or the channel closes first.
        """
        try:
            d: Deferred[Any] = self._channel.basic_publish(
                self.exchange, routing_key, body, properties, mandatory=True
            )
        except pika_errors.AMQPError as exc:  # the channel or connection is closing
            d = Deferred()
            d.errback(exc)
        return d.addCallbacks(_confirmed, _publish_failure)

    async def consume(
        self,
        queue: str,
        prefetch: int,
        on_message: Callable[[str, str, bytes, bool], None],
        on_end: Callable[[str], None],
        *,
        prompt_acks: bool = False,
        on_drained: Callable[[], None] | None = None,
    ) -> str:
        """Consume ``queue``, at most ``prefetch`` unacknowledged deliveries at a time.

        ``on_message(link_id, reply_to, body, redelivered)`` is called for each message, in
        order; they are acknowledged in bulk after they are handled (see :class:`_Consumer`;
        with ``prompt_acks``, as soon as those that arrived together are handled).
        ``on_end(why)`` is called once when the consumer ends (cancelled, channel or
        connection closed). ``on_drained()``, if given, is called each time every delivery
        that had arrived is handled, before they are acknowledged: the moment to publish what
        they provoked. :returns: the consumer tag.
        """
        await self._channel.basic_qos(prefetch_count=prefetch)
        queue_obj, tag = await self._channel.basic_consume(queue, auto_ack=False)
        ack_at = 1 if prompt_acks else max(1, prefetch // 2)
        _Consumer(
            self._reactor, self._channel, queue_obj, ack_at, on_message, on_end, on_drained
        ).pull()
        return str(tag)

    async def cancel(self, tag: str) -> None:
        """Stop the consumer ``tag`` (its ``on_end`` is called)."""
        await self._channel.basic_cancel(tag)


def _confirmed(_: object) -> None:
    return None


def _publish_failure(failure: Failure) -> Failure:
    exc = failure.value
    if isinstance(exc, pika_errors.UnroutableError):
        text = "the broker returned a message: no queue takes its routing key"
        raise PublishFailed(text, returned=True)
    if isinstance(exc, pika_errors.NackError):
        raise PublishFailed("the broker refused a message (nack)", returned=False)
    raise PublishFailed(_describe_close(exc), returned=False)


class _Consumer:
    """Pulls a pika consumer's queue without one reactor turn per message.

    Deliveries are acknowledged together (``multiple``): once those that arrived together are
    handled if ``ack_at`` are unacknowledged by then, else :data:`ACK_DELAY` seconds after the
    first unacknowledged one, so that an acknowledgement does not go out ahead of the answer a
    message provoked (nor cost the broker one operation per message).
    """

    def __init__(
        self,
        reactor: Any,
        channel: Any,
        queue: Any,
        ack_at: int,
        on_message: Callable[[str, str, bytes, bool], None],
        on_end: Callable[[str], None],
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self._reactor, self._channel, self._queue = reactor, channel, queue
        self._on_message, self._on_end, self._on_drained = on_message, on_end, on_drained
        self._ack_at = ack_at
        self._unacked = self._last_tag = 0
        self._ack_call: Any = None

    def pull(self) -> None:
        """Handle every message already there, then wait for the next."""
        while True:
            if self._queue.closed:
                self._end(self._queue.closed)
                return
            d = self._queue.get()
            if not d.called:
                if self._unacked and self._on_drained is not None:
                    try:
                        self._on_drained()
                    except Exception:
                        _log.failure("publishing after AMQP deliveries failed")
                self._settle()
                d.addBoth(self._arrived)
                return
            box: list[Any] = []
            d.addBoth(box.append)  # it has fired: this runs now
            if isinstance(box[0], Failure):
                self._end(box[0].value)
                return
            self._handle(box[0])

    def _arrived(self, item: Any) -> None:
        if isinstance(item, Failure):
            self._end(item.value)
            return
        self._handle(item)
        self.pull()

    def _handle(self, item: Any) -> None:
        props = item.properties
        try:
            link_id, reply_to = props.correlation_id or "", props.reply_to or ""
            self._on_message(link_id, reply_to, item.body or b"", item.method.redelivered)
        except Exception:
            _log.failure("handling an AMQP message failed")
        self._last_tag = item.method.delivery_tag
        self._unacked += 1

    def _settle(self) -> None:
        if self._unacked >= self._ack_at:
            self._ack()
        elif self._unacked and self._ack_call is None:
            self._ack_call = self._reactor.callLater(ACK_DELAY, self._ack)

    def _ack(self) -> None:
        self._cancel_ack()
        tag, self._unacked = self._last_tag, 0
        if tag and self._channel.is_open:
            try:
                self._channel.basic_ack(tag, multiple=True)
            except pika_errors.AMQPError:
                pass  # the channel is closing; its end is reported

    def _cancel_ack(self) -> None:
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None

    def _end(self, exc: BaseException | None) -> None:
        self._cancel_ack()
        if isinstance(exc, pika_errors.ConsumerCancelled):
            why = "the consumer was cancelled"
        else:
            why = _describe_close(exc)
        self._on_end(why)
