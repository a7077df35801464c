"""What one request/reply round trip costs wiremsg, counted deterministically.

A master and a worker run in one process, on one reactor, over a real backend (``zmq``,
``amp``, ``amqp`` through the local RabbitMQ, or ``memory``); the master sends ``echo``
requests one at a time. Wall-clock figures from here mix both sides and the backend's own
threads (and the broker), so this script is for *counting*:

``--opcodes``
    Python bytecodes executed per round trip, per file and per function (``sys.settrace``
    with opcode events: slow, but exact and repeatable). The quickest way to see where the
    Python work goes and whether a change removed any.
under ``valgrind --tool=callgrind``
    machine instructions: run it twice with different ``--count`` and divide the difference
    of the two totals by the difference of the counts (start-up cancels out)::

        for n in 1000 2000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
            .venv/bin/python benchmarks/rtt_cost.py zmq --count $n; done

Without either it prints the wall-clock time per round trip, for a rough look only; the
benchmarks (``zmq.py``, ``amp.py``) measure real round trips between two pinned processes.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from typing import Any

# benchmarks/zmq.py would shadow pyzmq for the ZeroMQ backend: keep this directory last.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]
_ROOT = os.path.dirname(_HERE) + os.sep

SECRET = "rtt-cost"


def _addresses(backend: str) -> tuple[str, str | None]:
    """(listen address, connect address or None to use the listener's port)."""
    if backend == "memory":
        return "memory://rtt-cost", "memory://rtt-cost"
    if backend == "amqp":  # the broker of the AMQP tests and benchmark
        broker = os.environ.get("WIREMSG_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
        address = f"{broker}?prefix=wiremsg-rtt-cost-{os.getpid()}"
        return address, address
    return f"{backend}://127.0.0.1:0", None


class OpcodeCounter:
    """Counts the bytecodes executed while ``on`` is true, by (file, first line, function)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, int, str]] = collections.Counter()
        self.on = False

    def trace(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode" and self.on:
            code = frame.f_code
            name = code.co_filename.split("/site-packages/")[-1]
            if name.startswith(_ROOT):
                name = name[len(_ROOT) :]
            self.counts[(name, code.co_firstlineno, code.co_name)] += 1
        return self.trace

    def report(self, rounds: int, top: int = 40) -> None:
        """Print the totals per round trip: overall, per file, then the ``top`` functions."""
        items = list(self.counts.items())
        total = sum(n for _, n in items)
        print(f"bytecodes per round trip: {total / rounds:.0f}")
        by_file: collections.Counter[str] = collections.Counter()
        for (name, _, _), n in items:
            by_file[name] += n
        for name, n in by_file.most_common(15):
            print(f"{n / rounds:8.0f}  {name}")
        print()
        for (name, line, func), n in sorted(items, key=lambda item: -item[1])[:top]:
            print(f"{n / rounds:8.0f}  {name}:{line}:{func}")


async def _run(reactor: Any, args: argparse.Namespace, counter: OpcodeCounter | None) -> None:
    from wiremsg import Master, Worker

    master = Master({"w": SECRET}, reactor=reactor)
    listen, connect = _addresses(args.backend)
    listener = await master.listen(listen)
    if connect is None:
        connect = f"{args.backend}://127.0.0.1:{listener.address.port}"
    worker = Worker(
        "w", SECRET, [connect], reactor=reactor, session_options={"codecs": (args.codec,)}
    )
    worker.on("echo", lambda msg: msg.body)
    try:
        await worker.start()
        peer = await master.wait_for_worker("w", timeout=10)
        body = {"data": "x" * 64}
        for _ in range(args.warmup):
            await peer.request("echo", body)
        if counter is not None:
            counter.on = True
        started = time.perf_counter()
        for _ in range(args.count):
            await peer.request("echo", body)
        elapsed = time.perf_counter() - started
        if counter is not None:
            counter.on = False
            counter.report(args.count)
        else:
            print(f"{elapsed / args.count * 1e6:.1f} us per round trip (both sides, one process)")
    finally:
        await worker.stop(drain_timeout=1)
        await master.stop()


def _forget_amqp_prefix(address: str) -> None:
    """Delete the exchange and queue the run's prefix left on the broker (as amqp.py does)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("wiremsg_bench_amqp", f"{_HERE}/amqp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.forget_prefix(address.rpartition("prefix=")[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    backends = ("zmq", "amp", "amqp", "memory")
    parser.add_argument("backend", nargs="?", default="zmq", choices=backends)
    parser.add_argument("--codec", default="json", choices=("json", "msgpack"))
    parser.add_argument("--count", type=int, default=2000, help="round trips counted")
    parser.add_argument("--warmup", type=int, default=200, help="round trips before counting")
    parser.add_argument("--opcodes", action="store_true", help="count bytecodes (slow)")
    args = parser.parse_args(argv)
    if args.opcodes:
        args.count = min(args.count, 300)

    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import ensureDeferred

    reactor: Any = _reactor
    counter = OpcodeCounter() if args.opcodes else None
    outcome: list[Any] = []

    def start() -> None:
        d = ensureDeferred(_run(reactor, args, counter))
        d.addErrback(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    if counter is not None:
        sys.settrace(counter.trace)
    reactor.callWhenRunning(start)
    reactor.run()
    sys.settrace(None)
    if args.backend == "amqp":
        _forget_amqp_prefix(_addresses("amqp")[0])
    if outcome:
        outcome[0].printTraceback()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
