"""Every exception wiremsg raises, in one place.

Two families, after h11: a *local* error means the caller (our user's code) did something
illegal and is a bug to fix; a *remote* error means the peer did, is expected hostile input,
and ends in a clean close with a reason. Each class says which it is.
"""

from __future__ import annotations


class WiremsgError(Exception):
    """Base class of every wiremsg exception."""


# -- configuration and addressing (local) -------------------------------------------------


class AddressError(WiremsgError, ValueError):
    """A URL address is malformed; ``part`` names the piece that is wrong.

    :param part: which part of the URL is wrong (``scheme``, ``host``, ``port``, ``path``,
        ``query``, ...).
    :param address: the address as given.
    :param problem: what is wrong with that part.
    """

    def __init__(self, part: str, address: str, problem: str) -> None:
        self.part = part
        self.address = address
        self.problem = problem
        super().__init__(f"bad {part} in address {address!r}: {problem}")


class BackendNotFound(WiremsgError, LookupError):
    """No backend is registered for a URL scheme."""


class BackendUnavailable(WiremsgError, ImportError):
    """A backend is registered but its dependency is missing; the message names the extra."""


class MessageError(WiremsgError, ValueError):
    """A message is not valid (local): kind or body is not JSON-compatible.

    :param path: where in the body the offending value sits, e.g. ``body.items[3].name``.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# -- wire and protocol (remote) ------------------------------------------------------------


class ProtocolError(WiremsgError):
    """The peer broke the protocol (remote). ``code`` is the wire error code.

    Codes are listed in docs/PROTOCOL.md and :mod:`wiremsg.wire`: ``bad_frame``,
    ``too_large``, ``unexpected``, ``version``, ``codec``, ``auth_failed``, ``duplicate``,
    ``handshake_timeout``, ``heartbeat_timeout``, ``shutdown`` (and, in error replies,
    ``handler_error`` and ``no_handler``).
    """

    def __init__(self, code: str, reason: str, detail: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.detail = detail or reason
        """What the local log says; ``reason`` is what goes on the wire (it may say less)."""
        super().__init__(f"{code}: {reason}")


class FrameTooLarge(ProtocolError):
    """A frame exceeds the size limit; it was refused before any decoding."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__("too_large", f"frame of {size} bytes exceeds the limit of {limit}")


class DecodeError(ProtocolError):
    """A frame's bytes are not a valid encoding in the expected codec."""

    def __init__(self, reason: str) -> None:
        super().__init__("bad_frame", reason)


# -- links and sessions ----------------------------------------------------------------------


class LinkClosed(WiremsgError):
    """A send on a link that is closed (local misuse, or the peer went away first)."""


class ConnectFailed(WiremsgError, ConnectionError):
    """``Backend.connect`` could not establish a link; the message says why."""


class AuthError(WiremsgError):
    """The handshake was refused: wrong secret, unknown worker, or a master that failed to prove
    itself. ``code`` is the wire reject code."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


class RemoteError(WiremsgError):
    """A request's handler on the other side failed; ``code`` and ``reason`` are what it said."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


class Timeout(WiremsgError, TimeoutError):
    """A request got no reply, or a wait did not complete, within its timeout."""


class LinkLost(WiremsgError):
    """The session ended (grace ran out, goodbye, or stop) before a request was answered."""


class WindowFull(WiremsgError):
    """The session's send window and its bounded pending queue are both full (local).

    A well-behaved producer pauses on the session's ``Paused`` event instead of hitting this.
    """


class NotAttached(WiremsgError, LookupError):
    """The named worker is not attached to this master."""
