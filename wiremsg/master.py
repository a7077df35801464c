"""The master side: listen on any number of addresses, authenticate workers, keep the registry.

A :class:`Master` accepts links on every address it listens on (several backends side by
side), runs a master-side session per link through the handshake, and then either starts a
fresh session for the worker, resumes the worker's earlier one (its token proves it; a stale
link still open is displaced), or refuses it (``duplicate`` while the first one is attached).
Attached workers appear in :attr:`Master.workers` as :class:`Peer` objects that send, request,
and carry the worker's tags, info, state and counters. A worker whose link drops stays
registered (state ``detached``) for the grace period, then is *lost*.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.defer import TimeoutError as TxTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure

from wiremsg import wire
from wiremsg.address import Address, parse_address
from wiremsg.backends import BackendPool
from wiremsg.backends.base import Link, Listener
from wiremsg.driver import SessionDriver
from wiremsg.errors import LinkLost, NotAttached, Timeout
from wiremsg.events import (
    Attached,
    Authenticated,
    Closed,
    Detached,
    Event,
    Paused,
    Resumed,
    SessionStats,
)
from wiremsg.handlers import Handler, Handlers
from wiremsg.message import JSON, Message
from wiremsg.session import DEFAULT_GRACE, DEFAULT_HEARTBEAT, Session, State

log = Logger()

DEFAULT_MAX_HANDSHAKES = 1024
"""Links allowed in the handshake at once; more are closed at once (a flood guard)."""


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Peer:
    """A worker as its master sees it. Obtained from :attr:`Master.workers` or
    :meth:`Master.wait_for_worker`; never constructed by applications."""

    def __init__(self, driver: SessionDriver, backend: str) -> None:
        self._driver = driver
        session = driver.session
        self.name: str = session.name
        """The worker's name."""
        self.tags: tuple[str, ...] = tuple(session.tags)
        """The tags the worker declared."""
        self.info: Mapping[str, Any] = MappingProxyType(dict(session.info))
        """What the worker said about itself in its hello."""
        self.backend = backend
        """The URL scheme of the listener it came through (``amp``, ``memory``, ...)."""
        self.state = "attached"
        """``attached`` (can take work), ``detached`` (link lost, within grace) or ``lost``."""
        self.attached_since: float = driver.reactor.seconds()
        """Reactor time of the latest attach."""
        self.paused = False
        """True while messages to this worker queue behind the send window."""
        self._lost_waiters: list[Deferred[Peer]] = []

    @property
    def address(self) -> str:
        """The peer's network address, as the backend describes it."""
        return self._driver.peer

    @property
    def session_id(self) -> str:
        """The session's id (stable across resumes)."""
        return self._driver.session.session_id

    @property
    def stats(self) -> SessionStats:
        """Counters: messages and bytes each way, retransmissions, resumes, RTT."""
        return self._driver.session.stats

    def send(self, kind: str, body: JSON = None) -> Message:
        """Send a one-way message to this worker (queued while detached; bounded).

        :raises MessageError: invalid kind or body. :raises WindowFull: queue full.
        :raises LinkLost: the worker is lost.
        """
        return self._driver.send(kind, body)

    def request(
        self, kind: str, body: JSON = None, timeout: float | None = None
    ) -> Deferred[Message]:
        """Send a request; fires with the reply :class:`~wiremsg.message.Message` or fails
        with :class:`~wiremsg.errors.RemoteError`, :class:`~wiremsg.errors.Timeout` or
        :class:`~wiremsg.errors.LinkLost`."""
        return self._driver.request(kind, body, timeout)

    def when_lost(self) -> Deferred[Peer]:
        """Fires with this peer once it is *lost* (grace ran out, it left, or the master
        stopped); at once if it already is. Never errbacks."""
        d: Deferred[Peer] = Deferred(lambda d: self._lost_waiters.remove(d))
        if self.state == "lost":
            d.callback(self)
        else:
            self._lost_waiters.append(d)
        return d

    def _mark_lost(self) -> None:
        self.state = "lost"
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(self)

    def status(self) -> dict[str, Any]:
        """This worker's state and counters as a JSON-compatible dict."""
        s = self.stats
        return {
            "name": self.name,
            "state": self.state,
            "backend": self.backend,
            "address": self.address,
            "tags": list(self.tags),
            "info": dict(self.info),
            "attached_since": self.attached_since,
            "session": self.session_id,
            "messages_sent": s.messages_sent,
            "messages_received": s.messages_received,
            "bytes_sent": s.bytes_sent,
            "bytes_received": s.bytes_received,
            "retransmitted": s.retransmitted,
            "resumes": s.resumes,
            "rtt": s.rtt,
        }

    def __repr__(self) -> str:
        return f"<Peer {self.name} {self.state} via {self.backend} {self.address}>"


class Master:
    """A build master's side of wiremsg.

    :param workers: worker name → shared secret (str or bytes, non-empty), or an object with
        ``secret`` and ``tags`` attributes (such as :class:`~wiremsg.config.WorkerEntry`); its
        tags are added to those the worker declares.
    :param reactor: the reactor to run on (default: the global one, imported lazily).
    :param heartbeat: seconds between heartbeats; told to every worker in ``welcome``.
    :param grace: seconds a detached worker may take to resume before it is lost.
    :param max_handshakes: links allowed in the handshake at once.
    :param random: a random-bytes source (nonces, session ids, tokens).
    :param session_options: more keyword arguments for each
        :class:`~wiremsg.session.Session` (codecs, windows, handshake timeout, ...).
    :raises ValueError: a worker with an empty name or secret.
    """

    def __init__(
        self,
        workers: Mapping[str, Any],
        *,
        reactor: Any = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        grace: float = DEFAULT_GRACE,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        random: Any = os.urandom,
        session_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._secrets: dict[str, str | bytes] = {}
        self._tags: dict[str, tuple[str, ...]] = {}
        for name, entry in workers.items():
            secret = entry if isinstance(entry, str | bytes) else getattr(entry, "secret", None)
            if not name or not secret or not isinstance(secret, str | bytes):
                raise ValueError(f"worker {name!r} needs a non-empty name and secret")
            self._secrets[name] = secret
            self._tags[name] = tuple(getattr(entry, "tags", ()))
        self.reactor = reactor if reactor is not None else _default_reactor()
        self._options = dict(session_options or {})
        self._options.update(heartbeat=heartbeat, grace=grace, random=random)
        self.max_handshakes = max_handshakes
        self._handlers = Handlers("master")
        self._backends = BackendPool(self.reactor)
        self._listeners: list[Listener] = []
        self._handshaking: dict[SessionDriver, str] = {}
        self._peers: dict[str, Peer] = {}
        self._by_driver: dict[SessionDriver, Peer] = {}
        self._waiters: dict[str, list[Deferred[Peer]]] = {}
        self._stopping = False
        self.refused = 0
        """Links refused during the handshake so far (bad input, wrong proofs, duplicates)."""

    # -- public API -------------------------------------------------------------------------

    @property
    def workers(self) -> Mapping[str, Peer]:
        """Registered workers by name (attached, or detached within their grace period)."""
        return MappingProxyType(self._peers)

    @property
    def listeners(self) -> list[Listener]:
        """The listeners opened by :meth:`listen`, in order."""
        return list(self._listeners)

    def on(self, kind: str, handler: Handler) -> Handler:
        """Handle messages of ``kind`` with ``handler(peer, message)``; for a request, its
        return value (or Deferred/coroutine result) is the reply body. Returns ``handler``."""
        return self._handlers.on(kind, handler)

    def listen(self, address: str | Address) -> Deferred[Listener]:
        """Accept workers at ``address``; fires with the :class:`Listener`, whose
        ``address`` has any port 0 resolved. May be called for several addresses.

        :raises AddressError: (synchronously) a malformed address.
        :raises BackendNotFound, BackendUnavailable: (synchronously) no usable backend.
        """
        addr = parse_address(address)
        backend = self._backends.get(addr.scheme)
        d = backend.listen(addr, lambda link: self._on_link(link, addr.scheme))

        def keep(listener: Listener) -> Listener:
            self._listeners.append(listener)
            log.info("master listening on {address}", address=listener.address.redacted())
            return listener

        return d.addCallback(keep)

    def accept_link(self, link: Link, backend: str) -> None:
        """Run a worker's handshake on ``link``, made outside :meth:`listen` (such as the PB
        bridge's in-process links). The worker's status shows ``backend`` and ``link.peer``."""
        self._on_link(link, backend)

    def peer(self, name: str) -> Peer:
        """The registered worker ``name``. :raises NotAttached: if there is none."""
        try:
            return self._peers[name]
        except KeyError:
            raise NotAttached(f"worker {name!r} is not attached") from None

    def wait_for_worker(self, name: str, timeout: float | None = None) -> Deferred[Peer]:
        """Fires with the :class:`Peer` once worker ``name`` is attached (at once if it is);
        fails with :class:`~wiremsg.errors.Timeout` after ``timeout`` seconds."""
        peer = self._peers.get(name)
        if peer is not None and peer.state == "attached":
            return succeed(peer)
        waiters = self._waiters.setdefault(name, [])
        d: Deferred[Peer] = Deferred(lambda d: waiters.remove(d) if d in waiters else None)
        waiters.append(d)
        if timeout is not None:
            d.addTimeout(timeout, self.reactor)

            def timed_out(f: Failure) -> Failure:
                if isinstance(f.value, TxTimeout):
                    raise Timeout(f"worker {name!r} did not attach within {timeout:g}s")
                return f

            d.addErrback(timed_out)
        return d

    def broadcast(
        self,
        kind: str,
        body: JSON = None,
        tags: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> Deferred[dict[str, Message | Failure]]:
        """Send a request to every registered worker having all ``tags`` (all workers when
        None) and gather the results: worker name → reply :class:`Message` or the
        :class:`~twisted.python.failure.Failure` of that worker's request. Never errbacks."""
        wanted = set(tags or ())
        peers = [p for p in self._peers.values() if wanted <= set(p.tags)]
        names = [p.name for p in peers]
        ds = [p.request(kind, body, timeout) for p in peers]

        def gather(results: list[tuple[bool, Any]]) -> dict[str, Message | Failure]:
            return {n: r for n, (_, r) in zip(names, results, strict=True)}

        return DeferredList(ds, consumeErrors=True).addCallback(gather)

    def status(self) -> dict[str, Any]:
        """The master's state as a JSON-compatible dict: ``workers`` (each with at least
        ``name``, ``state``, ``backend``, ``tags``), ``listeners``, ``handshaking``."""
        return {
            "workers": [p.status() for p in sorted(self._peers.values(), key=lambda p: p.name)],
            "listeners": [lst.address.redacted() for lst in self._listeners],
            "handshaking": len(self._handshaking),
            "refused": self.refused,
        }

    async def stop(self, reason: str = "master stopping", masters: Iterable[str] = ()) -> None:
        """Say goodbye to every worker (naming ``masters`` to fail over to), close every
        listener and link, and fail requests still waiting. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        others = list(masters)
        closing: list[Deferred[Any]] = [lst.close() for lst in self._listeners]
        self._listeners.clear()
        for driver in list(self._handshaking) + [p._driver for p in self._peers.values()]:
            if driver.link is not None:
                closing.append(driver.link.when_closed())
            if driver.session.state is State.OPEN:
                driver.session.goodbye(reason, others)
            else:
                driver.session.close(reason)
            driver.flush()
            driver.stop_timer()
            driver.fail_waiting(LinkLost(reason))
        for waiters in self._waiters.values():
            for d in list(waiters):
                d.errback(LinkLost(reason))
        self._waiters.clear()
        if closing:
            await gatherResults(closing, consumeErrors=True)

    # -- links and handshakes ------------------------------------------------------------------

    def _on_link(self, link: Link, scheme: str) -> None:
        if self._stopping:
            link.close("master stopping")
            return
        if len(self._handshaking) >= self.max_handshakes:
            self.refused += 1
            log.warn(
                "refused link from {peer}: {n} handshakes already pending",
                peer=link.peer,
                n=len(self._handshaking),
            )
            link.close("too many pending handshakes")
            return
        session = Session.master(self._secrets.get, self.reactor.seconds, **self._options)
        driver = SessionDriver(session, self.reactor, self._on_event, self._on_message)
        self._handshaking[driver] = scheme
        driver.attach(link)
        driver.flush()

    def _on_message(self, driver: SessionDriver, message: Message, request: bool) -> None:
        peer = self._by_driver.get(driver)
        if peer is not None:
            self._handlers.dispatch(driver, message, request, (peer, message))

    def _on_event(self, driver: SessionDriver, event: Event) -> None:
        if isinstance(event, Authenticated):
            self._authenticated(driver, event)
        elif isinstance(event, Attached):
            self._attached(driver, event)
        elif isinstance(event, Detached):
            peer = self._by_driver.get(driver)
            if peer is not None:
                peer.state = "detached"
                log.info(
                    "worker {name}: link lost ({reason}); session kept for {grace:g}s",
                    name=peer.name,
                    reason=event.reason,
                    grace=driver.session.grace,
                )
        elif isinstance(event, Closed):
            self._closed(driver, event)
        elif isinstance(event, Paused | Resumed):
            peer = self._by_driver.get(driver)
            if peer is not None:
                peer.paused = isinstance(event, Paused)

    def _authenticated(self, driver: SessionDriver, event: Authenticated) -> None:
        name = event.worker
        session = driver.session
        existing = self._peers.get(name)
        if existing is not None:
            old = existing._driver
            if event.resume is not None and old.session.resume_matches(event.resume, name):
                if not old.session.take_over(session):
                    driver.flush()  # refused: the reject goes out on the new link
                    return
                del self._handshaking[driver]
                old.adopt(driver)
                old.flush()
                return
            if existing.state == "attached":
                session.refuse(
                    wire.DUPLICATE, f"worker {name!r} is already attached from {existing.address}"
                )
                return
            # The earlier session is detached and was not resumed: its process is gone.
            old.session.close("replaced by a new connection of the same worker")
            old.flush()
        session.accept()
        peer = Peer(driver, self._handshaking.pop(driver))
        peer.tags = tuple(dict.fromkeys(peer.tags + self._tags.get(name, ())))
        self._peers[name] = peer
        self._by_driver[driver] = peer

    def _attached(self, driver: SessionDriver, event: Attached) -> None:
        peer = self._by_driver[driver]
        peer.state = "attached"
        peer.attached_since = self.reactor.seconds()
        log.info(
            "worker {name} attached from {address} via {backend} ({how})",
            name=peer.name,
            address=peer.address,
            backend=peer.backend,
            how="resumed" if event.resumed else "new session",
        )
        for d in self._waiters.pop(peer.name, []):
            d.callback(peer)

    def _closed(self, driver: SessionDriver, event: Closed) -> None:
        driver.stop_timer()
        peer = self._by_driver.pop(driver, None)
        if peer is None:
            if self._handshaking.pop(driver, None) is not None and event.code != wire.SHUTDOWN:
                self.refused += 1
                log.warn(
                    "refused link from {peer}: {code}: {reason}",
                    peer=driver.peer,
                    code=event.code,
                    reason=event.reason,
                )
            return
        peer._mark_lost()
        if self._peers.get(peer.name) is peer:
            del self._peers[peer.name]
        if event.code == wire.SHUTDOWN:
            log.info("worker {name} left: {reason}", name=peer.name, reason=event.reason)
        else:
            log.warn(
                "worker {name} lost: {code}: {reason}",
                name=peer.name,
                code=event.code,
                reason=event.reason,
            )
