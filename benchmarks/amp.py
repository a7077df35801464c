"""wiremsg over AMP against raw Twisted AMP and Perspective Broker, measured in one run.

Usage::

    .venv/bin/python benchmarks/amp.py            # default size: 3 rounds, about a minute
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

The implementations run ``rounds`` times in rotating order; each figure is the median over
rounds and each ratio the median of the per-round ratios. Stdout gets exactly one line of
JSON; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common
from _common import LOOPBACK, ArrivalCounter, Busy, latency_summary, median, progress

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

SECRET = "bench-secret"
WORKER_NAME = "bench"
QUIET_TIMEOUT = 15.0
"""Seconds the master waits for the worker to attach, or to leave at the end."""

_LINE = "[step 12/40] cc -O2 -Wall -c src/wiremsg/session.c -o build/session.o: ok; "


def text(size: int) -> str:
    """``size`` characters of ASCII build-log-like text (the same for every implementation)."""
    return (_LINE * (size // len(_LINE) + 1))[:size]


def _log_failure(what: str) -> Callable[[Any], None]:
    def log(failure: Any) -> None:
        progress(f"{what} failed: {failure.getErrorMessage()}")
        sys.stderr.write(failure.getTraceback())

    return log


# -- measuring, on the master ---------------------------------------------------------------


class Sink:
    """Where one-way messages land at the master; times one test at a time."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.counter: ArrivalCounter | None = None
        self.strays = 0

    def hit(self, *_: Any) -> None:
        counter = self.counter
        if counter is None:
            self.strays += 1
        else:
            counter.hit()

    async def run(self, count: int, warmup: int, start: Callable[[], Any]) -> dict[str, Any]:
        """Call ``start()`` (which tells the worker to send ``count`` messages) and wait
        until all arrived; returns the rate and the receiver's CPU use in the timed window."""
        from twisted.internet.defer import Deferred

        done: Deferred[None] = Deferred()
        # Resume the measuring coroutine from a fresh reactor turn, not from inside the
        # library's receive path.
        counter = ArrivalCounter(
            count, warmup, lambda: self.reactor.callLater(0, done.callback, None)
        )
        self.counter = counter
        start()
        await done
        self.counter = None
        return {"rate": counter.rate(), "receiver_cpu": round(counter.cpu_utilisation(), 3)}


async def measure_rtt(call: Callable[[], Any], samples: int, warmup: int) -> dict[str, Any]:
    """Time ``await call()`` ``warmup + samples`` times, one at a time; summarise the last
    ``samples``."""
    clock = time.perf_counter
    out: list[float] = []
    for i in range(warmup + samples):
        t0 = clock()
        await call()
        t1 = clock()
        if i >= warmup:
            out.append(t1 - t0)
    return latency_summary(out)


def _one_way_figures(prefix: str, run: dict[str, Any], size: int) -> dict[str, Any]:
    rate = run["rate"]
    figures = {
        f"{prefix}_msgs_per_s": round(rate, 1),
        f"{prefix}_receiver_cpu": run["receiver_cpu"],
    }
    if prefix == "large":
        figures["large_mb_per_s"] = round(rate * size / 1e6, 1)
    return figures


# -- wiremsg --------------------------------------------------------------------------------


def _wiremsg_server(codec: str) -> common.ServerMain:
    async def server(reactor: Any, params: dict[str, Any], ready: Callable[..., None]) -> Any:
        from twisted.internet.defer import DeferredList

        from wiremsg import Master

        master = Master({WORKER_NAME: SECRET}, reactor=reactor)
        sink = Sink(reactor)
        master.on("update", sink.hit)
        tests = params["tests"]
        result: dict[str, Any] = {}
        try:
            listener = await master.listen(f"amp://{LOOPBACK}:0")
            ready({"port": listener.address.port})
            peer = await master.wait_for_worker(WORKER_NAME, timeout=QUIET_TIMEOUT)
            session = peer._driver.session  # private, read for the record only
            result["codec"] = session._codec.name
            if result["codec"] != codec:
                raise RuntimeError(f"negotiated {result['codec']}, wanted {codec}")
            link = peer._driver.link
            if "small" in tests:
                boxes = link.protocol.boxes_received
                n, size = params["small_count"], params["small_size"]
                spec = {"test": "small", "count": n, "size": size}
                run = await sink.run(n, params["small_warmup"], lambda: peer.send("bench", spec))
                result.update(_one_way_figures("small", run, size))
                result["msgs_per_s"] = result["small_msgs_per_s"]
                result["small_msgs_per_box"] = round(n / (link.protocol.boxes_received - boxes), 1)
            if "rtt" in tests:
                body = {"data": text(params["rtt_size"])}
                reply = await peer.request("echo", body)
                if reply.body != body:
                    raise RuntimeError("echo returned something else")
                result.update(
                    await measure_rtt(
                        lambda: peer.request("echo", body),
                        params["rtt_samples"],
                        params["rtt_warmup"],
                    )
                )
            if "large" in tests:
                n, size = params["large_count"], params["large_size"]
                spec = {"test": "large", "count": n, "size": size}
                run = await sink.run(n, params["large_warmup"], lambda: peer.send("bench", spec))
                result.update(_one_way_figures("large", run, size))
            result["strays"] = sink.strays
            lost = peer.when_lost()
            lost.addTimeout(QUIET_TIMEOUT, reactor)
            peer.send("quit")
            await DeferredList([lost], consumeErrors=True)
        finally:
            await master.stop()
        return result

    return server


def _wiremsg_client(codec: str) -> common.ClientMain:
    async def client(reactor: Any, params: dict[str, Any], ready: dict[str, Any]) -> None:
        from twisted.internet.defer import Deferred, ensureDeferred

        from wiremsg import Worker

        worker = Worker(
            WORKER_NAME,
            SECRET,
            [f"amp://{LOOPBACK}:{ready['port']}"],
            reactor=reactor,
            session_options={"codecs": (codec,)},
        )

        async def produce(spec: dict[str, Any]) -> None:
            # The idiomatic producer: send while writable, else wait for when_writable().
            key = "line" if spec["test"] == "small" else "data"
            payload = text(spec["size"])
            send = worker.send
            busy = Busy()
            for _ in range(spec["count"]):
                if not worker.writable:
                    await worker.when_writable()
                send("update", {key: payload})
            common.report(**{f"{spec['test']}_sender_cpu": busy.utilisation()})

        def bench(msg: Any) -> None:
            def go() -> None:
                ensureDeferred(produce(msg.body)).addErrback(_log_failure("producer"))

            reactor.callLater(0, go)  # not from inside the receive path

        quit_: Deferred[None] = Deferred()
        worker.on("echo", lambda msg: msg.body)
        worker.on("bench", bench)
        worker.on("quit", lambda msg: None if quit_.called else quit_.callback(None))
        await worker.start()
        await quit_
        await worker.stop(drain_timeout=QUIET_TIMEOUT)

    return client


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
            fail = _log_failure("Start")

            def start(test: str, count: int, size: int) -> Callable[[], None]:
                def go() -> None:
                    proto.callRemote(Start, test=test, count=count, size=size).addErrback(fail)

                return go

            if "small" in tests:
                n, size = params["small_count"], params["small_size"]
                run = await sink.run(n, params["small_warmup"], start("small", n, size))
                result.update(_one_way_figures("small", run, size))
                result["msgs_per_s"] = result["small_msgs_per_s"]
            if "rtt" in tests:
                data = text(params["rtt_size"]).encode("ascii")
                answer = await proto.callRemote(Echo, data=data)
                if answer["data"] != data:
                    raise RuntimeError("echo returned something else")
                result.update(
                    await measure_rtt(
                        lambda: proto.callRemote(Echo, data=data),
                        params["rtt_samples"],
                        params["rtt_warmup"],
                    )
                )
            if "large" in tests:
                n, size = params["large_count"], params["large_size"]
                run = await sink.run(n, params["large_warmup"], start("large", n, size))
                result.update(_one_way_figures("large", run, size))
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
            fail = _log_failure("update")
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
                    d.addErrback(_log_failure("start"))

                run = await sink.run(n, params["pb_warmup"], go)
                result.update(_one_way_figures("small", run, size))
                result["msgs_per_s"] = result["small_msgs_per_s"]
            if "rtt" in tests:
                body = {"data": text(params["rtt_size"])}
                if await worker.callRemote("echo", body) != body:
                    raise RuntimeError("echo returned something else")
                result.update(
                    await measure_rtt(
                        lambda: worker.callRemote("echo", body),
                        params["rtt_samples"],
                        params["rtt_warmup"],
                    )
                )
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
        "wiremsg_json": _wiremsg_server("json"),
        "wiremsg_msgpack": _wiremsg_server("msgpack"),
        "raw_amp": raw_server,
        "pb": pb_server,
    }
    clients: dict[str, common.ClientMain] = {
        "wiremsg_json": _wiremsg_client("json"),
        "wiremsg_msgpack": _wiremsg_client("msgpack"),
        "raw_amp": raw_client,
        "pb": pb_client,
    }
    return servers, clients


# -- the orchestrator ------------------------------------------------------------------------

_PER_ROUND = ("msgs_per_s", "rtt_p50_us", "rtt_p99_us", "large_mb_per_s")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric figure over the rounds; main figures also per round."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs if key in r]
        if isinstance(value, bool) or not isinstance(value, int | float):
            out[key] = value
        elif isinstance(value, int):
            out[key] = round(median(values))
        else:
            out[key] = round(median(values), 3 if value < 10 else 1)
        if key in _PER_ROUND and len(runs) > 1:
            out[f"{key}_rounds"] = values
    return out


def ratios(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The ratios the targets are about, each the median of the per-round ratios."""
    out: dict[str, Any] = {}

    def ratio(num: str, den: str, key: str) -> float | None:
        pairs = [
            (a[key], b[key])
            for a, b in zip(results.get(num, []), results.get(den, []), strict=False)
            if key in a and key in b and b[key]
        ]
        return round(median(a / b for a, b in pairs), 3) if pairs else None

    for codec in ("json", "msgpack"):
        impl = f"wiremsg_{codec}"
        suffix = "" if codec == "json" else "_msgpack"
        out[f"ratio_msgs_vs_raw_amp{suffix}"] = ratio(impl, "raw_amp", "msgs_per_s")
        out[f"ratio_msgs_vs_pb{suffix}"] = ratio(impl, "pb", "msgs_per_s")
        out[f"ratio_rtt_p50_vs_raw_amp{suffix}"] = ratio(impl, "raw_amp", "rtt_p50_us")
        out[f"ratio_rtt_p50_vs_pb{suffix}"] = ratio(impl, "pb", "rtt_p50_us")
        out[f"ratio_large_vs_raw_amp{suffix}"] = ratio(impl, "raw_amp", "large_mb_per_s")
    return out


def targets_met(figures: dict[str, Any]) -> dict[str, bool | None]:
    """Each target, for json and msgpack: True, False, or None when not measured."""
    met: dict[str, bool | None] = {}
    for suffix in ("", "_msgpack"):
        for name, (op, bound) in TARGETS.items():
            value = figures.get(f"ratio_{name}{suffix}")
            if value is None:
                met[name + suffix] = None
            else:
                met[name + suffix] = value >= bound if op == ">=" else value <= bound
    return met


def orchestrate(args: argparse.Namespace) -> int:
    started = time.monotonic()
    params = dict(QUICK_PARAMS if args.quick else DEFAULT_PARAMS)
    if args.tests:
        params["tests"] = [t for t in args.tests.split(",") if t]
        unknown = set(params["tests"]) - set(TESTS)
        if unknown:
            raise SystemExit(f"unknown tests: {', '.join(sorted(unknown))}")
    impls = [i for i in (args.only.split(",") if args.only else IMPLS) if i]
    unknown = set(impls) - set(IMPLS)
    if unknown:
        raise SystemExit(f"unknown implementations: {', '.join(sorted(unknown))}")
    rounds = args.rounds or (1 if args.quick else DEFAULT_ROUNDS)
    timeout = QUICK_PAIR_TIMEOUT if args.quick else PAIR_TIMEOUT
    extra = ["--profile-dir", args.profile_dir] if args.profile_dir else []
    env = common.environment()
    progress(
        f"amp benchmark: {len(impls)} implementations x {rounds} rounds, "
        f"{env['cpus']} CPUs, {'pinned' if env['pinned'] else 'NOT pinned'}"
    )
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    figures: dict[str, Any] = {"benchmark": "amp", "quick": args.quick, "rounds": rounds}
    try:
        for r in range(rounds):
            order = impls[r % len(impls) :] + impls[: r % len(impls)]
            for impl in order:
                progress(f"round {r + 1}/{rounds}: {impl} ...")
                t0 = time.monotonic()
                result = common.run_pair(os.path.abspath(__file__), impl, params, timeout, extra)
                results[impl].append(result)
                shown = ", ".join(
                    f"{k}={result[k]}"
                    for k in ("msgs_per_s", "rtt_p50_us", "large_mb_per_s")
                    if k in result
                )
                progress(f"round {r + 1}/{rounds}: {impl}: {shown} ({time.monotonic() - t0:.1f}s)")
    except common.BenchError as exc:
        progress(f"FAILED: {exc}")
        common.emit({"benchmark": "amp", "error": str(exc)})
        return 1
    for impl in impls:
        figures[impl] = summarise(results[impl])
    figures.update(ratios(results))
    figures["targets"] = {name: f"{op} {bound}" for name, (op, bound) in TARGETS.items()}
    figures["targets_met"] = targets_met(figures)
    figures["params"] = params
    figures["env"] = env
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    common.emit(figures)
    progress(f"done in {figures['elapsed_s']}s; targets met: {figures['targets_met']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="wiremsg over AMP vs raw Twisted AMP vs PB; one JSON line on stdout."
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke)")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {DEFAULT_ROUNDS}; 1 quick)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(IMPLS)}")
    parser.add_argument("--tests", help=f"comma-separated subset of: {', '.join(TESTS)}")
    common.add_child_arguments(parser)
    args = parser.parse_args(argv)
    if args.role:
        servers, clients = _implementations()
        return common.child_main(args, servers, clients)
    common.install_exit_on_sigterm()
    try:
        return orchestrate(args)
    except KeyboardInterrupt:  # the children are already reaped (run_pair's finally)
        progress("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
