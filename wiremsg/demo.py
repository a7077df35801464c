"""``wiremsg demo``: a master and a worker exchange a build's output, and a summary is printed.

On the ``memory`` backend both run in this process (the AMP backend, with the worker as a
separate process, comes with the command runner). The worker's ``build`` handler streams
progress lines as ``update`` messages while it works; the master prints each as it arrives,
then the build's result and the session's counters.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from twisted.internet.task import deferLater

from wiremsg.master import Master, Peer
from wiremsg.message import Message
from wiremsg.worker import Worker

STEPS = (
    "fetching sources",
    "configuring",
    "compiling 12 files",
    "linking",
    "running 48 tests",
    "packaging",
)
"""The demo build's steps; each takes :data:`STEP_SECONDS`."""
STEP_SECONDS = 0.33


async def run_demo(reactor: Any, out: TextIO, backend: str = "memory") -> int:
    """Run the demo on ``reactor``, writing to ``out``; returns the exit code."""
    if backend != "memory":
        out.write(f"wiremsg demo: backend {backend!r} is not available yet; use memory\n")
        return 2
    started = time.monotonic()
    master = Master({"demo-worker": "demo-secret"}, reactor=reactor)
    listener = await master.listen("memory://wiremsg-demo")
    out.write(f"master: listening on {listener.address}\n")

    def show(peer: Peer, msg: Message) -> None:
        body: Any = msg.body
        out.write(f"  {peer.name} | {body['stream']}: {body['line']}\n")
        out.flush()

    master.on("update", show)

    worker = Worker(
        "demo-worker",
        "demo-secret",
        [str(listener.address)],
        reactor=reactor,
        tags=["linux"],
        info={"purpose": "demo"},
    )

    async def build(msg: Message) -> dict[str, Any]:
        for n, step in enumerate(STEPS, 1):
            worker.send("update", {"stream": "stdout", "line": f"[{n}/{len(STEPS)}] {step}"})
            await deferLater(reactor, STEP_SECONDS, lambda: None)
        worker.send("update", {"stream": "stdout", "line": "build ok"})
        return {"rc": 0}

    worker.on("build", build)
    worker.on("ping", lambda msg: {})
    await worker.start()
    peer = await master.wait_for_worker("demo-worker", timeout=5)
    out.write(f"master: worker {peer.name} attached (tags {', '.join(peer.tags)})\n")
    out.write("master: asking for a build\n")
    result = await peer.request("build", {"target": "all"}, timeout=30)
    rc = result.body["rc"]  # type: ignore[index,call-overload]
    t0 = time.perf_counter()
    await peer.request("ping", {}, timeout=5)
    rtt_ms = (time.perf_counter() - t0) * 1000
    stats = peer.stats
    elapsed = time.monotonic() - started
    await worker.stop()
    await master.stop()
    out.write(
        f"master: build finished with rc={rc}\n"
        f"summary: {stats.messages_received} messages / {stats.bytes_received} bytes "
        f"worker->master, {stats.messages_sent} messages / {stats.bytes_sent} bytes "
        f"master->worker, request RTT {rtt_ms:.2f} ms, elapsed {elapsed:.2f}s\n"
    )
    return int(rc)
