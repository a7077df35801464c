"""Embedding wiremsg in a CI master: accept workers, dispatch by kind, fan work out by tag.

Run it (``python examples/embed_master.py``): it listens on a free loopback AMP port and, to
have someone to talk to, starts the example worker from ``worker_process.py`` in the same
process. In production workers are separate processes (``wiremsg worker``), and you listen on
a fixed address, e.g. ``await master.listen("amp://0.0.0.0:9989")``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from wiremsg import Master, Message, Peer, RemoteError

sys.path.insert(0, os.path.dirname(__file__))
from worker_process import build_worker


async def main(reactor: Any) -> None:
    # Worker name -> shared secret. The secret is never sent: both sides prove it by HMAC.
    master = Master({"builder-1": "s3cret"}, reactor=reactor, heartbeat=5, grace=60)

    # Handlers by message kind get the sending worker's Peer and the Message.
    def on_update(peer: Peer, msg: Message) -> None:
        print(f"[{peer.name}] {msg.body}")

    master.on("update", on_update)

    # Listen on as many addresses (and backends) as you like; port 0 is resolved.
    listener = await master.listen("amp://127.0.0.1:0")
    print("listening on", listener.address)

    worker = build_worker(reactor, [str(listener.address)])  # normally a separate process
    await worker.start()

    peer = await master.wait_for_worker("builder-1", timeout=10)
    print(f"attached: {peer.name} tags={list(peer.tags)} info={dict(peer.info)}")

    # One worker: a request returns the reply Message (or fails with RemoteError/Timeout).
    reply = await peer.request("echo", {"hello": "worker"}, timeout=5)
    print("echo:", reply.body)
    try:
        await peer.request("no-such-kind", {}, timeout=5)
    except RemoteError as exc:
        print("remote error, as expected:", exc.code)

    # A group by tag: a logical job made of one physical job per worker.
    results = await master.broadcast("compile", {"target": "all"}, tags=["linux"], timeout=30)
    for name, outcome in results.items():
        print(f"{name}: {outcome.body if isinstance(outcome, Message) else outcome.value}")

    print("status:", master.status()["workers"][0]["state"])
    await worker.stop()
    await master.stop()


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
