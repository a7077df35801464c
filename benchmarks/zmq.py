"""wiremsg over ZeroMQ against raw pyzmq driven by the Twisted reactor, measured in one run.

Usage::

    .venv/bin/python benchmarks/zmq.py            # default size: 3 rounds, about 15-20 s
    .venv/bin/python benchmarks/zmq.py --quick    # a few seconds (the smoke test uses it)
    .venv/bin/python benchmarks/zmq.py --only wiremsg_json --tests small --profile-dir /tmp/p

Three implementations are measured, each as a *master* process (pinned to the first CPU) and a
*worker* process (pinned to the second), over loopback TCP (libzmq sets TCP_NODELAY itself):

``wiremsg_json`` / ``wiremsg_msgpack``
    :class:`wiremsg.Master` and :class:`wiremsg.Worker` over ``zmq://127.0.0.1:0`` (the
    ZeroMQ backend: a ROUTER at the master, a DEALER per link); the worker offers only one
    codec, so the session speaks it.
``raw_zmq``
    a bare ROUTER (master) / DEALER (worker) pair, each socket's ``zmq.FD`` read by the
    reactor the PITFALLS (b) way: drain while ``EVENTS & POLLIN``, drain once after
    ``addReader``, re-check ``EVENTS`` after sending; one ZeroMQ message per application
    message, and at the high-water mark the producer waits for ``POLLOUT``.

Tests (the master is always the one measuring; see benchmarks/README.md for the details):

``small``  200-byte messages worker→master, one-way, as fast as back-pressure allows; msg/s
           counted at the master after a warm-up.
``rtt``    master→worker ``echo`` of a 64-byte payload with one request outstanding; p50/p99.
``large``  65,536-byte messages worker→master, one-way; MB/s of payload (10**6 bytes/s).

The one-way tests run ``rounds`` times per implementation in rotating order; each figure is
the median over rounds and each ratio the median of the per-round ratios. Round trips are
measured interleaved: every pair runs at once and takes turns, one block per implementation
per cycle, and the ratios are the medians of the per-cycle ratios (see ``_common``). Stdout
gets exactly one line of JSON; progress goes to stderr.
"""

from __future__ import annotations

import os
import sys

# This file is called zmq.py: with its directory first on sys.path, ``import zmq`` (here and
# in wiremsg's backend) would import this script again instead of pyzmq. Move the directory
# to the end, where it still serves ``import _common``.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _entry in [p for p in sys.path if os.path.abspath(p or os.curdir) == _HERE]:
    sys.path.remove(_entry)
sys.path.append(_HERE)

import json  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import _common as common  # noqa: E402
from _common import (  # noqa: E402
    LOOPBACK,
    QUIET_TIMEOUT,
    Busy,
    Sink,
    text,
)

BENCHMARK = "zmq"
IMPLS = ("wiremsg_json", "wiremsg_msgpack", "raw_zmq")
"""Every implementation measured, in the first round's order."""
TESTS = ("small", "rtt", "large")

DEFAULT_PARAMS: dict[str, Any] = {
    "small_size": 200,
    "small_count": 200_000,
    "small_warmup": 20_000,
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
    "msgs_vs_raw_zmq": (">=", 1.0),
    "rtt_p50_vs_raw_zmq": ("<=", 1.5),
}
"""Target → (comparison, bound) on the matching ``ratio_*`` figure."""

RAW_READ_BUDGET = 4096
"""Raw pair: messages read per wakeup before the reactor gets a turn (as the backend does)."""
RAW_RETRY = 0.05
"""Raw pair: a producer blocked by the high-water mark also re-checks ``EVENTS`` after this many
seconds, in case no change is signalled; ``<test>_sender_rescues`` counts the re-checks that
found ``POLLOUT`` (a lost wake-up; expected 0)."""
RAW_CLOSE_LINGER_MS = 200
"""Raw pair: LINGER of the worker's socket, so that its last message gets out."""


# -- wiremsg --------------------------------------------------------------------------------


def _count_batches(link: Any) -> Callable[[], int] | None:
    """Count the ZeroMQ messages the master's link receives (each a batch of frames), by
    wrapping the backend's private per-message entry point; None if it has none."""
    receive = getattr(link, "_receive", None)
    if receive is None:
        return None
    seen = [0]

    def counting(data: bytes) -> None:
        seen[0] += 1
        receive(data)

    link._receive = counting
    return lambda: seen[0]


def _batches(link: Any) -> tuple[str, Callable[[], int]] | None:
    count = _count_batches(link)
    return None if count is None else ("small_msgs_per_batch", count)


# -- raw pyzmq on the reactor ---------------------------------------------------------------

# What the raw pair's messages start with (the one-way payload itself starts with "[").
_HELLO, _START, _ECHO, _QUIT, _BYE = (
    common.RAW_HELLO,
    common.RAW_START,
    common.RAW_ECHO,
    common.RAW_QUIT,
    common.RAW_BYE,
)


def _raw_zmq() -> tuple[common.ServerMain, common.ClientMain]:
    import zmq
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReadDescriptor
    from zope.interface import implementer

    @implementer(IReadDescriptor)
    class ZSock:
        """One pyzmq socket on the reactor, by its edge-triggered ``zmq.FD`` (PITFALLS (b)).

        ``doRead`` loops while ``EVENTS`` says there is something to do: it resumes a
        producer blocked by the high-water mark once ``POLLOUT`` is back, and reads whole
        messages (``recv_multipart``) while ``POLLIN``. :meth:`start` drains once right after
        ``addReader``; a send made outside ``doRead`` is followed by :meth:`after_send`, one
        ``callLater(0, doRead)`` (inside ``doRead`` the loop re-checks by itself).
        """

        def __init__(
            self, reactor: Any, sock: Any, on_message: Callable[[list[bytes]], None]
        ) -> None:
            self.reactor, self.sock, self.on_message = reactor, sock, on_message
            self._fd = sock.get(zmq.FD)  # cached: fileno() must work until removeReader
            self.on_writable: Callable[[], None] | None = None
            self.resumes = self.rescues = 0
            self.closed = self._reading = False
            self._recheck: Any = None
            self._retry: Any = None

        def fileno(self) -> int:
            return self._fd

        def logPrefix(self) -> str:
            return "raw zmq"

        def connectionLost(self, reason: Any) -> None:
            self.closed = True

        def start(self) -> None:
            self.reactor.addReader(self)
            self.doRead()  # messages that arrived before addReader raised no edge

        def doRead(self) -> None:
            sock, on_message = self.sock, self.on_message
            budget = RAW_READ_BUDGET
            self._reading = True
            try:
                while not self.closed:
                    events = sock.get(zmq.EVENTS)
                    if self.on_writable is not None and events & zmq.POLLOUT:
                        resume, self.on_writable = self.on_writable, None
                        self.resumes += 1
                        resume()
                        continue
                    if not events & zmq.POLLIN:
                        return
                    if budget <= 0:
                        self._schedule()  # the rest on the next turn
                        return
                    budget -= 1
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        continue
                    on_message(parts)
            finally:
                self._reading = False

        def after_send(self) -> None:
            """Re-check ``EVENTS`` after a send: it may have used up the FD's edge."""
            if not self._reading:
                self._schedule()

        def wait_writable(self, resume: Callable[[], None]) -> None:
            """Call ``resume()`` once ``EVENTS`` shows ``POLLOUT`` (the producer met the
            high-water mark)."""
            self.on_writable = resume
            if self._retry is None or not self._retry.active():
                self._retry = self.reactor.callLater(RAW_RETRY, self._retried)

        def _retried(self) -> None:
            self._retry = None
            if self.on_writable is not None and not self.closed:
                before = self.resumes
                self.doRead()
                self.rescues += self.resumes - before
                if self.on_writable is not None:
                    self._retry = self.reactor.callLater(RAW_RETRY, self._retried)

        def _schedule(self) -> None:
            if self._recheck is None and not self.closed:
                self._recheck = self.reactor.callLater(0, self._rechecked)

        def _rechecked(self) -> None:
            self._recheck = None
            self.doRead()

        def close(self, linger: int = 0) -> None:
            """removeReader, then close the socket (PITFALLS: in this order)."""
            if self.closed:
                return
            self.closed = True
            for call in (self._recheck, self._retry):
                if call is not None and call.active():
                    call.cancel()
            self.reactor.removeReader(self)
            self.sock.close(linger=linger)

    class Pump:
        """The worker's producer: ``count`` one-way messages, one ZeroMQ message each, until
        ``zmq.Again`` (the high-water mark); then it waits for ``POLLOUT``."""

        def __init__(self, zsock: ZSock, test: str, count: int, payload: bytes) -> None:
            self.zsock, self.test, self.left, self.payload = zsock, test, count, payload
            self.busy = Busy()

        def run(self) -> None:
            send, payload, left = self.zsock.sock.send, self.payload, self.left
            try:
                while left > 0:
                    send(payload, zmq.NOBLOCK)
                    left -= 1
            except zmq.Again:
                self.zsock.wait_writable(self.run)
            self.left = left
            self.zsock.after_send()
            if left == 0:
                self.left = -1
                common.report(
                    **{
                        f"{self.test}_sender_cpu": self.busy.utilisation(),
                        f"{self.test}_sender_rescues": self.zsock.rescues,
                    }
                )

    async def server(reactor: Any, params: dict[str, Any], ready: Callable[..., None]) -> Any:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.set(zmq.LINGER, 0)
        sock.bind(f"tcp://{LOOPBACK}:*")
        port = int(sock.get(zmq.LAST_ENDPOINT).rsplit(b":", 1)[1])
        sink = Sink(reactor)
        hello: Deferred[bytes] = Deferred()
        bye: Deferred[None] = Deferred()
        waiting: list[Deferred[bytes]] = []  # the echo request outstanding, if any
        control = {_HELLO, _ECHO, _BYE}

        def on_message(parts: list[bytes]) -> None:
            data = parts[-1]
            kind = data[:1]
            if kind not in control:
                sink.hit()
            elif kind == _ECHO and waiting:
                waiting.pop().callback(data)
            elif kind == _HELLO and not hello.called:
                hello.callback(parts[0])
            elif kind == _BYE and not bye.called:
                bye.callback(None)

        zsock = ZSock(reactor, sock, on_message)
        result: dict[str, Any] = {}
        try:
            zsock.start()
            ready({"port": port})
            hello.addTimeout(QUIET_TIMEOUT, reactor)
            ident = await hello

            def send(data: bytes) -> None:
                sock.send(ident, zmq.NOBLOCK | zmq.SNDMORE)
                sock.send(data, zmq.NOBLOCK)
                zsock.after_send()

            result = await common.raw_master_tests(reactor, params, sink, send, waiting, bye)
        finally:
            zsock.close()
            ctx.term()  # last: every socket is closed
        return result

    async def client(reactor: Any, params: dict[str, Any], ready: dict[str, Any]) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.set(zmq.LINGER, 0)
        quit_: Deferred[None] = Deferred()

        def send(data: bytes) -> None:
            sock.send(data, zmq.NOBLOCK)
            zsock.after_send()

        def on_message(parts: list[bytes]) -> None:
            data = parts[-1]
            kind = data[:1]
            if kind == _ECHO:
                send(data)
            elif kind == _START:
                spec = json.loads(data[1:])
                payload = text(spec["size"]).encode("ascii")
                pump = Pump(zsock, spec["test"], spec["count"], payload)
                reactor.callLater(0, pump.run)  # not from inside the receive path
            elif kind == _QUIT and not quit_.called:
                send(_BYE)
                quit_.callback(None)

        zsock = ZSock(reactor, sock, on_message)
        try:
            sock.connect(f"tcp://{LOOPBACK}:{ready['port']}")
            zsock.start()
            send(_HELLO)  # queued until the connection is up
            await quit_
        finally:
            zsock.close(RAW_CLOSE_LINGER_MS)  # the bye must get out
            ctx.term()

    return server, client


def _implementations() -> tuple[dict[str, common.ServerMain], dict[str, common.ClientMain]]:
    raw_server, raw_client = _raw_zmq()
    servers: dict[str, common.ServerMain] = {
        "wiremsg_json": common.wiremsg_server("zmq", "json", _batches),
        "wiremsg_msgpack": common.wiremsg_server("zmq", "msgpack", _batches),
        "raw_zmq": raw_server,
    }
    clients: dict[str, common.ClientMain] = {
        "wiremsg_json": common.wiremsg_client("zmq", "json"),
        "wiremsg_msgpack": common.wiremsg_client("zmq", "msgpack"),
        "raw_zmq": raw_client,
    }
    return servers, clients


# -- the orchestrator ------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """The shared facts plus the pyzmq and libzmq versions."""
    import zmq

    env = common.environment()
    env.update(pyzmq=zmq.pyzmq_version(), libzmq=zmq.zmq_version())
    return env


BENCH = common.Benchmark(
    name=BENCHMARK,
    script=__file__,
    description="wiremsg over ZeroMQ vs raw pyzmq on the reactor; one JSON line on stdout.",
    impls=IMPLS,
    tests=TESTS,
    default_params=DEFAULT_PARAMS,
    quick_params=QUICK_PARAMS,
    default_rounds=DEFAULT_ROUNDS,
    pair_timeout=PAIR_TIMEOUT,
    quick_pair_timeout=QUICK_PAIR_TIMEOUT,
    targets=TARGETS,
    ratios=lambda results: common.wiremsg_ratios(results, "raw_zmq"),
    implementations=_implementations,
    environment=environment,
)


def main(argv: list[str] | None = None) -> int:
    return common.main(BENCH, argv)


if __name__ == "__main__":
    sys.exit(main())
