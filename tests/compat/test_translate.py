"""The pure PB ⇄ vocabulary translation, without PB."""

from __future__ import annotations

import os
from typing import Any

import pytest
from wiremsg.compat.translate import (
    MAX_TEXT,
    WORKER_EXCEPTION,
    TranslationError,
    complete_from_pb,
    complete_to_pb,
    hello_info,
    info_from_pb,
    info_to_pb,
    rebase_args,
    split_text,
    start_from_pb,
    start_to_pb,
    updates_from_pb,
    updates_to_pb,
)

from wiremsg.vocabulary import Complete, StartCommand, Update, WorkerInfo


def test_updates_from_pb_as_the_real_worker_sends_them() -> None:
    raw = [
        [{"header": b"sh -c 'x'\n"}, 0],
        [{"stdout": "hello\n"}, 0],
        [{"stderr": b"oops \xff\n"}, 0],
        [{"rc": 3}, 0],
        [{"elapsed": 0.009}, 0],
        [{"log": ("test.log", "line\n")}, 0],
        [{"stat": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)}, 0],
        [{"files": ["a", b"b"]}, 7],
    ]
    bodies, highest = updates_from_pb("9", raw)
    assert highest == 7
    assert bodies == [
        {"command_id": "9", "header": "sh -c 'x'\n"},
        {"command_id": "9", "stdout": "hello\n"},
        {"command_id": "9", "stderr": "oops \\xff\n"},
        {"command_id": "9", "rc": 3},
        {"command_id": "9", "elapsed": 0.009},
        {"command_id": "9", "log": ["test.log", "line\n"]},
        {"command_id": "9", "stat": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]},
        {"command_id": "9", "files": ["a", "b"]},
    ]
    for body in bodies:
        Update.from_body(body)


@pytest.mark.parametrize(
    "raw",
    [
        "not a list",
        [{"stdout": "x"}],
        [[{"rc": "0"}, 0]],
        [[{"rc": True}, 0]],
        [[{"elapsed": -1}, 0]],
        [[{"stat": ["x"]}, 0]],
        [[{"log": "no tuple"}, 0]],
        [[{"mystery": object()}, 0]],
        [[{"stdout": 5}, 0]],
    ],
)
def test_updates_from_pb_refuse_what_buildbot_never_sends(raw: Any) -> None:
    with pytest.raises(TranslationError):
        updates_from_pb("1", raw)


def test_updates_to_pb_one_key_per_call_in_order_and_cut() -> None:
    body = Update(
        "5", header="h\n", stdout="x" * (MAX_TEXT + 10), rc=0, elapsed=1.5, extra={"stat": [1, 2]}
    ).to_body()
    calls = list(updates_to_pb(body))
    keys = [next(iter(call[0][0])) for call in calls]
    assert keys == ["header", "stdout", "stdout", "stat", "rc", "elapsed"]
    assert all(call[0][1] == 0 and len(call) == 1 for call in calls)
    assert calls[3][0][0]["stat"] == (1, 2)
    assert "".join(c[0][0]["stdout"] for c in calls[1:3]) == "x" * (MAX_TEXT + 10)
    with pytest.raises(TranslationError):
        list(updates_to_pb({"stdout": "no id"}))


def test_split_text_never_cuts_a_character() -> None:
    text = "é" * 100
    pieces = split_text(text, limit=7)
    assert "".join(pieces) == text and all(len(p.encode()) <= 7 for p in pieces)


def test_complete_both_ways() -> None:
    assert complete_from_pb("1", None) == {"command_id": "1"}
    body = complete_from_pb("1", "boom")
    assert Complete.from_body(body).failure.code == WORKER_EXCEPTION  # type: ignore[union-attr]
    assert complete_to_pb(body) == "worker_exception: boom"
    timeout = {"command_id": "1", "failure": {"code": "timeout", "reason": "slow"}}
    assert complete_to_pb(timeout) is None and complete_to_pb({"command_id": "1"}) is None


def test_worker_info_both_ways() -> None:
    pb = {
        "admin": "Ops <ops@example>\n",
        "host": "box",
        "environ": {"PATH": "/bin"},
        "system": "posix",
        "basedir": "/w",
        "numcpus": 4,
        "version": "4.3.0",
        "worker_commands": {"shell": "3.3", "uploadFile": "3.3"},
        "delete_leftover_dirs": False,
    }
    info = info_from_pb(pb)
    assert (info.commands, info.basedir, info.os, info.version) == (
        {"shell": "3.3", "uploadFile": "3.3"},
        "/w",
        "posix",
        "4.3.0",
    )
    assert info.extra["environ"] == {"PATH": "/bin"} and info.extra["numcpus"] == 4
    hello = hello_info(info)
    assert hello["admin"] == "Ops <ops@example>" and "environ" not in hello
    assert hello["backend"] == "pb"
    back = info_to_pb(WorkerInfo({"shell": "3.3"}, "/b", "linux", "0.1"), {"HOME": "/h"})
    assert back["worker_commands"] == {"shell": "3.3"} and back["system"] == os.name
    assert back["environ"] == {"HOME": "/h"} and back["basedir"] == "/b"
    with pytest.raises(TranslationError):
        info_from_pb({"worker_commands": ["shell"]})
    with pytest.raises(TranslationError):
        info_from_pb("nope")


def test_start_from_pb_shell_names_env_and_builddir() -> None:
    args = {
        "workdir": "build",
        "command": ["make", "all"],
        "env": {"PATH": ["/opt/bin", "${PATH}"], "GONE": None},
        "maxTime": 60,
        "sigtermTime": 2,
        "timeout": 1200,
        "usePTY": False,
        "logfiles": {},
    }
    body = start_from_pb("3", "shell", args, builddir="runtests", environ={"PATH": "/bin"})
    start = StartCommand.from_body(body)
    assert start.command == "shell" and start.command_id == "3"
    assert start.args["workdir"] == "runtests/build"
    assert start.args["max_time"] == 60 and start.args["sigterm_time"] == 2
    assert start.args["env"] == {"PATH": "/opt/bin:/bin", "GONE": None}
    assert start.args["usePTY"] is False


def test_start_from_pb_drops_references_and_rebases_file_commands() -> None:
    ref = object()
    body = start_from_pb(
        "4", "upload_file", {"workersrc": "a.txt", "workdir": "build", "writer": ref}, "rt"
    )
    assert body["command"] == "uploadFile" and "writer" not in body["args"]  # type: ignore[operator, index]
    assert body["args"]["workdir"] == "rt/build"  # type: ignore[index, call-overload]
    assert rebase_args("rmdir", {"dir": ["a", "b"]}, "rt") == {"dir": ["rt/a", "rt/b"]}
    assert rebase_args("stat", {"file": "f"}, "rt") == {"file": "f", "workdir": "rt"}
    assert rebase_args("cpdir", {"fromdir": "a", "todir": "b"}, ".") == {
        "fromdir": "a",
        "todir": "b",
    }
    with pytest.raises(TranslationError):
        start_from_pb(5, "shell", {})
    with pytest.raises(TranslationError):
        start_from_pb("5", "shell", {"command": object()})


def test_start_to_pb_camel_case() -> None:
    body = StartCommand("7", "shell", {"command": "ls", "max_time": 5, "sigterm_time": 1})
    assert start_to_pb(body.to_body()) == (
        "7",
        "shell",
        {"command": "ls", "maxTime": 5, "sigtermTime": 1},
    )
    upload = {"command_id": "8", "command": "upload_file", "args": {"workersrc": "a"}}
    assert start_to_pb(upload)[1:] == (
        "uploadFile",
        {
            "workersrc": "a",
            "workdir": ".",
            "maxsize": None,
            "blocksize": 262144,
            "keepstamp": False,
        },
    )
    with pytest.raises(TranslationError, match="workersrc"):
        start_to_pb({"command_id": "8", "command": "uploadFile", "args": {}})
    with pytest.raises(TranslationError):
        start_to_pb({"command": "shell"})
