"""The ``wiremsg`` command: ``master``, ``worker``, ``run``, ``status``, ``keys``, ``demo``.

Flags and exit codes are fixed (DESIGN §6); outside scripts depend on them. Exit codes: 0
success; ``run`` exits with the command's exit code (for several workers, 0 only if all are
0, else the first failing worker's by name; a signal N as 128+N); 1 for any failure of ours
(unreachable master, unknown worker, bad file, refused credentials) with one line on stderr
and never a traceback; 2 for bad usage; 130 when ``run`` is interrupted twice.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from wiremsg.config import ConfigError, parse_host_port

DEFAULT_CONTROL_URL = "http://127.0.0.1:8789"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wiremsg", description="Messages between a CI master and its build workers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("master", help="run a master")
    m.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="URL",
        help="an address to accept workers on (repeatable), e.g. amp://0.0.0.0:9989",
    )
    m.add_argument("--workers", required=True, metavar="FILE", help="the workers file (TOML)")
    m.add_argument(
        "--control",
        default="127.0.0.1:8789",
        metavar="HOST:PORT",
        help="the HTTP control endpoint (default 127.0.0.1:8789; 'off' to disable)",
    )
    m.add_argument(
        "--pb-listen",
        metavar="ENDPOINT",
        help="accept legacy Buildbot workers (PB) on a Twisted endpoint",
    )
    m.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between heartbeats (default 5)",
    )
    m.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds a disconnected worker may take to resume (default 60)",
    )

    w = sub.add_parser("worker", help="run a worker")
    w.add_argument("--name", required=True)
    w.add_argument(
        "--master",
        action="append",
        required=True,
        metavar="URL",
        help="a master address (repeatable, in preference order)",
    )
    w.add_argument(
        "--secret-file", metavar="FILE", help="file holding the secret (else $WIREMSG_SECRET)"
    )
    w.add_argument("--tags", default="", metavar="a,b", help="comma-separated tags")
    w.add_argument(
        "--basedir", default=".", metavar="DIR", help="where commands run (workdirs are below it)"
    )

    r = sub.add_parser("run", help="run a command on workers and stream its output")
    r.add_argument("--control", default=DEFAULT_CONTROL_URL, metavar="URL")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--worker", metavar="NAME")
    who.add_argument("--tag", metavar="TAG")
    who.add_argument("--all", action="store_true")
    r.add_argument("--timeout", type=float, metavar="S", help="stop the command after S seconds")
    r.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG ...]")

    s = sub.add_parser("status", help="show the master's workers")
    s.add_argument("--control", default=DEFAULT_CONTROL_URL, metavar="URL")
    s.add_argument("--json", action="store_true", help="print JSON")

    k = sub.add_parser("keys", help="make key pairs (zmq: CURVE)")
    k.add_argument("kind", choices=["zmq"], help="which keys: zmq (CURVE)")
    k.add_argument("--name", default="wiremsg", help="file name stem (default: wiremsg)")
    k.add_argument("--dir", default=".", metavar="DIR", help="where to write (default: .)")
    k.add_argument("--force", action="store_true", help="replace existing files")

    d = sub.add_parser("demo", help="run a master and a worker and show a build's output")
    d.add_argument(
        "--backend",
        default="amp",
        choices=["amp", "zmq", "amqp", "memory"],
        help="the backend to run the demo over (default: amp)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wiremsg`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            command = list(args.argv)
            if command[:1] == ["--"]:
                command = command[1:]
            if not command:
                parser.error("run needs a command after --")
            return run_command(
                args.control,
                command,
                worker=args.worker,
                tag=args.tag,
                everyone=args.all,
                timeout=args.timeout,
            )
        if args.command == "status":
            return show_status(args.control, as_json=args.json)
        if args.command == "master":
            return _react(lambda reactor: _master(reactor, args), serve=True)
        if args.command == "worker":
            return _react(lambda reactor: _worker(reactor, args), serve=True)
        if args.command == "demo":
            return _react(lambda reactor: _demo(reactor, args.backend))
        if args.command == "keys":
            return make_keys(args.dir, args.name, args.force)
    except ConfigError as exc:
        return _fail(str(exc))
    return 2  # pragma: no cover - argparse refuses unknown commands


def _fail(message: str, stream: TextIO | None = None) -> int:
    (stream or sys.stderr).write(f"wiremsg: {message}\n")
    return 1


# -- the long-running commands ---------------------------------------------------------------


def _start_logging(level: str = "info") -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    text: Any = textFileLogObserver(sys.stderr)
    observer: Any = FilteringLogObserver(text, [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _describe(failure: Any) -> str:
    exc = getattr(failure, "value", failure)
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _react(work: Callable[[Any], Any], serve: bool = False) -> int:
    """Run ``work(reactor)`` (a coroutine function). Without ``serve`` its result is the exit
    code; with it, the reactor keeps running until a signal and the exit code is 0. A failure
    of ``work`` becomes one line on stderr and exit code 1."""
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.error import ReactorNotRunning
    from twisted.python.failure import Failure

    reactor: Any = _reactor
    outcome: list[Any] = []

    def done(result: Any) -> None:
        if isinstance(result, Failure) or not serve:
            outcome.append(result)
            if reactor.running:
                try:
                    reactor.stop()
                except ReactorNotRunning:  # already stopping (a signal came first)
                    pass

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(work(reactor)).addBoth(done))
    reactor.run()
    if not outcome:
        return 0
    result = outcome[0]
    if isinstance(result, Failure):
        return _fail(_describe(result))
    return int(result)


async def _master(reactor: Any, args: argparse.Namespace) -> None:
    from wiremsg.commands import CommandTracker
    from wiremsg.config import load_workers
    from wiremsg.control import listen_control
    from wiremsg.master import Master

    workers = load_workers(args.workers)
    _start_logging()
    master = Master(workers, reactor=reactor, heartbeat=args.heartbeat, grace=args.grace)
    bridge = None
    if args.pb_listen:
        from wiremsg.compat.pbmaster import PBBridge

        bridge = PBBridge(master, workers, reactor)

    async def stop() -> None:
        if bridge is not None:
            await bridge.stop()
        await master.stop("master shutting down")

    _on_shutdown(reactor, stop)
    tracker = CommandTracker(master)
    for url in args.listen:
        listener = await master.listen(url)
        _say(f"listening on {listener.address.redacted()}")
    if args.control != "off":
        host, port = parse_host_port(args.control)
        cport = await listen_control(master, reactor, host, port, tracker)
        _say(f"control on http://{host}:{cport.getHost().port}")
    if bridge is not None:
        try:
            pb_port = await bridge.listen(args.pb_listen)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"--pb-listen {args.pb_listen!r}: {exc}") from None
        bound = pb_port.getHost()
        _say(f"pb listening on {bound.host}:{bound.port}")


def _on_shutdown(reactor: Any, stop: Callable[[], Any]) -> None:
    """Run the coroutine function ``stop`` before the reactor shuts down (on a signal)."""
    from twisted.internet.defer import Deferred

    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(stop()))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _worker(reactor: Any, args: argparse.Namespace) -> None:
    from wiremsg.agent import build_agent
    from wiremsg.config import read_secret

    secret = read_secret(args.secret_file)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    if any(m.startswith("pb://") for m in args.master):
        await _pb_worker(reactor, args, secret)
        return
    _start_logging()
    agent = build_agent(
        reactor,
        args.name,
        secret,
        args.master,
        tags=tags,
        basedir=args.basedir,
        on_shutdown=lambda: reactor.stop(),
    )
    _on_shutdown(reactor, agent.stop)
    await agent.worker.start()
    _say(f"attached to {agent.worker.master}")


async def _pb_worker(reactor: Any, args: argparse.Namespace, secret: str) -> None:
    """``wiremsg worker --master pb://HOST:PORT``: serve a Buildbot master (legacy PB)."""
    from wiremsg.compat.pbworker import PBAgent

    if len(args.master) != 1:
        raise ConfigError("a pb:// master cannot be combined with other masters")
    try:
        agent = PBAgent(
            reactor,
            args.name,
            secret,
            args.master[0],
            args.basedir,
            on_shutdown=lambda: reactor.stop(),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _start_logging()
    _on_shutdown(reactor, agent.stop)
    await agent.start()
    _say(f"attached to {agent.master}")


async def _demo(reactor: Any, backend: str) -> int:
    from wiremsg.demo import run_demo

    return await run_demo(reactor, sys.stdout, backend)


def make_keys(directory: str, name: str, force: bool) -> int:
    """``wiremsg keys zmq``: write a CURVE key pair (NAME.key public, NAME.key_secret 0600)."""
    from wiremsg.keys import load_key, write_keypair

    try:
        public_path, secret_path = write_keypair(directory, name, overwrite=force)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    _say(f"public key:  {public_path}  ({load_key(public_path)})")
    _say(f"secret key:  {secret_path}  (mode 0600; keep it on this host)")
    return 0


# -- the control-endpoint clients --------------------------------------------------------------


def _connection(control: str) -> Any:
    import http.client

    host, port = parse_host_port(control)
    return http.client.HTTPConnection(host, port, timeout=10)


def _post(control: str, path: str, body: dict[str, Any]) -> Any:
    conn = _connection(control)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def _unreachable(control: str, exc: OSError) -> int:
    host, port = parse_host_port(control)
    why = exc.strerror or str(exc) or type(exc).__name__
    return _fail(f"cannot reach the master's control endpoint at {host}:{port}: {why}")


def _error_of(response: Any) -> str:
    try:
        return str(json.loads(response.read())["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status} {response.reason}"


def exit_code(rc: int) -> int:
    """A remote exit code as this process's: a signal N (rc -N) as 128+N, capped at 255."""
    if rc < 0:
        return min(128 - rc, 255)
    return min(rc, 255)


def run_command(
    control: str,
    command: list[str],
    *,
    worker: str | None = None,
    tag: str | None = None,
    everyone: bool = False,
    timeout: float | None = None,
) -> int:
    """``wiremsg run``: start ``command`` through the control endpoint and stream its output.
    The first Ctrl-C interrupts the remote command; a second one gives up at once (130)."""
    spec: dict[str, Any] = {"command": command}
    if worker:
        spec["worker"] = worker
    elif tag:
        spec["tag"] = tag
    else:
        spec["all"] = everyone
    if timeout is not None:
        spec["timeout"] = timeout
    try:
        conn, response = _post(control, "/run", spec)
    except OSError as exc:
        return _unreachable(control, exc)
    if response.status != 200:
        return _fail(_error_of(response))
    conn.sock.settimeout(None)  # commands may be silent for long
    run = _RunStream(control)
    previous = signal.signal(signal.SIGINT, run.on_sigint)
    try:
        return run.follow(response)
    except KeyboardInterrupt:
        sys.stderr.write("wiremsg: interrupted\n")
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)


class _RunStream:
    """Follows one run's NDJSON stream. The first SIGINT asks the master to interrupt the
    command and keeps following (the read resumes after the handler: PEP 475); the second
    gives up."""

    def __init__(self, control: str) -> None:
        self.control = control
        self.run_id = ""
        self.interrupted = False
        self.printer: _Printer | None = None

    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted or not self.run_id:
            raise KeyboardInterrupt
        self.interrupted = True
        sys.stderr.write("wiremsg: interrupting the remote command (Ctrl-C again to quit)\n")
        try:
            conn, response = _post(
                self.control, "/interrupt", {"run": self.run_id, "why": "interrupted by the user"}
            )
            response.read()
            conn.close()
        except OSError as exc:
            sys.stderr.write(f"wiremsg: could not ask for the interrupt: {exc}\n")

    def follow(self, response: Any) -> int:
        while True:
            line = response.readline()
            if not line:
                return _fail("the master closed the stream before the command finished")
            event = json.loads(line)
            kind = event.get("event")
            printer = self.printer
            if kind == "run":
                self.run_id = event["id"]
                self.printer = _Printer(prefix=len(event["workers"]) > 1)
            elif kind in ("stdout", "stderr") and printer is not None:
                printer.write(event["worker"], kind, event["data"])
            elif kind == "exit" and printer is not None:
                printer.flush(event["worker"])
            elif kind == "error":
                if printer is not None:
                    printer.flush(event["worker"])
                sys.stderr.write(f"wiremsg: {event['worker']}: {event['message']}\n")
            elif kind == "done":
                return exit_code(int(event["rc"]))


class _Printer:
    """Writes streamed output, each line prefixed ``NAME: `` when several workers answer."""

    def __init__(self, prefix: bool) -> None:
        self.prefix = prefix
        self.partial: dict[tuple[str, str], str] = {}

    def write(self, worker: str, stream: str, data: str) -> None:
        out = sys.stdout if stream == "stdout" else sys.stderr
        if not self.prefix:
            out.write(data)
            out.flush()
            return
        text = self.partial.pop((worker, stream), "") + data
        *lines, rest = text.split("\n")
        for line in lines:
            out.write(f"{worker}: {line}\n")
        if rest:
            self.partial[(worker, stream)] = rest
        out.flush()

    def flush(self, worker: str) -> None:
        for (name, stream), rest in list(self.partial.items()):
            if name == worker:
                del self.partial[(name, stream)]
                out = sys.stdout if stream == "stdout" else sys.stderr
                out.write(f"{worker}: {rest}\n")


def show_status(control: str, as_json: bool = False) -> int:
    """``wiremsg status``: print the master's workers (a table, or JSON)."""
    try:
        conn = _connection(control)
        conn.request("GET", "/status")
        response = conn.getresponse()
    except OSError as exc:
        return _unreachable(control, exc)
    if response.status != 200:
        return _fail(_error_of(response))
    status = json.loads(response.read())
    if as_json:
        _say(json.dumps(status, indent=2))
        return 0
    rows = [("NAME", "STATE", "BACKEND", "ADDRESS", "MSGS IN/OUT", "BYTES IN/OUT", "RTT", "TAGS")]
    for w in status["workers"]:
        rtt = f"{w['rtt'] * 1000:.2f}ms" if w.get("rtt") is not None else "-"
        rows.append(
            (
                w["name"],
                w["state"],
                w["backend"],
                w["address"],
                f"{w['messages_received']}/{w['messages_sent']}",
                f"{w['bytes_received']}/{w['bytes_sent']}",
                rtt,
                ",".join(w["tags"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _say("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    _say(f"{len(status['workers'])} worker(s); listening on {', '.join(status['listeners'])}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
