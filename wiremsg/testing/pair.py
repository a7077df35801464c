"""A worker session and its master joined by an in-memory network, for tests (after h11's
``ConnectionPair``).

:class:`SessionPair` owns one worker-side :class:`~wiremsg.session.Session` and makes a fresh
master-side session for every link, the way a real master does. Frames travel through two
in-memory queues, one per direction; nothing moves until the test says so (:meth:`~SessionPair.
step`, :meth:`~SessionPair.pump`), so a test decides exactly which frames are *in flight* when
it breaks the link (:meth:`~SessionPair.cut`): those are lost, as on a real network. Time is a
:class:`twisted.internet.task.Clock` read by every session; :meth:`~SessionPair.advance` moves it
deadline by deadline and calls :meth:`Session.tick` where a driver would.

The pair plays the driver's part:

* it answers the master's :class:`~wiremsg.events.Authenticated` with
  :meth:`~SessionPair.accept_or_resume` (or the ``on_authenticated`` hook): a resume request
  that the session of record :meth:`~Session.resume_matches` is resumed with
  ``old.take_over(new)``, anything else gets ``new.accept()``;
* on :class:`~wiremsg.events.DropLink` from either side it delivers the frames that side had
  already written, loses everything else in flight, and tells both sides
  ``connection_lost``;
* it records every event, per side, in :attr:`~SessionPair.worker_events` and
  :attr:`~SessionPair.master_events`.

No sockets, no reactor, no randomness beyond a seeded source: a run is reproducible.
"""

from __future__ import annotations

import math
import random as _random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.task import Clock

from wiremsg.events import Authenticated, DropLink, Event
from wiremsg.session import Credentials, Session, State

AuthHook = Callable[["SessionPair", Session, Authenticated], None]
"""``hook(pair, link_session, event)``: decide what a master does with an authenticated link;
it must call ``accept``, ``refuse`` or ``take_over`` (see :meth:`SessionPair.accept_or_resume`).
"""

MAX_STEPS = 100_000
"""How many frames or deadlines :meth:`SessionPair.pump` and :meth:`SessionPair.advance` handle
in one call before deciding that the sessions never settle (a bug: they raise RuntimeError)."""


class SessionPair:
    """A worker session and the master-side sessions of its links, joined in memory.

    :param name: the worker's name.
    :param secret: the worker's secret (also what the default credentials give the master).
    :param credentials: the master's credentials; default: ``name`` → ``secret`` only.
    :param clock: the clock every session reads; default: a new :class:`Clock` at 0.
    :param seed: seeds the random source the sessions use for nonces, ids and tokens.
    :param worker_options: keyword arguments for :meth:`Session.worker`.
    :param master_options: keyword arguments for every :meth:`Session.master`.
    :param on_authenticated: replaces :meth:`accept_or_resume`.
    :param connect: connect (and pump the handshake) at once.

    :ivar worker: the worker-side session (one for the pair's whole life).
    :ivar master: the master-side session of record: the one last accepted or resumed, or None.
    :ivar link: the master-side session on the current link, or None while the link is down.
    :ivar masters: every master-side session made, one per link, oldest first.
    :ivar worker_events: the worker's events, in order, as of the last call that moved frames
        or time (:meth:`take_worker_events` brings them up to date first).
    :ivar master_events: events of all master-side sessions, in order, likewise.
    :ivar to_master: frames in flight from the worker to the master.
    :ivar to_worker: frames in flight from the master to the worker.
    """

    def __init__(
        self,
        name: str = "worker-1",
        secret: str | bytes = "sesame",
        *,
        credentials: Credentials | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        worker_options: Mapping[str, Any] | None = None,
        master_options: Mapping[str, Any] | None = None,
        on_authenticated: AuthHook | None = None,
        connect: bool = True,
    ) -> None:
        self.clock = clock if clock is not None else Clock()
        self._random = _random.Random(seed).randbytes
        self.credentials: Credentials = (
            credentials if credentials is not None else {name: secret}.get
        )
        self.master_options: dict[str, Any] = dict(master_options or {})
        self.on_authenticated = on_authenticated
        self.worker = Session.worker(
            name,
            secret,
            self.clock.seconds,
            **{"random": self._random, **dict(worker_options or {})},
        )
        self.master: Session | None = None
        self.link: Session | None = None
        self.masters: list[Session] = []
        self._live: list[Session] = []  # master-side sessions still ticked and heard
        self.worker_events: list[Event] = []
        self.master_events: list[Event] = []
        self.to_master: deque[bytes] = deque()
        self.to_worker: deque[bytes] = deque()
        self._up = False
        self._closing = False
        self._drop_from: str | None = None
        self._turn_to_master = True
        if connect:
            self.connect()

    # -- the link -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a link is up."""
        return self._up

    def new_master(self) -> Session:
        """Make the master-side session for a new link (override to customise)."""
        return Session.master(
            self.credentials,
            self.clock.seconds,
            **{"random": self._random, **self.master_options},
        )

    def connect(self, pump: bool = True) -> Session:
        """Bring a new link up: a new master-side session, then the worker's ``hello``.

        :param pump: also move frames until quiet (normally: complete the handshake).
        :returns: the new master-side session of this link.
        :raises RuntimeError: a link is already up.
        """
        if self._up:
            raise RuntimeError("the link is already up; cut() it first")
        session = self.new_master()
        self.masters.append(session)
        self._live.append(session)
        self.link = session
        self._up = True
        self._closing = False
        self._drop_from = None
        self.worker.connection_made()
        self._collect()
        if pump:
            self.pump()
        return session

    def cut(self, *, worker: bool = True, master: bool = True) -> list[bytes]:
        """Break the link: frames in flight are lost; each side named gets ``connection_lost``.

        With ``master=False`` the master-side session does not notice (a half-open, stale
        link); it stays as it is until it times out or a resume takes it over. No-op if the
        link is down.

        :returns: the frames that were lost, worker's first.
        """
        self._collect()
        if not self._up:
            return []
        lost = [*self.to_master, *self.to_worker]
        self.to_master.clear()
        self.to_worker.clear()
        self._up = False
        link, self.link = self.link, None
        if worker:
            self.worker.connection_lost("link cut")
        if master and link is not None:
            link.connection_lost("link cut")
        self._collect()
        return lost

    def reconnect(self, pump: bool = True) -> Session:
        """:meth:`cut` the link if it is up, then :meth:`connect` again (the worker resumes)."""
        self.cut()
        return self.connect(pump=pump)

    def crash_master(self) -> None:
        """The master loses every session (a crash): the link breaks and no session of record
        is left, so the worker's next resume gets a fresh session."""
        self.cut(master=False)
        self.master = None
        self._live.clear()

    # -- moving frames and time -----------------------------------------------------------

    def step(self) -> bool:
        """Deliver one frame in flight, alternating directions; False if none was in flight."""
        self._collect()
        if not self.to_master and not self.to_worker:
            return False
        to_master = bool(self.to_master) and (self._turn_to_master or not self.to_worker)
        self._turn_to_master = not to_master
        if to_master:
            frame = self.to_master.popleft()
            assert self.link is not None
            self.link.frame_received(frame)
        else:
            self.worker.frame_received(self.to_worker.popleft())
        self._collect()
        return True

    def pump(self) -> None:
        """Deliver frames both ways until none is in flight.

        :raises RuntimeError: the sessions keep talking past :data:`MAX_STEPS` frames.
        """
        for _ in range(MAX_STEPS):
            if not self.step():
                return
        raise RuntimeError(f"the sessions did not fall quiet after {MAX_STEPS} frames")

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, stopping at each session's deadline to ``tick`` it
        and :meth:`pump`, as a driver's timers would.

        :raises RuntimeError: a deadline keeps coming back without time passing.
        """
        target = self.clock.seconds() + seconds
        self.pump()
        for _ in range(MAX_STEPS):
            now = self.clock.seconds()
            sessions = [self.worker, *self._live]
            due = [d for s in sessions if (d := s.next_deadline()) is not None]
            when = min(due, default=math.inf)
            if when > target:
                break
            self._set_clock(when)
            now = self.clock.seconds()
            for session in sessions:
                deadline = session.next_deadline()
                if deadline is not None and deadline <= now:
                    session.tick()
            self._collect()
            self.pump()
        else:
            raise RuntimeError(f"deadlines did not settle after {MAX_STEPS} ticks")
        self._set_clock(target)
        self.pump()

    def _set_clock(self, when: float) -> None:
        now = self.clock.seconds()
        if when > now:
            self.clock.advance(when - now)
            while self.clock.seconds() < when:  # pragma: no cover - float rounding guard
                self.clock.advance(math.ulp(self.clock.seconds()))

    # -- the master's decision --------------------------------------------------------------

    def accept_or_resume(self, link: Session, event: Authenticated) -> None:
        """The default answer to :class:`Authenticated`: resume the session of record if the
        worker asked for it and it matches, else accept a fresh session (which becomes the
        session of record)."""
        old = self.master
        if (
            event.resume is not None
            and old is not None
            and old is not link
            and old.resume_matches(event.resume, event.worker)
        ):
            resumes = old.stats.resumes
            old.take_over(link)
            self._collect_from(link)  # a reject, if old refused the resume
            if old.stats.resumes > resumes:
                self.link = old
            return
        link.accept()
        self.master = link

    # -- events ---------------------------------------------------------------------------------

    def take_worker_events(self) -> list[Event]:
        """Return and forget the worker's events so far (after acting on any new ones, as a
        driver would: a new ``DropLink`` closes the link first)."""
        self._collect()
        events, self.worker_events = self.worker_events, []
        return events

    def take_master_events(self) -> list[Event]:
        """Return and forget the master side's events so far (acting on new ones first)."""
        self._collect()
        events, self.master_events = self.master_events, []
        return events

    # -- internals ----------------------------------------------------------------------------

    def _collect(self) -> None:
        """Move every session's frames onto the wire and its events into the record; answer
        ``Authenticated``; carry out a ``DropLink``."""
        for _ in range(MAX_STEPS):
            authenticated: list[tuple[Session, Authenticated]] = []
            frames = self.worker.take_frames()
            if self._up and not self._closing:
                self.to_master.extend(frames)
            for event in self.worker.take_events():
                self.worker_events.append(event)
                if isinstance(event, DropLink) and self._up and self._drop_from is None:
                    self._drop_from = "worker"
            for session in list(self._live):
                authenticated.extend(self._collect_from(session))
                if session.state is State.CLOSED and session is not self.link:
                    self._live.remove(session)
            if authenticated:
                for session, event in authenticated:
                    if self.on_authenticated is not None:
                        self.on_authenticated(self, session, event)
                    else:
                        self.accept_or_resume(session, event)
                continue
            if self._drop_from is not None and not self._closing:
                self._finish_drop()
                continue
            return
        raise RuntimeError(f"the sessions did not settle after {MAX_STEPS} rounds")

    def _collect_from(self, session: Session) -> list[tuple[Session, Authenticated]]:
        frames = session.take_frames()
        on_link = session is self.link and self._up
        if on_link and not self._closing:
            self.to_worker.extend(frames)
        authenticated = []
        for event in session.take_events():
            self.master_events.append(event)
            if isinstance(event, DropLink) and on_link and self._drop_from is None:
                self._drop_from = "master"
            elif isinstance(event, Authenticated) and on_link:
                authenticated.append((session, event))
        return authenticated

    def _finish_drop(self) -> None:
        """A side asked to drop the link: its peer still gets what it had written, then the
        link closes for both; frames the peer wrote meanwhile are lost."""
        self._closing = True
        if self._drop_from == "worker":
            while self.to_master and self.link is not None:
                self.link.frame_received(self.to_master.popleft())
                self._collect()
        else:
            while self.to_worker:
                self.worker.frame_received(self.to_worker.popleft())
                self._collect()
        self.to_master.clear()
        self.to_worker.clear()
        self._up = False
        self._closing = False
        self._drop_from = None
        link, self.link = self.link, None
        self.worker.connection_lost("link dropped")
        if link is not None:
            link.connection_lost("link dropped")
