"""``wiremsg demo``: a master, a worker process, and a build's output crossing the wire.

With a network backend (``amp``, the default) the master runs here and the worker is a
separate ``wiremsg worker`` process on loopback. The master starts a build-like command on the
worker; its output streams back line by line as it happens; a summary (messages, bytes, round
trip, elapsed) ends it. The worker is then told to shut down, and no process is left behind.
On ``memory`` both sides run in this process (there is no wire to cross between processes).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from types import MappingProxyType
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from wiremsg.address import parse_address
from wiremsg.commands import CommandTracker
from wiremsg.errors import ConnectFailed
from wiremsg.master import Master
from wiremsg.vocabulary import SHUTDOWN, WORKER_INFO

BUILD = r"""
import sys, time
steps = ["fetching sources", "configuring", "compiling 12 files", "linking",
         "running 48 tests", "packaging"]
for n, step in enumerate(steps, 1):
    print(f"[{n}/{len(steps)}] {step}", flush=True)
    time.sleep(0.33)
print("warning: 1 test skipped", file=sys.stderr, flush=True)
print("build ok", flush=True)
"""
"""The demo's build: about two seconds of progress lines."""

SECRET = "demo-secret"
NAME = "demo-worker"
READY_TIMEOUT = 30.0
AVAILABLE = ("amp", "zmq", "amqp", "memory")
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
"""The broker the demo uses over amqp, unless ``WIREMSG_AMQP_URL`` names another."""


class _WorkerProcess(ProcessProtocol):
    """Collects a child's output and tells when it has ended."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


def _demo_address(backend: str) -> str:
    """Where the demo's master listens: loopback, or a one-off prefix on the AMQP broker."""
    if backend == "memory":
        return "memory://wiremsg-demo"
    if backend != "amqp":
        return f"{backend}://127.0.0.1:0"
    broker = parse_address(os.environ.get("WIREMSG_AMQP_URL", AMQP_URL))
    params = {**broker.params, "prefix": f"wiremsg-demo-{os.urandom(4).hex()}"}
    return str(replace(broker, params=MappingProxyType(params)))


async def run_demo(
    reactor: Any, out: TextIO, backend: str = "amp", err: TextIO | None = None
) -> int:
    """Run the demo on ``reactor``, writing to ``out`` (and one-line errors to ``err``,
    default stderr); returns the exit code."""
    if backend not in AVAILABLE:
        out.write(
            f"wiremsg demo: backend {backend!r} is not available yet; "
            f"use {' or '.join(AVAILABLE)}\n"
        )
        return 2
    started = time.monotonic()
    basedir = tempfile.mkdtemp(prefix="wiremsg-demo-")
    master = Master({NAME: SECRET}, reactor=reactor)
    tracker = CommandTracker(master)
    child: _WorkerProcess | None = None
    agent: Any = None
    address = _demo_address(backend)
    try:
        try:
            listener = await master.listen(address)
        except ConnectFailed as exc:
            if backend != "amqp":
                raise
            (err or sys.stderr).write(
                f"wiremsg demo: no usable AMQP broker ({exc}); start RabbitMQ "
                "(rabbitmq-server -detached) or set WIREMSG_AMQP_URL\n"
            )
            return 1
        out.write(f"master: listening on {listener.address.redacted()}\n")
        if backend == "memory":
            from wiremsg.agent import build_agent

            agent = build_agent(
                reactor,
                NAME,
                SECRET,
                [str(listener.address)],
                basedir=basedir,
                tags=["linux", "demo"],
            )
            await agent.worker.start()
        else:
            child = _WorkerProcess()
            argv = [
                sys.executable,
                "-m",
                "wiremsg",
                "worker",
                "--name",
                NAME,
                "--master",
                str(listener.address),
                "--basedir",
                basedir,
                "--tags",
                "linux,demo",
            ]
            env = dict(os.environ, WIREMSG_SECRET=SECRET, PYTHONUNBUFFERED="1")
            reactor.spawnProcess(child, sys.executable, argv, env=env)
            pid = getattr(child.transport, "pid", "?")
            out.write(f"master: started worker process (pid {pid})\n")
        peer = await master.wait_for_worker(NAME, timeout=READY_TIMEOUT)
        out.write(
            f"master: {peer.name} attached from {peer.address} (tags {', '.join(peer.tags)})\n"
        )
        out.write("master: running the build on the worker\n")
        out.flush()

        def show(body: Any) -> None:
            for stream in ("stdout", "stderr"):
                for line in str(body.get(stream) or "").splitlines():
                    out.write(f"  {peer.name} {stream}| {line}\n")
            out.flush()

        cmd = tracker.start(
            peer, {"command": [sys.executable, "-c", BUILD], "workdir": "build"}, show
        )
        rc = await cmd.done
        rtts = []
        for _ in range(5):
            t0 = time.perf_counter()
            await peer.request(WORKER_INFO, {}, timeout=5)
            rtts.append(time.perf_counter() - t0)
        stats = peer.stats
        out.write(
            f"master: build finished with rc={rc}\n"
            f"summary: {stats.messages_received} messages / {stats.bytes_received} bytes "
            f"worker->master, {stats.messages_sent} messages / {stats.bytes_sent} bytes "
            f"master->worker, request RTT {min(rtts) * 1000:.2f} ms (best of 5), "
            f"elapsed {time.monotonic() - started:.2f}s\n"
        )
        if child is not None:
            await peer.request(SHUTDOWN, {}, timeout=5)
        return int(rc)
    finally:
        if agent is not None:
            await agent.stop()
        await master.stop()
        if child is not None:
            await _reap(reactor, child, out)
        shutil.rmtree(basedir, ignore_errors=True)
        if backend == "amqp":
            await _forget_prefix(reactor, address)


async def _forget_prefix(reactor: Any, address: str) -> None:
    """Delete the demo's one-off exchange and queue from the broker (best effort)."""
    from wiremsg.backends._amqp import delete_topology

    try:
        await delete_topology(reactor, address)
    except ConnectFailed:
        pass


async def _reap(reactor: Any, child: _WorkerProcess, out: TextIO) -> None:
    """Wait for the worker process to exit; terminate (then kill) it if it lingers."""
    for signal_name, wait in (("", 10.0), ("TERM", 5.0), ("KILL", 5.0)):
        if child.ended.called:
            return
        if signal_name:
            try:
                transport: Any = child.transport
                transport.signalProcess(signal_name)
            except Exception:
                return
        await _within(reactor, child.ended, wait)
    if not child.ended.called:
        out.write("master: the worker process did not exit\n")


def _within(reactor: Any, d: Deferred[Any], seconds: float) -> Deferred[None]:
    """Fires once ``d`` has fired or ``seconds`` have passed; leaves ``d``'s result alone."""
    waiter: Deferred[None] = Deferred()

    def fire(_: Any = None) -> None:
        if not waiter.called:
            waiter.callback(None)

    call = reactor.callLater(seconds, fire)

    def done(result: Any) -> Any:
        if call.active():
            call.cancel()
        fire()
        return result

    d.addBoth(done)
    return waiter
