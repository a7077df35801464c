"""The vocabulary's bodies: round trips, defaults, extra keys, and errors that name the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wiremsg.errors import MessageError
from wiremsg.message import Message
from wiremsg.vocabulary import (
    BAD_BODY,
    BUILDBOT_SHELL_ARGS,
    COMPLETE,
    INTERRUPT,
    KINDS,
    PRINT,
    SHUTDOWN,
    START_COMMAND,
    TIMEOUT,
    UPDATE,
    WORKER_INFO,
    BodyError,
    CommandFailure,
    Complete,
    Interrupt,
    InterruptReply,
    Print,
    ShellArgs,
    Shutdown,
    StartCommand,
    Update,
    WorkerInfo,
)


def over_the_wire(body: Any) -> Any:
    """What the peer decodes: the body as a Message accepts it, through JSON."""
    Message("x", body)
    decoded = json.loads(json.dumps(body))
    assert decoded == body
    return decoded


def test_kind_names() -> None:
    assert KINDS == {
        "worker_info",
        "start_command",
        "update",
        "complete",
        "interrupt",
        "print",
        "shutdown",
        "file_write",
        "file_utime",
        "file_close",
        "file_unpack",
        "file_read",
    }
    assert (WORKER_INFO, START_COMMAND, UPDATE, COMPLETE, INTERRUPT, PRINT, SHUTDOWN) == (
        "worker_info",
        "start_command",
        "update",
        "complete",
        "interrupt",
        "print",
        "shutdown",
    )
    assert BUILDBOT_SHELL_ARGS == {"maxTime": "max_time", "sigtermTime": "sigterm_time"}


@pytest.mark.parametrize(
    "value",
    [
        WorkerInfo({"shell": "3.3"}, "/w", "linux", "0.1.0", {"admin": "me", "numcpus": 4}),
        StartCommand("7", "shell", {"command": "make", "usePTY": False}),
        Update("7", stdout="a\n"),
        Update("7", header="h", stderr="e", failure_reason=TIMEOUT, rc=-15, elapsed=1.5),
        Update("7", extra={"log": ["name", "text"]}),
        Complete("7"),
        Complete("7", CommandFailure(TIMEOUT, "too long")),
        Interrupt("7", "user"),
        InterruptReply(True),
        Print("attached"),
        Shutdown(),
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip(value: Any) -> None:
    assert type(value).from_body(over_the_wire(value.to_body())) == value


def test_shell_args_round_trip_defaults_and_extras() -> None:
    args = ShellArgs(
        ["make", "-j4"],
        workdir="build",
        env={"A": "1", "B": None},
        timeout=60,
        max_time=3600.5,
        want_stderr=False,
        initial_stdin="y\n",
        sigterm_time=0,
        extra={"usePTY": False, "logfiles": {}},
    )
    body = over_the_wire(args.to_body())
    assert body["command"] == ["make", "-j4"] and body["usePTY"] is False
    assert ShellArgs.from_body(body) == args
    assert args.command == ("make", "-j4") and args.timeout == 60.0
    plain = ShellArgs.from_body({"command": "echo hi"})
    assert plain == ShellArgs("echo hi")
    assert plain.workdir == "." and plain.env == {} and plain.timeout is None
    assert plain.want_stdout and plain.want_stderr
    assert plain.argv == ["/bin/sh", "-c", "echo hi"]
    assert ShellArgs(["ls", "-l"]).argv == ["ls", "-l"]
    assert plain.to_body() == {"command": "echo hi", "workdir": "."}
    assert ShellArgs.from_body({"command": "x", "workdir": ""}).workdir == "."


def test_update_leaves_out_absent_keys_and_keeps_unknown_ones() -> None:
    assert Update("1", rc=0).to_body() == {"command_id": "1", "rc": 0}
    update = Update.from_body({"command_id": "1", "stat": [1, 2], "elapsed": 2})
    assert update.elapsed == 2.0 and update.extra == {"stat": [1, 2]}
    assert update.to_body() == {"command_id": "1", "stat": [1, 2], "elapsed": 2.0}


def test_worker_info_extra_keys_are_top_level() -> None:
    info = WorkerInfo({"shell": "3.3"}, "/w", "linux", "1", {"host": "box"})
    assert info.to_body()["host"] == "box"
    parsed = WorkerInfo.from_body({"commands": {"shell": "3.3"}, "environ": {"A": "b"}})
    assert parsed.basedir == "" and parsed.extra == {"environ": {"A": "b"}}


def test_lenient_defaults() -> None:
    assert Interrupt.from_body({"command_id": "1"}) == Interrupt("1", "")
    assert Print.from_body({}) == Print("")
    assert Shutdown.from_body(None) == Shutdown() == Shutdown.from_body({"reason": "x"})
    assert InterruptReply.from_body({}) == InterruptReply(False)
    assert StartCommand.from_body({"command_id": "1", "command": "shell"}).args == {}
    assert CommandFailure.from_body({"code": "x"}) == CommandFailure("x", "")


@pytest.mark.parametrize(
    ("parse", "body", "path"),
    [
        (Update.from_body, [], "update"),
        (Update.from_body, {}, "update.command_id"),
        (Update.from_body, {"command_id": ""}, "update.command_id"),
        (Update.from_body, {"command_id": 1}, "update.command_id"),
        (Update.from_body, {"command_id": "1", "rc": True}, "update.rc"),
        (Update.from_body, {"command_id": "1", "rc": 1.5}, "update.rc"),
        (Update.from_body, {"command_id": "1", "stdout": b"x"}, "update.stdout"),
        (Update.from_body, {"command_id": "1", "elapsed": "1"}, "update.elapsed"),
        (Complete.from_body, {"command_id": "1", "failure": "x"}, "complete.failure"),
        (Complete.from_body, {"command_id": "1", "failure": {}}, "complete.failure.code"),
        (Interrupt.from_body, {"why": "x"}, "interrupt.command_id"),
        (Print.from_body, {"message": 3}, "print.message"),
        (Shutdown.from_body, [], "shutdown"),
        (StartCommand.from_body, {"command_id": "1"}, "start_command.command"),
        (StartCommand.from_body, {"command_id": "1", "command": ""}, "start_command.command"),
        (
            StartCommand.from_body,
            {"command_id": "1", "command": "shell", "args": []},
            "start_command.args",
        ),
        (WorkerInfo.from_body, {"commands": {"shell": 3}}, "worker_info.commands.shell"),
        (WorkerInfo.from_body, {"commands": []}, "worker_info.commands"),
        (ShellArgs.from_body, {}, "start_command.args.command"),
        (ShellArgs.from_body, {"command": 5}, "start_command.args.command"),
        (ShellArgs.from_body, {"command": []}, "start_command.args.command"),
        (ShellArgs.from_body, {"command": "  "}, "start_command.args.command"),
        (ShellArgs.from_body, {"command": ["a", None]}, "start_command.args.command[1]"),
        (ShellArgs.from_body, {"command": ["", "x"]}, "start_command.args.command[0]"),
        (ShellArgs.from_body, {"command": ["a\x00b"]}, "start_command.args.command[0]"),
        (ShellArgs.from_body, {"command": "x", "workdir": "/etc"}, "start_command.args.workdir"),
        (ShellArgs.from_body, {"command": "x", "workdir": ".."}, "start_command.args.workdir"),
        (
            ShellArgs.from_body,
            {"command": "x", "workdir": "a/../../b"},
            "start_command.args.workdir",
        ),
        (ShellArgs.from_body, {"command": "x", "env": []}, "start_command.args.env"),
        (ShellArgs.from_body, {"command": "x", "env": {"A=B": "1"}}, "start_command.args.env.A=B"),
        (ShellArgs.from_body, {"command": "x", "env": {"": "1"}}, "start_command.args.env."),
        (ShellArgs.from_body, {"command": "x", "env": {"A": 1}}, "start_command.args.env.A"),
        (ShellArgs.from_body, {"command": "x", "timeout": 0}, "start_command.args.timeout"),
        (ShellArgs.from_body, {"command": "x", "max_time": -1}, "start_command.args.max_time"),
        (ShellArgs.from_body, {"command": "x", "timeout": "5"}, "start_command.args.timeout"),
        (ShellArgs.from_body, {"command": "x", "timeout": 1e999}, "start_command.args.timeout"),
        (ShellArgs.from_body, {"command": "x", "sigterm_time": -1}, "start_command.args"),
        (ShellArgs.from_body, {"command": "x", "want_stdout": 1}, "start_command.args.want_"),
        (ShellArgs.from_body, {"command": "x", "initial_stdin": 1}, "start_command.args.initial"),
    ],
)
def test_malformed_bodies_name_the_field(parse: Any, body: Any, path: str) -> None:
    with pytest.raises(BodyError) as caught:
        parse(body)
    assert caught.value.path.startswith(path), caught.value.path
    assert str(caught.value).startswith(caught.value.path + ": ")
    assert isinstance(caught.value, MessageError) and caught.value.code == BAD_BODY


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(BodyError, match="workdir"):
        ShellArgs("ls", workdir="../x")
    with pytest.raises(BodyError, match="timeout"):
        ShellArgs("ls", timeout=-5)
    assert ShellArgs("ls", workdir="a/../b").workdir == "a/../b"  # stays inside: allowed


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=50)


@given(
    command_id=texts.filter(bool),
    stdout=st.none() | texts,
    stderr=st.none() | texts,
    rc=st.none() | st.integers(-(2**31), 2**31),
    elapsed=st.none() | st.floats(min_value=0, max_value=1e9),
)
def test_update_round_trips_any_content(
    command_id: str, stdout: str | None, stderr: str | None, rc: int | None, elapsed: float | None
) -> None:
    update = Update(command_id, stdout=stdout, stderr=stderr, rc=rc, elapsed=elapsed)
    assert Update.from_body(over_the_wire(update.to_body())) == update
