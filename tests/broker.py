"""The RabbitMQ the AMQP tests talk to (127.0.0.1:5672, guest/guest).

One fixture, :func:`amqp_broker`, decides what happens without a broker: outside CI the tests
skip with the reason; with ``WIREMSG_REQUIRE_BROKER=1`` (``.ci/run`` sets it) they fail.
:func:`amqp_prefix` gives each test its own prefix and deletes what it left on the broker (the
exchange and the durable first-contact queue; own queues vanish with their connections).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

HOST, PORT = "127.0.0.1", 5672
USER, PASSWORD = "guest", "guest"
REQUIRE = "WIREMSG_REQUIRE_BROKER"
"""Set to 1 (CI does) to make broker tests fail, not skip, when no broker answers."""


def broker_problem() -> str | None:
    """Why the broker cannot be used, or None if it answers."""
    try:
        import pika  # noqa: F401
    except ImportError:
        return "pika is not installed (pip install 'wiremsg[amqp]')"
    try:
        with socket.create_connection((HOST, PORT), timeout=2):
            return None
    except OSError as exc:
        return f"nothing answers on {HOST}:{PORT} ({exc})"


@pytest.fixture(scope="session")
def amqp_broker() -> str:
    """The broker's URL (no prefix); skips, or fails under ``WIREMSG_REQUIRE_BROKER=1``."""
    problem = broker_problem()
    if problem is not None:
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"RabbitMQ is required ({REQUIRE}=1) but unusable: {problem}")
        pytest.skip(f"no RabbitMQ for the AMQP tests: {problem} (rabbitmq-server -detached)")
    return broker_url()


def broker_url(prefix: str | None = None, port: int = PORT, password: str = PASSWORD) -> str:
    """``amqp://guest:guest@127.0.0.1:PORT/`` with ``?prefix=`` when given."""
    url = f"amqp://{USER}:{password}@{HOST}:{port}/"
    return url if prefix is None else f"{url}?prefix={prefix}"


def new_prefix(tag: str = "t") -> str:
    """A prefix no other test (or run) uses."""
    return f"wmtest-{tag}-{uuid.uuid4().hex[:12]}"


def delete_topology(prefix: str) -> None:
    """Delete the exchange and the durable queues of ``prefix`` (best effort)."""
    import pika

    from wiremsg.backends._amqp import topology

    exchange, queues = topology(prefix)
    params = pika.ConnectionParameters(
        HOST, PORT, credentials=pika.PlainCredentials(USER, PASSWORD), socket_timeout=5
    )
    try:
        with pika.BlockingConnection(params) as conn:
            channel = conn.channel()
            for queue in queues:
                channel.queue_delete(queue)
            channel.exchange_delete(exchange)
    except pika.exceptions.AMQPError:
        pass


def queue_exists(queue: str) -> bool:
    """Whether ``queue`` exists on the broker (a passive declare)."""
    import pika

    params = pika.ConnectionParameters(
        HOST, PORT, credentials=pika.PlainCredentials(USER, PASSWORD), socket_timeout=5
    )
    with pika.BlockingConnection(params) as conn:
        try:
            conn.channel().queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
    return True


@pytest.fixture
def amqp_prefix(amqp_broker: str) -> Iterator[str]:
    """A fresh prefix; its exchange and first-contact queue are deleted afterwards."""
    prefix = new_prefix()
    yield prefix
    delete_topology(prefix)


def wait_for_broker(timeout: float = 60.0) -> None:
    """Block until the broker accepts AMQP logins again (after a restart)."""
    import pika

    deadline = time.monotonic() + timeout
    params = pika.ConnectionParameters(
        HOST, PORT, credentials=pika.PlainCredentials(USER, PASSWORD), socket_timeout=2
    )
    while True:
        try:
            pika.BlockingConnection(params).close()
            return
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                raise AssertionError(f"RabbitMQ did not come back within {timeout:g}s") from None
            time.sleep(0.2)  # another process (the broker) is starting: nothing to await


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl ARGS`` (bounded); fail with its output if it fails."""
    proc = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)}: {proc.stdout}{proc.stderr}")
