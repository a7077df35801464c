"""Shared harness for the benchmarks: two pinned processes per measurement, bounded and reaped.

A benchmark script is both the *orchestrator* and its own children. The orchestrator calls
:func:`run_pair` for each implementation it compares; that re-invokes the script with
``--role server`` (pinned to the first CPU) and, once the server has said where it listens,
with ``--role client`` (pinned to the second CPU). The script's ``__main__`` hands those
invocations to :func:`child_main`, which pins the process, arranges for it to die with its
parent, runs one coroutine on the Twisted reactor and reports on stdout.

Children talk to the orchestrator in JSON lines on stdout (progress goes to stderr):

* the server prints ``{"ready": {...}}`` (for instance the port it bound) once it accepts,
  then ``{"result": {...}}`` when its measurements are done, or ``{"error": "..."}``;
* the client gets the ``ready`` object as ``--ready JSON``; it may print
  ``{"report": {...}}`` lines (:func:`report`), merged into the pair's result.

Round trips are measured *interleaved* when several implementations are compared: every pair
is started at once (``--gated``), each server warms up and then waits for a ``go`` line on
its stdin before each block of round trips, and prints ``{"rtt_block": {...}}`` after it. The
orchestrator hands out the turns, one block per implementation per cycle, so that every
implementation is measured in the same stretch of time: a machine whose speed drifts (a VM's
neighbours, frequency changes) moves all of them alike, and the per-cycle ratios hold.

Every child runs in its own process group and is killed (SIGTERM, then SIGKILL) when its pair
ends, on errors and on interruption too; a child also dies if the orchestrator does
(``PR_SET_PDEATHSIG``) and exits by itself after ``--deadline`` seconds. Nothing here knows
which library is measured, so the same harness serves AMP, ZeroMQ or AMQP benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"
"""Every benchmark binds and connects here only."""
KILL_GRACE = 3.0
"""Seconds a child gets between SIGTERM and SIGKILL."""
CLIENT_EXIT_GRACE = 10.0
"""Seconds the client may take to exit after the server reported its result."""
_PR_SET_PDEATHSIG = 1

ServerMain = Callable[[Any, dict[str, Any], Callable[[dict[str, Any]], None]], Awaitable[Any]]
"""``async server(reactor, params, ready) -> result``: calls ``ready(info)`` once listening."""
ClientMain = Callable[[Any, dict[str, Any], dict[str, Any]], Awaitable[Any]]
"""``async client(reactor, params, ready_info) -> None``: returns when told to quit."""


class BenchError(Exception):
    """A benchmark child failed, timed out or broke the line protocol."""


# -- output --------------------------------------------------------------------------------

_T0 = time.monotonic()


def progress(text: str) -> None:
    """One human-readable line on stderr, stamped with seconds since start and the pid."""
    sys.stderr.write(f"[{time.monotonic() - _T0:7.2f}s {os.getpid()}] {text}\n")
    sys.stderr.flush()


def emit(obj: Any) -> None:
    """Write ``obj`` as one compact JSON line on stdout and flush."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def report(**figures: Any) -> None:
    """From a client: figures to merge into its pair's result (e.g. the sender's CPU use)."""
    emit({"report": figures})


def environment() -> dict[str, Any]:
    """Facts that make a result interpretable later (versions, CPUs, pinning)."""
    try:
        import twisted

        tw = twisted.__version__
    except ImportError:  # pragma: no cover
        tw = None
    return {
        "python": platform.python_version(),
        "twisted": tw,
        "platform": platform.platform(),
        "cpus": len(usable_cpus()),
        "pinned": cpu_plan() != (None, None),
    }


# -- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values``, interpolating linearly between ranks
    (numpy's default). :raises ValueError: for an empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    """The median (50th percentile) of ``values``."""
    return percentile(list(values), 50.0)


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and max of round-trip samples given in seconds, in microseconds."""
    us = [s * 1e6 for s in samples_s]
    return {
        "rtt_p50_us": round(percentile(us, 50.0), 1),
        "rtt_p99_us": round(percentile(us, 99.0), 1),
        "rtt_mean_us": round(sum(us) / len(us), 1),
        "rtt_max_us": round(max(us), 1),
        "rtt_samples": len(us),
    }


@dataclass
class ArrivalCounter:
    """Counts arrivals at the receiver and times the steady state.

    The first ``warmup`` arrivals are not timed (connection ramp-up, first allocations). The
    window opens at arrival ``warmup + 1`` and closes at arrival ``count``; the rate is the
    ``count - warmup - 1`` arrivals after the opening one over that time, so the sender's
    start-up and the control message's trip are excluded. ``done`` is called once, at the
    ``count``-th arrival.
    """

    count: int
    warmup: int
    done: Callable[[], None]
    seen: int = 0
    t_first: float = 0.0
    t_last: float = 0.0
    cpu_first: float = 0.0
    cpu_last: float = 0.0
    _clock: Callable[[], float] = field(default=time.perf_counter, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.warmup <= self.count - 2:
            raise ValueError("need 0 <= warmup <= count - 2")

    def hit(self) -> None:
        """One arrival."""
        self.seen += 1
        seen = self.seen
        if seen == self.warmup + 1:  # opens the window; the intervals after it are timed
            self.cpu_first = time.process_time()
            self.t_first = self._clock()
        elif seen == self.count:
            self.t_last = self._clock()
            self.cpu_last = time.process_time()
            self.done()

    @property
    def timed(self) -> int:
        """Arrivals timed: the intervals between the window's first and last arrival."""
        return self.count - self.warmup - 1

    def rate(self) -> float:
        """Arrivals per second over the timed window."""
        elapsed = self.t_last - self.t_first
        return self.timed / elapsed if elapsed > 0 else float("inf")

    def cpu_utilisation(self) -> float:
        """This process's CPU seconds per wall second in the timed window (1.0 = one CPU
        busy all the time: the receiver is the bottleneck)."""
        elapsed = self.t_last - self.t_first
        return (self.cpu_last - self.cpu_first) / elapsed if elapsed > 0 else 0.0


class Busy:
    """This process's CPU seconds per wall second since it was made (1.0: one CPU busy)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def utilisation(self) -> float:
        wall = time.perf_counter() - self.t0
        return round((time.process_time() - self.cpu0) / wall, 3) if wall > 0 else 0.0


# -- CPUs ----------------------------------------------------------------------------------


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))  # pragma: no cover


def cpu_plan() -> tuple[int | None, int | None]:
    """(server CPU, client CPU): the first two usable CPUs, or (None, None) with fewer."""
    cpus = usable_cpus()
    if len(cpus) < 2 or not hasattr(os, "sched_setaffinity"):
        return None, None
    return cpus[0], cpus[1]


def pin(cpu: int | None) -> bool:
    """Pin this process to ``cpu`` (no-op for None); True if it is now pinned."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {cpu})
    return True


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent and os.getppid() != parent:
        os._exit(1)


# -- the orchestrator's side ---------------------------------------------------------------


class Child:
    """One child process in its own process group, with its stdout read as JSON lines."""

    def __init__(self, argv: list[str], name: str, gated: bool = False) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's progress and logs go straight to our stderr
            start_new_session=True,  # its own process group: killpg reaches all of it
        )
        self._buffer = b""

    def read_message(self, deadline: float) -> dict[str, Any]:
        """The next JSON object the child prints, waiting until ``deadline`` (monotonic).

        :raises BenchError: on timeout, on exit without a message, or on an ``error`` message.
        """
        stdout = self.proc.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            while True:
                line, sep, rest = self._buffer.partition(b"\n")
                if sep:
                    self._buffer = rest
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        sys.stderr.write(f"[{self.name} stdout] {line.decode(errors='replace')}\n")
                        continue
                    if not isinstance(msg, dict):
                        raise BenchError(f"{self.name}: unexpected line {line[:200]!r}")
                    if "error" in msg:
                        raise BenchError(f"{self.name}: {msg['error']}")
                    return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{self.name}: timed out")
                if not sel.select(min(left, 1.0)):
                    continue
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    code = self.wait(max(deadline - time.monotonic(), 0.1))
                    raise BenchError(f"{self.name}: exited with code {code} before reporting")
                self._buffer += chunk

    def go(self) -> None:
        """Give a gated child its next turn (a ``go`` line on its stdin)."""
        stdin = self.proc.stdin
        if stdin is None:
            raise BenchError(f"{self.name}: not gated")
        try:
            stdin.write(b"go\n")
            stdin.flush()
        except OSError as exc:
            raise BenchError(f"{self.name}: cannot give it a turn ({exc})") from None

    def wait(self, timeout: float) -> int | None:
        """The exit code, waiting up to ``timeout`` seconds; None if still running."""
        try:
            return self.proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """End the child's whole process group: SIGTERM, then SIGKILL. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            if self.wait(KILL_GRACE) is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        else:
            # The leader has exited; anything it left in its group goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Pair:
    """One implementation's server and client (each pinned, when possible), started by
    :meth:`start` and reaped by :meth:`kill` (always call it, as :func:`run_pair` does).

    :param script: the benchmark script, re-invoked with ``--role``.
    :param timeout: seconds the whole pair may take; children get it as their own deadline.
    :param extra_args: appended to both children's command lines (e.g. a profiler switch).
    :param gated: the server waits for :meth:`block` turns before each block of round trips.
    """

    def __init__(
        self,
        script: str,
        impl: str,
        params: dict[str, Any],
        timeout: float,
        extra_args: Sequence[str] = (),
        gated: bool = False,
    ) -> None:
        self.impl, self.gated = impl, gated
        self.deadline = time.monotonic() + timeout
        self.base = [
            sys.executable,
            script,
            "--impl",
            impl,
            "--params",
            json.dumps(params, separators=(",", ":")),
            "--parent",
            str(os.getpid()),
            "--deadline",
            str(timeout),
            *extra_args,
        ]
        self.children: list[Child] = []
        self.server: Child | None = None
        self.client: Child | None = None

    def _argv(self, role: str, cpu: int | None, *more: str) -> list[str]:
        return [*self.base, "--role", role, "--cpu", "" if cpu is None else str(cpu), *more]

    def start(self) -> None:
        """Start the server, wait for its ``ready``, then start the client.

        :raises BenchError: a child failed, misbehaved or ran out of time.
        """
        impl = self.impl
        server_cpu, client_cpu = cpu_plan()
        gate = ["--gated"] if self.gated else []
        server_argv = self._argv("server", server_cpu, *gate)
        server = self.server = Child(server_argv, f"{impl} server", self.gated)
        self.children.append(server)
        ready = server.read_message(self.deadline).get("ready")
        if not isinstance(ready, dict):
            raise BenchError(f"{impl} server: expected a ready message first")
        client_argv = self._argv("client", client_cpu, "--ready", json.dumps(ready))
        self.client = Child(client_argv, f"{impl} client")
        self.children.append(self.client)

    def block(self) -> dict[str, Any]:
        """Give the gated server its turn and return the figures of its block of round trips.

        :raises BenchError: as :meth:`start`.
        """
        assert self.server is not None
        self.server.go()
        figures = self.server.read_message(self.deadline).get("rtt_block")
        if not isinstance(figures, dict):
            raise BenchError(f"{self.impl} server: expected an rtt_block message")
        return figures

    def finish(self) -> dict[str, Any]:
        """The server's result, with the client's reports merged in, once both have exited.

        :raises BenchError: as :meth:`start`.
        """
        impl, server, client, deadline = self.impl, self.server, self.client, self.deadline
        assert server is not None and client is not None
        result = server.read_message(deadline).get("result")
        if not isinstance(result, dict):
            raise BenchError(f"{impl} server: expected a result message")
        if server.wait(deadline - time.monotonic()) is None:
            progress(f"{impl}: server did not exit after its result; killing it")
        client_deadline = min(time.monotonic() + CLIENT_EXIT_GRACE, deadline)
        try:  # the client's end: its reports, then EOF
            while True:
                result.update(client.read_message(client_deadline).get("report") or {})
        except BenchError as exc:
            if client.proc.returncode != 0:
                progress(f"{impl}: after the result: {exc}")
        if client.wait(client_deadline - time.monotonic()) is None:
            progress(f"{impl}: client did not exit after the run; killing it")
        return result

    def kill(self) -> None:
        """End both children (client first). Idempotent."""
        for child in reversed(self.children):
            child.kill()


def run_pair(
    script: str,
    impl: str,
    params: dict[str, Any],
    timeout: float,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ``impl``'s pair to the end and return the server's result (see :class:`Pair`).
    Both children are gone when this returns or raises.

    :raises BenchError: a child failed, misbehaved or ran out of time.
    """
    pair = Pair(script, impl, params, timeout, extra_args)
    try:
        pair.start()
        return pair.finish()
    finally:
        pair.kill()


def run_interleaved_rtt(
    script: str,
    impls: Sequence[str],
    params: dict[str, Any],
    timeout: float,
    extra_args: Sequence[str] = (),
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Measure round trips of every implementation at once, block by block (see the module
    docstring): all pairs run, gated; each cycle gives every implementation one block, in an
    order that rotates from cycle to cycle.

    :returns: ``(blocks, results)``: each implementation's per-block figures (one dict per
        cycle, as rounds are elsewhere) and its pair's final result (over all its blocks).
    :raises BenchError: a child failed, misbehaved or ran out of time.
    """
    pairs = [Pair(script, impl, params, timeout, extra_args, gated=True) for impl in impls]
    blocks: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    try:
        for pair in pairs:
            pair.start()
        cycles = int(params["rtt_blocks"])
        for c in range(cycles):
            order = pairs[c % len(pairs) :] + pairs[: c % len(pairs)]
            for pair in order:
                blocks[pair.impl].append(pair.block())
            shown = ", ".join(f"{i}={b[-1]['rtt_p50_us']}" for i, b in blocks.items())
            progress(f"rtt block {c + 1}/{cycles}: p50 us {shown}")
        return blocks, {pair.impl: pair.finish() for pair in pairs}
    finally:
        for pair in reversed(pairs):
            pair.kill()


def install_exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks reap the children."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# -- the children's side -------------------------------------------------------------------


def add_child_arguments(parser: argparse.ArgumentParser) -> None:
    """The options :func:`run_pair` passes to children (hidden from ``--help``)."""
    hide = argparse.SUPPRESS
    parser.add_argument("--role", choices=("server", "client"), help=hide)
    parser.add_argument("--impl", help=hide)
    parser.add_argument("--params", default="{}", help=hide)
    parser.add_argument("--ready", default="{}", help=hide)
    parser.add_argument("--cpu", default="", help=hide)
    parser.add_argument("--parent", type=int, default=0, help=hide)
    parser.add_argument("--deadline", type=float, default=120.0, help=hide)
    parser.add_argument("--gated", action="store_true", help=hide)
    parser.add_argument(
        "--profile-dir",
        help="profile every child with pyinstrument (text and speedscope reports go here)",
    )


def _write_profile(profiler: Any, directory: str, stem: str) -> None:
    from pyinstrument.renderers import SpeedscopeRenderer

    profiler.stop()
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, f"{stem}-{os.getpid()}")
    with open(base + ".txt", "w") as f:
        f.write(profiler.output_text(unicode=False, color=False, show_all=False))
    with open(base + ".speedscope.json", "w") as f:
        f.write(profiler.output(SpeedscopeRenderer()))
    progress(f"profile written to {base}.txt")


def child_main(
    args: argparse.Namespace,
    servers: dict[str, ServerMain],
    clients: dict[str, ClientMain],
    log_level: str = "warn",
) -> int:
    """Run one child: pin it, tie it to its parent, run its coroutine on the reactor.

    The server's return value is printed as ``{"result": ...}``; any failure as
    ``{"error": ...}`` with exit code 1. After ``args.deadline`` seconds the child reports
    a timeout and exits with code 3 whatever it is doing.
    """
    _die_with_parent(args.parent)
    pin(int(args.cpu) if args.cpu else None)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))

    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    reactor: Any = _reactor
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(log_level))
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    params = json.loads(args.params)
    is_server = args.role == "server"
    outcome: dict[str, Any] = {}

    def timed_out() -> None:
        emit({"error": f"{args.role} timed out after {args.deadline:g}s"})
        os._exit(3)

    reactor.callLater(args.deadline, timed_out)
    if args.gated:
        global _GATE
        _GATE = Gate(reactor)

    def start() -> None:
        if is_server:
            coro = servers[args.impl](reactor, params, lambda info: emit({"ready": info}))
        else:
            coro = clients[args.impl](reactor, params, json.loads(args.ready))
        d = ensureDeferred(coro)  # type: ignore[arg-type]

        def finished(value: Any) -> None:
            outcome["value"] = value
            reactor.stop()

        def failed(failure: Any) -> None:
            outcome["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            sys.stderr.write(failure.getTraceback())
            reactor.stop()

        d.addCallbacks(finished, failed)

    reactor.callWhenRunning(start)
    profiler = None
    if args.profile_dir:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
    reactor.run(installSignalHandlers=False)
    if profiler is not None:
        _write_profile(profiler, args.profile_dir, f"{args.impl}-{args.role}")
    if "error" in outcome:
        emit({"error": outcome["error"]})
        return 1
    if is_server:
        emit({"result": outcome.get("value")})
    return 0


# -- helpers shared by the scripts ---------------------------------------------------------

LOG_LINE = "[step 12/40] cc -O2 -Wall -c src/wiremsg/session.c -o build/session.o: ok; "
"""The payload's text: build-log-like ASCII without ``e-`` or ``0.0000`` (see the README)."""


def text(size: int) -> str:
    """``size`` characters of ASCII build-log-like text (the same in every benchmark)."""
    return (LOG_LINE * (size // len(LOG_LINE) + 1))[:size]


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

    async def test(
        self,
        params: dict[str, Any],
        test: str,
        start: Callable[[str, int, int], Callable[[], Any]],
    ) -> dict[str, Any]:
        """Run the one-way test ``test`` (``small`` or ``large``) with its count, size and
        warm-up from ``params``; ``start(test, count, size)`` gives what asks the sender to
        begin. Returns its figures (:func:`one_way_figures`; ``msgs_per_s`` for ``small``)."""
        n, size = params[f"{test}_count"], params[f"{test}_size"]
        figures = one_way_figures(
            test, await self.run(n, params[f"{test}_warmup"], start(test, n, size)), size
        )
        if test == "small":
            figures["msgs_per_s"] = figures["small_msgs_per_s"]
        return figures


class Gate:
    """A gated child's turns: :meth:`wait` fires on the orchestrator's next ``go`` line on
    stdin (read by the reactor, so the child stays responsive meanwhile)."""

    def __init__(self, reactor: Any) -> None:
        from twisted.internet.defer import Deferred

        self.reactor = reactor
        self._turns = 0  # "go" lines not yet used
        self._waiting: Deferred[None] | None = None
        self._buffer = b""
        os.set_blocking(0, False)
        reactor.addReader(self)

    def fileno(self) -> int:
        """Standard input."""
        return 0

    def doRead(self) -> None:
        """Count the ``go`` lines; the orchestrator gone (EOF) ends the child."""
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        if not data:
            self.reactor.removeReader(self)
            os._exit(1)
        self._buffer += data
        self._turns += self._buffer.count(b"\n")
        self._buffer = self._buffer.rpartition(b"\n")[2]
        self._fire()

    def _fire(self) -> None:
        if self._turns and self._waiting is not None:
            self._turns -= 1
            d, self._waiting = self._waiting, None
            d.callback(None)

    def wait(self) -> Any:
        """A Deferred that fires at the next turn."""
        from twisted.internet.defer import Deferred

        d: Deferred[None] = Deferred()
        self._waiting = d
        self._fire()
        return d

    def connectionLost(self, reason: Any) -> None:
        """Not expected: stdin is only removed at EOF."""

    def logPrefix(self) -> str:
        """For Twisted's logs."""
        return "gate"


_GATE: Gate | None = None
"""Set by :func:`child_main` in a ``--gated`` child."""


async def measure_rtt(call: Callable[[], Any], params: dict[str, Any]) -> dict[str, Any]:
    """Time ``await call()`` one at a time: ``rtt_warmup`` untimed calls, then
    ``rtt_samples`` timed ones, and summarise those.

    In a gated child (interleaved measurement) the timed calls come in ``rtt_blocks`` blocks:
    each waits for its turn, starts with ``rtt_block_warmup`` untimed calls (the caches went
    cold while the other implementations had their turns) and is reported on stdout as
    ``{"rtt_block": ...}``.
    """
    clock = time.perf_counter
    for _ in range(params["rtt_warmup"]):
        await call()
    gate = _GATE
    blocks = max(1, int(params.get("rtt_blocks", 1))) if gate is not None else 1
    per_block = max(1, params["rtt_samples"] // blocks)
    out: list[float] = []
    for _ in range(blocks):
        if gate is not None:
            await gate.wait()
            for _ in range(params.get("rtt_block_warmup", 0)):
                await call()
        block: list[float] = []
        for _ in range(per_block):
            t0 = clock()
            await call()
            block.append(clock() - t0)
        out.extend(block)
        if gate is not None:
            emit({"rtt_block": latency_summary(block)})
    return latency_summary(out)


def one_way_figures(prefix: str, run: dict[str, Any], size: int) -> dict[str, Any]:
    """``<prefix>_msgs_per_s`` and ``<prefix>_receiver_cpu`` (and ``large_mb_per_s``) from a
    :meth:`Sink.run` result."""
    rate = run["rate"]
    figures = {
        f"{prefix}_msgs_per_s": round(rate, 1),
        f"{prefix}_receiver_cpu": run["receiver_cpu"],
    }
    if prefix == "large":
        figures["large_mb_per_s"] = round(rate * size / 1e6, 1)
    return figures


def summarise(runs: list[dict[str, Any]], per_round: Iterable[str] = ()) -> dict[str, Any]:
    """Median of each numeric figure over the rounds; the ``per_round`` figures are also
    listed per round (as ``<key>_rounds``) when there is more than one."""
    listed = set(per_round)
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs if key in r]
        if isinstance(value, bool) or not isinstance(value, int | float):
            out[key] = value
        elif isinstance(value, int):
            out[key] = round(median(values))
        else:
            out[key] = round(median(values), 3 if value < 10 else 1)
        if key in listed and len(runs) > 1:
            out[f"{key}_rounds"] = values
    return out


def median_ratio(
    results: dict[str, list[dict[str, Any]]], num: str, den: str, key: str
) -> float | None:
    """The median over rounds of ``num``'s ``key`` ÷ ``den``'s (round by round); None when
    neither round measured both."""
    pairs = [
        (a[key], b[key])
        for a, b in zip(results.get(num, []), results.get(den, []), strict=False)
        if key in a and key in b and b[key]
    ]
    return round(median(a / b for a, b in pairs), 3) if pairs else None


RATIO_FIGURES = (
    ("msgs", "msgs_per_s"),
    ("rtt_p50", "rtt_p50_us"),
    ("rtt_p99", "rtt_p99_us"),
    ("large", "large_mb_per_s"),
)
"""(ratio name, figure) pairs that :func:`wiremsg_ratios` compares by default."""


def wiremsg_ratios(
    results: dict[str, list[dict[str, Any]]],
    raw: str,
    figures: Iterable[tuple[str, str]] = RATIO_FIGURES,
) -> dict[str, float | None]:
    """``ratio_<name>_vs_<raw>`` (JSON) and ``…_msgpack``: each wiremsg codec's figure over
    implementation ``raw``'s, as :func:`median_ratio` computes it (per round, or per cycle
    for the interleaved round trips)."""
    figures = tuple(figures)
    out: dict[str, float | None] = {}
    for codec, suffix in (("json", ""), ("msgpack", "_msgpack")):
        for name, key in figures:
            out[f"ratio_{name}_vs_{raw}{suffix}"] = median_ratio(
                results, f"wiremsg_{codec}", raw, key
            )
    return out


def check_targets(
    figures: dict[str, Any], targets: dict[str, tuple[str, float]], suffixes: Iterable[str]
) -> dict[str, bool | None]:
    """For each target ``name`` → (``">="`` or ``"<="``, bound) and suffix: whether
    ``figures["ratio_<name><suffix>"]`` meets it (None when not measured)."""
    met: dict[str, bool | None] = {}
    for suffix in suffixes:
        for name, (op, bound) in targets.items():
            value = figures.get(f"ratio_{name}{suffix}")
            if value is None:
                met[name + suffix] = None
            else:
                met[name + suffix] = value >= bound if op == ">=" else value <= bound
    return met


def log_failure(what: str) -> Callable[[Any], None]:
    """An errback that reports ``what`` failed (with the traceback) on stderr."""

    def log(failure: Any) -> None:
        progress(f"{what} failed: {failure.getErrorMessage()}")
        sys.stderr.write(failure.getTraceback())

    return log


# -- a raw library's pair: the master's side of the tests ---------------------------------------

RAW_HELLO, RAW_START, RAW_ECHO, RAW_QUIT, RAW_BYE = b"H", b"S", b"E", b"Q", b"q"
"""A raw pair's one-byte message kinds: the worker's hello, start a test (JSON spec follows),
an echo (payload follows), quit, and the worker's last word. Anything else is a one-way
test message."""


async def raw_master_tests(
    reactor: Any,
    params: dict[str, Any],
    sink: Sink,
    send: Callable[[bytes], None],
    waiting: list[Any],
    bye: Any,
) -> dict[str, Any]:
    """Run small, rtt and large from a raw pair's master over ``send``; returns the figures.

    :param sink: where the one-way messages land (the caller's receive path hits it).
    :param waiting: the caller's receive path fires and pops the last Deferred here with an
        echo's reply.
    :param bye: a Deferred the caller fires on the worker's last word (after ``RAW_QUIT``).
    """
    import json

    from twisted.internet.defer import Deferred

    tests = params["tests"]
    result: dict[str, Any] = {}

    def start(test: str, count: int, size: int) -> Callable[[], None]:
        spec = {"test": test, "count": count, "size": size}
        return lambda: send(RAW_START + json.dumps(spec).encode())

    def echo(request: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        waiting.append(d)
        send(request)
        return d

    if "small" in tests:
        result.update(await sink.test(params, "small", start))
    if "rtt" in tests:
        request = RAW_ECHO + text(params["rtt_size"]).encode("ascii")
        if await echo(request) != request:
            raise RuntimeError("echo returned something else")
        result.update(await measure_rtt(lambda: echo(request), params))
    if "large" in tests:
        result.update(await sink.test(params, "large", start))
    result["strays"] = sink.strays
    send(RAW_QUIT)
    bye.addTimeout(QUIET_TIMEOUT, reactor)
    await bye
    return result


# -- wiremsg itself, the same over every backend ---------------------------------------------

SECRET = "bench-secret"
WORKER_NAME = "bench"
QUIET_TIMEOUT = 15.0
"""Seconds the master waits for the worker to attach, or to leave at the end."""

UnitCounter = Callable[[Any], "tuple[str, Callable[[], int]] | None"]
"""``count_units(link) -> (figure, count) | None``: called once the worker is attached, with
the master's link; ``count()`` is the number of wire units (boxes, batches) received so far,
and ``figure`` (e.g. ``small_msgs_per_box``) gets the small test's messages per unit."""


def wiremsg_server(scheme: str, codec: str, count_units: UnitCounter) -> ServerMain:
    """The master side of ``wiremsg_<codec>`` over ``<scheme>://``: measures small, rtt and
    large as :class:`wiremsg.Master` on loopback."""

    async def server(reactor: Any, params: dict[str, Any], ready: Callable[..., None]) -> Any:
        from twisted.internet.defer import DeferredList

        from wiremsg import Master

        master = Master({WORKER_NAME: SECRET}, reactor=reactor)
        sink = Sink(reactor)
        master.on("update", sink.hit)
        tests = params["tests"]
        result: dict[str, Any] = {}
        try:
            listener = await master.listen(f"{scheme}://{LOOPBACK}:0")
            ready({"port": listener.address.port})
            peer = await master.wait_for_worker(WORKER_NAME, timeout=QUIET_TIMEOUT)
            session = peer._driver.session  # private, read for the record only
            result["codec"] = session._codec.name
            if result["codec"] != codec:
                raise RuntimeError(f"negotiated {result['codec']}, wanted {codec}")
            units = count_units(peer._driver.link)

            def start(test: str, n: int, size: int) -> Callable[[], Any]:
                return lambda: peer.send("bench", {"test": test, "count": n, "size": size})

            if "small" in tests:
                before = units[1]() if units else 0
                result.update(await sink.test(params, "small", start))
                if units is not None:
                    figure, count = units
                    n = params["small_count"]
                    result[figure] = round(n / max(count() - before, 1), 1)
            if "rtt" in tests:
                body = {"data": text(params["rtt_size"])}
                reply = await peer.request("echo", body)
                if reply.body != body:
                    raise RuntimeError("echo returned something else")
                result.update(await measure_rtt(lambda: peer.request("echo", body), params))
            if "large" in tests:
                result.update(await sink.test(params, "large", start))
            result["strays"] = sink.strays
            lost = peer.when_lost()
            lost.addTimeout(QUIET_TIMEOUT, reactor)
            peer.send("quit")
            await DeferredList([lost], consumeErrors=True)
        finally:
            await master.stop()
        return result

    return server


def wiremsg_client(scheme: str, codec: str) -> ClientMain:
    """The worker side of ``wiremsg_<codec>`` over ``<scheme>://``: echoes, and produces the
    one-way messages the master asks for."""

    async def client(reactor: Any, params: dict[str, Any], ready: dict[str, Any]) -> None:
        from twisted.internet.defer import Deferred, ensureDeferred

        from wiremsg import Worker

        worker = Worker(
            WORKER_NAME,
            SECRET,
            [f"{scheme}://{LOOPBACK}:{ready['port']}"],
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
            report(**{f"{spec['test']}_sender_cpu": busy.utilisation()})

        def bench(msg: Any) -> None:
            def go() -> None:
                ensureDeferred(produce(msg.body)).addErrback(log_failure("producer"))

            reactor.callLater(0, go)  # not from inside the receive path

        quit_: Deferred[None] = Deferred()
        worker.on("echo", lambda msg: msg.body)
        worker.on("bench", bench)
        worker.on("quit", lambda msg: None if quit_.called else quit_.callback(None))
        await worker.start()
        await quit_
        await worker.stop(drain_timeout=QUIET_TIMEOUT)

    return client


# -- a benchmark script's orchestrator and command line ---------------------------------------


@dataclass
class Benchmark:
    """What distinguishes one benchmark script; :func:`main` does the rest."""

    name: str
    """``benchmark`` in the JSON line, and the progress lines' label."""
    script: str
    """The script's path, re-invoked for the children."""
    description: str
    impls: tuple[str, ...]
    """Every implementation measured, in the first round's order."""
    tests: tuple[str, ...]
    default_params: dict[str, Any]
    quick_params: dict[str, Any]
    default_rounds: int
    pair_timeout: float
    quick_pair_timeout: float
    targets: dict[str, tuple[str, float]]
    """Target → (comparison, bound) on the matching ``ratio_*`` figure."""
    ratios: Callable[[dict[str, list[dict[str, Any]]]], dict[str, Any]]
    """The ``ratio_*`` figures from each implementation's per-round results."""
    implementations: Callable[[], tuple[dict[str, ServerMain], dict[str, ClientMain]]]
    per_round: tuple[str, ...] = ("msgs_per_s", "rtt_p50_us", "rtt_p99_us", "large_mb_per_s")
    """Figures also listed per round (as ``<key>_rounds``) when there are several."""
    environment: Callable[[], dict[str, Any]] = environment
    target_suffixes: tuple[str, ...] = ("", "_msgpack")


def orchestrate(bench: Benchmark, args: argparse.Namespace) -> int:
    """Run the one-way tests of every implementation ``rounds`` times in rotating order, the
    round trips interleaved (:func:`run_interleaved_rtt`), and emit the one JSON line."""
    started = time.monotonic()
    params = dict(bench.quick_params if args.quick else bench.default_params)
    if args.tests:
        params["tests"] = [t for t in args.tests.split(",") if t]
        unknown = set(params["tests"]) - set(bench.tests)
        if unknown:
            raise SystemExit(f"unknown tests: {', '.join(sorted(unknown))}")
    impls = [i for i in (args.only.split(",") if args.only else bench.impls) if i]
    unknown = set(impls) - set(bench.impls)
    if unknown:
        raise SystemExit(f"unknown implementations: {', '.join(sorted(unknown))}")
    rounds = args.rounds or (1 if args.quick else bench.default_rounds)
    timeout = bench.quick_pair_timeout if args.quick else bench.pair_timeout
    extra = ["--profile-dir", args.profile_dir] if args.profile_dir else []
    env = bench.environment()
    progress(
        f"{bench.name} benchmark: {len(impls)} implementations x {rounds} rounds, "
        f"{env['cpus']} CPUs, {'pinned' if env['pinned'] else 'NOT pinned'}"
    )
    results: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    figures: dict[str, Any] = {"benchmark": bench.name, "quick": args.quick, "rounds": rounds}
    script = os.path.abspath(bench.script)
    interleave = "rtt" in params["tests"] and len(impls) > 1 and params.get("rtt_blocks", 1) > 1
    sequential = dict(params, tests=[t for t in params["tests"] if t != "rtt" or not interleave])
    rtt_blocks: dict[str, list[dict[str, Any]]] = {}
    rtt_results: dict[str, dict[str, Any]] = {}
    try:
        for r in range(rounds if sequential["tests"] else 0):
            order = impls[r % len(impls) :] + impls[: r % len(impls)]
            for impl in order:
                progress(f"round {r + 1}/{rounds}: {impl} ...")
                t0 = time.monotonic()
                result = run_pair(script, impl, sequential, timeout, extra)
                results[impl].append(result)
                shown = ", ".join(
                    f"{k}={result[k]}"
                    for k in ("msgs_per_s", "rtt_p50_us", "large_mb_per_s")
                    if k in result
                )
                progress(f"round {r + 1}/{rounds}: {impl}: {shown} ({time.monotonic() - t0:.1f}s)")
        if interleave:
            progress(f"rtt: {len(impls)} implementations, {params['rtt_blocks']} blocks each")
            rtt_params = dict(params, tests=["rtt"])
            rtt_blocks, rtt_results = run_interleaved_rtt(script, impls, rtt_params, timeout, extra)
    except BenchError as exc:
        progress(f"FAILED: {exc}")
        emit({"benchmark": bench.name, "error": str(exc)})
        return 1
    for impl in impls:
        figures[impl] = summarise(results[impl], bench.per_round) if results[impl] else {}
        if impl in rtt_results:
            rtt = rtt_results[impl]
            figures[impl].update({k: v for k, v in rtt.items() if k not in figures[impl]})
            figures[impl].update({k: v for k, v in rtt.items() if k.startswith("rtt_")})
            figures[impl]["rtt_p50_us_blocks"] = [b["rtt_p50_us"] for b in rtt_blocks[impl]]
    figures.update(bench.ratios(results))
    if interleave:  # the round-trip ratios: medians of the per-cycle ratios
        rtt_ratios = bench.ratios(rtt_blocks)
        figures.update({k: v for k, v in rtt_ratios.items() if "_rtt_" in k})
    figures["rtt_interleaved"] = interleave
    figures["targets"] = {name: f"{op} {bound}" for name, (op, bound) in bench.targets.items()}
    figures["targets_met"] = check_targets(figures, bench.targets, bench.target_suffixes)
    figures["params"] = params
    figures["env"] = env
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    emit(figures)
    progress(f"done in {figures['elapsed_s']}s; targets met: {figures['targets_met']}")
    return 0


def main(bench: Benchmark, argv: list[str] | None = None) -> int:
    """The script's command line: a child when given ``--role``, else the orchestrator."""
    parser = argparse.ArgumentParser(description=bench.description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke)")
    parser.add_argument(
        "--rounds", type=int, help=f"rounds (default {bench.default_rounds}; 1 quick)"
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(bench.impls)}")
    parser.add_argument("--tests", help=f"comma-separated subset of: {', '.join(bench.tests)}")
    add_child_arguments(parser)
    args = parser.parse_args(argv)
    if args.role:
        servers, clients = bench.implementations()
        return child_main(args, servers, clients)
    install_exit_on_sigterm()
    try:
        return orchestrate(bench, args)
    except KeyboardInterrupt:  # the children are already reaped (run_pair's finally)
        progress("interrupted")
        return 130
