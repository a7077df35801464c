"""wiremsg: messages between a CI master and its build workers, over pluggable backends.

The public API (names fixed; see docs and DESIGN §6)::

    from wiremsg import Master, Worker, Message
"""

from wiremsg.address import Address, parse_address
from wiremsg.backends.base import Backend, CloseReason, Link, Listener
from wiremsg.errors import (
    AddressError,
    AuthError,
    BackendNotFound,
    BackendUnavailable,
    ConnectFailed,
    LinkClosed,
    LinkLost,
    MessageError,
    NotAttached,
    ProtocolError,
    RemoteError,
    Timeout,
    WindowFull,
    WiremsgError,
)
from wiremsg.master import Master, Peer
from wiremsg.message import Message
from wiremsg.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Address",
    "AddressError",
    "AuthError",
    "Backend",
    "BackendNotFound",
    "BackendUnavailable",
    "CloseReason",
    "ConnectFailed",
    "Link",
    "LinkClosed",
    "LinkLost",
    "Listener",
    "Master",
    "Message",
    "MessageError",
    "NotAttached",
    "Peer",
    "ProtocolError",
    "RemoteError",
    "Timeout",
    "WindowFull",
    "WiremsgError",
    "Worker",
    "__version__",
    "parse_address",
]
