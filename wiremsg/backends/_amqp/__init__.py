"""The AMQP backend: links through a RabbitMQ (AMQP 0-9-1) broker, over pika's Twisted adapter.

Addresses: ``amqp://USER:PASS@HOST:PORT/VHOST`` and ``amqps://...`` (TLS to the broker). An
empty path means the vhost ``/``. Parameters: ``prefix`` (default ``wiremsg``) names the
exchange and the queues, so several fleets share a broker; ``heartbeat`` (AMQP heartbeat,
seconds, default 10; 0 disables); ``prefetch`` (deliveries a consumer may hold unacknowledged,
default 16384: the session's default window in messages, so the broker never throttles a
session below its own window, while the session window bounds memory). ``amqps`` adds ``ca``
(PEM CA file; default the platform's trust store), ``cert`` and ``key`` (client certificate),
``sasl=external`` (log in with the client certificate: RabbitMQ's ``rabbitmq_auth_mechanism_ssl``)
and ``server_name`` (the name the broker's certificate must carry; default the host).

"Listen" means: consume the prefix's first-contact queue as one of possibly several masters.
"Connect" means: make a link through the broker to whichever master takes the hello.

Topology (all names start with the prefix ``P``)::

    P                  exchange, direct, durable: every message goes through it, mandatory
    P.masters          queue, durable, not exclusive, not auto-delete; bound with key "masters".
                       First contact: every master of P consumes it (competing consumers, so
                       the broker spreads workers over masters; a master takes HELLO_PREFETCH
                       hellos at a time, on a channel of its own, since acknowledgements are
                       per channel and hellos are acknowledged at once, a link's messages in
                       bulk). Durable and never auto-deleted because it belongs to
                       the fleet, not to one master: it outlives any master's restart and a
                       broker restart. Hellos carry a TTL (the connect timeout), so none waits
                       there longer than its worker would.
    P.master.<hex>     queue, exclusive (so auto-deleted with its connection), not durable;
                       bound with its own name. One per listener connection: every link of
                       that listener receives here (by link id). It vanishes the moment the
                       master's connection does, so a worker's next publish to it is returned
                       and the worker's link ends with that reason.
    P.worker.<hex>     queue, exclusive, not durable; bound with its own name. One per worker
                       link (one connection each). Likewise, the master learns of a vanished
                       worker from a returned publish.

Only ``P`` and ``P.masters`` outlive their connections; :func:`topology` names them.

Link protocol. Every message carries ``correlation_id`` = the link id (32 hex digits, chosen
by the worker) and ``reply_to`` = the sender's own queue; the first byte of its body says what
it is::

    H v     hello    worker -> P.masters (routing key "masters"); v = VERSION; TTL = timeout
    W v     welcome  master -> worker queue: the link exists; reply_to is the master's queue
    R text  refused  master -> worker queue: no link (listener closed, other version)
    D recs  data     frames, each record a u32 big-endian length || the frame
    B text  bye      orderly close, UTF-8 reason (<= MAX_REASON bytes); nothing follows it
    A       ack      answers a bye: everything before it arrived
    X text  abort    unclean close (receiver failed, protocol broken, unknown link)

Before connecting, a worker checks (passively) that ``P.masters`` exists and has consumers,
so that a connect with no master fails at once instead of timing out. Frames sent in one
reactor turn are coalesced into ``D`` messages (see :mod:`._link`); every publish is
``mandatory`` and confirmed, and a returned or nacked message ends the link with a reason.
Hostile input: a ``D`` record longer than ``max_frame``, an unknown kind, a hello with a bad
id or a ``reply_to`` outside the prefix's own queues end only that link (or drop the hello),
logged; the broker's ``max_message_size`` (128 MiB by default) bounds a message before pika
assembles it, the only bound that applies before parsing.

Broker connection loss. A worker's link ends with its connection; the worker's session makes
a new link (the worker's own backoff) and resumes. A master's listener ends all its links, then
reconnects with exponential backoff and full jitter and declares everything again; workers
re-attach through ``P.masters`` and resume their sessions (nothing lost or duplicated: that is
the session's resume and retransmission). With several masters, a worker whose master went
re-attaches to another through ``P.masters``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail

from wiremsg.address import Address, parse_address
from wiremsg.backends._amqp._broker import (
    MAX_PREFETCH,
    BrokerOptions,
    open_connection,
    parse_options,
)
from wiremsg.backends._amqp._ends import (
    AMQPListener,
    MasterEnd,
    WorkerEnd,
    first_contact_queue,
    topology,
)
from wiremsg.backends._amqp._link import BATCH_BYTES, CLOSE_TIMEOUT, MAX_QUEUE, AMQPLink
from wiremsg.backends.base import MIN_MAX_FRAME, Backend, Link, Listener
from wiremsg.errors import AddressError
from wiremsg.window import DEFAULT_MAX_MESSAGES

__all__ = [
    "BATCH_BYTES",
    "AMQPBackend",
    "AMQPLink",
    "AMQPListener",
    "delete_topology",
    "first_contact_queue",
    "topology",
]

MAX_MESSAGE = 128 * 1024 * 1024
"""RabbitMQ's default ``max_message_size``: a ``D`` message holding one frame must fit."""
DEFAULT_PREFETCH = min(DEFAULT_MAX_MESSAGES, MAX_PREFETCH)
"""Deliveries a consumer may hold unacknowledged: the session's default window in messages."""
RECONNECT_BASE = 0.5
"""Seconds: the first reconnection of a listener waits up to this (full jitter), doubling."""
RECONNECT_CAP = 15.0
"""Seconds: the longest wait between a listener's reconnection attempts."""
CONNECT_TIMEOUT = 10.0
"""Seconds a listener's connection to the broker may take."""


async def delete_topology(reactor: Any, address: Address | str, timeout: float = 10.0) -> None:
    """Delete what the address's prefix keeps on the broker (its exchange and first-contact
    queue, see :func:`topology`): for retiring a fleet, or after a demo. Masters still
    consuming lose their hello consumer and declare the queue again.

    :raises ConnectFailed: the broker cannot be reached or refuses the login.
    :raises AddressError: for a bad address.
    """
    opts = parse_options(parse_address(address))
    conn = await open_connection(reactor, opts, timeout, f"wiremsg cleanup {opts.prefix}")
    try:
        channel = await conn.channel()
        await channel.delete(topology(opts.prefix)[1])
    finally:
        await conn.close()


class AMQPBackend(Backend):
    """Links through an AMQP 0-9-1 broker (see the module docstring).

    :param reactor: the reactor to run on.
    :param max_frame: the largest frame sent or accepted (a ``D`` message holding it must fit
        the broker's ``max_message_size``).
    :param max_queue: bytes a link may hold while the broker has not confirmed enough.
    :param close_timeout: seconds ``close()`` waits for the peer's acknowledgement.
    :param prefetch: default deliveries a consumer holds unacknowledged (address ``prefetch``).
    :param reconnect_base: first reconnection delay ceiling of a listener (seconds).
    :param reconnect_cap: longest reconnection delay of a listener (seconds).
    :param connect_timeout: seconds a listener's broker connection may take.
    :param rng: a ``random()``-like function for the reconnection jitter.
    :raises ValueError: for limits that do not fit together.
    """

    schemes = ("amqp", "amqps")

    def __init__(
        self,
        reactor: Any,
        *,
        max_frame: int = MIN_MAX_FRAME,
        max_queue: int = MAX_QUEUE,
        close_timeout: float = CLOSE_TIMEOUT,
        prefetch: int = DEFAULT_PREFETCH,
        reconnect_base: float = RECONNECT_BASE,
        reconnect_cap: float = RECONNECT_CAP,
        connect_timeout: float = CONNECT_TIMEOUT,
        rng: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(reactor)
        if not 0 <= max_frame <= MAX_MESSAGE - 5:
            raise ValueError(f"max_frame must be at most {MAX_MESSAGE - 5}, not {max_frame}")
        if max_queue < max_frame + 5:
            raise ValueError("max_queue must hold at least one frame of max_frame bytes")
        if not 1 <= prefetch <= MAX_PREFETCH:
            raise ValueError(f"prefetch must be 1-{MAX_PREFETCH}")
        self.max_frame, self.max_queue, self.close_timeout = max_frame, max_queue, close_timeout
        self.prefetch = prefetch
        self.reconnect_base, self.reconnect_cap = reconnect_base, reconnect_cap
        self.connect_timeout = connect_timeout
        self.rng = rng or random.random

    def listen(self, address: Address | str, on_link: Callable[[Link], None]) -> Deferred[Listener]:
        """Consume the first-contact queue of the address's prefix, as one more master.

        Several listeners (in this process or others) may share an address: the broker
        spreads the workers over them. :raises: (as a failed Deferred) :class:`ConnectFailed`
        if the broker cannot be reached or refuses the login or the declarations,
        :class:`AddressError` for a bad address.
        """
        try:
            addr, opts = self._check(address)
        except AddressError:
            return fail()
        end = MasterEnd(self, addr, opts, on_link)

        async def start() -> Listener:
            try:
                await end.open()
            except Exception as exc:
                raise type(exc)(f"cannot listen on {addr.redacted()}: {exc}") from None
            return AMQPListener(end)

        return Deferred.fromCoroutine(start())

    def connect(self, address: Address | str, timeout: float = 10.0) -> Deferred[Link]:
        """Make a link to whichever master of the address's prefix takes the hello.

        :raises: (as a failed Deferred) :class:`ConnectFailed` when the broker cannot be
            reached or refuses the login, no master listens, a master refuses, or ``timeout``
            seconds pass; ``CancelledError`` when cancelled (nothing is left open);
            :class:`AddressError` for a bad address.
        """
        try:
            addr, opts = self._check(address)
        except AddressError:
            return fail()
        return WorkerEnd(self, addr, opts, timeout).start()

    def _check(self, address: Address | str) -> tuple[Address, BrokerOptions]:
        addr = parse_address(address)
        return addr, parse_options(addr)
