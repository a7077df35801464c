"""Events a :class:`~wiremsg.session.Session` produces, and its counters.

Small frozen dataclasses named as nouns (after h11). The driver takes them with
:meth:`Session.take_events` and acts on each; docs in each class say what it must do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wiremsg.errors import WiremsgError
from wiremsg.message import Message


@dataclass(frozen=True)
class ResumeRequest:
    """What a worker's ``hello.resume`` asked for."""

    session: str
    token: str
    ack: int


@dataclass(frozen=True)
class Authenticated:
    """Master only: the worker proved its secret. The driver must now call
    :meth:`Session.accept`, :meth:`Session.refuse` or ``old.take_over(this)``."""

    worker: str
    tags: tuple[str, ...]
    info: Mapping[str, Any]
    resume: ResumeRequest | None


@dataclass(frozen=True)
class Attached:
    """The handshake is done and the session carries messages (again, if ``resumed``)."""

    session: str
    resumed: bool


@dataclass(frozen=True)
class Rejected:
    """Worker only: the master refused the handshake, or failed to prove itself."""

    code: str
    reason: str


@dataclass(frozen=True)
class MessageReceived:
    """An application message arrived. If ``request``, the application owes a reply."""

    message: Message
    request: bool


@dataclass(frozen=True)
class ReplyReceived:
    """The reply to one of our requests arrived; ``message.reply_to`` is the request's id."""

    message: Message


@dataclass(frozen=True)
class RequestFailed:
    """One of our requests ended without a reply: ``error`` is a :class:`RemoteError`,
    :class:`Timeout`, :class:`LinkLost` or (see :class:`SendFailed`) :class:`MessageError`."""

    request_id: str
    error: WiremsgError


@dataclass(frozen=True)
class SendFailed:
    """A message queued behind the window turned out too large to encode when its turn came;
    it was dropped (a request also gets :class:`RequestFailed`). Sends that fail at once raise
    :class:`~wiremsg.errors.MessageError` instead."""

    message: Message
    reason: str


@dataclass(frozen=True)
class Paused:
    """Sends are queueing: the window is full or the link is down. Producers should stop."""


@dataclass(frozen=True)
class Resumed:
    """The pending queue drained: producers may go on."""


@dataclass(frozen=True)
class GoodbyeReceived:
    """Worker only: the master is going away; ``masters`` lists others to fail over to."""

    reason: str
    masters: tuple[str, ...]


@dataclass(frozen=True)
class DropLink:
    """The driver must close the current link now, after writing the frames taken."""

    code: str
    reason: str


@dataclass(frozen=True)
class Detached:
    """The link is gone but the session lives on (master: until grace runs out)."""

    reason: str


@dataclass(frozen=True)
class Closed:
    """The session is over; nothing more will be delivered or sent."""

    code: str
    reason: str


Event = (
    Authenticated
    | Attached
    | Rejected
    | MessageReceived
    | ReplyReceived
    | RequestFailed
    | SendFailed
    | Paused
    | Resumed
    | GoodbyeReceived
    | DropLink
    | Detached
    | Closed
)


@dataclass
class SessionStats:
    """Counters for one session (all links it has had)."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retransmitted: int = 0
    resumes: int = 0
    duplicates_dropped: int = 0
    rtt: float | None = None
