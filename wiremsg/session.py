"""The session: a sans-IO state machine for one worker's conversation with one master.

Theory of operation
-------------------
A :class:`Session` never touches a socket or a timer. Its driver feeds it *inputs* —
:meth:`~Session.connection_made`, :meth:`~Session.frame_received`,
:meth:`~Session.connection_lost`, :meth:`~Session.tick` and the application's calls
(:meth:`~Session.send`, :meth:`~Session.request`, :meth:`~Session.reply`, ...) — and collects
*outputs*: frames to write (:meth:`~Session.take_frames`) and events to act on
(:meth:`~Session.take_events`). Time comes from an injected ``clock`` callable; the driver
calls :meth:`~Session.tick` at :meth:`~Session.next_deadline`.

A session outlives its links. When a link drops, the session is ``DETACHED``: both sides keep
every message that was sent but not acknowledged, and new sends queue up (bounded). A worker
that comes back within the master's grace period presents its resume token; both sides then
retransmit past the other's last received ``seq``, so nothing is lost or duplicated. A worker
whose master lost the session (crash, grace ran out) gets a fresh session and renumbers its
unacknowledged messages into it: nothing is lost; the master may see duplicates of messages it
received but did not acknowledge (message ids let applications drop them).

Rules
-----
* Before ``welcome`` only handshake frames count, and only the one the state expects; any
  other frame is a protocol error. The master answers errors in the handshake with ``reject``
  and in the data phase with ``error``; then it closes the link (event :class:`DropLink`).
* Frames are dispatched through :data:`TRANSITIONS`, keyed by (role, state, frame type). A
  frame with no entry is ``unexpected``.
* Data messages carry ``seq`` (1, 2, ... per direction and session) and ``ack`` (the highest
  ``seq`` received in order). A ``seq`` at or below the last received is a retransmission and
  is dropped; a gap is a protocol error (backends deliver in order).
* In flight at most :class:`~wiremsg.window.SendWindow` messages/bytes; beyond that, sends
  queue in a pending list bounded by ``max_pending`` (then :class:`~wiremsg.errors.WindowFull`),
  and the session emits :class:`Paused` until the queue drains (:class:`Resumed`).
* Acks piggyback on every frame; a bare ``ack`` goes out after ``ack_delay`` seconds of
  silence, or at once after ``ack_every`` messages or ``ack_bytes`` bytes.
* A ``ping`` goes out when nothing was sent for ``heartbeat`` seconds; a peer silent for
  ``heartbeat * dead_after`` seconds is gone (the link drops, the session detaches).
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wiremsg import auth, wire
from wiremsg.codec import CODECS, DEFAULT_MAX_FRAME, Codec, JSONCodec, get_codec
from wiremsg.errors import (
    LinkLost,
    MessageError,
    ProtocolError,
    RemoteError,
    Timeout,
    WindowFull,
)
from wiremsg.events import (
    Attached,
    Authenticated,
    Closed,
    Detached,
    DropLink,
    Event,
    GoodbyeReceived,
    MessageReceived,
    Paused,
    Rejected,
    ReplyReceived,
    RequestFailed,
    Resumed,
    ResumeRequest,
    SendFailed,
    SessionStats,
)
from wiremsg.message import JSON, MAX_KIND_LENGTH, Message, scan_body, validate_kind
from wiremsg.window import DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, SendWindow

# -- limits and defaults (constructor arguments override them) ------------------------------

DEFAULT_HEARTBEAT = 5.0
"""Seconds between heartbeats when nothing else is sent (the master's choice wins)."""
DEFAULT_DEAD_AFTER = 3
"""Heartbeat intervals of silence after which the peer is gone."""
DEFAULT_GRACE = 60.0
"""Seconds a master keeps a detached session for its worker to resume."""
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
"""Seconds the whole handshake may take."""
DEFAULT_ACK_DELAY = 0.02
"""Seconds a received message may wait for a piggybacked ack before a bare one goes."""
DEFAULT_ACK_EVERY = 64
"""Messages received after which an ack goes at once."""
DEFAULT_ACK_BYTES = 1024 * 1024
"""Bytes received after which an ack goes at once."""
DEFAULT_MAX_PENDING = 8192
"""Messages accepted while the window is full (or the link is down) before sends raise."""
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024
"""Bytes accepted while the window is full before sends raise."""


class Role(enum.Enum):
    """Which end of the conversation a session is."""

    WORKER = "worker"
    MASTER = "master"

    __hash__ = object.__hash__  # members are singletons; Enum's hash is slow Python code


class State(enum.Enum):
    """The session's states. Worker: IDLE → HELLO_SENT → AUTH_SENT → OPEN ⇄ DETACHED → CLOSED.
    Master: AWAIT_HELLO → CHALLENGE_SENT → AUTHENTICATED → OPEN ⇄ DETACHED → CLOSED."""

    IDLE = "idle"
    AWAIT_HELLO = "await_hello"
    HELLO_SENT = "hello_sent"
    CHALLENGE_SENT = "challenge_sent"
    AUTH_SENT = "auth_sent"
    AUTHENTICATED = "authenticated"
    OPEN = "open"
    DETACHED = "detached"
    CLOSED = "closed"

    __hash__ = object.__hash__  # members are singletons; Enum's hash is slow Python code


_OPEN = State.OPEN  # hot-path checks read a module global, not the Enum class's attribute
_CLOSED = State.CLOSED

_HANDSHAKING = frozenset(
    {
        State.AWAIT_HELLO,
        State.HELLO_SENT,
        State.CHALLENGE_SENT,
        State.AUTH_SENT,
        State.AUTHENTICATED,
    }
)


@dataclass(slots=True)
class _Outgoing:
    """A message on its way: queued (seq 0) or in flight (seq assigned)."""

    message: Message
    request: bool
    error: tuple[str, str] | None
    small_floats: bool = False
    """The body holds a float that the JSON codec must format the standard library's way."""
    size: int = 0
    seq: int = 0


@dataclass
class _Handshake:
    """Per-link handshake facts."""

    worker_nonce: str = ""
    master_nonce: str = ""
    codec: str = "json"
    protocol: int = wire.PROTOCOL_VERSION
    resume: ResumeRequest | None = None
    deadline: float | None = None
    worker: str = ""
    tags: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


Credentials = Callable[[str], "str | bytes | None"]
"""Master only: a worker name to its secret, or None for an unknown worker."""


class Session:
    """One side of a worker↔master session. Build with :meth:`worker` or :meth:`master`.

    Limits and timings are keyword arguments with the module's ``DEFAULT_*`` values.
    Application calls raise :class:`MessageError` for invalid kinds or bodies,
    :class:`WindowFull` when the bounded pending queue is full, and :class:`LinkLost` once the
    session is closed. Misuse (an input not allowed in the current state) raises
    :class:`RuntimeError`.
    """

    def __init__(
        self,
        role: Role,
        clock: Callable[[], float],
        *,
        name: str = "",
        secret: str | bytes = b"",
        credentials: Credentials | None = None,
        tags: Iterable[str] = (),
        info: Mapping[str, Any] | None = None,
        codecs: Iterable[str] = ("json", "msgpack"),
        heartbeat: float = DEFAULT_HEARTBEAT,
        dead_after: int = DEFAULT_DEAD_AFTER,
        grace: float = DEFAULT_GRACE,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        ack_delay: float = DEFAULT_ACK_DELAY,
        ack_every: int = DEFAULT_ACK_EVERY,
        ack_bytes: int = DEFAULT_ACK_BYTES,
        window_messages: int = DEFAULT_MAX_MESSAGES,
        window_bytes: int = DEFAULT_MAX_BYTES,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_frame: int = DEFAULT_MAX_FRAME + 64 * 1024,
        random: auth.RandomSource = os.urandom,
    ) -> None:
        self.role = role
        self._clock = clock
        self.name = name
        self._secret = secret
        self._credentials = credentials
        self.tags = tuple(tags)
        self.info: Mapping[str, Any] = dict(info or {})
        self.codecs = tuple(codecs)
        for c in self.codecs:
            if c not in CODECS:
                raise ValueError(f"unknown codec {c!r}; known: {', '.join(CODECS)}")
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.grace = grace
        self.handshake_timeout = handshake_timeout
        self.ack_delay = ack_delay
        self.ack_every = ack_every
        self.ack_bytes = ack_bytes
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_frame = max_frame
        self._random = random
        self.stats = SessionStats()

        self.state = State.IDLE if role is Role.WORKER else State.AWAIT_HELLO
        self.session_id = ""
        self._token = ""
        self._hs = _Handshake()
        self._handshake_codec = JSONCodec(wire.MAX_HANDSHAKE_FRAME)
        self._codec: Codec = self._handshake_codec
        self._ids = f"{random(4).hex()}."
        self._next_id = 0
        self._window = SendWindow(window_messages, window_bytes)
        self._outbox: deque[_Outgoing] = deque()
        self._pending: deque[_Outgoing] = deque()
        self._pending_bytes = 0
        self._paused = False
        self._out_seq = 0
        self._in_seq = 0
        self._acked_in = 0
        self._unacked_in_bytes = 0
        self._ack_due: float | None = None
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._grace_deadline: float | None = None
        self._requests: dict[str, float | None] = {}
        self.frames_out: list[bytes] = []
        """Frames not yet taken, in order. Read it to see whether there are any (the driver's
        fast path); take them with :meth:`take_frames`, never by changing this list."""
        self.events_out: list[Event] = []
        """Events not yet taken, in order; the same rules as :attr:`frames_out`."""
        if role is Role.MASTER:
            self._hs.deadline = clock() + handshake_timeout

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def worker(
        cls, name: str, secret: str | bytes, clock: Callable[[], float], **kwargs: Any
    ) -> Session:
        """A worker-side session for ``name`` proving ``secret``."""
        return cls(Role.WORKER, clock, name=name, secret=secret, **kwargs)

    @classmethod
    def master(cls, credentials: Credentials, clock: Callable[[], float], **kwargs: Any) -> Session:
        """A master-side session for one incoming link; ``credentials(name)`` gives secrets."""
        return cls(Role.MASTER, clock, credentials=credentials, **kwargs)

    # -- outputs --------------------------------------------------------------------------

    def take_frames(self) -> list[bytes]:
        """Return and forget the frames to write, in order."""
        frames, self.frames_out = self.frames_out, []
        return frames

    def take_events(self) -> list[Event]:
        """Return and forget the events produced, in order."""
        events, self.events_out = self.events_out, []
        return events

    def next_deadline(self) -> float | None:
        """The clock time at which :meth:`tick` has work to do, or None."""
        if self.state is _OPEN:  # the hot path: called after every frame in and out
            hb = self.heartbeat
            deadline = self._last_tx + hb
            dead = self._last_rx + hb * self.dead_after
            if dead < deadline:
                deadline = dead
            ack_due = self._ack_due
            if ack_due is not None and ack_due < deadline:
                deadline = ack_due
            if self._requests:
                for d in self._requests.values():
                    if d is not None and d < deadline:
                        deadline = d
            return deadline
        candidates: list[float] = []
        if self.state in _HANDSHAKING and self._hs.deadline is not None:
            candidates.append(self._hs.deadline)
        if self.state is State.DETACHED and self._grace_deadline is not None:
            candidates.append(self._grace_deadline)
        if self.state is not State.CLOSED:
            candidates.extend(d for d in self._requests.values() if d is not None)
        return min(candidates) if candidates else None

    @property
    def writable(self) -> bool:
        """True when a send would go straight out (nothing is queued behind the window)."""
        return not self._pending and self.state is _OPEN and not self._window.full

    @property
    def in_flight(self) -> int:
        """Messages sent or queued and not yet acknowledged by the peer."""
        return len(self._outbox) + len(self._pending)

    # -- inputs: the link -----------------------------------------------------------------

    def connection_made(self) -> None:
        """A new link is up. A worker sends ``hello`` (with its resume token, if any)."""
        if self.role is Role.MASTER:
            raise RuntimeError("a master session is made per link; it starts on its own")
        if self.state not in (State.IDLE, State.DETACHED):
            raise RuntimeError(f"connection_made in state {self.state.value}")
        now = self._clock()
        self._hs = _Handshake(
            worker_nonce=auth.new_nonce(self._random), deadline=now + self.handshake_timeout
        )
        self._codec = self._handshake_codec
        resume = None
        if self.session_id and self._token:
            resume = {"session": self.session_id, "token": self._token, "ack": self._in_seq}
        self._emit_handshake(
            {
                "type": "hello",
                "protocol": wire.PROTOCOL_VERSION,
                "worker": self.name,
                "codecs": list(self.codecs),
                "tags": list(self.tags),
                "info": dict(self.info),
                "nonce": self._hs.worker_nonce,
                "resume": resume,
            }
        )
        self.state = State.HELLO_SENT

    def connection_lost(self, reason: str = "link lost") -> None:
        """The current link is gone. Idempotent; ignored once detached or closed."""
        if self.state in (State.DETACHED, State.CLOSED, State.IDLE):
            return
        if self.role is Role.MASTER and self.state is not State.OPEN:
            self._close("link_lost", f"link lost during handshake: {reason}")
            return
        self._detach(reason)

    def frame_received(self, data: bytes) -> None:
        """Feed one whole frame from the link."""
        if self.state is _OPEN:  # the hot path: a msg in an open session
            size = len(data)
            self.stats.bytes_received += size
            self._last_rx = self._clock()
            try:
                frame = self._codec.decode(data)
                if type(frame) is dict and frame.get("type") == "msg":
                    self._on_msg(wire.check_msg(frame), size)
                else:
                    self._dispatch(frame, size)
            except ProtocolError as exc:
                self._protocol_error(exc)
            return
        if self.state in (State.CLOSED, State.DETACHED, State.IDLE, State.AUTHENTICATED):
            if self.state is State.AUTHENTICATED:
                self._protocol_error(
                    ProtocolError(wire.UNEXPECTED, "frame before welcome was sent")
                )
            return
        size = len(data)
        self.stats.bytes_received += size
        self._last_rx = self._clock()
        try:
            self._dispatch(self._codec.decode(data), size)
        except ProtocolError as exc:
            self._protocol_error(exc)

    def _dispatch(self, frame: Any, size: int) -> None:
        """Check a decoded frame against :data:`TRANSITIONS` and its shape, then act on it."""
        ftype = wire.frame_type(frame)
        handler = TRANSITIONS.get((self.role, self.state, ftype))
        if handler is None:
            raise ProtocolError(
                wire.UNEXPECTED, f"{ftype!r} frame not allowed in state {self.state.value}"
            )
        wire.CHECKS[ftype](frame)
        getattr(self, handler)(frame, size)

    def tick(self) -> None:
        """Act on every deadline that has passed (call at :meth:`next_deadline`)."""
        now = self._clock()
        if (
            self.state in _HANDSHAKING
            and self._hs.deadline is not None
            and now >= self._hs.deadline
        ):
            self._protocol_error(
                ProtocolError(wire.HANDSHAKE_TIMEOUT, "handshake did not complete in time")
            )
        if self.state is State.OPEN:
            if now >= self._last_rx + self.heartbeat * self.dead_after:
                silent = now - self._last_rx
                self.events_out.append(
                    DropLink(wire.HEARTBEAT_TIMEOUT, f"peer silent for {silent:.1f}s")
                )
                self._detach(f"heartbeat timeout after {silent:.1f}s")
            else:
                if self._ack_due is not None and now >= self._ack_due:
                    self._emit_data({"type": "ack", "ack": self._in_seq})
                if now >= self._last_tx + self.heartbeat:
                    self._emit_data({"type": "ping", "ack": self._in_seq, "time": now})
        if (
            self.state is State.DETACHED
            and self._grace_deadline is not None
            and now >= self._grace_deadline
        ):
            self._close("grace_expired", f"worker did not resume within {self.grace:g}s")
        if self.state is not State.CLOSED:
            expired = [rid for rid, d in self._requests.items() if d is not None and now >= d]
            for rid in expired:
                del self._requests[rid]
                self.events_out.append(RequestFailed(rid, Timeout(f"no reply to {rid}")))

    # -- inputs: the master's decision after Authenticated --------------------------------

    def accept(self) -> None:
        """Master: start a fresh session for the authenticated worker (sends ``welcome``)."""
        self._require(Role.MASTER, State.AUTHENTICATED)
        self.session_id = self._random(8).hex()
        self._token = self._random(16).hex()
        self._welcome(resumed=False)

    def take_over(self, other: Session) -> bool:
        """Master: resume this (older) session on ``other``'s freshly authenticated link.

        The caller has checked that ``other`` asked to resume this session
        (:meth:`resume_matches`). If this session still had a link, it was stale: the driver
        closes it. Sends ``welcome`` with ``resumed`` and retransmits what the worker lacks.

        :returns: True if resumed; False if the request acknowledged messages this session
            never sent, in which case ``other`` refused it (``bad_frame``) and this session is
            unchanged.
        """
        self._require(Role.MASTER, State.OPEN, State.DETACHED)
        other._require(Role.MASTER, State.AUTHENTICATED)
        resume = other._hs.resume
        assert resume is not None
        if resume.ack > self._out_seq:
            other.refuse(wire.BAD_FRAME, "resume acknowledges messages never sent")
            return False
        self._hs = other._hs
        self._codec = self._handshake_codec
        self.state = State.DETACHED  # the stale link (if any) carries nothing more
        other.state = State.CLOSED
        self._grace_deadline = None
        self.stats.resumes += 1
        self._handle_ack(resume.ack)
        self._welcome(resumed=True)
        return True

    def resume_matches(self, request: ResumeRequest, worker: str) -> bool:
        """Master: True if ``request`` (from ``worker``) may resume this session."""
        return (
            self.state in (State.OPEN, State.DETACHED)
            and worker == self._hs.worker
            and request.session == self.session_id
            and auth.proofs_match(self._token, request.token)
        )

    def refuse(self, code: str, reason: str) -> None:
        """Master: refuse the authenticated worker (e.g. ``duplicate``); sends ``reject``."""
        self._require(Role.MASTER, State.AUTHENTICATED)
        self._emit_handshake({"type": "reject", "code": code, "reason": reason})
        self.events_out.append(DropLink(code, reason))
        self._close(code, reason)

    # -- inputs: the application ------------------------------------------------------------

    def send(self, kind: str, body: JSON = None) -> Message:
        """Queue a one-way message; returns it with its ``id``.

        :raises MessageError: invalid kind or body. :raises WindowFull: queue full.
        :raises LinkLost: the session is closed.
        """
        return self._submit(kind, body, request=False)

    def request(self, kind: str, body: JSON = None, timeout: float | None = None) -> Message:
        """Queue a request; its reply comes as :class:`ReplyReceived` (or
        :class:`RequestFailed`) with ``reply_to`` = the returned message's ``id``."""
        msg = self._submit(kind, body, request=True)
        self._requests[msg.id] = None if timeout is None else self._clock() + timeout
        return msg

    def cancel_request(self, request_id: str) -> None:
        """Forget a pending request: a late reply to it is dropped."""
        self._requests.pop(request_id, None)

    def reply(self, request: Message, body: JSON = None) -> Message:
        """Answer a request received as :class:`MessageReceived`."""
        return self._submit(request.kind, body, request=False, reply_to=request.id)

    def reply_error(self, request: Message, code: str, reason: str) -> Message:
        """Answer a request with an error; the requester gets a :class:`RemoteError`."""
        return self._submit(
            request.kind,
            {},
            request=False,
            reply_to=request.id,
            error=(str(code)[:255] or wire.HANDLER_ERROR, str(reason)[:4096]),
        )

    def goodbye(self, reason: str = "", masters: Iterable[str] = ()) -> None:
        """Say goodbye (if a link is up) and close the session."""
        if self.state is State.CLOSED:
            return
        if self.state is State.OPEN:
            self._emit_data(
                {"type": "goodbye", "ack": self._in_seq, "reason": reason, "masters": list(masters)}
            )
            self.events_out.append(DropLink(wire.SHUTDOWN, reason or "goodbye"))
        elif self.state in _HANDSHAKING:
            self.events_out.append(DropLink(wire.SHUTDOWN, reason or "goodbye"))
        self._close(wire.SHUTDOWN, reason or "goodbye")

    def close(self, reason: str = "closed") -> None:
        """Close the session at once, without a goodbye; pending requests fail."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.DETACHED and self.state is not State.IDLE:
            self.events_out.append(DropLink(wire.SHUTDOWN, reason))
        self._close(wire.SHUTDOWN, reason)

    # -- frame handlers (named in TRANSITIONS) ----------------------------------------------

    def _on_hello(self, frame: dict[str, Any], size: int) -> None:
        if frame["protocol"] not in wire.SUPPORTED_VERSIONS:
            supported = ", ".join(str(v) for v in sorted(wire.SUPPORTED_VERSIONS))
            raise ProtocolError(
                wire.VERSION,
                f"protocol {frame['protocol']} not supported; this master speaks {supported}",
            )
        codec = next((c for c in frame["codecs"] if c in self.codecs), None)
        if codec is None:
            raise ProtocolError(
                wire.CODEC, f"no common codec; this master speaks {', '.join(self.codecs)}"
            )
        r = frame.get("resume")
        self._hs.worker_nonce = frame["nonce"]
        self._hs.master_nonce = auth.new_nonce(self._random)
        self._hs.codec = codec
        self._hs.worker = frame["worker"]
        self._hs.tags = tuple(frame["tags"])
        self._hs.info = frame["info"]
        self._hs.resume = ResumeRequest(r["session"], r["token"], r["ack"]) if r else None
        self._emit_handshake({"type": "challenge", "nonce": self._hs.master_nonce})
        self.state = State.CHALLENGE_SENT

    def _on_challenge(self, frame: dict[str, Any], size: int) -> None:
        self._hs.master_nonce = frame["nonce"]
        proof = auth.worker_proof(
            self._secret, self.name, self._hs.worker_nonce, self._hs.master_nonce
        )
        self._emit_handshake({"type": "auth", "proof": proof})
        self.state = State.AUTH_SENT

    def _on_auth(self, frame: dict[str, Any], size: int) -> None:
        assert self._credentials is not None
        secret = self._credentials(self._hs.worker) or None  # an empty secret proves nothing
        expected = auth.worker_proof(
            b"" if secret is None else secret,
            self._hs.worker,
            self._hs.worker_nonce,
            self._hs.master_nonce,
        )
        if not auth.proofs_match(expected, frame["proof"]) or secret is None:
            # An unknown worker gets the same answer as a wrong secret, after the same work:
            # do not tell strangers which names exist.
            why = "unknown worker" if secret is None else "wrong proof"
            raise ProtocolError(
                wire.AUTH_FAILED,
                f"authentication failed for worker {self._hs.worker!r}",
                detail=f"authentication failed for worker {self._hs.worker!r} ({why})",
            )
        self._secret = secret
        self.name = self._hs.worker
        self.tags = self._hs.tags
        self.info = self._hs.info
        self.state = State.AUTHENTICATED
        self.events_out.append(Authenticated(self.name, self.tags, self.info, self._hs.resume))

    def _on_welcome(self, frame: dict[str, Any], size: int) -> None:
        expected = auth.master_proof(
            self._secret, self.name, self._hs.worker_nonce, self._hs.master_nonce
        )
        if not auth.proofs_match(expected, frame["proof"]):
            raise ProtocolError(wire.AUTH_FAILED, "the master failed to prove the secret")
        if frame["codec"] not in self.codecs:
            raise ProtocolError(
                wire.CODEC,
                f"master chose codec {frame['codec']!r}, which this worker did not offer",
            )
        resumed = frame["resumed"]
        if resumed and frame["session"] != self.session_id:
            raise ProtocolError(wire.BAD_FRAME, "resumed a session this worker never had")
        if resumed and frame["ack"] > self._out_seq:
            raise ProtocolError(wire.BAD_FRAME, "welcome acknowledges messages never sent")
        self.heartbeat = float(frame["heartbeat"])
        self._codec = get_codec(frame["codec"], self.max_frame)
        self._hs.deadline = None
        if resumed:
            self.stats.resumes += 1
            self._handle_ack(frame["ack"])
        else:
            self._restart_numbering()
        self.session_id = frame["session"]
        self._token = frame["token"]
        self._open(resumed)

    def _on_reject(self, frame: dict[str, Any], size: int) -> None:
        self.events_out.append(Rejected(frame["code"], frame["reason"]))
        self.events_out.append(DropLink(frame["code"], frame["reason"]))
        self._forget_session()  # whatever was refused, do not offer the same resume again
        self._detach(f"rejected: {frame['code']}: {frame['reason']}")

    def _on_msg(self, frame: dict[str, Any], size: int) -> None:
        seq = frame["seq"]
        ack = frame["ack"]
        outbox = self._outbox
        if ack > self._out_seq or (outbox and ack >= outbox[0].seq):  # else nothing to do
            self._handle_ack(ack)
        if seq <= self._in_seq:
            self.stats.duplicates_dropped += 1
            return
        if seq != self._in_seq + 1:
            raise ProtocolError(wire.BAD_FRAME, f"seq {seq} skips from {self._in_seq}")
        self._in_seq = seq
        self.stats.messages_received += 1
        self._unacked_in_bytes += size
        if seq - self._acked_in >= self.ack_every or self._unacked_in_bytes >= self.ack_bytes:
            self._emit_data({"type": "ack", "ack": seq})
        elif self._ack_due is None:
            self._ack_due = self._last_rx + self.ack_delay  # frame_received just set it
        msg = Message.trusted(frame["kind"], frame["body"], frame["id"], frame.get("reply_to"))
        if msg.reply_to is None:
            self.events_out.append(MessageReceived(msg, frame.get("request", False)))
            return
        if msg.reply_to not in self._requests:
            return  # a late reply to a request that timed out or was cancelled
        del self._requests[msg.reply_to]
        error = frame.get("error")
        if error is not None:
            self.events_out.append(
                RequestFailed(msg.reply_to, RemoteError(error["code"], error["reason"]))
            )
        else:
            self.events_out.append(ReplyReceived(msg))

    def _on_ack(self, frame: dict[str, Any], size: int) -> None:
        self._handle_ack(frame["ack"])

    def _on_ping(self, frame: dict[str, Any], size: int) -> None:
        self._handle_ack(frame["ack"])
        self._emit_data({"type": "pong", "ack": self._in_seq, "time": frame["time"]})

    def _on_pong(self, frame: dict[str, Any], size: int) -> None:
        self._handle_ack(frame["ack"])
        rtt = self._clock() - frame["time"]
        if rtt >= 0:
            self.stats.rtt = rtt

    def _on_goodbye(self, frame: dict[str, Any], size: int) -> None:
        self._handle_ack(frame["ack"])
        reason = frame["reason"] or "goodbye"
        self.events_out.append(DropLink(wire.SHUTDOWN, reason))
        if self.role is Role.WORKER:
            self.events_out.append(GoodbyeReceived(reason, tuple(frame.get("masters", []))))
            self._forget_session()
            self._detach(f"master said goodbye: {reason}")
        else:
            self._close(wire.SHUTDOWN, f"worker said goodbye: {reason}")

    def _on_error(self, frame: dict[str, Any], size: int) -> None:
        code, reason = frame["code"], frame["reason"]
        self.events_out.append(DropLink(code, reason))
        if self.role is Role.WORKER:
            self._forget_session()
            self._detach(f"master reported an error: {code}: {reason}")
        else:
            self._close(code, f"worker reported an error: {reason}")

    # -- internals ----------------------------------------------------------------------------

    def _require(self, role: Role, *states: State) -> None:
        if self.role is not role or self.state not in states:
            allowed = "/".join(s.value for s in states)
            raise RuntimeError(
                f"{role.value} input in {self.role.value} session in state "
                f"{self.state.value}; allowed in {allowed}"
            )

    def _emit_handshake(self, frame: dict[str, Any]) -> None:
        data = self._handshake_codec.encode(frame)
        self.stats.bytes_sent += len(data)
        self.frames_out.append(data)

    def _emit_data(self, frame: dict[str, Any], small_floats: bool = True) -> int:
        data = self._codec.encode(frame, small_floats)
        self.stats.bytes_sent += len(data)
        self.frames_out.append(data)
        self._last_tx = self._clock()
        self._acked_in = self._in_seq
        self._unacked_in_bytes = 0
        self._ack_due = None
        return len(data)

    def _welcome(self, resumed: bool) -> None:
        assert self._secret
        proof = auth.master_proof(
            self._secret, self.name, self._hs.worker_nonce, self._hs.master_nonce
        )
        self._emit_handshake(
            {
                "type": "welcome",
                "session": self.session_id,
                "token": self._token,
                "codec": self._hs.codec,
                "heartbeat": self.heartbeat,
                "proof": proof,
                "resumed": resumed,
                "ack": self._in_seq,
            }
        )
        self._codec = get_codec(self._hs.codec, self.max_frame)
        self._hs.deadline = None
        self._open(resumed)

    def _open(self, resumed: bool) -> None:
        now = self._clock()
        self.state = State.OPEN
        self._last_rx = now
        self._last_tx = now
        self.events_out.append(Attached(self.session_id, resumed))
        for out in self._outbox:  # retransmit what the peer has not acknowledged
            self.stats.retransmitted += 1
            self._emit_msg(out)
        self._flush_pending()

    def _submit(
        self,
        kind: str,
        body: JSON,
        *,
        request: bool,
        reply_to: str | None = None,
        error: tuple[str, str] | None = None,
    ) -> Message:
        if self.state is _CLOSED:
            raise LinkLost("the session is closed")
        if type(kind) is not str or not 0 < len(kind) <= MAX_KIND_LENGTH or not kind.isascii():
            validate_kind(kind)  # raises, or accepts a non-ASCII kind
        if body is None:
            body = {}
            estimate, small = 2, False
        else:
            estimate, small = scan_body(body)
            if estimate > self.max_frame:
                raise MessageError(
                    "body", f"about {estimate} bytes: over the frame limit of {self.max_frame}"
                )
        pending = self._pending
        if pending and (
            len(pending) >= self.max_pending or self._pending_bytes >= self.max_pending_bytes
        ):
            raise WindowFull(f"{len(pending)} messages already wait for the window")
        self._next_id = next_id = self._next_id + 1
        msg = Message.trusted(kind, body, f"{self._ids}{next_id}", reply_to)
        out = _Outgoing(msg, request, error, small)
        window = self._window
        if not pending and self.state is _OPEN and not window.full:
            self._emit_msg(out, fresh=True)
            if window.full:
                self._set_paused(True)
        else:
            out.size = len(kind) + estimate + 64  # an estimate until it is encoded
            pending.append(out)
            self._pending_bytes += out.size
            self._set_paused(True)
        return msg

    def _emit_msg(self, out: _Outgoing, fresh: bool = False) -> None:
        """Write ``out``'s msg frame. A ``fresh`` message takes the next seq and goes in flight
        (only once it is encoded: a message too large to encode raises MessageError and uses
        no seq); a retransmission keeps its seq."""
        msg = out.message
        seq = self._out_seq + 1 if fresh else out.seq
        frame: dict[str, Any] = {
            "type": "msg",
            "seq": seq,
            "ack": self._in_seq,
            "id": msg.id,
            "kind": msg.kind,
            "body": msg.body,
        }
        if out.request:
            frame["request"] = True
        if msg.reply_to is not None:
            frame["reply_to"] = msg.reply_to
        if out.error is not None:
            frame["error"] = {"code": out.error[0], "reason": out.error[1]}
        try:
            size = self._emit_data(frame, out.small_floats)
        except ProtocolError as exc:  # FrameTooLarge: our own message is too big
            raise MessageError("body", exc.reason) from None
        if fresh:
            out.seq, out.size = seq, size
            self._out_seq = seq
            self._outbox.append(out)
            self._window.sent(size)
            self.stats.messages_sent += 1

    def _flush_pending(self) -> None:
        while self._pending and self.state is _OPEN and not self._window.full:
            out = self._pending.popleft()
            self._pending_bytes -= out.size
            try:
                self._emit_msg(out, fresh=True)
            except MessageError as exc:  # too large once encoded: it can never be sent
                if out.request:
                    self._requests.pop(out.message.id, None)
                    self.events_out.append(RequestFailed(out.message.id, exc))
                self.events_out.append(SendFailed(out.message, str(exc)))
        if not self._pending and not self._window.full:
            self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        if paused != self._paused:
            self._paused = paused
            self.events_out.append(Paused() if paused else Resumed())

    def _handle_ack(self, ack: int) -> None:
        if ack > self._out_seq:
            raise ProtocolError(
                wire.BAD_FRAME, f"ack {ack} for messages never sent (last seq {self._out_seq})"
            )
        outbox = self._outbox
        if not outbox or ack < outbox[0].seq:
            return
        count = size = 0
        while outbox and outbox[0].seq <= ack:
            size += outbox.popleft().size
            count += 1
        self._window.acked(size, count)
        if self._pending or self._paused:
            self._flush_pending()

    def _restart_numbering(self) -> None:
        """A fresh session: unacknowledged messages go again, renumbered, before new ones."""
        self._pending.extendleft(reversed(self._outbox))
        self._pending_bytes += sum(o.size for o in self._outbox)
        self._outbox.clear()
        self._window.reset()
        self._out_seq = 0
        self._in_seq = 0
        self._acked_in = 0
        self._unacked_in_bytes = 0

    def _forget_session(self) -> None:
        self.session_id = ""
        self._token = ""

    def _detach(self, reason: str) -> None:
        self.state = State.DETACHED
        self._ack_due = None
        self._hs.deadline = None
        if self._pending or self._outbox:
            self._set_paused(True)
        if self.role is Role.MASTER:
            self._grace_deadline = self._clock() + self.grace
        self.events_out.append(Detached(reason))

    def _close(self, code: str, reason: str) -> None:
        self.state = State.CLOSED
        requests, self._requests = self._requests, {}
        for rid in requests:
            self.events_out.append(RequestFailed(rid, LinkLost(f"session closed: {reason}")))
        self.events_out.append(Closed(code, reason))

    def _protocol_error(self, exc: ProtocolError) -> None:
        """The peer broke the protocol: say why, drop the link, end or detach the session."""
        if self.role is Role.MASTER:
            if self.state in _HANDSHAKING:
                self._emit_handshake({"type": "reject", "code": exc.code, "reason": exc.reason})
            else:
                self._emit_data({"type": "error", "code": exc.code, "reason": exc.reason})
            self.events_out.append(DropLink(exc.code, exc.reason))
            self._close(exc.code, exc.detail)
            return
        if self.state is State.OPEN:
            self._emit_data({"type": "error", "code": exc.code, "reason": exc.reason})
            self._forget_session()
        self.events_out.append(DropLink(exc.code, exc.reason))
        if exc.code == wire.AUTH_FAILED:
            self.events_out.append(Rejected(exc.code, exc.reason))
        self._detach(f"{exc.code}: {exc.reason}")


def _table() -> dict[tuple[Role, State, str], str]:
    w, m = Role.WORKER, Role.MASTER
    table = {
        (m, State.AWAIT_HELLO, "hello"): "_on_hello",
        (m, State.CHALLENGE_SENT, "auth"): "_on_auth",
        (w, State.HELLO_SENT, "challenge"): "_on_challenge",
        (w, State.HELLO_SENT, "reject"): "_on_reject",
        (w, State.AUTH_SENT, "welcome"): "_on_welcome",
        (w, State.AUTH_SENT, "reject"): "_on_reject",
    }
    for role in (w, m):
        for ftype in ("msg", "ack", "ping", "pong", "goodbye", "error"):
            table[(role, State.OPEN, ftype)] = f"_on_{ftype}"
    return table


TRANSITIONS: dict[tuple[Role, State, str], str] = _table()
"""(role, state, frame type) → handler. A frame with no entry is a protocol error."""
