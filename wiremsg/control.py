"""The master's HTTP control endpoint (twisted.web), bound to loopback unless told otherwise.

``GET /workers``
    JSON list of the registered workers (name, state, backend, address, tags, attached since,
    messages and bytes each way, RTT).
``GET /status``
    JSON object: ``workers`` as above, ``listeners``, ``uptime``, ``version``.
``GET /metrics``
    Prometheus text exposition (prometheus_client).
``POST /run``
    Body ``{"command": str | [str, ...], "worker": NAME | "tag": TAG | "all": true,
    "timeout": seconds?, "workdir": str?, "env": {..}?}``. The answer streams NDJSON, one
    event per line: ``{"event": "run", "id", "workers"}``, then per worker ``stdout``,
    ``stderr``, ``header`` (``{"event", "worker", "data"}``), ``exit`` (``rc``) or ``error``
    (``message``), and last ``{"event": "done", "rc"}``. The overall ``rc`` is 0 only if every
    worker's is; else the first failing worker's by name (a worker that could not finish counts
    as :data:`FAILED_RC`, a timeout as :data:`TIMEOUT_RC`). If the client disconnects, every
    command of the run is interrupted.
``POST /interrupt``
    Body ``{"run": ID}``: interrupt that run's commands; its stream then ends as usual.

Errors answer with a JSON ``{"error": "..."}`` and a 4xx status.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from wiremsg.commands import CommandTracker, RemoteCommand
from wiremsg.master import Master, Peer
from wiremsg.vocabulary import TIMEOUT, TIMEOUT_WITHOUT_OUTPUT

log = Logger()

DEFAULT_CONTROL = "127.0.0.1:8789"
"""Where the control endpoint listens unless told otherwise (loopback only)."""
MAX_REQUEST_BODY = 1024 * 1024
"""The largest request body accepted, in bytes."""
FAILED_RC = 255
"""The exit code reported for a worker whose command could not finish (lost, refused)."""
TIMEOUT_RC = 124
"""The exit code reported for a command stopped by ``timeout`` (as timeout(1) does)."""


class RunError(Exception):
    """A run request that cannot be served; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def select_workers(master: Master, spec: Mapping[str, Any]) -> list[Peer]:
    """The workers a run request names, sorted by name.

    :raises RunError: no selector, an unknown worker, or no worker matching.
    """
    attached = [p for p in master.workers.values() if p.state == "attached"]
    if isinstance(spec.get("worker"), str):
        name = spec["worker"]
        peer = master.workers.get(name)
        if peer is None:
            raise RunError(404, f"unknown worker {name!r}: not attached to this master")
        return [peer]
    if isinstance(spec.get("tag"), str):
        peers = [p for p in attached if spec["tag"] in p.tags]
        if not peers:
            raise RunError(404, f"no attached worker has tag {spec['tag']!r}")
        return sorted(peers, key=lambda p: p.name)
    if spec.get("all") is True:
        if not attached:
            raise RunError(404, "no worker is attached")
        return sorted(attached, key=lambda p: p.name)
    raise RunError(400, "say which workers: worker, tag or all")


def shell_args(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``shell`` command's arguments from a run request.

    :raises RunError: a missing or malformed command, timeout, workdir or env.
    """
    command = spec.get("command")
    if isinstance(command, list):
        if not command or not all(isinstance(a, str) for a in command):
            raise RunError(400, "command must be a non-empty list of strings")
    elif not isinstance(command, str) or not command:
        raise RunError(400, "command must be a string or a list of strings")
    args: dict[str, Any] = {"command": command, "workdir": spec.get("workdir", "build")}
    if not isinstance(args["workdir"], str):
        raise RunError(400, "workdir must be a string")
    timeout = spec.get("timeout")
    if timeout is not None:
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise RunError(400, "timeout must be a positive number of seconds")
        args["max_time"] = timeout
    env = spec.get("env")
    if env is not None:
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in env.items()
        ):
            raise RunError(400, "env must map names to strings (or null to unset)")
        args["env"] = env
    return args


class _Run:
    """One POST /run: commands on several workers, streamed as NDJSON to one request."""

    def __init__(
        self, control: ControlResource, request: Request, peers: list[Peer], args: dict[str, Any]
    ) -> None:
        self.id = os.urandom(6).hex()
        self.control = control
        self.request = request
        self.timed_out = False
        self.finished = False
        self.results: dict[str, int] = {}
        self.commands: list[RemoteCommand] = []
        self.write({"event": "run", "id": self.id, "workers": [p.name for p in peers]})
        for peer in peers:
            cmd = control.tracker.start(peer, args, self._updater(peer.name))
            cmd.done.addCallbacks(
                self._exited, self._failed, callbackArgs=(peer.name, cmd), errbackArgs=(peer.name,)
            ).addErrback(
                lambda f: log.failure("run {id}: reporting a result failed", f, id=self.id)
            )
            self.commands.append(cmd)
        timeout = args.get("max_time")
        self._deadline = (
            control.reactor.callLater(timeout + 5.0, self._timeout) if timeout else None
        )
        request.notifyFinish().addErrback(self._disconnected)
        DeferredList([c.done for c in self.commands], consumeErrors=True).addCallback(self._done)

    def write(self, event: dict[str, Any]) -> None:
        if not self.finished:
            self.request.write(json.dumps(event).encode() + b"\n")

    def _updater(self, name: str) -> Any:
        def on_update(body: Mapping[str, Any]) -> None:
            for stream in ("header", "stdout", "stderr"):
                data = body.get(stream)
                if isinstance(data, str) and data:
                    self.write({"event": stream, "worker": name, "data": data})

        return on_update

    def _exited(self, rc: int, name: str, cmd: RemoteCommand) -> None:
        failure = cmd.failure or {}
        if self.timed_out or failure.get("code") in (TIMEOUT, TIMEOUT_WITHOUT_OUTPUT):
            rc = TIMEOUT_RC
        self.results[name] = rc
        self.write({"event": "exit", "worker": name, "rc": rc})

    def _failed(self, failure: Any, name: str) -> None:
        self.results[name] = FAILED_RC
        self.write({"event": "error", "worker": name, "message": failure.getErrorMessage()})

    def interrupt(self, why: str) -> None:
        for cmd in self.commands:
            if not cmd.finished:
                cmd.interrupt(why).addErrback(lambda f: None)

    def _timeout(self) -> None:
        self._deadline = None
        self.timed_out = True
        self.interrupt("timeout")

    def _disconnected(self, failure: Any) -> None:
        self.finished = True
        self.interrupt("the client went away")

    def _done(self, _: Any) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self.control.runs.pop(self.id, None)
        failing = [self.results[n] for n in sorted(self.results) if self.results[n] != 0]
        rc = failing[0] if failing else 0
        if not self.finished:
            self.write({"event": "done", "rc": rc})
            self.finished = True
            self.request.finish()


class _Metrics:
    """A prometheus_client collector reading the master's status at scrape time."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def collect(self) -> Iterator[Any]:
        workers = self.master.status()["workers"]
        states = GaugeMetricFamily(
            "wiremsg_workers", "Registered workers by state", labels=["state"]
        )
        for state in ("attached", "detached"):
            states.add_metric([state], sum(1 for w in workers if w["state"] == state))
        yield states
        for key, help_text in (
            ("messages_sent", "Messages sent to the worker"),
            ("messages_received", "Messages received from the worker"),
            ("bytes_sent", "Bytes sent to the worker"),
            ("bytes_received", "Bytes received from the worker"),
            ("resumes", "Session resumes"),
        ):
            counter = CounterMetricFamily(f"wiremsg_{key}", help_text, labels=["worker"])
            for w in workers:
                counter.add_metric([w["name"]], w[key])
            yield counter
        rtt = GaugeMetricFamily(
            "wiremsg_rtt_seconds", "Last heartbeat round trip", labels=["worker"]
        )
        for w in workers:
            if w["rtt"] is not None:
                rtt.add_metric([w["name"]], w["rtt"])
        yield rtt
        refused = CounterMetricFamily("wiremsg_refused_links", "Links refused in handshake")
        refused.add_metric([], self.master.refused)
        yield refused


class ControlResource(Resource):
    """The endpoint's single resource; dispatches on method and path."""

    isLeaf = True

    def __init__(self, master: Master, reactor: Any, tracker: CommandTracker | None = None) -> None:
        super().__init__()
        self.master = master
        self.reactor = reactor
        self.tracker = tracker if tracker is not None else CommandTracker(master)
        self.started = time.time()
        self.runs: dict[str, _Run] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Metrics(master))

    def render_GET(self, request: Request) -> bytes:
        path = request.path.rstrip(b"/")
        if path == b"/workers":
            return self._json(request, self.master.status()["workers"])
        if path in (b"/status", b""):
            from wiremsg import __version__

            status = self.master.status()
            status.update(uptime=time.time() - self.started, version=__version__)
            return self._json(request, status)
        if path == b"/metrics":
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            data: bytes = generate_latest(self.registry)
            return data
        return self._error(request, 404, f"no such resource {path.decode(errors='replace')}")

    def render_POST(self, request: Request) -> bytes | int:
        path = request.path.rstrip(b"/")
        try:
            spec = self._body(request)
            if path == b"/run":
                peers = select_workers(self.master, spec)
                run = _Run(self, request, peers, shell_args(spec))
                self.runs[run.id] = run
                request.setHeader(b"content-type", b"application/x-ndjson")
                return NOT_DONE_YET
            if path == b"/interrupt":
                found = self.runs.get(spec.get("run", ""))
                if found is None:
                    raise RunError(404, "no such run")
                found.interrupt(str(spec.get("why") or "interrupted by the user"))
                return self._json(request, {"interrupted": found.id})
        except RunError as exc:
            return self._error(request, exc.status, str(exc))
        return self._error(request, 404, f"no such resource {path.decode(errors='replace')}")

    def _body(self, request: Request) -> dict[str, Any]:
        assert request.content is not None
        raw = request.content.read(MAX_REQUEST_BODY + 1)
        if len(raw) > MAX_REQUEST_BODY:
            raise RunError(413, "request body too large")
        try:
            spec = json.loads(raw or b"{}")
        except ValueError:
            raise RunError(400, "the body is not JSON") from None
        if not isinstance(spec, dict):
            raise RunError(400, "the body must be a JSON object")
        return spec

    @staticmethod
    def _json(request: Request, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode() + b"\n"

    def _error(self, request: Request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        return self._json(request, {"error": message})


def control_site(master: Master, reactor: Any, tracker: CommandTracker | None = None) -> Site:
    """A twisted.web Site serving the control endpoint for ``master``."""
    site = Site(ControlResource(master, reactor, tracker))
    site.displayTracebacks = False
    site.noisy = False
    return site


def listen_control(
    master: Master, reactor: Any, host: str, port: int, tracker: CommandTracker | None = None
) -> Deferred[Any]:
    """Serve the control endpoint on ``host:port``; fires with the listening port."""
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    cls = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
    endpoint = cls(reactor, port, interface=host)
    d: Deferred[Any] = endpoint.listen(control_site(master, reactor, tracker))
    return d
