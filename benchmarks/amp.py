"""wiremsg over AMP against raw Twisted AMP and Perspective Broker, measured in one run.

Usage::

    .venv/bin/python benchmarks/amp.py            # default size: 3 rounds, about 30 s
    .venv/bin/python benchmarks/amp.py --quick    # a few seconds (the smoke test uses it)
    .venv/bin/python benchmarks/amp.py --only wiremsg_json --tests small --profile-dir /tmp/p

Four implementations are measured, each as a *master* process (pinned to the first CPU) and a
*worker* process (pinned to the second), over loopback TCP with TCP_NODELAY on both ends:

``wiremsg_json`` / ``wiremsg_msgpack``
    :class:`wiremsg.Master` and :class:`wiremsg.Worker` over ``amp://127.0.0.1:0``; the worker
    offers only one codec, so the session speaks it.
``raw_amp``
    a pair of stock ``twisted.protocols.amp.AMP`` protocols and four commands.
``pb``
    ``twisted.spread.pb``: the worker attaches a Referenceable to the master's root, as a
    Buildbot worker does.

Tests (the master is always the one measuring; see benchmarks/README.md for the details):

``small``  200-byte messages worker→master, one-way, as fast as back-pressure allows; msg/s
           counted at the master after a warm-up. PB: ``callRemote("update", dict)`` with at
           most ``pb_window`` answers outstanding.
``rtt``    master→worker ``echo`` of a 64-byte payload with one request outstanding; p50/p99.
``large``  65,536-byte messages worker→master, one-way; MB/s of payload (10**6 bytes/s).
           Not run for PB.

The one-way tests run ``rounds`` times per implementation in rotating order; each figure is
the median over rounds and each ratio the median of the per-round ratios. Round trips are
measured interleaved: every pair runs at once and takes turns, one block per implementation
per cycle, and the ratios are the medians of the per-cycle ratios (see ``_common``). Stdout
gets exactly one line of JSON; progress goes to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common
from _common import LOOPBACK, Busy, Sink, log_failure, measure_rtt, one_way_figures, text

BENCHMARK = "amp"
IMPLS = ("wiremsg_json", "wiremsg_msgpack", "raw_amp", "pb")
"""Every implementation measured, in the first round's order."""
TESTS = ("small", "rtt", "large")

DEFAULT_PARAMS: dict[str, Any] = {
    "small_size": 200,
    "small_count": 200_000,
    "small_warmup": 20_000,
    "pb_count": 20_000,
    "pb_warmup": 2_000,
    "pb_window": 100,
    "rtt_size": 64,
    "rtt_samples": 5_000,
    "rtt_warmup": 500,
    "rtt_blocks": 10,
    "rtt_block_warmup": 20,
    "large_size": 65_536,
    "large_count": 3_000,
    "large_warmup": 300,
    "tests": list(TESTS),
}
QUICK_PARAMS: dict[str, Any] = {
    **DEFAULT_PARAMS,
    "small_count": 5_000,
    "small_warmup": 500,
    "pb_count": 1_000,
    "pb_warmup": 100,
    "rtt_samples": 200,
    "rtt_warmup": 50,
    "rtt_blocks": 2,
    "rtt_block_warmup": 5,
    "large_count": 100,
    "large_warmup": 10,
}
DEFAULT_ROUNDS = 3
PAIR_TIMEOUT = 150.0
"""Seconds one master/worker pair may take before both are killed (default size)."""
QUICK_PAIR_TIMEOUT = 40.0

TARGETS = {
    "msgs_vs_raw_amp": (">=", 1.0),
    "msgs_vs_pb": (">=", 5.0),
    "rtt_p50_vs_raw_amp": ("<=", 1.5),
}
"""Target → (comparison, bound) on the matching ``ratio_*`` figure."""

# -- wiremsg --------------------------------------------------------------------------------


def _count_boxes(link: Any) -> tuple[str, Callable[[], int]]:
    """The AMP boxes the master's link has received (each carries a batch of frames)."""
    return "small_msgs_per_box", lambda: link.protocol.boxes_received


# -- raw AMP ----------------------------------------------------------------------------------


def _raw_amp() -> tuple[common.ServerMain, common.ClientMain]:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IPushProducer
    from twisted.internet.protocol import Factory
    from twisted.protocols import amp
    from zope.interface import implementer

    class BigString(amp.Argument):
        """Bytes of any length over keys ``name``, ``name.2``, ... (<= 65,535 bytes each)."""

        def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
            value = objects[name.decode("ascii")]
            step = amp.MAX_VALUE_LENGTH
            for i, start in enumerate(range(0, max(len(value), 1), step)):
                strings[name if i == 0 else b"%s.%d" % (name, i + 1)] = value[start : start + step]

        def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
            parts, key = [], name
            while key in strings:
                parts.append(strings[key])
                key = b"%s.%d" % (name, len(parts) + 1)
            objects[name.decode("ascii")] = b"".join(parts)

    class Update(amp.Command):
        arguments = [(b"line", amp.String())]
        requiresAnswer = False

    class Chunk(amp.Command):
        arguments = [(b"data", BigString())]
        requiresAnswer = False

    class Echo(amp.Command):
        arguments = [(b"data", amp.String())]
        response = [(b"data", amp.String())]

    class Start(amp.Command):
        arguments = [(b"test", amp.Unicode()), (b"count", amp.Integer()), (b"size", amp.Integer())]
        response: list[Any] = []

    @implementer(IPushProducer)
    class Pump:
        """Calls ``send()`` ``count`` times, pausing whenever the transport's buffer is full
        (checked after every write, as PITFALLS advises)."""

        def __init__(self, transport: Any, test: str, count: int, send: Callable[[], Any]) -> None:
            self.transport, self.test, self.left, self.send = transport, test, count, send
            self.paused = False
            self.busy = Busy()

        def start(self) -> None:
            self.transport.registerProducer(self, True)
            self.resumeProducing()

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False
            send = self.send
            while not self.paused and self.left > 0:
                send()
                self.left -= 1
            if self.left == 0:
                self.left = -1
                self.transport.unregisterProducer()
                common.report(**{f"{self.test}_sender_cpu": self.busy.utilisation()})

        def stopProducing(self) -> None:
            self.paused, self.left = True, -1

    class RawMaster(amp.AMP):
        sink: Sink
        connected: Deferred[RawMaster]

        def connectionMade(self) -> None:
            super().connectionMade()
            self.transport.setTcpNoDelay(True)
            self.connected.callback(self)

        @Update.responder
        def update(self, line: bytes) -> dict[str, Any]:
            self.sink.hit()
            return {}

        @Chunk.responder
        def chunk(self, data: bytes) -> dict[str, Any]:
            self.sink.hit()
            return {}

    class RawWorker(amp.AMP):
        reactor: Any
        lost: Deferred[None]

        def connectionMade(self) -> None:
            super().connectionMade()
            self.transport.setTcpNoDelay(True)

        def connectionLost(self, reason: Any) -> None:
            super().connectionLost(reason)
            self.lost.callback(None)

        @Echo.responder
        def echo(self, data: bytes) -> dict[str, Any]:
            return {"data": data}

        @Start.responder
        def start(self, test: str, count: int, size: int) -> dict[str, Any]:
            payload = text(size).encode("ascii")
            call = self.callRemote
            if test == "small":
                send = lambda: call(Update, line=payload)  # noqa: E731
            else:
                send = lambda: call(Chunk, data=payload)  # noqa: E731
            self.reactor.callLater(0, lambda: Pump(self.transport, test, count, send).start())
            return {}

    async def server(reactor: Any, params: dict[str, Any], ready: Callable[..., None]) -> Any:
        sink = Sink(reactor)
        connected: Deferred[RawMaster] = Deferred()

        class MasterFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> RawMaster:
                proto = RawMaster()
                proto.sink, proto.connected = sink, connected
                return proto

        port = reactor.listenTCP(0, MasterFactory(), interface=LOOPBACK)
        tests = params["tests"]
        result: dict[str, Any] = {}
        try:
            ready({"port": port.getHost().port})
            proto = await connected
            fail = log_failure("Start")

            def start(test: str, count: int, size: int) -> Callable[[], None]:
                def go() -> None:
                    proto.callRemote(Start, test=test, count=count, size=size).addErrback(fail)

                return go

            if "small" in tests:
                result.update(await sink.test(params, "small", start))
            if "rtt" in tests:
                data = text(params["rtt_size"]).encode("ascii")
                answer = await proto.callRemote(Echo, data=data)
                if answer["data"] != data:
                    raise RuntimeError("echo returned something else")
                result.update(await measure_rtt(lambda: proto.callRemote(Echo, data=data), params))
            if "large" in tests:
                result.update(await sink.test(params, "large", start))
            result["strays"] = sink.strays
            proto.transport.loseConnection()
        finally:
            await port.stopListening()
        return result

    async def client(reactor: Any, params: dict[str, Any], ready: dict[str, Any]) -> None:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        proto = RawWorker()
        proto.reactor, proto.lost = reactor, Deferred()
        await connectProtocol(TCP4ClientEndpoint(reactor, LOOPBACK, ready["port"]), proto)
        await proto.lost

    return server, client


# -- Perspective Broker -------------------------------------------------------------------------


def _pb() -> tuple[common.ServerMain, common.ClientMain]:
    from twisted.internet.defer import Deferred
    from twisted.spread import pb

    class BenchRoot(pb.Root):
        def __init__(self, sink: Sink, attached: Deferred[Any]) -> None:
            self.sink, self.attached = sink, attached

        def remote_attach(self, worker: Any) -> None:
            worker.broker.transport.setTcpNoDelay(True)
            self.attached.callback(worker)

        def remote_update(self, payload: dict[str, Any]) -> None:
            self.sink.hit()

    class BenchWorker(pb.Referenceable):
        def __init__(self, reactor: Any, root: Any) -> None:
            self.reactor, self.root = reactor, root

        def remote_echo(self, body: Any) -> Any:
            return body

        def remote_start(self, count: int, size: int, window: int) -> None:
            self.reactor.callLater(0, self._produce, count, size, window)

        def _produce(self, count: int, size: int, window: int) -> None:
            # Pipelined as a Buildbot worker's updates: at most `window` answers outstanding.
            call = self.root.callRemote
            payload = text(size)
            state = {"left": count, "outstanding": 0}
            fail = log_failure("update")
            busy = Busy()

            def answered(_: Any) -> None:
                state["outstanding"] -= 1
                if state["left"] == 0 and state["outstanding"] == 0:
                    common.report(small_sender_cpu=busy.utilisation())
                pump()

            def pump() -> None:
                while state["outstanding"] < window and state["left"] > 0:
                    state["left"] -= 1
                    state["outstanding"] += 1
                    call("update", {"line": payload}).addCallbacks(answered, fail)

            pump()

    async def server(reactor: Any, params: dict[str, Any], ready: Callable[..., None]) -> Any:
        sink = Sink(reactor)
        attached: Deferred[Any] = Deferred()
        factory = pb.PBServerFactory(BenchRoot(sink, attached))
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        tests = params["tests"]
        result: dict[str, Any] = {}
        try:
            ready({"port": port.getHost().port})
            worker = await attached
            if "small" in tests:
                n, size = params["pb_count"], params["small_size"]

                def go() -> None:
                    d = worker.callRemote("start", n, size, params["pb_window"])
                    d.addErrback(log_failure("start"))

                run = await sink.run(n, params["pb_warmup"], go)
                result.update(one_way_figures("small", run, size))
                result["msgs_per_s"] = result["small_msgs_per_s"]
            if "rtt" in tests:
                body = {"data": text(params["rtt_size"])}
                if await worker.callRemote("echo", body) != body:
                    raise RuntimeError("echo returned something else")
                result.update(await measure_rtt(lambda: worker.callRemote("echo", body), params))
            result["strays"] = sink.strays
            worker.broker.transport.loseConnection()
        finally:
            await port.stopListening()
        return result

    async def client(reactor: Any, params: dict[str, Any], ready: dict[str, Any]) -> None:
        factory = pb.PBClientFactory()
        reactor.connectTCP(LOOPBACK, ready["port"], factory)
        root = await factory.getRootObject()
        root.broker.transport.setTcpNoDelay(True)
        lost: Deferred[None] = Deferred()
        root.notifyOnDisconnect(lambda _: lost.callback(None))
        await root.callRemote("attach", BenchWorker(reactor, root))
        await lost

    return server, client


def _implementations() -> tuple[dict[str, common.ServerMain], dict[str, common.ClientMain]]:
    raw_server, raw_client = _raw_amp()
    pb_server, pb_client = _pb()
    servers: dict[str, common.ServerMain] = {
        "wiremsg_json": common.wiremsg_server("amp", "json", _count_boxes),
        "wiremsg_msgpack": common.wiremsg_server("amp", "msgpack", _count_boxes),
        "raw_amp": raw_server,
        "pb": pb_server,
    }
    clients: dict[str, common.ClientMain] = {
        "wiremsg_json": common.wiremsg_client("amp", "json"),
        "wiremsg_msgpack": common.wiremsg_client("amp", "msgpack"),
        "raw_amp": raw_client,
        "pb": pb_client,
    }
    return servers, clients


# -- the orchestrator ------------------------------------------------------------------------


def ratios(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The ratios against raw AMP (one-way rates, RTT p50, large) and PB (rates, RTT p50)."""
    out: dict[str, Any] = common.wiremsg_ratios(
        results, "raw_amp", [f for f in common.RATIO_FIGURES if f[0] != "rtt_p99"]
    )
    out.update(common.wiremsg_ratios(results, "pb", common.RATIO_FIGURES[:2]))
    return out


BENCH = common.Benchmark(
    name=BENCHMARK,
    script=__file__,
    description="wiremsg over AMP vs raw Twisted AMP vs PB; one JSON line on stdout.",
    impls=IMPLS,
    tests=TESTS,
    default_params=DEFAULT_PARAMS,
    quick_params=QUICK_PARAMS,
    default_rounds=DEFAULT_ROUNDS,
    pair_timeout=PAIR_TIMEOUT,
    quick_pair_timeout=QUICK_PAIR_TIMEOUT,
    targets=TARGETS,
    ratios=ratios,
    implementations=_implementations,
)


def main(argv: list[str] | None = None) -> int:
    return common.main(BENCH, argv)


if __name__ == "__main__":
    sys.exit(main())
