"""The worker side: connect to one of several masters, stay attached, serve handlers.

A :class:`Worker` keeps one session for its whole life. It connects to the master that its
:class:`~wiremsg.backoff.Failover` policy names, retries with exponential backoff and full
jitter, resumes the session after a dropped link (nothing lost, nothing duplicated) and, when
it lands on a master that does not know the session, carries every unacknowledged message into
the new one. ``start()`` fires on the first attach; ``stop()`` drains, says goodbye and
deregisters.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from wiremsg import wire
from wiremsg.backends import BackendPool
from wiremsg.backends.base import Link
from wiremsg.backoff import Failover
from wiremsg.driver import SessionDriver
from wiremsg.errors import AuthError, LinkLost, WiremsgError
from wiremsg.events import (
    Attached,
    Detached,
    Event,
    GoodbyeReceived,
    Paused,
    Rejected,
    Resumed,
    SessionStats,
)
from wiremsg.handlers import Handler, Handlers
from wiremsg.message import JSON, Message
from wiremsg.session import Session, State

log = Logger()

FATAL_REJECTS = frozenset({wire.AUTH_FAILED, wire.VERSION, wire.CODEC})
"""Reject codes that make ``start()`` fail instead of retrying."""

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_DRAIN_TIMEOUT = 5.0


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Worker:
    """A build worker's connection to its masters.

    :param name: the worker's name, as the master's workers file knows it.
    :param secret: the shared secret (never sent; proven by HMAC).
    :param masters: master addresses in preference order (``amp://m1:9989``, ...).
    :param tags: tags the master can select this worker by.
    :param info: free-form JSON-compatible facts about the worker (OS, version, ...).
    :param policy: ``failover`` (default), ``round_robin`` or ``random``.
    :param reactor: the reactor to run on (default: the global one, imported lazily).
    :param rng: a ``random()``-like function for backoff jitter (seed it in tests).
    :param random: a random-bytes source for nonces and ids (``os.urandom``).
    :param connect_timeout: seconds one connection attempt may take.
    :param backoff: keyword arguments for :class:`~wiremsg.backoff.Failover`
        (``base``, ``cap``, ``factor``, ``hop``).
    :param session_options: keyword arguments for :class:`~wiremsg.session.Session`
        (window sizes, codecs, heartbeat, ...).
    :raises ValueError: no masters or an unknown policy.
    :raises AddressError: a master address is malformed (checked here, not at connect).
    """

    def __init__(
        self,
        name: str,
        secret: str | bytes,
        masters: Sequence[str],
        *,
        tags: Iterable[str] = (),
        info: Mapping[str, Any] | None = None,
        policy: str = "failover",
        reactor: Any = None,
        rng: Any = None,
        random: Any = os.urandom,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        backoff: Mapping[str, float] | None = None,
        session_options: Mapping[str, Any] | None = None,
    ) -> None:
        from wiremsg.address import parse_address

        if not name:
            raise ValueError("a worker needs a name")
        if not secret:
            raise ValueError("a worker needs a non-empty secret")
        if isinstance(masters, str):
            masters = [masters]
        for m in masters:
            parse_address(m)
        self.name = name
        self.reactor = reactor if reactor is not None else _default_reactor()
        self.connect_timeout = connect_timeout
        self._failover = Failover(masters, policy, rng, **dict(backoff or {}))
        self.session = Session.worker(
            name,
            secret,
            self.reactor.seconds,
            tags=tags,
            info=info,
            random=random,
            **dict(session_options or {}),
        )
        self._driver = SessionDriver(self.session, self.reactor, self._on_event, self._on_message)
        self._handlers = Handlers(f"worker {name}")
        self._backends = BackendPool(self.reactor)
        self._running = False
        self._started: Deferred[None] | None = None
        self._retry: DelayedCall | None = None
        self._connecting: Deferred[Link] | None = None
        self._was_open = False
        self._goodbye = False
        self._writable_waiters: list[Deferred[None]] = []
        self._paused = False
        self.master: str | None = None
        """The address of the master currently attached to, or None."""
        self.attempts = 0
        """Connection attempts made so far."""

    # -- public API -------------------------------------------------------------------------

    @property
    def tags(self) -> tuple[str, ...]:
        """The worker's tags."""
        return self.session.tags

    @property
    def attached(self) -> bool:
        """True while a master has this worker's session open."""
        return self.session.state is State.OPEN

    @property
    def stats(self) -> SessionStats:
        """Counters of the session (messages, bytes, RTT, resumes)."""
        return self.session.stats

    def on(self, kind: str, handler: Handler) -> Handler:
        """Handle messages of ``kind`` with ``handler(message)``; for a request, its return
        value (or Deferred/coroutine result) is the reply body. Returns ``handler``."""
        return self._handlers.on(kind, handler)

    def start(self) -> Deferred[None]:
        """Begin connecting. Fires once attached to a master; fails with
        :class:`~wiremsg.errors.AuthError` if a master refuses the credentials (or speaks
        no common version or codec), or :class:`~wiremsg.errors.LinkLost` if stopped first.

        :raises RuntimeError: if already started.
        """
        if self._running or self.session.state is State.CLOSED:
            raise RuntimeError("this worker was already started")
        self._running = True
        self._started = Deferred()
        self._attempt()
        return self._started

    def send(self, kind: str, body: JSON = None) -> Message:
        """Send a one-way message to the master. Queued while detached (bounded); delivered
        exactly once after the link comes back.

        :raises MessageError: invalid kind or body. :raises WindowFull: the queue is full.
        :raises LinkLost: the worker was stopped.
        """
        return self._driver.send(kind, body)

    def request(
        self, kind: str, body: JSON = None, timeout: float | None = None
    ) -> Deferred[Message]:
        """Send a request to the master; fires with the reply message, or fails with
        :class:`~wiremsg.errors.RemoteError`, :class:`~wiremsg.errors.Timeout` or
        :class:`~wiremsg.errors.LinkLost`."""
        return self._driver.request(kind, body, timeout)

    @property
    def writable(self) -> bool:
        """False while sends are queueing behind the window: producers should wait."""
        return not self._paused

    def when_writable(self) -> Deferred[None]:
        """Fires once the send window has room (at once if it has)."""
        d: Deferred[None] = Deferred(lambda d: self._writable_waiters.remove(d))
        if self.writable:
            d.callback(None)
        else:
            self._writable_waiters.append(d)
        return d

    async def stop(
        self, reason: str = "worker stopping", drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    ) -> None:
        """Stop cleanly: wait up to ``drain_timeout`` for the master to acknowledge what was
        sent, say goodbye (the master deregisters the worker) and close the link. Requests
        still waiting fail with :class:`~wiremsg.errors.LinkLost`. Idempotent."""
        if not self._running:
            return
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self.session.state is State.OPEN and drain_timeout > 0:
            drained = self._driver.when_drained()
            drained.addTimeout(drain_timeout, self.reactor)
            try:
                await drained
            except Exception:
                log.warn(
                    "worker {name}: {n} messages unacknowledged at stop",
                    name=self.name,
                    n=self.session.in_flight,
                )
        link = self._driver.link
        closed = link.when_closed() if link is not None else None
        self.session.goodbye(reason)
        self._driver.flush()
        self._driver.stop_timer()
        if closed is not None:
            closed.addTimeout(self.connect_timeout, self.reactor)
            await DeferredList([closed], consumeErrors=True)
        self.master = None
        self._fail_started(LinkLost("the worker was stopped before it attached"))

    # -- connecting ---------------------------------------------------------------------------

    def _attempt(self) -> None:
        from wiremsg.address import parse_address

        self._retry = None
        if not self._running:
            return
        target = self._failover.current
        self.attempts += 1
        try:
            address = parse_address(target)
            backend = self._backends.get(address.scheme)
        except WiremsgError as exc:
            self._fatal(exc)
            return
        d = backend.connect(address, self.connect_timeout)
        self._connecting = d
        d.addCallbacks(
            lambda link: self._connected(link, target), lambda f: self._connect_failed(f, target)
        )

    def _connected(self, link: Link, target: str) -> None:
        self._connecting = None
        if not self._running:
            link.close("worker stopped")
            return
        self.master = target
        self._driver.attach(link)
        self.session.connection_made()
        self._driver.flush()

    def _connect_failed(self, failure: Failure, target: str) -> None:
        self._connecting = None
        if not self._running:
            return
        log.info(
            "worker {name}: cannot reach {target}: {why}",
            name=self.name,
            target=target,
            why=failure.getErrorMessage(),
        )
        self._schedule(*self._failover.failed())

    def _schedule(self, target: str, delay: float) -> None:
        if not self._running:
            return
        self._retry = self.reactor.callLater(delay, self._attempt)

    def _fatal(self, exc: Exception) -> None:
        log.error("worker {name}: giving up: {exc}", name=self.name, exc=exc)
        self._running = False
        self.session.close(str(exc))
        self._driver.flush()
        self._driver.stop_timer()
        self._fail_started(exc)

    def _fail_started(self, exc: Exception) -> None:
        started, self._started = self._started, None
        if started is not None:
            started.errback(exc)

    # -- session events -----------------------------------------------------------------------

    def _on_message(self, driver: SessionDriver, message: Message, request: bool) -> None:
        self._handlers.dispatch(driver, message, request, (message,))

    def _on_event(self, driver: SessionDriver, event: Event) -> None:
        if isinstance(event, Attached):
            self._was_open = True
            self._goodbye = False
            self._failover.attached()
            log.info(
                "worker {name}: attached to {master} (session {sid}, {how})",
                name=self.name,
                master=self.master,
                sid=event.session,
                how="resumed" if event.resumed else "new",
            )
            started, self._started = self._started, None
            if started is not None:
                started.callback(None)
        elif isinstance(event, Rejected):
            log.warn(
                "worker {name}: {master} refused: {code}: {reason}",
                name=self.name,
                master=self.master,
                code=event.code,
                reason=event.reason,
            )
            if event.code in FATAL_REJECTS and self._started is not None:
                self._fatal(AuthError(event.code, event.reason))
        elif isinstance(event, GoodbyeReceived):
            self._goodbye = True
        elif isinstance(event, Detached):
            self.master = None
            if not self._running:
                return
            if self._goodbye:
                nxt = self._failover.goodbye()
            elif self._was_open:
                log.info(
                    "worker {name}: link lost ({reason}); reconnecting",
                    name=self.name,
                    reason=event.reason,
                )
                nxt = self._failover.lost()
            else:
                nxt = self._failover.failed()
            self._was_open = False
            self._goodbye = False
            self._schedule(*nxt)
        elif isinstance(event, Paused):
            self._paused = True
        elif isinstance(event, Resumed):
            self._paused = False
            waiters, self._writable_waiters = self._writable_waiters, []
            for w in waiters:
                w.callback(None)
