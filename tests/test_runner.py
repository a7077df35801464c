"""CommandRunner with real processes on the real reactor: output, limits, kills, back-pressure.

Every wait is bounded (``bounded``); the only deliberate pauses are observation windows in
which something must *not* happen (a paused command must not produce updates).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from wiremsg.errors import RemoteError
from wiremsg.message import Message, validate_body
from wiremsg.runner import FLUSH_DELAY, MAX_CHUNK, CommandError, CommandRunner
from wiremsg.testing.harness import bounded, run_in_reactor
from wiremsg.vocabulary import (
    BAD_BODY,
    COMMANDS,
    COMPLETE,
    DUPLICATE_COMMAND,
    INTERRUPT,
    SPAWN_FAILED,
    START_COMMAND,
    TIMEOUT,
    TIMEOUT_WITHOUT_OUTPUT,
    UNKNOWN_COMMAND,
    UPDATE,
    WORKER_INFO,
    ShellArgs,
)

WAIT = 10.0
PY = sys.executable


class FakeFlow:
    """A flow object: ``writable`` and ``when_writable()``, switched by the test."""

    def __init__(self) -> None:
        self.writable = True
        self._waiters: list[Deferred[None]] = []

    def when_writable(self) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        if self.writable:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def set(self, writable: bool) -> None:
        self.writable = writable
        if writable:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


class Recorder:
    """A fake ``send``: records (time, kind, body) and lets a test await a condition."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.messages: list[tuple[float, str, dict[str, Any]]] = []
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self.on_send: Callable[[], None] = lambda: None

    def __call__(self, kind: str, body: Any) -> None:
        validate_body(body)  # what a Worker's send would check
        Message(kind, body)
        self.messages.append((self.reactor.seconds(), kind, body))
        self.on_send()
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate():
                self._waiters.remove(waiter)
                d.callback(None)

    def until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> Any:
        """A bounded Deferred that fires once ``predicate()`` holds."""
        d: Deferred[None] = Deferred()
        if predicate():
            d.callback(None)
        else:
            waiter = (predicate, d)
            self._waiters.append(waiter)

            def forget(result: Any) -> Any:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                return result

            d.addBoth(forget)
        return bounded(d, self.reactor, timeout, what)

    def for_command(self, cid: str) -> list[tuple[float, str, dict[str, Any]]]:
        return [m for m in self.messages if m[2].get("command_id") == cid]

    def updates(self, cid: str, key: str) -> list[Any]:
        return [b[key] for _, k, b in self.for_command(cid) if k == UPDATE and key in b]

    def text(self, cid: str, key: str = "stdout") -> str:
        return "".join(self.updates(cid, key))

    def complete(self, cid: str) -> dict[str, Any] | None:
        for _, kind, body in self.for_command(cid):
            if kind == COMPLETE:
                return body
        return None

    async def completed(self, cid: str, timeout: float = WAIT) -> dict[str, Any]:
        await self.until(lambda: self.complete(cid) is not None, f"complete of {cid}", timeout)
        body = self.complete(cid)
        assert body is not None
        return body


@pytest.fixture
def flow() -> FakeFlow:
    return FakeFlow()


@pytest.fixture
def sent(reactor: Any) -> Recorder:
    return Recorder(reactor)


@pytest.fixture
def basedir(tmp_path: Path) -> Path:
    return tmp_path / "base"


@pytest.fixture
def runner(reactor: Any, basedir: Path, sent: Recorder, flow: FakeFlow) -> Iterator[CommandRunner]:
    r = CommandRunner(reactor, basedir, sent, flow, kill_grace=1.0)
    yield r
    if r.running:  # a failed test: kill what is left so the reactor stays clean
        flow.set(True)

        async def stop() -> None:
            await bounded(r.stop_all("test teardown"), reactor, WAIT, "stop_all in teardown")

        run_in_reactor(reactor, stop)
        pytest.fail(f"the test left commands running: {sorted(r.running)}")


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


async def until_dead(reactor: Any, pid: int, timeout: float = 5.0) -> None:
    # A grandchild is not ours to wait for: poll its state, bounded.
    deadline = reactor.seconds() + timeout
    while alive(pid):
        assert reactor.seconds() < deadline, f"process {pid} still alive after {timeout}s"
        await deferLater(reactor, 0.01, lambda: None)


async def pause(reactor: Any, seconds: float) -> None:
    """An observation window: something must not happen during it."""
    await deferLater(reactor, seconds, lambda: None)


async def start(runner: CommandRunner, cid: str, args: Any) -> None:
    await bounded(runner.start(cid, args), runner.reactor, WAIT, f"start of {cid}")


async def start_fails(runner: CommandRunner, cid: str, args: Any) -> CommandError:
    try:
        await bounded(runner.start(cid, args), runner.reactor, WAIT, f"start of {cid}")
    except CommandError as exc:
        return exc
    raise AssertionError(f"start of {cid} did not fail")


# -- output ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_many_lines_arrive_in_order_then_rc_elapsed_complete(
    runner: CommandRunner, sent: Recorder
) -> None:
    await start(runner, "c1", {"command": py("for i in range(3000): print(i)")})
    assert "c1" in runner.running
    done = await sent.completed("c1")
    assert done == {"command_id": "c1"}
    assert sent.text("c1") == "".join(f"{i}\n" for i in range(3000))
    msgs = sent.for_command("c1")
    assert "header" in msgs[0][2] and PY in msgs[0][2]["header"]
    assert [list(b)[1:] for _, _, b in msgs[-3:]] == [["rc"], ["elapsed"], []]
    assert msgs[-3][2]["rc"] == 0 and msgs[-2][2]["elapsed"] >= 0
    assert msgs[-1][1] == COMPLETE
    assert runner.running == frozenset()


@pytest_twisted.ensureDeferred
async def test_stderr_is_separate_and_exit_code_is_reported(
    runner: CommandRunner, sent: Recorder
) -> None:
    await start(runner, "c", {"command": "echo out; echo err >&2; echo more; exit 3"})
    done = await sent.completed("c")
    assert done == {"command_id": "c"}  # a non-zero exit is not a failure to run
    assert sent.text("c", "stdout") == "out\nmore\n"
    assert sent.text("c", "stderr") == "err\n"
    assert sent.updates("c", "rc") == [3]


@pytest_twisted.ensureDeferred
async def test_argv_is_not_expanded_but_a_string_goes_through_the_shell(
    runner: CommandRunner, sent: Recorder
) -> None:
    env = {"WIREMSG_X": "expanded"}
    await start(runner, "argv", {"command": ["printf", "%s|", "a b", "$WIREMSG_X"], "env": env})
    await start(runner, "sh", {"command": "printf '%s|' 'a b' $WIREMSG_X", "env": env})
    await sent.completed("argv")
    await sent.completed("sh")
    assert sent.text("argv") == "a b|$WIREMSG_X|"
    assert sent.text("sh") == "a b|expanded|"
    assert sent.updates("argv", "header")[0].startswith("printf '%s|' 'a b' '$WIREMSG_X'\n")


@pytest_twisted.ensureDeferred
async def test_workdir_is_created_under_basedir(
    runner: CommandRunner, sent: Recorder, basedir: Path
) -> None:
    await start(runner, "c", {"command": ["pwd", "-P"], "workdir": "build/sub"})
    await sent.completed("c")
    target = basedir / "build" / "sub"
    assert target.is_dir()
    assert sent.text("c") == f"{target.resolve()}\n"
    assert f" in dir {target}\n" in sent.updates("c", "header")[0]
    await start(runner, "d", {"command": ["pwd", "-P"]})  # default: the basedir itself
    await sent.completed("d")
    assert sent.text("d") == f"{basedir.resolve()}\n"


@pytest_twisted.ensureDeferred
async def test_workdir_may_not_leave_basedir(
    runner: CommandRunner, sent: Recorder, basedir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    basedir.mkdir()
    (basedir / "link").symlink_to(outside)
    for workdir in ("../outside", "/tmp", "a/../../outside", "link", "link/inner"):
        exc = await start_fails(runner, "c", {"command": ["true"], "workdir": workdir})
        assert exc.code == BAD_BODY and "workdir" in exc.reason, workdir
    assert not (outside / "inner").exists()
    assert sent.messages == [] and runner.running == frozenset()


@pytest_twisted.ensureDeferred
async def test_env_sets_and_unsets_variables_on_top_of_the_workers(
    runner: CommandRunner, sent: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WIREMSG_KEEP", "kept")
    monkeypatch.setenv("WIREMSG_DROP", "dropped")
    env = {"WIREMSG_NEW": "new value", "WIREMSG_DROP": None}
    script = 'echo "$WIREMSG_KEEP/$WIREMSG_NEW/${WIREMSG_DROP-unset}"; command -v sh'
    await start(runner, "c", {"command": script, "env": env})
    await sent.completed("c")
    assert sent.text("c").splitlines()[0] == "kept/new value/unset"
    assert sent.text("c").splitlines()[1].endswith("/sh")  # PATH inherited


@pytest_twisted.ensureDeferred
async def test_a_megabyte_of_output_arrives_intact_in_bounded_chunks(
    runner: CommandRunner, sent: Recorder
) -> None:
    # Lines of random lengths, one much longer than a chunk, some non-ASCII text.
    code = (
        "import random, sys\n"
        "r = random.Random(7)\n"
        "out = []\n"
        "n = 0\n"
        "while n < 1 << 20:\n"
        "    line = ''.join(r.choice('abcdé€ ') for _ in range(r.randrange(0, 3000)))\n"
        "    if n == 0: line = 'x' * 200000\n"
        "    out.append(line + '\\n'); n += len(line) + 1\n"
        "sys.stdout.write(''.join(out))\n"
    )
    await start(runner, "big", {"command": py(code)})
    await sent.completed("big")
    expected = _expected_output(code)
    chunks = sent.updates("big", "stdout")
    assert "".join(chunks) == expected
    assert max(len(c.encode()) for c in chunks) <= MAX_CHUNK
    assert len(chunks) > 16


def _expected_output(code: str) -> str:
    import io

    buffer = io.StringIO()
    fake_sys = type("S", (), {"stdout": buffer})
    exec(code.replace("import random, sys", "import random"), {"sys": fake_sys})
    return buffer.getvalue()


@pytest_twisted.ensureDeferred
async def test_a_partial_line_is_flushed_within_the_flush_delay(
    runner: CommandRunner, sent: Recorder, reactor: Any
) -> None:
    await start(runner, "p", {"command": "printf abc; sleep 5"})
    started = reactor.seconds()
    await sent.until(lambda: sent.text("p") == "abc", "the partial line")
    waited = reactor.seconds() - started
    assert waited < 0.5, waited
    assert "p" in runner.running  # still sleeping: the text was not held for the end
    runner.interrupt("p", "done looking")
    await sent.completed("p")


@pytest_twisted.ensureDeferred
async def test_whole_lines_go_at_once_and_the_tail_after_the_delay(
    reactor: Any, basedir: Path, sent: Recorder, flow: FakeFlow
) -> None:
    slow = CommandRunner(reactor, basedir, sent, flow, flush_delay=1.0)
    await start(slow, "t", {"command": "printf 'one\\ntw'; sleep 5"})
    await sent.until(lambda: sent.text("t") == "one\n", "the whole line")
    first = sent.messages[-1][0]
    await sent.until(lambda: sent.text("t") == "one\ntw", "the tail")
    assert sent.messages[-1][0] - first >= 0.9  # the tail waited for its flush delay
    slow.interrupt("t")
    await sent.completed("t")


@pytest_twisted.ensureDeferred
async def test_undecodable_bytes_arrive_as_escapes(runner: CommandRunner, sent: Recorder) -> None:
    code = (
        "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end \\xc3\\n'); sys.stderr.write('e')"
    )
    await start(runner, "u", {"command": py(code)})
    await sent.completed("u")
    assert sent.text("u") == "ok \\xff\\xfe end \\xc3\n"
    assert sent.text("u", "stderr") == "e"


@pytest_twisted.ensureDeferred
async def test_a_character_split_across_reads_is_not_split(
    runner: CommandRunner, sent: Recorder
) -> None:
    # Two writes 0.2 s apart land in two reads; the first ends inside a 2-byte character
    # (and the partial-line flush fires in between).
    code = (
        "import os, time\n"
        "os.write(1, b'caf\\xc3')\n"
        "time.sleep(0.2)\n"
        "os.write(1, b'\\xa9 \\xe2\\x82')\n"
        "time.sleep(0.2)\n"
        "os.write(1, b'\\xac\\n')\n"
    )
    await start(runner, "s", {"command": py(code)})
    await sent.completed("s")
    assert sent.text("s") == "café €\n"
    assert all("\\x" not in chunk for chunk in sent.updates("s", "stdout"))
    assert len(sent.updates("s", "stdout")) >= 2  # the flush sent the first part alone


@pytest_twisted.ensureDeferred
async def test_long_multibyte_lines_are_split_on_character_boundaries(
    reactor: Any, basedir: Path, sent: Recorder, flow: FakeFlow
) -> None:
    small = CommandRunner(reactor, basedir, sent, flow, max_chunk=10)
    text = "é€😀" * 50 + "\nshort\n" + "x" * 25  # 9-byte groups: cuts fall inside chars
    await start(small, "m", {"command": py(f"import sys; sys.stdout.write({text!r})")})
    await sent.completed("m")
    chunks = sent.updates("m", "stdout")
    assert "".join(chunks) == text
    assert all(0 < len(c.encode()) <= 10 for c in chunks)
    assert any(c.endswith("short\n") for c in chunks)  # ends at a newline in reach


@pytest_twisted.ensureDeferred
async def test_stdin_gets_initial_stdin_then_eof(runner: CommandRunner, sent: Recorder) -> None:
    await start(runner, "in", {"command": ["cat"], "initial_stdin": "fed\nlines\n"})
    await start(runner, "empty", {"command": ["cat"]})  # stdin closed at once: cat ends
    await sent.completed("in")
    await sent.completed("empty")
    assert sent.text("in") == "fed\nlines\n"
    assert sent.text("empty") == "" and sent.updates("empty", "rc") == [0]


@pytest_twisted.ensureDeferred
async def test_unwanted_streams_are_read_and_dropped(runner: CommandRunner, sent: Recorder) -> None:
    args = {"command": "echo out; echo err >&2", "want_stdout": False}
    await start(runner, "w", args)
    await sent.completed("w")
    assert sent.updates("w", "stdout") == [] and sent.text("w", "stderr") == "err\n"


# -- starting -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_spawn_failures_are_clear_and_send_nothing(
    runner: CommandRunner, sent: Recorder, basedir: Path
) -> None:
    exc = await start_fails(runner, "c", {"command": ["/nonexistent/program", "x"]})
    assert exc.code == SPAWN_FAILED and "/nonexistent/program" in exc.reason
    assert "No such file" in exc.reason
    basedir.mkdir(exist_ok=True)
    (basedir / "script").write_text("#!/bin/sh\necho hi\n")  # not executable
    exc = await start_fails(runner, "c", {"command": ["./script"]})
    assert exc.code == SPAWN_FAILED and "Permission denied" in exc.reason
    exc = await start_fails(runner, "c", {"command": ["no-such-program-wiremsg"]})
    assert exc.code == SPAWN_FAILED
    assert sent.messages == [] and runner.running == frozenset()


@pytest_twisted.ensureDeferred
async def test_bad_args_are_refused_naming_the_field(runner: CommandRunner) -> None:
    cases: list[tuple[Any, str]] = [
        ({}, "command"),
        ({"command": []}, "command"),
        ({"command": ""}, "command"),
        ({"command": ["ls", 3]}, "command[1]"),
        ({"command": "ls", "timeout": -1}, "timeout"),
        ({"command": "ls", "env": {"A": 1}}, "env.A"),
        ({"command": "ls", "workdir": 7}, "workdir"),
    ]
    for args, field in cases:
        exc = await start_fails(runner, "c", args)
        assert exc.code == BAD_BODY and f"start_command.args.{field}" in exc.reason, args
    exc = await start_fails(runner, "", {"command": "true"})
    assert exc.code == BAD_BODY


@pytest_twisted.ensureDeferred
async def test_a_duplicate_command_id_is_refused_while_it_runs(
    runner: CommandRunner, sent: Recorder
) -> None:
    await start(runner, "dup", ShellArgs(["sleep", "30"]))
    exc = await start_fails(runner, "dup", {"command": ["true"]})
    assert exc.code == DUPLICATE_COMMAND
    assert runner.interrupt("dup", "test over")
    await sent.completed("dup")
    await start(runner, "dup", {"command": ["true"]})  # free again once complete
    await sent.until(lambda: len([m for m in sent.messages if m[1] == COMPLETE]) == 2, "2nd")


# -- killing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("holds_pipes", [True, False], ids=["child-holds-pipes", "detached"])
@pytest_twisted.ensureDeferred
async def test_interrupt_kills_the_whole_process_group(
    runner: CommandRunner, sent: Recorder, reactor: Any, holds_pipes: bool
) -> None:
    redirect = "" if holds_pipes else " >/dev/null 2>&1"
    await start(runner, "i", {"command": f"sleep 30{redirect} & echo $!; wait"})
    await sent.until(lambda: sent.text("i").endswith("\n"), "the child's pid")
    child = int(sent.text("i"))
    assert alive(child)
    assert runner.interrupt("i", "user pressed stop")
    assert not runner.interrupt("nope", "no such command")
    done = await sent.completed("i")
    assert "failure" not in done  # an interrupt is not a failure
    headers = "".join(sent.updates("i", "header"))
    assert "command interrupted: user pressed stop" in headers
    assert "process killed by signal 15" in headers
    assert sent.updates("i", "rc") == [-15]
    await until_dead(reactor, child)
    assert not runner.interrupt("i", "again")  # complete: nothing to interrupt


@pytest_twisted.ensureDeferred
async def test_sigkill_follows_when_sigterm_is_ignored(
    runner: CommandRunner, sent: Recorder
) -> None:
    args = {"command": "trap '' TERM; echo ready; sleep 30", "sigterm_time": 0.2}
    await start(runner, "k", args)
    await sent.until(lambda: sent.text("k") == "ready\n", "ready")
    runner.interrupt("k")
    await sent.completed("k")
    assert sent.updates("k", "rc") == [-9]
    assert sent.updates("k", "elapsed")[0] < 5


@pytest_twisted.ensureDeferred
async def test_timeout_without_output_kills_and_fails(
    runner: CommandRunner, sent: Recorder
) -> None:
    await start(runner, "t", {"command": "echo hi; sleep 30", "timeout": 0.3})
    done = await sent.completed("t")
    assert done["failure"]["code"] == TIMEOUT_WITHOUT_OUTPUT
    assert sent.updates("t", "failure_reason") == [TIMEOUT_WITHOUT_OUTPUT]
    assert "0.3 seconds without output" in "".join(sent.updates("t", "header"))
    assert sent.text("t") == "hi\n" and sent.updates("t", "rc") == [-15]
    assert 0.3 <= sent.updates("t", "elapsed")[0] < 5


@pytest_twisted.ensureDeferred
async def test_output_keeps_the_no_output_timeout_away_but_max_time_kills(
    runner: CommandRunner, sent: Recorder
) -> None:
    script = "while true; do echo tick; sleep 0.05; done"
    await start(runner, "m", {"command": script, "timeout": 0.3, "max_time": 0.8})
    done = await sent.completed("m")
    assert done["failure"]["code"] == TIMEOUT
    assert sent.updates("m", "failure_reason") == [TIMEOUT]
    assert sent.text("m").count("tick") >= 5
    assert 0.8 <= sent.updates("m", "elapsed")[0] < 5


@pytest_twisted.ensureDeferred
async def test_stop_all_kills_everything(runner: CommandRunner, sent: Recorder) -> None:
    for cid in ("a", "b", "c"):
        await start(runner, cid, {"command": "sleep 30"})
    assert runner.running == {"a", "b", "c"}
    await bounded(runner.stop_all("shutting down"), runner.reactor, WAIT, "stop_all")
    assert runner.running == frozenset()
    for cid in ("a", "b", "c"):
        assert sent.complete(cid) == {"command_id": cid}
        assert "shutting down" in "".join(sent.updates(cid, "header"))
    await bounded(runner.stop_all(), runner.reactor, WAIT, "stop_all when idle")


# -- back-pressure --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reading_pauses_while_the_flow_is_not_writable(
    runner: CommandRunner, sent: Recorder, flow: FakeFlow, reactor: Any
) -> None:
    total = 8 << 20  # far more than a pipe holds
    code = f"import sys\nfor _ in range({total >> 10}): sys.stdout.write('y' * 1023 + '\\n')\n"

    def window_fills() -> None:
        if len(sent.messages) >= 5:
            flow.set(False)

    sent.on_send = window_fills
    await start(runner, "bp", {"command": py(code), "timeout": 0.2})
    await sent.until(lambda: not flow.writable, "the window to fill")
    await pause(reactor, 0.5)  # enough to write 8 MiB many times over, and past the timeout
    paused_at = len(sent.messages)
    assert paused_at <= 8, paused_at  # what was read before the pause, then nothing
    assert "bp" in runner.running  # blocked on the full pipe, not finished, not timed out
    assert flow.waiting == 1
    sent.on_send = lambda: None
    flow.set(True)
    done = await sent.completed("bp")
    assert done == {"command_id": "bp"}
    assert len(sent.text("bp")) == total and sent.text("bp") == ("y" * 1023 + "\n") * (total >> 10)


@pytest_twisted.ensureDeferred
async def test_interrupt_while_paused_still_completes(
    runner: CommandRunner, sent: Recorder, flow: FakeFlow
) -> None:
    flow.set(False)
    await start(runner, "bp", {"command": py("while True: print('y' * 1000)")})
    assert flow.waiting == 1  # the header went out, then reading paused
    runner.interrupt("bp", "enough")
    done = await sent.completed("bp")
    assert done == {"command_id": "bp"} and flow.waiting == 0
    assert sent.updates("bp", "rc") == [-15]


# -- serving a worker's requests ------------------------------------------------------------------


class Registry:
    """Stands in for a Worker's ``on(kind, handler)``."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[..., Any]] = {}

    def on(self, kind: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        self.handlers[kind] = handler
        return handler

    async def call(self, kind: str, body: Any) -> Any:
        result = self.handlers[kind](Message(kind, body))
        if isinstance(result, Deferred):
            return await result
        return result


@pytest_twisted.ensureDeferred
async def test_serve_answers_start_command_interrupt_and_worker_info(
    runner: CommandRunner, sent: Recorder, basedir: Path
) -> None:
    registry = Registry()
    runner.serve(registry, info={"admin": "ci team"})
    assert set(registry.handlers) == {START_COMMAND, INTERRUPT, WORKER_INFO}
    info = await registry.call(WORKER_INFO, {})
    assert info["commands"] == dict.fromkeys(COMMANDS, "3.3") and info["basedir"] == str(basedir)
    assert info["admin"] == "ci team" and info["os"] == sys.platform and info["version"]
    body = {"command_id": "s", "command": "shell", "args": {"command": "sleep 30"}}
    assert await registry.call(START_COMMAND, body) == {}
    with pytest.raises(RemoteError) as caught:  # a file command may not reuse a running id
        await registry.call(START_COMMAND, {**body, "command": "mkdir", "args": {"dir": "d"}})
    assert caught.value.code == DUPLICATE_COMMAND
    reply = await registry.call(INTERRUPT, {"command_id": "s", "why": "stop"})
    assert reply == {"interrupted": True}
    await sent.completed("s")
    assert await registry.call(INTERRUPT, {"command_id": "s"}) == {"interrupted": False}
    for bad, code in (
        ({"command_id": "x", "command": "svn", "args": {}}, UNKNOWN_COMMAND),
        ({"command_id": "x", "command": "uploadFile", "args": {}}, BAD_BODY),
        ({"command_id": "m", "command": "mkdir", "args": {"dir": "d"}}, None),
        ({"command": "shell", "args": {"command": "true"}}, BAD_BODY),
        ({"command_id": "x", "command": "shell", "args": {"command": ["/nope"]}}, SPAWN_FAILED),
    ):
        if code is None:  # a file command starts at once and keeps its id until complete
            assert await registry.call(START_COMMAND, bad) == {}
            continue
        with pytest.raises(RemoteError) as caught:
            await registry.call(START_COMMAND, bad)
        assert caught.value.code == code
    await sent.completed("m")
    with pytest.raises(RemoteError) as caught:
        await registry.call(INTERRUPT, {"why": "no id"})
    assert caught.value.code == BAD_BODY


def test_flush_delay_is_short() -> None:
    assert FLUSH_DELAY <= 0.1 and MAX_CHUNK == 64 * 1024


@pytest_twisted.ensureDeferred
async def test_end_to_end_through_a_master_and_a_worker(reactor: Any, basedir: Path) -> None:
    import uuid

    from wiremsg import Master, Worker

    master = Master({"w1": "secret"}, reactor=reactor)
    address = f"memory://runner-{uuid.uuid4().hex}"
    await bounded(master.listen(address), reactor, WAIT, "listen")
    worker = Worker("w1", "secret", [address], reactor=reactor)
    runner = CommandRunner(reactor, basedir, worker.send, worker)
    runner.serve(worker)
    got: list[Message] = []
    done: Deferred[None] = Deferred()
    master.on(UPDATE, lambda peer, msg: got.append(msg))
    master.on(COMPLETE, lambda peer, msg: done.callback(None))
    try:
        await bounded(worker.start(), reactor, WAIT, "attach")
        peer = await bounded(master.wait_for_worker("w1", timeout=WAIT), reactor, WAIT, "worker")
        info = await bounded(peer.request(WORKER_INFO, {}, timeout=WAIT), reactor, WAIT, "info")
        assert info.body["commands"] == dict.fromkeys(COMMANDS, "3.3")
        body = {"command_id": "e", "command": "shell", "args": {"command": "echo hello; exit 4"}}
        reply = await bounded(peer.request(START_COMMAND, body, timeout=WAIT), reactor, WAIT, "s")
        assert reply.body == {}
        await bounded(done, reactor, WAIT, "complete")
        assert "".join(m.body.get("stdout", "") for m in got) == "hello\n"
        assert [m.body["rc"] for m in got if "rc" in m.body] == [4]
    finally:
        await bounded(runner.stop_all(), reactor, WAIT, "stop_all")
        await bounded(Deferred.fromCoroutine(worker.stop()), reactor, WAIT, "worker stop")
        await bounded(Deferred.fromCoroutine(master.stop()), reactor, WAIT, "master stop")
