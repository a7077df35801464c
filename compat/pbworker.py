"""wiremsg worker → old master: log into a real Buildbot master over PB and run its builds.

A :class:`PBAgent` is what ``wiremsg worker --master pb://host:port`` runs. It logs into the
master as Buildbot's worker does (PB, name and secret, a *Bot* as the mind), serves the Bot's
and its builders' remote methods (BUILDBOT-PB.md §1.2), and runs every command with the wiremsg
:class:`~wiremsg.runner.CommandRunner` (``shell`` and the file commands). The runner's
``update``/``complete``/``file_*`` messages become calls on the master's command, writer and
reader references (:mod:`wiremsg.compat.translate`): one update key per call, ``rc`` before
``complete``, paths under each builder's directory.

Better than Buildbot's worker, where the master cannot tell the difference:

- output goes out as soon as a line is complete (at most 50 ms for a partial line), not after
  Buildbot's 5 s / 64 KiB buffer;
- uploads send up to :data:`MAX_IN_FLIGHT` blocks before the first answer, and downloads keep
  several reads outstanding (PB answers calls on one connection in order, and the master's
  writer and reader handle each call synchronously, so pipelining is safe);
- only plain data, references and failures are unjellied (:data:`~.pbsafe.PB_SECURITY`);
- the master's ``print("ping")`` is answered at once, and keepalives run every
  ``keepalive`` seconds as Buildbot's do.

Deliberately as Buildbot: when the connection drops, running commands are killed (the master
re-runs the build: RETRY); the agent reconnects with backoff (1.5^n s, at most 60 s, plus up
to 1 s of jitter), and a refused login is retried the same way, except before the first attach,
when :meth:`PBAgent.start` fails instead (so ``wiremsg worker`` exits with a clear message).
"""

from __future__ import annotations

import os
import platform
import random
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from wiremsg.errors import ConnectFailed, WiremsgError
from wiremsg.message import JSON, Message
from wiremsg.runner import CommandError, CommandRunner
from wiremsg.vocabulary import (
    COMPLETE,
    FILE_CLOSE,
    FILE_COMMANDS,
    FILE_READ,
    FILE_UNPACK,
    FILE_UTIME,
    FILE_WRITE,
    SHELL,
    SPAWN_FAILED,
    UPDATE,
    FileChunk,
    FileRead,
    FileUtime,
    FileWrite,
    Update,
)

from .pbsafe import MAX_STRING, PB_SECURITY, call, describe
from .translate import TranslationError, complete_to_pb, info_to_pb, start_from_pb, updates_to_pb

__all__ = ["KEEPALIVE", "MAX_IN_FLIGHT", "PBAgent", "RefusedLogin", "parse_pb_url"]

log = Logger()

KEEPALIVE = 600.0
"""Seconds between keepalives to the master (Buildbot's default)."""
MAX_IN_FLIGHT = 32
"""PB calls to the master that may await their answers before the runner stops reading."""
MAX_BACKOFF = 60.0
"""The longest wait between connection attempts (Buildbot's real cap)."""
CONNECT_TIMEOUT = 30.0
"""Seconds one connection and login may take."""
SECRET_ENV = "WIREMSG_SECRET"


def _firer(d: Deferred[None]) -> Callable[[], None]:
    def fire() -> None:
        if not d.called:
            d.callback(None)

    return fire


def parse_pb_url(url: str) -> tuple[str, int]:
    """``pb://host:port`` (port 9989 when absent) → ``(host, port)``.

    :raises ValueError: another scheme, no host, or a bad port.
    """
    parts = urlsplit(url)
    if parts.scheme != "pb" or not parts.hostname:
        raise ValueError(f"{url!r} is not pb://HOST[:PORT]")
    try:
        port = parts.port or 9989
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    return parts.hostname, port


class RefusedLogin(WiremsgError):
    """The Buildbot master refused this worker's first login (wrong name or password, or a
    duplicate of a connected worker)."""


class _Route:
    """Where one running command's messages go on the master."""

    def __init__(self, ref: Any, writer: Any, reader: Any) -> None:
        self.ref = ref
        self.writer = writer
        self.reader = reader
        self.failed: str | None = None


class _Builder(pb.Referenceable):
    """One of the master's builders on this worker (Buildbot's WorkerForBuilder)."""

    def __init__(self, agent: PBAgent, name: str, builddir: str) -> None:
        self.agent = agent
        self.name = name
        self.builddir = builddir
        self.current: str | None = None

    def remote_startBuild(self) -> None:
        """A build starts on this builder (nothing to do)."""

    def remote_print(self, message: Any = "") -> None:
        """A message from the master for the log."""
        log.info("message from master ({b}): {m}", b=self.name, m=str(message)[:1000])

    def remote_startCommand(self, ref: Any, command_id: Any, command: Any, args: Any) -> Any:
        """Start a command; its results go to ``ref`` (updates, then complete)."""
        return self.agent.start_command(self, ref, command_id, command, args)

    def remote_interruptCommand(self, command_id: Any, why: Any = "") -> None:
        """Interrupt a running command (its process group is killed)."""
        self.agent.runner.interrupt(str(command_id), str(why))


class _Bot(pb.Referenceable):
    """The mind given at login: the master's calls on this worker."""

    def __init__(self, agent: PBAgent) -> None:
        self.agent = agent

    def remote_print(self, message: Any = "") -> None:
        """A message from the master for the log ("attached", "ping", "keepalive")."""
        log.info("message from master: {m}", m=str(message)[:1000])

    def remote_getWorkerInfo(self) -> dict[str, Any]:
        """What this worker is: commands, basedir, system, version, environ, ..."""
        return self.agent.worker_info()

    def remote_getCommands(self) -> dict[str, str]:
        """The commands and their versions (for very old masters)."""
        return dict(self.agent.runner.info().commands)

    def remote_getVersion(self) -> str:
        """This worker's version."""
        return self.agent.runner.info().version

    def remote_setBuilderList(self, wanted: Any) -> dict[str, _Builder]:
        """Take the master's ``[(name, builddir), ...]``; answer ``{name: builder}``."""
        return self.agent.set_builders(wanted)

    def remote_shutdown(self) -> None:
        """The master stops this worker."""
        self.agent.reactor.callLater(0.2, self.agent.shutdown)


class PBAgent:
    """A wiremsg worker serving a Buildbot master over PB.

    :param reactor: a real reactor (commands spawn processes).
    :param name: the worker's name on the master; ``secret`` its password.
    :param master: ``pb://host:port``.
    :param basedir: where builders' directories are made.
    :param keepalive: seconds between keepalives (0: none).
    :param on_shutdown: called after the master's ``shutdown`` stopped the agent.
    :raises ValueError: a malformed master URL.
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        secret: str,
        master: str,
        basedir: str = ".",
        *,
        keepalive: float = KEEPALIVE,
        on_shutdown: Callable[[], Any] | None = None,
    ) -> None:
        self.host, self.port = parse_pb_url(master)
        self.master = master
        self.reactor = reactor
        self.name = name
        self._secret = secret
        self.keepalive = keepalive
        self.on_shutdown = on_shutdown
        self.basedir = os.path.abspath(basedir)
        os.makedirs(self.basedir, exist_ok=True)
        self.runner = CommandRunner(reactor, self.basedir, self._send, self, request=self._request)
        self.bot = _Bot(self)
        self.builders: dict[str, _Builder] = {}
        self.perspective: Any = None
        self.attached = False
        """True while logged into the master."""
        self._routes: dict[str, _Route] = {}
        self._in_flight = 0
        self._writable_waiters: list[Deferred[None]] = []
        self._running = False
        self._started: Deferred[None] | None = None
        self._factory: pb.PBClientFactory | None = None
        self._keepalive: LoopingCall | None = None
        self._loop: Deferred[None] | None = None
        self._sleep: Deferred[None] | None = None

    # -- flow (the runner's back-pressure) -------------------------------------------------

    @property
    def writable(self) -> bool:
        """False while :data:`MAX_IN_FLIGHT` calls await their answers."""
        return self._in_flight < MAX_IN_FLIGHT

    def when_writable(self) -> Deferred[None]:
        """Fires once fewer calls are in flight."""
        d: Deferred[None] = Deferred(lambda d: self._writable_waiters.remove(d))
        if self.writable:
            d.callback(None)
        else:
            self._writable_waiters.append(d)
        return d

    def _call(self, ref: Any, method: str, *args: Any) -> Deferred[Any]:
        self._in_flight += 1

        def done(result: Any) -> Any:
            self._in_flight -= 1
            if self.writable:
                waiters, self._writable_waiters = self._writable_waiters, []
                for w in waiters:
                    w.callback(None)
            return result

        return call(ref, method, *args).addBoth(done)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Connect and log in; fires on the first attach. Fails with ``UnauthorizedLogin``
        (or the master's refusal) if the first login is refused; later ones are retried."""
        if self._running:
            raise RuntimeError("this agent was already started")
        self._running = True
        self._started = Deferred()
        self._loop = Deferred.fromCoroutine(self._connect_loop())

        def crashed(failure: Failure) -> None:
            log.failure("PB connection loop crashed", failure)
            self._fail_start(failure.value or RuntimeError("the PB connection loop crashed"))

        self._loop.addErrback(crashed)
        return self._started

    async def stop(self) -> None:
        """Kill running commands (bounded wait), log out and stop reconnecting."""
        self._running = False
        if self._sleep is not None:
            self._sleep.cancel()
        ended = self.runner.stop_all("worker stopping")
        ended.addTimeout(10.0, self.reactor)
        try:
            await ended
        except Exception:
            log.warn("some commands did not end in time")
        factory = self._factory
        if factory is not None:
            factory.disconnect()
        if self._loop is not None:
            loop, self._loop = self._loop, None
            await loop

    def shutdown(self) -> None:
        """The master's ``shutdown``: stop, then ``on_shutdown``."""
        log.info("the master asked this worker to shut down")
        d = Deferred.fromCoroutine(self.stop())
        then = self.on_shutdown
        if then is not None:
            d.addBoth(lambda _: then())

    async def _connect_loop(self) -> None:
        attempt = 0
        while self._running:
            factory = pb.PBClientFactory(security=PB_SECURITY)
            self._factory = factory
            lost: Deferred[None] = Deferred()
            connector = self.reactor.connectTCP(self.host, self.port, factory, CONNECT_TIMEOUT)
            creds = UsernamePassword(self.name.encode(), self._secret.encode())
            login = factory.login(creds, client=self.bot)
            login.addTimeout(CONNECT_TIMEOUT, self.reactor)
            outcome: tuple[Any, Failure | None] = await login.addCallbacks(
                lambda perspective: (perspective, None), lambda f: (None, f)
            )  # the Failure itself, to check() it: a CopiedFailure knows its remote type
            perspective, result = outcome
            if result is not None:
                connector.disconnect()
                if not self._running:
                    break
                first = self._started is not None
                why = describe(result)
                log.warn("cannot log into {m}: {why}", m=self.master, why=why)
                if first and result.check(UnauthorizedLogin, pb.Error):  # CopiedFailure too
                    self._fail_start(RefusedLogin(f"{self.master} refused the login: {why}"))
                    break
                attempt += 1
                await self._wait(attempt)
                continue
            self.perspective = perspective
            attempt = 0
            broker = factory._broker
            if broker is None:  # the connection dropped as the login finished
                continue
            broker.notifyOnDisconnect(_firer(lost))
            self._attached()
            await lost
            self._detached()
            if self._running:
                await self._wait(1)
        self._factory = None
        self._fail_start(ConnectFailed("the worker was stopped before it attached"))

    async def _wait(self, attempt: int) -> None:
        delay = min(1.5**attempt, MAX_BACKOFF) + random.random()
        self._sleep = deferLater(self.reactor, delay, lambda: None)
        try:
            await self._sleep
        except Exception:
            pass
        self._sleep = None

    def _fail_start(self, exc: BaseException) -> None:
        started, self._started = self._started, None
        if started is not None:
            started.errback(exc)

    def _attached(self) -> None:
        self.attached = True
        log.info("attached to {m} as {n}", m=self.master, n=self.name)
        if self.keepalive:
            self._keepalive = LoopingCall(self._send_keepalive)
            self._keepalive.clock = self.reactor
            self._keepalive.start(self.keepalive, now=False)
        started, self._started = self._started, None
        if started is not None:
            started.callback(None)

    def _detached(self) -> None:
        self.attached = False
        self.perspective = None
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        log.warn("lost the connection to {m}; killing running commands", m=self.master)
        self.runner.stop_all("lost the connection to the master")
        self._routes.clear()

    def _send_keepalive(self) -> None:
        if self.perspective is not None:
            call(self.perspective, "keepalive").addErrback(
                lambda f: log.warn("keepalive failed: {why}", why=describe(f))
            )

    # -- the Bot's answers -------------------------------------------------------------------

    def worker_info(self) -> dict[str, Any]:
        """``getWorkerInfo()``: Buildbot's keys, from the runner's info."""
        info = self.runner.info(
            admin=f"wiremsg worker {self.name}",
            host=socket.gethostname(),
            numcpus=os.cpu_count() or 1,
            python=platform.python_version(),
        )
        environ = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
        return info_to_pb(info, environ)

    def set_builders(self, wanted: Any) -> dict[str, _Builder]:
        """``setBuilderList``: keep, add and drop builders; make their directories."""
        if not isinstance(wanted, list | tuple):
            raise pb.Error("setBuilderList expects a list of (name, builddir)")
        builders: dict[str, _Builder] = {}
        for item in wanted:
            if not isinstance(item, list | tuple) or len(item) != 2:
                raise pb.Error("setBuilderList expects (name, builddir) pairs")
            name, builddir = (x.decode() if isinstance(x, bytes) else x for x in item)
            if not isinstance(name, str) or not isinstance(builddir, str):
                raise pb.Error("setBuilderList expects text")
            builder = self.builders.get(name)
            if builder is None or builder.builddir != builddir:
                builder = _Builder(self, name, builddir)
            os.makedirs(os.path.join(self.basedir, builddir), exist_ok=True)
            builders[name] = builder
        for name, old in self.builders.items():
            if name not in builders and old.current is not None:
                self.runner.interrupt(old.current, "builder removed")
        self.builders = builders
        return builders

    def start_command(
        self, builder: _Builder, ref: Any, command_id: Any, command: Any, args: Any
    ) -> Deferred[None]:
        """``startCommand`` on ``builder``: translate, route and run it."""
        if not isinstance(ref, pb.RemoteReference) or not isinstance(args, dict):
            return fail(pb.Error("startCommand needs a command reference and an args dict"))
        writer, reader = args.get("writer"), args.get("reader")
        try:
            body = start_from_pb(command_id, command, args, builder.builddir, os.environ)
        except TranslationError as exc:
            return fail(pb.Error(str(exc)))
        cid = str(body["command_id"])
        name = str(body["command"])
        if name != SHELL and name not in FILE_COMMANDS:
            return fail(pb.Error(f"UnknownCommand: unrecognized WorkerCommand '{name}'"))
        if builder.current is not None:  # Buildbot drops a leftover command
            self.runner.interrupt(builder.current, "a new command started on this builder")
        self._routes[cid] = _Route(ref, writer, reader)
        builder.current = cid
        run_args: Any = body["args"]
        if name == SHELL:
            started = self.runner.start(cid, run_args)
        else:
            started = self.runner.start_file(cid, name, run_args)

        def refused(failure: Any) -> None:
            exc = failure.value
            if isinstance(exc, CommandError) and exc.code == SPAWN_FAILED:
                # as Buildbot's worker reports a program that cannot run: output, rc -1
                self._send(UPDATE, Update(cid, header=f"{exc.reason}\n", rc=-1).to_body())
                self._send(COMPLETE, {"command_id": cid})
                return
            self._routes.pop(cid, None)
            builder.current = None
            raise pb.Error(describe(failure))

        return started.addErrback(refused)

    # -- the runner's messages → calls on the master's references -----------------------------

    def _send(self, kind: str, body: JSON) -> None:
        assert isinstance(body, dict)
        cid = str(body.get("command_id"))
        route = self._routes.get(cid)
        if route is None:
            return  # the connection dropped: Buildbot sends nothing more either
        if kind == UPDATE:
            for update in updates_to_pb(body):
                self._checked(route, self._call(route.ref, "update", update), cid)
        elif kind == COMPLETE:
            self._routes.pop(cid, None)
            for builder in self.builders.values():
                if builder.current == cid:
                    builder.current = None
            text = complete_to_pb(body)
            failure = None if text is None else pb.CopyableFailure(RuntimeError(text))
            self._checked(route, self._call(route.ref, "complete", failure), cid)
        elif kind == FILE_WRITE:
            data = FileWrite.from_body(body).data
            for start in range(0, max(len(data), 1), MAX_STRING // 2):
                piece = data[start : start + MAX_STRING // 2]
                self._checked(route, self._call(route.writer, "write", piece), cid)
        elif kind == FILE_UTIME:
            stamp = FileUtime.from_body(body)
            self._checked(route, self._call(route.writer, "utime", (stamp.atime, stamp.mtime)), cid)
        elif kind == FILE_CLOSE:
            target = route.writer if route.writer is not None else route.reader
            self._checked(route, self._call(target, "close"), cid)
        elif kind == FILE_UNPACK:
            self._checked(route, self._call(route.writer, "unpack"), cid)

    def _checked(self, route: _Route, d: Deferred[Any], cid: str) -> None:
        def failed(failure: Any) -> None:
            if route.failed is None:
                route.failed = describe(failure)
                log.warn("command {id}: the master refused a call: {why}", id=cid, why=route.failed)
                self.runner.interrupt(cid, "the master refused a call")

        d.addErrback(failed)

    def _request(self, kind: str, body: JSON, timeout: float | None) -> Deferred[Message]:
        request = FileRead.from_body(body) if kind == FILE_READ else None
        route = self._routes.get(request.command_id) if request is not None else None
        if request is None or route is None or route.reader is None:
            return fail(RuntimeError(f"no reader for {kind} {body!r}"))
        d = self._call(route.reader, "read", request.length)
        if timeout is not None:
            d.addTimeout(timeout, self.reactor)

        def chunk(data: Any) -> Message:
            if isinstance(data, str):
                data = data.encode()
            if not isinstance(data, bytes) or len(data) > request.length:
                raise TranslationError("the master's reader sent something that is not bytes")
            return Message(FILE_READ, FileChunk(data).to_body())

        return d.addCallback(chunk)
