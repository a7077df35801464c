"""The AMQP backend against the real RabbitMQ: the conformance suite, plus what only a broker
has (topology, returned messages, lost connections, credentials, several masters)."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from tests.broker import broker_url, rabbitmqctl, wait_for_broker
from tests.clockwork import result
from tests.procs import Cluster, py
from wiremsg.address import parse_address
from wiremsg.backends._amqp import BATCH_BYTES, AMQPBackend, AMQPLink, AMQPListener
from wiremsg.backends._amqp._broker import ACK_DELAY, open_connection, parse_options
from wiremsg.backends._amqp._ends import MasterEnd
from wiremsg.backends.base import Link
from wiremsg.errors import AddressError, ConnectFailed
from wiremsg.testing.conformance import BackendConformance, LinkHarness, bounded, run_in_reactor
from wiremsg.testing.harness import async_test


class TestAMQPConformance(BackendConformance):
    exclusive_listen = False  # several masters share a prefix: that is the point

    @pytest.fixture
    def backend(self, reactor: Any, amqp_prefix: str) -> AMQPBackend:
        return AMQPBackend(reactor)

    @pytest.fixture
    def listen_address(self, amqp_prefix: str) -> str:
        return broker_url(amqp_prefix)


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def harness(reactor: Any, amqp_prefix: str) -> Iterator[LinkHarness]:
    h = LinkHarness(AMQPBackend(reactor), reactor, timeout=10.0)
    yield h
    run_in_reactor(reactor, h.aclose)


async def _until(reactor: Any, what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) for a state the broker or another connection brings about."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


async def _gone(queue: str, timeout: float = 10.0) -> None:
    """Wait (bounded) until the broker has deleted ``queue``."""
    deadline = time.monotonic() + timeout
    while await deferToThread(_queue_state, queue) != "missing":
        assert time.monotonic() < deadline, f"{queue} still exists after {timeout:g}s"


def _end(link: Link) -> Any:
    return cast(AMQPLink, link)._carrier


def _queue_state(queue: str) -> str:
    """``missing``, ``exclusive`` (another connection's) or ``shared``, seen from outside."""
    import pika

    params = pika.ConnectionParameters(
        "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest")
    )
    with pika.BlockingConnection(params) as conn:
        try:
            conn.channel().queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            return {404: "missing", 405: "exclusive"}.get(exc.reply_code, str(exc))
    return "shared"


# -- addresses (no broker needed) ------------------------------------------------------------------


def test_address_parameters_and_defaults(tmp_path: Path) -> None:
    opts = parse_options(parse_address("amqp://u:p@broker:5672/"))
    assert (opts.vhost, opts.prefix, opts.tls, opts.user, opts.password) == (
        "/",
        "wiremsg",
        False,
        "u",
        "p",
    )
    opts = parse_options(parse_address("amqp://u:p@broker/builds?prefix=fleet.a&heartbeat=0"))
    assert (opts.port, opts.vhost, opts.prefix, opts.heartbeat) == (5672, "builds", "fleet.a", 0)
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    opts = parse_options(parse_address(f"amqps://broker?cert={cert}&sasl=external"))
    assert (opts.port, opts.tls, opts.external, opts.cert) == (5671, True, True, str(cert))
    for bad, part, words in [
        ("amqp://u:p@h/?prefix=amq.x", "query", "prefix"),
        ("amqp://u:p@h/?prefix=a%20b", "query", "prefix"),
        ("amqp://u:p@h/?colour=red", "query", "unknown parameter colour"),
        (f"amqp://u:p@h/?cert={cert}", "query", "amqps"),
        ("amqps://u:p@h/?sasl=external", "query", "cert"),
        ("amqps://u:p@h/?ca=/no/such/ca.pem", "query", "no such file"),
        ("amqp://u:p@h/?prefetch=0", "query", "prefetch"),
        ("amqp://u:p@h/?via=ssh://gw", "via", "TLS"),
    ]:
        with pytest.raises(AddressError) as info:
            parse_options(parse_address(bad))
        assert info.value.part == part and words in info.value.problem, bad
        assert ":p@" not in str(info.value), "the password must not appear in errors"


def test_listener_reconnects_with_growing_backoff_on_a_clock() -> None:
    """Deterministic: a MemoryReactorClock never connects, so every attempt times out."""
    clock = MemoryReactorClock()
    backend = AMQPBackend(
        clock, reconnect_base=1.0, reconnect_cap=8.0, connect_timeout=2.0, rng=lambda: 1.0
    )
    addr = parse_address("amqp://guest:guest@127.0.0.1:5672/?prefix=clock")
    end = MasterEnd(backend, addr, parse_options(addr), lambda link: None)
    end._lost("pretend the broker went away")
    starts: list[float] = []
    for _ in range(6):
        delay = min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds()
        clock.advance(delay)  # the retry: a TCP attempt is recorded
        starts.append(clock.seconds())
        assert len(clock.tcpClients) == len(starts)
        clock.advance(2.0)  # the attempt times out; the next one is scheduled
    gaps = [round(b - a - 2.0, 6) for a, b in pairwise(starts)]
    assert gaps == [2.0, 4.0, 8.0, 8.0, 8.0]  # full jitter at its ceiling: base * 2**n, capped
    result(Deferred.fromCoroutine(end.stop()))
    assert not [c for c in clock.getDelayedCalls() if c.active()]


# -- the broker: credentials, no broker, no master -----------------------------------------------


@async_test
async def test_wrong_credentials_are_a_clear_error_not_a_hang(
    reactor: Any, amqp_prefix: str
) -> None:
    backend = AMQPBackend(reactor)
    address = broker_url(amqp_prefix, password="not-the-password")
    started = time.monotonic()
    for attempt in (
        lambda: backend.connect(address, timeout=5),
        lambda: backend.listen(address, lambda link: None),
    ):
        with pytest.raises(ConnectFailed) as info:
            await bounded(attempt(), reactor, 10, "a refused login")
        text = str(info.value)
        assert "refused the login" in text and "ACCESS_REFUSED" in text, text
        assert "not-the-password" not in text
    assert time.monotonic() - started < 5


@async_test
async def test_no_broker_and_no_master_fail_at_once(reactor: Any, amqp_prefix: str) -> None:
    backend = AMQPBackend(reactor)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match="no broker answers"):
        await bounded(backend.connect(broker_url(amqp_prefix, port=port)), reactor, 5, "refusal")
    with pytest.raises(ConnectFailed, match="no master has ever listened with prefix"):
        await bounded(backend.connect(broker_url(amqp_prefix)), reactor, 5, "no master")
    assert time.monotonic() - started < 3


# -- topology --------------------------------------------------------------------------------------


@async_test
async def test_topology_durable_first_contact_exclusive_own_queues(
    harness: LinkHarness, amqp_prefix: str
) -> None:
    server = await harness.listen(broker_url(amqp_prefix))
    p = await harness.pair(server)
    master_queue = cast(AMQPLink, p.client).peer_queue
    worker_queue = cast(AMQPLink, p.server).peer_queue
    assert master_queue.startswith(f"{amqp_prefix}.master.")
    assert worker_queue.startswith(f"{amqp_prefix}.worker.")
    hellos = f"{amqp_prefix}.masters"
    states = await deferToThread(lambda: [_queue_state(q) for q in (hellos, master_queue)])
    assert states == ["shared", "exclusive"]
    p.client.close("done")
    await p.server_rx.wait_closed()
    await p.client_rx.wait_closed()  # the worker's connection, and so its queue, are gone
    await harness.bounded(server.listener.close(), "listener close")
    states = await deferToThread(
        lambda: [_queue_state(q) for q in (hellos, master_queue, worker_queue)]
    )
    assert states == ["shared", "missing", "missing"], "only the first-contact queue stays"
    with pytest.raises(ConnectFailed, match="no master is listening with prefix"):
        await harness.bounded(harness.backend.connect(server.address), "connect to fail")


@async_test
async def test_a_burst_is_coalesced_into_few_messages(
    harness: LinkHarness, amqp_prefix: str
) -> None:
    p = await harness.pair(address=broker_url(amqp_prefix))
    client = cast(AMQPLink, p.client)
    frames = [b"%04d" % i + bytes(100) for i in range(1000)]
    harness.send(client, *frames)
    assert await p.server_rx.wait_frames(1000) == frames
    assert client.messages_sent == 1, "1,000 small frames sent in one turn make one message"
    big = [bytes([i % 256]) * 200 for i in range(20_000)]  # 4 MB in one turn
    harness.send(client, *big)
    assert await p.server_rx.wait_frames(21_000) == frames + big
    assert client.messages_sent <= 1 + 4_100_000 // BATCH_BYTES + 2, client.messages_sent


# -- peers and brokers that go away ----------------------------------------------------------------


@async_test
async def test_a_vanished_worker_ends_both_halves_with_reasons(
    harness: LinkHarness, amqp_prefix: str
) -> None:
    p = await harness.pair(address=broker_url(amqp_prefix))
    _end(p.client).conn.abort()  # the worker's broker connection dies
    mine = await p.client_rx.wait_closed()
    assert (mine.clean, mine.local) == (False, False) and "lost the broker" in mine.text
    await _gone(cast(AMQPLink, p.server).peer_queue)  # the broker has seen the connection go
    harness.send(p.server, b"to nobody")  # the master learns of it from the returned message
    theirs = await p.server_rx.wait_closed()
    assert (theirs.clean, theirs.local) == (False, False)
    assert "is gone" in theirs.text and "worker" in theirs.text, theirs.text


@async_test
async def test_a_listener_that_loses_the_broker_ends_its_links_and_comes_back(
    reactor: Any, amqp_prefix: str
) -> None:
    harness = LinkHarness(AMQPBackend(reactor, rng=lambda: 0.0), reactor, timeout=10.0)
    try:
        server = await harness.listen(broker_url(amqp_prefix))
        p = await harness.pair(server)
        listener = cast(AMQPListener, server.listener)
        _end(p.server).conn.abort()  # the master's broker connection dies
        theirs = await p.server_rx.wait_closed()
        assert theirs.clean is False and "lost the broker" in theirs.text
        await _gone(cast(AMQPLink, p.client).peer_queue)
        harness.send(p.client, b"to a master that is gone")
        mine = await p.client_rx.wait_closed()
        assert mine.clean is False and "is gone" in mine.text and "master" in mine.text
        await _until(reactor, "the listener to reconnect", lambda: listener.reconnects == 1)
        again = await harness.pair(server)  # a new link through the new connection
        harness.send(again.client, b"hello again")
        assert await again.server_rx.wait_frames(1) == [b"hello again"]
    finally:
        await harness.aclose()


@async_test
async def test_two_listeners_on_one_prefix_share_the_workers(
    harness: LinkHarness, amqp_prefix: str
) -> None:
    address = broker_url(amqp_prefix)
    first, second = await harness.listen(address), await harness.listen(address)
    for _ in range(12):
        link, rx = await harness.connect(address)
        assert rx is not None
        harness.send(link, b"ping")
    await _until(
        harness.reactor, "12 links", lambda: len(first.accepted) + len(second.accepted) == 12
    )
    assert len(first.accepted) >= 3 and len(second.accepted) >= 3, (
        len(first.accepted),
        len(second.accepted),
    )


@async_test
async def test_hellos_acknowledged_while_link_messages_wait_for_theirs(
    harness: LinkHarness, amqp_prefix: str
) -> None:
    """A master acknowledges hellos at once and its links' messages in bulk a little later;
    the two consumers must not share a channel, where an acknowledgement with ``multiple``
    would take the other's deliveries along (and the broker then closes the channel over the
    second acknowledgement of a tag)."""
    address = broker_url(amqp_prefix)
    server = await harness.listen(address)
    first = await harness.pair(server)
    for n in range(3):
        harness.send(first.client, b"before %d" % n)  # unacked on the master for ACK_DELAY
        await harness.connect(address)  # a hello, acknowledged at once
    assert await first.server_rx.wait_frames(3) == [b"before %d" % n for n in range(3)]
    await deferLater(harness.reactor, 3 * ACK_DELAY, lambda: None)  # the bulk acks went
    harness.send(first.client, b"after")
    harness.send(first.server, b"back")
    assert (await first.server_rx.wait_frames(4))[-1] == b"after"
    assert await first.client_rx.wait_frames(1) == [b"back"]
    assert not first.server_rx.closes and not first.client_rx.closes


# -- hostile input ---------------------------------------------------------------------------------


@async_test
async def test_a_malformed_message_ends_only_that_link(
    harness: LinkHarness, amqp_prefix: str
) -> None:
    address = broker_url(amqp_prefix)
    server = await harness.listen(address)
    victim, bystander = await harness.pair(server), await harness.pair(server)
    end = _end(victim.server)
    opts = parse_options(parse_address(address))
    conn = await open_connection(harness.reactor, opts, 5, "hostile test")
    try:
        channel = await conn.channel()
        vid = cast(AMQPLink, victim.client).link_id
        own = end.own_queue
        hostile_queue = f"{amqp_prefix}.worker.hostile"
        with _Logged() as logged:
            # A hello answering to another fleet's queue is dropped, and no link is made.
            props = channel.properties("0" * 32, "elsewhere.worker.x")
            await channel.publish("masters", b"H\x01", props)
            # A record longer than the message ends the link it names.
            props = channel.properties(vid, hostile_queue)
            await channel.publish(own, b"D\xff\xff\xff\xff", props)
            reason = await victim.server_rx.wait_closed()
            assert reason.clean is False and "broke the protocol" in reason.text
            told = await victim.client_rx.wait_closed()
            assert "protocol violation" in told.text
        assert "malformed hello" in logged.text() and "cutting off" in logged.text()
        harness.send(bystander.client, b"still fine")
        assert await bystander.server_rx.wait_frames(1) == [b"still fine"]
        assert len(server.accepted) == 2
    finally:
        await conn.close()


class _Logged:
    """Collects twisted.logger events while in use."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> _Logged:
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def text(self) -> str:
        return "\n".join(formatEvent(e) or "" for e in self.events)


# -- real processes: a broker restart, a master killed ---------------------------------------------


@pytest.fixture
def cluster_dir(tmp_path: Path, amqp_prefix: str) -> Path:
    return tmp_path


def test_broker_restart_mid_stream_delivers_every_line_once(
    cluster_dir: Path, amqp_prefix: str
) -> None:
    """``rabbitmqctl stop_app`` / ``start_app`` while a command streams: the master reconnects,
    the worker re-attaches and resumes; nothing is lost or duplicated."""
    cluster = Cluster(cluster_dir, "amqp", broker_url(amqp_prefix), grace=120)
    try:
        cluster.start_worker("w1")
        code = (
            "import sys, time\nfor i in range(3000):\n    print(f'line {i}', flush=True)\n"
            "    if i % 20 == 0: time.sleep(0.02)\nsys.exit(3)"
        )
        with cluster.start_run("--worker", "w1", *py(code)) as run:
            assert run.stdout is not None and run.stderr is not None
            lines = [run.stdout.readline() for _ in range(300)]
            try:
                rabbitmqctl("stop_app")
            finally:
                rabbitmqctl("start_app")
                wait_for_broker()
            rest = run.stdout.read()  # not communicate(): readline() buffered some already
            err = run.stderr.read()
            run.wait(timeout=60)
        got = "".join(lines).splitlines() + rest.splitlines()
        assert got == [f"line {i}" for i in range(3000)], err
        assert run.returncode == 3
        log = (cluster_dir / "master.log").read_text()
        assert "lost the broker" in log and "back on the broker" in log
    finally:
        cluster.close()


def test_two_masters_one_killed_its_workers_reattach_to_the_other(
    cluster_dir: Path, amqp_prefix: str
) -> None:
    cluster = Cluster(cluster_dir, "amqp", broker_url(amqp_prefix), grace=3)
    try:
        cluster.add_master()
        names = ["w1", "w2", "w3", "w4"]
        for name in names:
            cluster.start_worker(name)

        def attached(control: str) -> set[str]:
            workers = cluster.status(control)["workers"]
            return {w["name"] for w in workers if w["state"] == "attached"}

        first, second = (attached(c) for c in cluster.controls)
        assert first | second == set(names) and not first & second
        assert first and second, f"the broker spread the workers: {first} / {second}"
        killed_at = time.monotonic()
        cluster.masters[0].stop(signal.SIGKILL)
        deadline = killed_at + 3 * 1.0 + 10  # heartbeat timeout (3 x 1 s) plus backoff
        while attached(cluster.controls[1]) != set(names):
            assert time.monotonic() < deadline, f"only {attached(cluster.controls[1])} moved"
            time.sleep(0.2)  # polling another process's state: nothing to await here
        proc = cluster.run("--all", *py("print('here')"), control=cluster.controls[1])
        assert proc.returncode == 0, proc.stderr
        assert sorted(proc.stdout.splitlines()) == [f"{n}: here" for n in names]
    finally:
        cluster.close()


# -- amqps: TLS to the broker, through a TLS-terminating proxy in front of it -------------------


def _write_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for ``localhost`` and a client certificate, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(name: str, issuer: Any, signer: Any, ca: bool, dns: str | None = None) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if dns is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False
            )
        cert = builder.sign(signer or key, hashes.SHA256())
        return key, cert

    ca_key, ca_cert = issue("wiremsg test CA", None, None, ca=True)
    paths: dict[str, Path] = {}
    for name, dns in (("server", "localhost"), ("client", None)):
        key, cert = issue(name, ca_cert.subject, ca_key, ca=False, dns=dns)
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{name}_key"] = directory / f"{name}.key"
        paths[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    paths["ca"] = directory / "ca.pem"
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return paths


@pytest.fixture
def tls_broker(reactor: Any, tmp_path: Path, amqp_broker: str) -> Iterator[tuple[int, dict]]:
    """A TLS port (client certificates required) forwarding to the broker's plain port."""
    from twisted.internet import ssl
    from twisted.protocols.portforward import ProxyFactory

    pki = _write_pki(tmp_path)
    server = ssl.PrivateCertificate.loadPEM(
        pki["server"].read_bytes() + pki["server_key"].read_bytes()
    )
    ca = ssl.Certificate.loadPEM(pki["ca"].read_bytes())
    options = server.options(ca)  # verifies, and requires, a client certificate from the CA
    port = reactor.listenSSL(0, ProxyFactory("127.0.0.1", 5672), options, interface="127.0.0.1")
    yield port.getHost().port, pki
    run_in_reactor(reactor, lambda: _stop(port))


async def _stop(port: Any) -> None:
    await port.stopListening()


@async_test
async def test_amqps_with_a_client_certificate_through_tls(
    reactor: Any, tls_broker: tuple[int, dict[str, Path]], amqp_prefix: str
) -> None:
    port, pki = tls_broker
    base = f"amqps://guest:guest@127.0.0.1:{port}/?prefix={amqp_prefix}&server_name=localhost"
    good = f"{base}&ca={pki['ca']}&cert={pki['client']}&key={pki['client_key']}"
    harness = LinkHarness(AMQPBackend(reactor), reactor, timeout=10.0)
    try:
        p = await harness.pair(address=good)
        harness.send(p.client, b"over TLS")
        harness.send(p.server, b"and back")
        assert await p.server_rx.wait_frames(1) == [b"over TLS"]
        assert await p.client_rx.wait_frames(1) == [b"and back"]
        for bad, words in (
            (f"{base}&ca={pki['ca']}", "TLS handshake failed"),  # no client certificate
            (f"{base}&ca={pki['server']}&cert={pki['client']}&key={pki['client_key']}", "TLS"),
        ):
            with pytest.raises(ConnectFailed, match=words):
                await harness.bounded(harness.backend.connect(bad, timeout=5), "a TLS refusal")
    finally:
        await harness.aclose()


# -- without a broker: skip, or fail under WIREMSG_REQUIRE_BROKER=1 ------------------------------


@pytest.mark.parametrize("required", [False, True])
def test_without_a_broker_the_tests_skip_or_fail(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, required: bool
) -> None:
    import tests.broker

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        monkeypatch.setattr(tests.broker, "PORT", free.getsockname()[1])  # nothing listens
    if required:
        monkeypatch.setenv(tests.broker.REQUIRE, "1")
    else:
        monkeypatch.delenv(tests.broker.REQUIRE, raising=False)
    pytester.makeconftest("from tests.broker import amqp_broker  # noqa: F401\n")
    pytester.makepyfile("def test_needs_a_broker(amqp_broker):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:twisted", "-rsE")
    if required:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*RabbitMQ is required (WIREMSG_REQUIRE_BROKER=1)*"])
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*no RabbitMQ for the AMQP tests: nothing answers*"])


# -- the consumer: what the deliveries at hand provoked leaves before they are acknowledged ----


class _Queue:
    """pika's ClosableDeferredQueue as the consumer sees it: ready items, then a wait."""

    def __init__(self, items: list[Any]) -> None:
        self.items, self.closed = list(items), None
        self.waiting: Deferred[Any] = Deferred()

    def get(self) -> Deferred[Any]:
        if self.items:
            return _fired(self.items.pop(0))
        self.waiting = Deferred()
        return self.waiting


def _fired(value: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.callback(value)
    return d


def _delivery(tag: int, body: bytes) -> Any:
    from types import SimpleNamespace as NS

    return NS(
        properties=NS(correlation_id="l" * 32, reply_to="q"),
        method=NS(redelivered=False, delivery_tag=tag),
        body=body,
    )


def test_the_consumer_publishes_what_deliveries_provoked_before_acknowledging_them() -> None:
    from types import SimpleNamespace as NS

    from wiremsg.backends._amqp._broker import _Consumer

    log: list[Any] = []
    channel = NS(is_open=True, basic_ack=lambda tag, multiple: log.append(("ack", tag)))
    queue = _Queue([_delivery(1, b"a"), _delivery(2, b"b")])
    consumer = _Consumer(
        MemoryReactorClock(),
        channel,
        queue,
        1,  # acknowledge as soon as the deliveries at hand are handled
        lambda link, reply_to, body, redelivered: log.append(("message", body)),
        lambda why: log.append(("end", why)),
        lambda: log.append("drained"),
    )
    consumer.pull()
    assert log == [("message", b"a"), ("message", b"b"), "drained", ("ack", 2)]
    queue.waiting.callback(_delivery(3, b"c"))
    assert log[4:] == [("message", b"c"), "drained", ("ack", 3)]
