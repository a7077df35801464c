"""A build worker: connect to the masters, answer their requests, report progress.

Run it alone (``python examples/worker_process.py``): it also starts a small master on a
loopback AMP port to talk to, so you can watch both sides. In production the master is another
process: pass its addresses, e.g. ``["amp://ci-1.example:9989", "amp://ci-2.example:9989"]``
(the worker fails over between them in order). ``wiremsg worker`` is this, plus a runner for
shell commands.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from wiremsg import Master, Message, Worker


def build_worker(reactor: Any, masters: list[str]) -> Worker:
    """Create the worker and register what it can do; nothing connects until start()."""
    # The name and secret must match an entry in the master's workers file.
    worker = Worker(
        "builder-1",
        "s3cret",
        masters,
        tags=["linux", "x86_64"],
        info={"os": "debian 12", "cores": 2},
        reactor=reactor,
    )

    # A request handler's return value is the reply body.
    worker.on("echo", lambda msg: {"echo": msg.body})

    async def compile_(msg: Message) -> dict[str, Any]:
        # Report progress with one-way messages while working; they arrive in order, once,
        # even if the link drops and the worker resumes its session.
        for step in ("configure", "compile", "link"):
            worker.send("update", {"step": step, "target": msg.body["target"]})  # type: ignore
            await task.deferLater(reactor, 0.05, lambda: None)
        return {"rc": 0}

    worker.on("compile", compile_)
    return worker


async def main(reactor: Any) -> None:
    # Only for this example: a master in the same process, on a free loopback port.
    master = Master({"builder-1": "s3cret"}, reactor=reactor)
    master.on("update", lambda peer, msg: print(f"master got update from {peer.name}: {msg.body}"))
    listener = await master.listen("amp://127.0.0.1:0")

    worker = build_worker(reactor, [str(listener.address)])
    await worker.start()  # fires once attached; fails with AuthError on a wrong secret
    print("worker attached:", worker.master)

    peer = await master.wait_for_worker("builder-1", timeout=5)
    reply = await peer.request("compile", {"target": "all"}, timeout=10)
    print("compile finished:", reply.body)

    await worker.stop()  # waits for acks, says goodbye: the master deregisters it
    await master.stop()
    print("worker stopped; registered workers left:", list(master.workers))


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
