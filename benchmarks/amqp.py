"""wiremsg over AMQP (RabbitMQ) against raw pika on its Twisted adapter, measured in one run.

Usage::

    .venv/bin/python benchmarks/amqp.py            # default size: 3 rounds, about 30 s
    .venv/bin/python benchmarks/amqp.py --quick    # a few seconds (the smoke test uses it)
    .venv/bin/python benchmarks/amqp.py --only wiremsg_json,raw_pika --tests small

Both sides go through the broker at ``WIREMSG_AMQP_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/``), under a prefix of this run's own that is deleted at
the end. Three implementations, each as a *master* process (pinned to the first CPU) and a
*worker* process (pinned to the second); the broker is a third process on the same CPUs:

``wiremsg_json`` / ``wiremsg_msgpack``
    :class:`wiremsg.Master` and :class:`wiremsg.Worker` over ``amqp://`` (the AMQP backend:
    publisher confirms, ``mandatory``, frames of one reactor turn coalesced into one AMQP
    message); the worker offers only one codec, so the session speaks it.
``raw_pika``
    pika's ``TwistedProtocolConnection``, one AMQP message per application message: each side
    consumes its own exclusive queue (``auto_ack``) and publishes to the other's through the
    default exchange, without confirms; the producer is an ``IPushProducer`` on the transport
    and checks ``paused`` after every publish, so the broker's flow control (through TCP)
    paces it.

Tests (the master is always the one measuring; see benchmarks/README.md):

``small``  200-byte messages worker→master, one-way; msg/s counted at the master.
``rtt``    master→worker ``echo`` of a 64-byte payload with one request outstanding; p50/p99.
``large``  65,536-byte messages worker→master, one-way; MB/s of payload (10**6 bytes/s).

Stdout gets exactly one line of JSON; progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import _common as common
from _common import QUIET_TIMEOUT, Busy, Sink, text

BENCHMARK = "amqp"
IMPLS = ("wiremsg_json", "wiremsg_msgpack", "raw_pika")
"""Every implementation measured, in the first round's order."""
TESTS = ("small", "rtt", "large")
BROKER = os.environ.get("WIREMSG_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
"""The broker both sides go through."""

DEFAULT_PARAMS: dict[str, Any] = {
    "small_size": 200,
    "small_count": 100_000,
    "small_warmup": 10_000,
    "rtt_size": 64,
    "rtt_samples": 3_000,
    "rtt_warmup": 300,
    "rtt_blocks": 10,
    "rtt_block_warmup": 20,
    "large_size": 65_536,
    "large_count": 1_500,
    "large_warmup": 150,
    "tests": list(TESTS),
    "prefix": f"wiremsg-bench-{uuid.uuid4().hex[:8]}",
}
QUICK_PARAMS: dict[str, Any] = {
    **DEFAULT_PARAMS,
    "small_count": 3_000,
    "small_warmup": 300,
    "rtt_samples": 100,
    "rtt_warmup": 20,
    "rtt_blocks": 2,
    "rtt_block_warmup": 5,
    "large_count": 60,
    "large_warmup": 6,
}
DEFAULT_ROUNDS = 3
PAIR_TIMEOUT = 150.0
"""Seconds one master/worker pair may take before both are killed (default size)."""
QUICK_PAIR_TIMEOUT = 40.0

TARGETS = {
    "msgs_vs_raw_pika": (">=", 1.0),
    "rtt_p50_vs_raw_pika": ("<=", 1.5),
}
"""Target → (comparison, bound) on the matching ``ratio_*`` figure."""


# -- wiremsg --------------------------------------------------------------------------------


def _on_the_broker(prefix: str) -> None:
    """In this child process, make ``amqp://127.0.0.1:PORT`` mean the broker with ``prefix``.

    The wiremsg pair of ``_common`` listens on ``SCHEME://127.0.0.1:0`` and connects to the port
    the listener reports, as for a TCP backend. Here the class the registry loads for ``amqp``
    is swapped for a subclass that puts the broker's address (credentials, vhost, this run's
    prefix) in their place; the backend itself is the real one.
    """
    import wiremsg.backends._amqp as amqp_backend
    from wiremsg.address import parse_address

    broker = parse_address(BROKER)
    target = replace(broker, params=MappingProxyType({**broker.params, "prefix": prefix}))
    real = amqp_backend.AMQPBackend

    class OnTheBroker(real):  # type: ignore[valid-type,misc]
        def listen(self, address: Any, on_link: Any) -> Any:
            return super().listen(target, on_link)

        def connect(self, address: Any, timeout: float = 10.0) -> Any:
            return super().connect(target, timeout)

    amqp_backend.AMQPBackend = OnTheBroker  # type: ignore[misc]


def _per_message(link: Any) -> tuple[str, Callable[[], int]] | None:
    """Count the AMQP messages the master's link receives (each a batch of frames)."""
    if not hasattr(link, "messages_received"):
        return None
    return "small_msgs_per_message", lambda: int(link.messages_received)


def _wiremsg(codec: str) -> tuple[common.ServerMain, common.ClientMain]:
    server = common.wiremsg_server("amqp", codec, _per_message)
    client = common.wiremsg_client("amqp", codec)

    async def on_broker_server(reactor: Any, params: dict[str, Any], ready: Any) -> Any:
        _on_the_broker(params["prefix"])
        return await server(reactor, params, ready)

    async def on_broker_client(reactor: Any, params: dict[str, Any], ready: Any) -> None:
        _on_the_broker(params["prefix"])
        await client(reactor, params, ready)

    return on_broker_server, on_broker_client


# -- raw pika on the Twisted adapter ----------------------------------------------------------

# What the raw pair's messages start with (the one-way payload itself starts with "[").
_HELLO, _START, _ECHO, _QUIT, _BYE = (
    common.RAW_HELLO,
    common.RAW_START,
    common.RAW_ECHO,
    common.RAW_QUIT,
    common.RAW_BYE,
)


def _raw_pika() -> tuple[common.ServerMain, common.ClientMain]:
    import pika
    from pika.adapters.twisted_connection import TwistedProtocolConnection
    from twisted.internet import endpoints
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    from wiremsg.address import parse_address

    broker = parse_address(BROKER)

    async def connect(reactor: Any) -> tuple[Any, Any]:
        params = pika.ConnectionParameters(
            virtual_host=broker.path[1:] if len(broker.path) > 1 else "/",
            credentials=pika.PlainCredentials(broker.user or "guest", broker.password or "guest"),
        )
        conn = TwistedProtocolConnection(params)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, broker.host, broker.port or 5672)
        await endpoints.connectProtocol(endpoint, conn)  # type: ignore[no-untyped-call]
        await conn.ready
        conn.transport.setTcpNoDelay(True)
        return conn, await conn.channel()

    async def own_queue(channel: Any, name: str) -> str:
        await channel.queue_declare(name, exclusive=True, auto_delete=True)
        return name

    def consume(channel: Any, queue: str, on_message: Callable[[bytes, Any], None]) -> None:
        async def loop() -> None:
            messages, _ = await channel.basic_consume(queue=queue, auto_ack=True)
            while True:
                msg = await messages.get()
                on_message(msg.body, msg.properties)

        ensureDeferred(loop()).addErrback(lambda _: None)  # ends with the connection

    async def close(conn: Any) -> None:
        closed = conn.close()
        if closed is not None:
            await closed

    @implementer(IPushProducer)
    class Valve:
        """The transport's push producer: ``paused`` while its buffer is full."""

        def __init__(self, transport: Any) -> None:
            self.paused = False
            self._resumed: Deferred[None] | None = None
            transport.registerProducer(self, True)

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            d, self._resumed = self._resumed, None
            if d is not None:
                d.callback(None)

        def stopProducing(self) -> None:
            self.resumeProducing()

        def resumed(self) -> Deferred[None]:
            self._resumed = Deferred()
            return self._resumed

    async def server(reactor: Any, params: dict[str, Any], ready: Callable[..., None]) -> Any:
        conn, channel = await connect(reactor)
        queue = await own_queue(channel, f"{params['prefix']}.raw.master")
        sink = Sink(reactor)
        hello: Deferred[str] = Deferred()
        bye: Deferred[None] = Deferred()
        waiting: list[Deferred[bytes]] = []  # the echo request outstanding, if any
        control = {_HELLO, _ECHO, _BYE}

        def on_message(body: bytes, properties: Any) -> None:
            kind = body[:1]
            if kind not in control:
                sink.hit()
            elif kind == _ECHO and waiting:
                waiting.pop().callback(body)
            elif kind == _HELLO and not hello.called:
                hello.callback(body[1:].decode())
            elif kind == _BYE and not bye.called:
                bye.callback(None)

        result: dict[str, Any] = {}
        try:
            consume(channel, queue, on_message)
            ready({"queue": queue})
            hello.addTimeout(QUIET_TIMEOUT, reactor)
            worker = await hello

            def send(data: bytes) -> None:
                channel.basic_publish("", worker, data)

            result = await common.raw_master_tests(reactor, params, sink, send, waiting, bye)
        finally:
            await close(conn)
        return result

    async def client(reactor: Any, params: dict[str, Any], ready: dict[str, Any]) -> None:
        conn, channel = await connect(reactor)
        queue = await own_queue(channel, f"{params['prefix']}.raw.worker")
        master = ready["queue"]
        valve = Valve(conn.transport)
        quit_: Deferred[None] = Deferred()

        def send(data: bytes) -> None:
            channel.basic_publish("", master, data)

        async def produce(spec: dict[str, Any]) -> None:
            payload = text(spec["size"]).encode("ascii")
            busy = Busy()
            for _ in range(spec["count"]):
                if valve.paused:
                    await valve.resumed()
                send(payload)
            common.report(**{f"{spec['test']}_sender_cpu": busy.utilisation()})

        def on_message(body: bytes, properties: Any) -> None:
            kind = body[:1]
            if kind == _ECHO:
                send(body)
            elif kind == _START:
                spec = json.loads(body[1:])
                go = lambda: ensureDeferred(produce(spec))  # noqa: E731
                reactor.callLater(0, go)  # not from inside the receive path
            elif kind == _QUIT and not quit_.called:
                send(_BYE)
                quit_.callback(None)

        try:
            consume(channel, queue, on_message)
            send(_HELLO + queue.encode())
            await quit_
        finally:
            await close(conn)

    return server, client


def _implementations() -> tuple[dict[str, common.ServerMain], dict[str, common.ClientMain]]:
    json_server, json_client = _wiremsg("json")
    msgpack_server, msgpack_client = _wiremsg("msgpack")
    raw_server, raw_client = _raw_pika()
    servers: dict[str, common.ServerMain] = {
        "wiremsg_json": json_server,
        "wiremsg_msgpack": msgpack_server,
        "raw_pika": raw_server,
    }
    clients: dict[str, common.ClientMain] = {
        "wiremsg_json": json_client,
        "wiremsg_msgpack": msgpack_client,
        "raw_pika": raw_client,
    }
    return servers, clients


# -- the orchestrator ------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """The shared facts plus the pika version and the broker's (from its handshake)."""
    import pika

    from wiremsg.address import parse_address

    env = common.environment()
    env["pika"] = pika.__version__
    env["broker"] = parse_address(BROKER).redacted()
    try:
        with pika.BlockingConnection(_blocking_parameters()) as conn:
            props = conn._impl.server_properties  # private, read for the record only
            version = props.get("version", "?")
            env["rabbitmq"] = version.decode() if isinstance(version, bytes) else str(version)
    except pika.exceptions.AMQPError as exc:
        env["rabbitmq"] = f"unreachable: {exc!r}"
    return env


def _blocking_parameters() -> Any:
    import pika

    from wiremsg.address import parse_address

    broker = parse_address(BROKER)
    return pika.ConnectionParameters(
        broker.host,
        broker.port or 5672,
        broker.path[1:] if len(broker.path) > 1 else "/",
        pika.PlainCredentials(broker.user or "guest", broker.password or "guest"),
        socket_timeout=5,
    )


def forget_prefix(prefix: str) -> None:
    """Delete what this run's prefix left on the broker (wiremsg's exchange and queue)."""
    import pika

    from wiremsg.backends._amqp import topology

    exchange, queues = topology(prefix)
    try:
        with pika.BlockingConnection(_blocking_parameters()) as conn:
            channel = conn.channel()
            for queue in queues:
                channel.queue_delete(queue)
            channel.exchange_delete(exchange)
    except pika.exceptions.AMQPError as exc:
        common.progress(f"could not delete prefix {prefix}: {exc!r}")


BENCH = common.Benchmark(
    name=BENCHMARK,
    script=__file__,
    description="wiremsg over AMQP vs raw pika (Twisted adapter); one JSON line on stdout.",
    impls=IMPLS,
    tests=TESTS,
    default_params=DEFAULT_PARAMS,
    quick_params=QUICK_PARAMS,
    default_rounds=DEFAULT_ROUNDS,
    pair_timeout=PAIR_TIMEOUT,
    quick_pair_timeout=QUICK_PAIR_TIMEOUT,
    targets=TARGETS,
    ratios=lambda results: common.wiremsg_ratios(results, "raw_pika"),
    implementations=_implementations,
    environment=environment,
)


def main(argv: list[str] | None = None) -> int:
    try:
        return common.main(BENCH, argv)
    finally:
        if "--role" not in (sys.argv[1:] if argv is None else argv):
            forget_prefix(DEFAULT_PARAMS["prefix"])


if __name__ == "__main__":
    sys.exit(main())
