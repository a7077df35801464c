"""The control endpoint over real HTTP on loopback, with workers whose commands are scripted.

The workers here answer ``start_command`` themselves (no processes): a command
``["say", TEXT, RC]`` writes TEXT to stdout and ``err`` to stderr and exits with RC;
``["hang"]`` runs until interrupted (then exits -15).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from wiremsg import Master, Message, Worker
from wiremsg.commands import CommandTracker
from wiremsg.control import listen_control

TIMEOUT = 10


class ScriptedWorker:
    def __init__(self, reactor: Any, name: str, address: str, tags: list[str]) -> None:
        self.reactor = reactor
        self.worker = Worker(name, "s-" + name, [address], tags=tags, reactor=reactor)
        self.hanging: dict[str, Any] = {}
        self.interrupts: list[str] = []
        self.worker.on("start_command", self.start)
        self.worker.on("interrupt", self.interrupt)

    def start(self, msg: Message) -> dict[str, Any]:
        body: Any = msg.body
        cid, argv = body["command_id"], body["args"]["command"]
        send = self.worker.send
        send("update", {"command_id": cid, "header": f"running {argv}\n"})
        if argv[0] == "say":
            send("update", {"command_id": cid, "stdout": argv[1]})
            send("update", {"command_id": cid, "stderr": "err\n"})
            send("update", {"command_id": cid, "rc": int(argv[2])})
            send("complete", {"command_id": cid})
        elif argv[0] == "rc-by-name":  # e.g. ["rc-by-name", "w1=0", "w2=4"]
            rcs = dict(a.split("=") for a in argv[1:])
            send("update", {"command_id": cid, "rc": int(rcs[self.worker.name])})
            send("complete", {"command_id": cid})
        elif argv[0] == "hang":
            self.hanging[cid] = True
        elif argv[0] == "die":
            self.reactor.callLater(0, self.die)
        return {}

    def interrupt(self, msg: Message) -> dict[str, Any]:
        body: Any = msg.body
        cid = body["command_id"]
        self.interrupts.append(body["why"])
        if self.hanging.pop(cid, None):
            self.worker.send("update", {"command_id": cid, "rc": -15})
            self.worker.send("complete", {"command_id": cid})
        return {}

    def die(self) -> None:
        link = self.worker._driver.link
        assert link is not None
        self.worker._running = False  # never comes back
        link.sever("killed")  # type: ignore[attr-defined]


class Setup:
    def __init__(
        self, reactor: Any, master: Master, url: str, workers: dict[str, ScriptedWorker], port: Any
    ) -> None:
        self.reactor, self.master, self.url, self.workers, self.port = (
            reactor,
            master,
            url,
            workers,
            port,
        )
        self.agent = Agent(reactor)

    async def get(self, path: str) -> tuple[int, bytes]:
        response = await self.agent.request(b"GET", (self.url + path).encode()).addTimeout(
            TIMEOUT, self.reactor
        )
        return response.code, await readBody(response).addTimeout(TIMEOUT, self.reactor)

    async def post(self, path: str, body: Any) -> tuple[int, bytes]:
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
        response = await self.agent.request(
            b"POST",
            (self.url + path).encode(),
            Headers({b"content-type": [b"application/json"]}),
            producer,
        ).addTimeout(TIMEOUT, self.reactor)
        return response.code, await readBody(response).addTimeout(TIMEOUT, self.reactor)

    async def run(self, body: Any) -> list[dict[str, Any]]:
        code, data = await self.post("/run", body)
        assert code == 200, data
        return [json.loads(line) for line in data.splitlines()]


@pytest_twisted.async_yield_fixture()
async def setup(reactor: Any) -> AsyncIterator[Setup]:
    address = f"memory://control-{uuid.uuid4().hex}"
    master = Master({"w1": "s-w1", "w2": "s-w2"}, reactor=reactor, grace=0.5)
    await master.listen(address)
    tracker = CommandTracker(master)
    port = await listen_control(master, reactor, "127.0.0.1", 0, tracker)
    workers = {
        "w1": ScriptedWorker(reactor, "w1", address, ["linux"]),
        "w2": ScriptedWorker(reactor, "w2", address, ["linux", "arm"]),
    }
    for w in workers.values():
        await w.worker.start().addTimeout(TIMEOUT, reactor)
    s = Setup(reactor, master, f"http://127.0.0.1:{port.getHost().port}", workers, port)
    yield s
    for w in workers.values():
        await w.worker.stop(drain_timeout=0)
    await master.stop()
    await port.stopListening()
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.05, lambda: None)  # let the HTTP client's sockets close
    s.agent._pool.closeCachedConnections()


def events(stream: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in stream if e["event"] == kind]


@pytest_twisted.ensureDeferred
async def test_workers_and_status(setup: Setup) -> None:
    code, data = await setup.get("/workers")
    workers = json.loads(data)
    assert code == 200 and [w["name"] for w in workers] == ["w1", "w2"]
    assert {k: workers[1][k] for k in ("state", "backend", "tags")} == {
        "state": "attached",
        "backend": "memory",
        "tags": ["linux", "arm"],
    }
    for key in ("address", "attached_since", "messages_sent", "bytes_received", "rtt"):
        assert key in workers[0]
    code, data = await setup.get("/status")
    status = json.loads(data)
    assert code == 200 and len(status["workers"]) == 2 and status["uptime"] >= 0


@pytest_twisted.ensureDeferred
async def test_metrics_are_prometheus_text(setup: Setup) -> None:
    code, data = await setup.get("/metrics")
    text = data.decode()
    assert code == 200
    assert 'wiremsg_workers{state="attached"} 2.0' in text
    assert 'wiremsg_messages_received_total{worker="w1"}' in text


@pytest_twisted.ensureDeferred
async def test_run_on_one_worker_streams_and_exits_with_its_code(setup: Setup) -> None:
    stream = await setup.run({"command": ["say", "hello\n", "3"], "worker": "w1"})
    assert stream[0]["event"] == "run" and stream[0]["workers"] == ["w1"]
    assert events(stream, "stdout") == [{"event": "stdout", "worker": "w1", "data": "hello\n"}]
    assert events(stream, "stderr") == [{"event": "stderr", "worker": "w1", "data": "err\n"}]
    assert events(stream, "exit") == [{"event": "exit", "worker": "w1", "rc": 3}]
    assert stream[-1] == {"event": "done", "rc": 3}


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ({"tag": "linux"}, ["w1", "w2"]),
        ({"tag": "arm"}, ["w2"]),
        ({"all": True}, ["w1", "w2"]),
    ],
)
@pytest_twisted.ensureDeferred
async def test_run_by_tag_or_all(setup: Setup, selector: dict[str, Any], names: list[str]) -> None:
    stream = await setup.run({"command": ["say", "x\n", "0"], **selector})
    assert stream[0]["workers"] == names
    assert sorted(e["worker"] for e in events(stream, "exit")) == names
    assert stream[-1] == {"event": "done", "rc": 0}


@pytest.mark.parametrize(
    ("rcs", "overall"),
    [
        (("w1=0", "w2=0"), 0),
        (("w1=0", "w2=4"), 4),
        (("w1=7", "w2=4"), 7),
        (("w1=-15", "w2=0"), -15),
    ],
)
@pytest_twisted.ensureDeferred
async def test_overall_rc_is_the_first_failing_worker_by_name(
    setup: Setup, rcs: tuple[str, str], overall: int
) -> None:
    stream = await setup.run({"command": ["rc-by-name", *rcs], "all": True})
    assert stream[-1] == {"event": "done", "rc": overall}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"command": ["x"], "worker": "nobody"}, 404, "unknown worker 'nobody'"),
        ({"command": ["x"], "tag": "sparc"}, 404, "no attached worker has tag 'sparc'"),
        ({"command": ["x"]}, 400, "say which workers"),
        ({"command": [], "all": True}, 400, "command must be"),
        ({"command": ["x"], "all": True, "timeout": -1}, 400, "timeout must be"),
        ([1, 2], 400, "must be a JSON object"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_run_requests_get_a_clear_error(
    setup: Setup, body: Any, status: int, message: str
) -> None:
    code, data = await setup.post("/run", body)
    assert code == status and message in json.loads(data)["error"]


@pytest_twisted.ensureDeferred
async def test_interrupt_a_run(setup: Setup) -> None:
    running = Deferred.fromCoroutine(setup.run({"command": ["hang"], "worker": "w2"}))
    from twisted.internet.task import deferLater

    while not setup.workers["w2"].hanging:
        await deferLater(setup.reactor, 0.01, lambda: None)
    control = setup.port.factory.resource
    (run,) = control.runs.values()
    code, _ = await setup.post("/interrupt", {"run": run.id})
    assert code == 200
    stream = await running.addTimeout(TIMEOUT, setup.reactor)
    assert stream[-1] == {"event": "done", "rc": -15}
    assert setup.workers["w2"].interrupts == ["interrupted by the user"]
    code, _ = await setup.post("/interrupt", {"run": "nope"})
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_a_worker_lost_mid_command_fails_the_run(setup: Setup) -> None:
    stream = await setup.run({"command": ["die"], "worker": "w1"})
    (error,) = events(stream, "error")
    assert error["worker"] == "w1" and "lost" in error["message"]
    assert stream[-1] == {"event": "done", "rc": 255}


@pytest_twisted.ensureDeferred
async def test_unknown_paths(setup: Setup) -> None:
    code, data = await setup.get("/nope")
    assert code == 404 and "no such resource" in json.loads(data)["error"]
    code, data = await setup.post("/nope", {})
    assert code == 404
