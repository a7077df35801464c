"""The ``wiremsg`` command. This release has ``demo``; ``master``, ``worker``, ``run``,
``status`` and ``bench`` arrive with the AMP backend and the command runner.

Exit codes: 0 success, 2 bad usage, 1 any other failure (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wiremsg", description="Messages between a CI master and its build workers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run a master and a worker and show a build's output")
    demo.add_argument(
        "--backend",
        default="memory",
        choices=["memory", "amp", "zmq", "amqp"],
        help="the backend to run the demo over (default: memory)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wiremsg`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _react(lambda reactor: _demo(reactor, args.backend))
    return 2  # pragma: no cover - argparse refuses unknown commands


async def _demo(reactor: Any, backend: str) -> int:
    from wiremsg.demo import run_demo

    return await run_demo(reactor, sys.stdout, backend)


def _react(work: Any) -> int:
    """Run ``work(reactor)`` (a coroutine function returning an exit code) to completion."""
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import Deferred

    reactor: Any = _reactor

    outcome: list[Any] = []

    def done(result: Any) -> None:
        outcome.append(result)
        reactor.stop()

    def start() -> None:
        Deferred.fromCoroutine(work(reactor)).addBoth(done)

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=True)
    result = outcome[0] if outcome else 1
    if isinstance(result, int):
        return result
    sys.stderr.write(f"wiremsg: {getattr(result, 'value', result)}\n")
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
