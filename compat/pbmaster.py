"""Old worker → wiremsg master: real ``buildbot-worker`` processes log in over PB.

A :class:`PBBridge` listens on any Twisted server endpoint (``tcp:9989:interface=127.0.0.1``,
``ssl:...``) with Buildbot's PB login (MD5 challenge/response; names and secrets from the same
workers file as native workers). Each logged-in worker becomes a :class:`LegacyWorker`, which
presents it to the :class:`~wiremsg.master.Master` as a native worker over an in-process link,
so the master, its :class:`~wiremsg.commands.CommandTracker` and the control endpoint serve it
like any other; its status shows backend ``pb``.

Theory of operation, following Buildbot's master (BUILDBOT-PB.md §1.1-§1.3):

- **Login** runs inside the realm's ``requestAvatar``, before the worker sees its login
  answer: arbitration of a duplicate, ``print("attached")``, ``getWorkerInfo()``,
  ``setBuilderList(...)``, ``print("attached")`` per builder, then the native session attaches.
  The worker serves these calls while its own login is pending (PB allows it).
- **Duplicate connections** are arbitrated as Buildbot does: the old connection is pinged
  (``print``) for :data:`PING_TIMEOUT` seconds; if it answers, the newcomer is refused
  ("rejecting duplicate worker"), otherwise the old one is dropped and the newcomer takes its
  place. A name already attached natively is refused.
- **Builders.** PB runs one command per builder, so a legacy worker gets :data:`BUILDERS`
  builders (all with builddir :data:`BUILDDIR`); a command takes a free one. A wiremsg path is
  relative to the worker's basedir; for a legacy worker that is ``WORKERDIR/wiremsg``.
- **Commands.** ``start_command`` → ``startCommand`` with a command reference whose
  ``update``/``complete`` calls become vocabulary messages (:mod:`wiremsg.compat.translate`);
  transfers get writer/reader references whose calls become ``file_*`` messages.
- **Liveness.** The worker's ``keepalive`` is accepted; the bridge also sends
  ``print("keepalive")`` every ``keepalive`` seconds and drops a worker that does not answer
  within :data:`PING_TIMEOUT` (Buildbot sends one an hour and waits for ever).
- **Loss.** When the PB connection drops, running commands complete with failure
  ``worker_lost`` and the native session says goodbye, so the master forgets the worker at once.

Every value from the worker is checked; a malformed one drops that worker alone, logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer  # type: ignore[import-untyped]

from wiremsg.address import parse_address
from wiremsg.backends.base import Link, Listener
from wiremsg.backends.memory import MemoryBackend
from wiremsg.errors import RemoteError
from wiremsg.master import Master
from wiremsg.message import JSON, Message
from wiremsg.vocabulary import (
    BAD_BODY,
    COMPLETE,
    DOWNLOAD_FILE,
    DUPLICATE_COMMAND,
    FILE_CLOSE,
    FILE_READ,
    FILE_UNPACK,
    FILE_UTIME,
    FILE_WRITE,
    INTERRUPT,
    PRINT,
    SHUTDOWN,
    START_COMMAND,
    UNKNOWN_COMMAND,
    UPDATE,
    UPLOAD_DIRECTORY,
    UPLOAD_FILE,
    WORKER_INFO,
    BodyError,
    CommandFailure,
    Complete,
    FileChunk,
    FileDone,
    FileRead,
    FileUtime,
    FileWrite,
    Interrupt,
    Print,
    Update,
    WorkerInfo,
)
from wiremsg.worker import Worker

from .pbsafe import PB_SECURITY, call, describe
from .translate import (
    TranslationError,
    complete_from_pb,
    hello_info,
    info_from_pb,
    start_to_pb,
    updates_from_pb,
)

__all__ = [
    "BUILDDIR",
    "BUILDERS",
    "CALL_TIMEOUT",
    "KEEPALIVE",
    "LOGIN_TIMEOUT",
    "MAX_PENDING",
    "PING_TIMEOUT",
    "WORKER_LOST",
    "LegacyWorker",
    "PBBridge",
    "RefusedLogin",
]

log = Logger()

BUILDERS = 4
"""Builders (so commands at once) given to each legacy worker."""
BUILDDIR = "wiremsg"
"""The builders' directory under the legacy worker's basedir."""
PING_TIMEOUT = 10.0
"""Seconds an old connection has to answer during duplicate arbitration (Buildbot's), and a
keepalive to be answered."""
CALL_TIMEOUT = 30.0
"""Seconds a login call may take."""
KEEPALIVE = 60.0
"""Seconds between the bridge's ``print("keepalive")`` to each legacy worker."""
WORKER_LOST = "worker_lost"
"""``complete.failure.code`` of a command whose legacy worker's connection dropped."""
BUSY = "busy"
"""Error code: every builder of the legacy worker is running a command."""
MAX_PENDING = 64
"""PB connections that may be open at once without a completed login; more are closed at
once (as the native master bounds handshakes)."""
LOGIN_TIMEOUT = 120.0
"""Seconds a PB connection may stay open without completing its login (Buildbot's attach
sequence included)."""


def _secret(entry: Any) -> str | bytes | None:
    value = entry if isinstance(entry, str | bytes) else getattr(entry, "secret", None)
    return value if isinstance(value, str | bytes) and value else None


class RefusedLogin(UnauthorizedLogin, pb.Error):
    """A refused PB login. Also a ``pb.Error``: PB sends it to the worker as an error instead
    of logging it as an unhandled traceback, so a stranger knocking cannot fill the log; the
    bridge logs one line per refusal itself. Buildbot's worker still sees ``UnauthorizedLogin``
    (a copied failure keeps its parents' names)."""


@implementer(ICredentialsChecker)
class _Secrets:
    """Checks PB logins (MD5 challenge/response) against the workers' secrets."""

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, workers: Mapping[str, Any]) -> None:
        self._secrets = {name: _secret(entry) for name, entry in workers.items()}

    def requestAvatarId(self, credentials: Any) -> Deferred[str]:
        raw = credentials.username
        name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        secret = self._secrets.get(name)
        if secret is None:
            return self._refuse(f"unknown worker {name[:64]!r}")
        data = secret.encode() if isinstance(secret, str) else secret
        if not credentials.checkPassword(data):
            return self._refuse(f"wrong secret for worker {name!r}")
        return succeed(name)

    @staticmethod
    def _refuse(why: str) -> Deferred[str]:
        log.warn("refused a PB login: {why}", why=why)
        return fail(RefusedLogin(why))


@implementer(IRealm)
class _Realm:
    def __init__(self, bridge: PBBridge) -> None:
        self.bridge = bridge

    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Deferred[Any]:
        if pb.IPerspective not in interfaces or mind is None:
            return fail(NotImplementedError("only PB perspectives with a mind are served"))
        name = avatar_id.decode() if isinstance(avatar_id, bytes) else str(avatar_id)
        return Deferred.fromCoroutine(self.bridge._login(name, mind))


class _Command(pb.Referenceable):
    """The command reference a legacy worker reports one command to."""

    def __init__(self, legacy: LegacyWorker, command_id: str, builder: Any) -> None:
        self.legacy = legacy
        self.command_id = command_id
        self.builder = builder
        self.done = False

    def remote_update(self, updates: Any) -> int:
        try:
            bodies, highest = updates_from_pb(self.command_id, updates)
        except TranslationError as exc:
            self.legacy.hostile(f"bad update for command {self.command_id}: {exc}")
            return 0
        for body in bodies:
            self.legacy.send(UPDATE, body)
        return highest

    def remote_complete(self, failure: Any = None) -> None:
        text = None if failure is None else describe(failure)
        self.legacy.finished(self, complete_from_pb(self.command_id, text))


class _Writer(pb.Referenceable):
    """The writer reference of an upload: its calls become ``file_*`` messages."""

    def __init__(self, legacy: LegacyWorker, command_id: str) -> None:
        self.legacy = legacy
        self.command_id = command_id

    def remote_write(self, data: Any) -> Deferred[None] | None:
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes):
            self.legacy.hostile(f"write of {type(data).__name__} for {self.command_id}")
            return None
        self.legacy.send(FILE_WRITE, FileWrite(self.command_id, data).to_body())
        return self.legacy.when_writable()  # the worker waits: back-pressure for free

    def remote_utime(self, times: Any) -> None:
        try:
            atime, mtime = (float(t) for t in times)
        except (TypeError, ValueError):
            self.legacy.hostile(f"utime of {times!r} for {self.command_id}")
            return
        self.legacy.send(FILE_UTIME, FileUtime(self.command_id, atime, mtime).to_body())

    def remote_close(self) -> None:
        self.legacy.send(FILE_CLOSE, FileDone(self.command_id).to_body())

    def remote_unpack(self) -> None:
        self.legacy.send(FILE_UNPACK, FileDone(self.command_id).to_body())


class _Reader(pb.Referenceable):
    """The reader reference of a download: each ``read`` asks the master (``file_read``)."""

    def __init__(self, legacy: LegacyWorker, command_id: str) -> None:
        self.legacy = legacy
        self.command_id = command_id

    async def _read(self, length: int) -> bytes:
        reply = await self.legacy.worker.request(
            FILE_READ, FileRead(self.command_id, length).to_body(), CALL_TIMEOUT
        )
        return FileChunk.from_body(reply.body).data[:length]

    def remote_read(self, maxlength: Any) -> Deferred[bytes]:
        if isinstance(maxlength, bool) or not isinstance(maxlength, int) or maxlength <= 0:
            self.legacy.hostile(f"read of {maxlength!r} for {self.command_id}")
            return succeed(b"")
        return Deferred.fromCoroutine(self._read(maxlength))

    def remote_close(self) -> None:
        self.legacy.send(FILE_CLOSE, FileDone(self.command_id).to_body())


class LegacyWorker(pb.Avatar):
    """One logged-in ``buildbot-worker``, and the native session that stands for it.

    Built by :class:`PBBridge` during login; ``mind`` is the worker's Bot reference.
    """

    def __init__(self, bridge: PBBridge, name: str, mind: Any) -> None:
        self.bridge = bridge
        self.name = name
        self.mind = mind
        peer = mind.broker.transport.getPeer()
        self.address = f"pb {getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.info = WorkerInfo({}, "", "", "")
        self.builders: list[Any] = []
        self.free: list[Any] = []
        self.commands: dict[str, _Command] = {}
        self.worker: Worker = None  # type: ignore[assignment]  # set by attach()
        self._listener: Listener | None = None
        self._keepalive: LoopingCall | None = None
        self.gone = False
        self.last_keepalive: float | None = None
        """Reactor time of the worker's latest ``keepalive`` call."""
        self.lost: Deferred[None] = Deferred()
        """Fires once this worker is gone and its native session closed."""

    # -- PB: the worker's calls on its perspective ------------------------------------------

    def perspective_keepalive(self) -> None:
        """The worker's periodic keepalive."""
        self.last_keepalive = self.bridge.reactor.seconds()

    def perspective_shutdown(self) -> None:
        """The worker asks to be shut down (its ``allow_shutdown``): do it once idle."""
        log.info("legacy worker {name} asks to shut down", name=self.name)
        if not self.commands:
            call(self.mind, "shutdown").addErrback(lambda _: None)

    # -- lifecycle ---------------------------------------------------------------------------

    async def login(self) -> None:
        """Buildbot's attach sequence (the worker's login is pending meanwhile)."""
        reactor = self.bridge.reactor
        await call(self.mind, "print", message="attached", timeout=CALL_TIMEOUT, reactor=reactor)
        raw = await call(self.mind, "getWorkerInfo", timeout=CALL_TIMEOUT, reactor=reactor)
        self.info = info_from_pb(raw)
        wanted = [(f"wiremsg-{i}", BUILDDIR) for i in range(self.bridge.builders)]
        refs = await call(
            self.mind, "setBuilderList", wanted, timeout=CALL_TIMEOUT, reactor=reactor
        )
        if not isinstance(refs, dict) or sorted(refs) != sorted(n for n, _ in wanted):
            raise TranslationError("setBuilderList: the worker did not take the builders")
        for name, _ in wanted:
            ref = refs[name]
            if not isinstance(ref, pb.RemoteReference):
                raise TranslationError(f"setBuilderList: {name} is not a reference")
            await call(ref, "print", message="attached", timeout=CALL_TIMEOUT, reactor=reactor)
            self.builders.append(ref)
        self.free = list(self.builders)
        await self.attach()
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = reactor
        self._keepalive.start(self.bridge.keepalive, now=False).addErrback(
            lambda f: log.failure("keepalive of {name} failed", f, name=self.name)
        )

    async def attach(self) -> None:
        """Attach the native session standing for this worker to the master."""
        reactor = self.bridge.reactor
        address = parse_address(f"memory://wiremsg-pb-{self.name}-{os.urandom(6).hex()}")
        self._listener = await MemoryBackend(reactor).listen(address, self._link)
        secret = _secret(self.bridge.workers[self.name])
        assert secret is not None
        info = hello_info(self.info)
        info["basedir"] = os.path.join(self.info.basedir, BUILDDIR)
        self.worker = Worker(self.name, secret, [str(address)], info=info, reactor=reactor)
        for kind, handler in (
            (WORKER_INFO, self._worker_info),
            (START_COMMAND, self._start_command),
            (INTERRUPT, self._interrupt),
            (PRINT, self._print),
            (SHUTDOWN, self._shutdown),
        ):
            self.worker.on(kind, handler)
        started = self.worker.start()
        started.addTimeout(CALL_TIMEOUT, reactor)
        await started

    def _link(self, link: Link) -> None:
        link.peer = self.address
        self.bridge.master.accept_link(link, "pb")

    def detached(self) -> None:
        """PB's logout: the connection is gone."""
        Deferred.fromCoroutine(self.close("the legacy worker's connection was lost"))

    async def close(self, why: str) -> None:
        """Fail the running commands, close the native session and forget this worker."""
        if self.gone:
            return
        self.gone = True
        log.info("legacy worker {name} gone: {why}", name=self.name, why=why)
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self.bridge.legacy.get(self.name) is self:
            del self.bridge.legacy[self.name]
        for command in list(self.commands.values()):
            self.send(UPDATE, Update(command.command_id, header=f"{why}\n").to_body())
            failure = CommandFailure(WORKER_LOST, why)
            self.finished(command, Complete(command.command_id, failure).to_body())
        try:
            if self.worker is not None:
                await self.worker.stop(why)
            if self._listener is not None:
                await self._listener.close()
        finally:
            self.lost.callback(None)

    def disconnect(self) -> None:
        """Drop the PB connection (its logout then closes the rest)."""
        transport = self.mind.broker.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()

    def hostile(self, why: str) -> None:
        """The worker sent something Buildbot never sends: log it and drop the worker."""
        log.warn("legacy worker {name}: {why}; dropping it", name=self.name, why=why)
        self.disconnect()

    async def ping(self, message: str) -> bool:
        """True if the worker answers a ``print`` within :data:`PING_TIMEOUT`."""
        try:
            await call(
                self.mind,
                "print",
                message=message,
                timeout=PING_TIMEOUT,
                reactor=self.bridge.reactor,
            )
        except Exception:
            return False
        return True

    def _ping(self) -> Deferred[None]:
        async def ping() -> None:
            if not await self.ping("keepalive") and not self.gone:
                log.warn("legacy worker {name} did not answer a keepalive", name=self.name)
                self.disconnect()

        return Deferred.fromCoroutine(ping())

    # -- towards the master ------------------------------------------------------------------

    def send(self, kind: str, body: JSON) -> None:
        """Send ``body`` to the master on the native session; failures are logged."""
        try:
            self.worker.send(kind, body)
        except Exception as exc:
            log.warn(
                "legacy worker {name}: cannot send {kind}: {exc}",
                name=self.name,
                kind=kind,
                exc=exc,
            )

    def when_writable(self) -> Deferred[None] | None:
        """None if the session can take more, else a Deferred firing when it can."""
        return None if self.worker.writable else self.worker.when_writable()

    def finished(self, command: _Command, body: dict[str, JSON]) -> None:
        """A command's ``complete``: forward it and free its builder (once)."""
        if command.done:
            return
        command.done = True
        self.commands.pop(command.command_id, None)
        self.free.append(command.builder)
        self.send(COMPLETE, body)

    # -- the master's requests ---------------------------------------------------------------

    def _worker_info(self, message: Message) -> dict[str, JSON]:
        body = self.info.to_body()
        body["basedir"] = os.path.join(self.info.basedir, BUILDDIR)
        return body

    async def _start_command(self, message: Message) -> dict[str, JSON]:
        try:
            command_id, name, args = start_to_pb(message.body)
        except TranslationError as exc:
            raise RemoteError(BAD_BODY, str(exc)) from None
        if name not in self.info.commands:
            raise RemoteError(UNKNOWN_COMMAND, f"the legacy worker has no command {name!r}")
        if command_id in self.commands:
            raise RemoteError(DUPLICATE_COMMAND, f"command {command_id!r} is already running")
        if not self.free:
            raise RemoteError(BUSY, f"all {len(self.builders)} builders are running commands")
        builder = self.free.pop(0)
        command = _Command(self, command_id, builder)
        if name in (UPLOAD_FILE, UPLOAD_DIRECTORY):
            args["writer"] = _Writer(self, command_id)
        elif name == DOWNLOAD_FILE:
            args["reader"] = _Reader(self, command_id)
        self.commands[command_id] = command
        try:
            await call(builder, "startCommand", command, command_id, name, args)
        except Exception as exc:
            self.commands.pop(command_id, None)
            if not command.done:
                self.free.append(builder)
            raise RemoteError(BAD_BODY, f"the legacy worker refused: {describe(exc)}") from None
        return {}

    async def _interrupt(self, message: Message) -> dict[str, JSON]:
        try:
            request = Interrupt.from_body(message.body)
        except BodyError as exc:
            raise RemoteError(BAD_BODY, str(exc)) from None
        command = self.commands.get(request.command_id)
        if command is None:
            return {"interrupted": False}
        await call(command.builder, "interruptCommand", request.command_id, request.why)
        return {"interrupted": True}

    def _print(self, message: Message) -> None:
        text = Print.from_body(message.body).message
        call(self.mind, "print", message=text).addErrback(lambda _: None)

    async def _shutdown(self, message: Message) -> dict[str, JSON]:
        await call(self.mind, "shutdown", timeout=CALL_TIMEOUT, reactor=self.bridge.reactor)
        return {}


class _Factory(pb.PBServerFactory):
    """PB's server factory, bounding the connections whose login is not complete: beyond
    ``max_pending`` a new connection is closed at once, and each is closed if its login does
    not complete within ``login_timeout`` seconds."""

    def __init__(
        self, portal: Portal, reactor: Any, max_pending: int, login_timeout: float
    ) -> None:
        super().__init__(portal, unsafeTracebacks=False, security=PB_SECURITY)
        self.reactor, self.max_pending, self.login_timeout = reactor, max_pending, login_timeout
        self.pending: dict[pb.Broker, Any] = {}  # broker -> its login timer
        self._refusing = False

    def buildProtocol(self, addr: Any) -> pb.Broker | None:
        if len(self.pending) >= self.max_pending:
            if not self._refusing:  # one line per burst, not one per connection
                log.warn(
                    "closing PB connections: {n} logins in progress already (from {addr})",
                    n=len(self.pending),
                    addr=addr,
                )
            self._refusing = True
            return None
        self._refusing = False
        broker: pb.Broker = super().buildProtocol(addr)
        timer = self.reactor.callLater(self.login_timeout, self._timed_out, broker)
        self.pending[broker] = timer
        broker.notifyOnDisconnect(lambda: self.logged_in(broker))
        return broker

    def logged_in(self, broker: Any) -> None:
        """``broker``'s login completed (or its connection is gone): it no longer counts."""
        timer = self.pending.pop(broker, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self, broker: pb.Broker) -> None:
        if self.pending.pop(broker, None) is not None:
            log.warn("closing a PB connection: no login within {t:g}s", t=self.login_timeout)
            transport: Any = broker.transport
            if transport is not None:
                transport.loseConnection()


class PBBridge:
    """Serves Buildbot's PB worker protocol for ``master``.

    :param master: the master the legacy workers join.
    :param workers: name → secret (or an entry with ``secret``), as given to the master.
    :param reactor: the reactor (the master's by default).
    :param builders: builders per legacy worker (commands at once).
    :param keepalive: seconds between the bridge's keepalive pings.
    :param max_pending: connections allowed at once without a completed login.
    :param login_timeout: seconds a connection may take to complete its login.
    """

    def __init__(
        self,
        master: Master,
        workers: Mapping[str, Any],
        reactor: Any = None,
        *,
        builders: int = BUILDERS,
        keepalive: float = KEEPALIVE,
        max_pending: int = MAX_PENDING,
        login_timeout: float = LOGIN_TIMEOUT,
    ) -> None:
        self.master = master
        self.workers = dict(workers)
        self.reactor = reactor if reactor is not None else master.reactor
        self.builders = builders
        self.keepalive = keepalive
        self.legacy: dict[str, LegacyWorker] = {}
        """The logged-in legacy workers by name."""
        self._ports: list[Any] = []
        self._factory = _Factory(
            Portal(_Realm(self), [_Secrets(self.workers)]),  # type: ignore[arg-type, list-item]
            self.reactor,
            max_pending,
            login_timeout,
        )

    async def listen(self, endpoint: str) -> Any:
        """Accept legacy workers on a Twisted server endpoint string; returns the port
        (``getHost()`` has the bound address). :raises ValueError: a malformed string."""
        port = await serverFromString(self.reactor, endpoint).listen(self._factory)
        self._ports.append(port)
        host = port.getHost()
        log.info(
            "PB bridge listening on {h}:{p}",
            h=getattr(host, "host", "?"),
            p=getattr(host, "port", "?"),
        )
        return port

    async def _login(self, name: str, mind: Any) -> tuple[Any, LegacyWorker, Any]:
        old = self.legacy.get(name)
        if old is not None:
            if await old.ping("master got a duplicate connection"):
                log.warn("refused a duplicate connection of legacy worker {name}", name=name)
                raise pb.Error("rejecting duplicate worker")
            old.disconnect()
            await old.close("replaced by a new connection of the same worker")
        peer = self.master.workers.get(name)
        if peer is not None and peer.backend != "pb":
            raise pb.Error(f"worker {name!r} is already attached through {peer.backend}")
        legacy = LegacyWorker(self, name, mind)
        self.legacy[name] = legacy
        try:
            await legacy.login()
        except Exception as exc:
            log.warn("legacy worker {name} could not attach: {why}", name=name, why=describe(exc))
            await legacy.close("its login failed")
            raise pb.Error(f"attach failed: {describe(exc)}") from None
        self._factory.logged_in(getattr(mind, "broker", None))
        log.info("legacy worker {name} attached from {a}", name=name, a=legacy.address)
        return pb.IPerspective, legacy, legacy.detached

    async def stop(self) -> None:
        """Stop listening and drop every legacy worker (waiting until each is closed)."""
        for port in self._ports:
            await port.stopListening()
        self._ports.clear()
        for legacy in list(self.legacy.values()):
            legacy.disconnect()
            await legacy.close("the master is stopping")
