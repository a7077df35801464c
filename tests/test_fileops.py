"""Buildbot's file commands end to end in memory: a Master with a CommandTracker, an agent's
runner, and the transfer writers/readers of :mod:`wiremsg.transfer`."""

from __future__ import annotations

import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from wiremsg.agent import Agent, build_agent
from wiremsg.commands import CommandTracker, RemoteCommand
from wiremsg.master import Master, Peer
from wiremsg.testing.harness import bounded
from wiremsg.transfer import BytesReader, DirectoryWriter, FileReader, FileWriter
from wiremsg.vocabulary import COMMANDS, WORKER_INFO, file_args

WAIT = 10.0


class Rig:
    def __init__(
        self, reactor: Any, master: Master, agent: Agent, tracker: CommandTracker, peer: Peer
    ) -> None:
        self.reactor, self.master, self.agent = reactor, master, agent
        self.tracker, self.peer = tracker, peer
        self.basedir = Path(agent.runner.basedir)

    async def run(self, command: str, args: dict[str, Any], **kw: Any) -> tuple[int, list[Any]]:
        updates: list[Any] = []
        cmd: RemoteCommand = self.tracker.start(self.peer, args, updates.append, command, **kw)
        rc = await bounded(cmd.done, self.reactor, WAIT, command)
        return rc, updates


def keys(updates: list[Any], key: str) -> list[Any]:
    return [u[key] for u in updates if key in u]


@pytest_twisted.async_yield_fixture()
async def rig(reactor: Any, tmp_path: Path) -> AsyncIterator[Rig]:
    master = Master({"w": "secret"}, reactor=reactor)
    address = f"memory://fileops-{os.getpid()}-{id(tmp_path)}"
    await master.listen(address)
    agent = build_agent(reactor, "w", "secret", [address], basedir=str(tmp_path / "worker"))
    tracker = CommandTracker(master)
    try:
        await bounded(agent.worker.start(), reactor, WAIT, "attach")
        peer = await master.wait_for_worker("w", timeout=WAIT)
        yield Rig(reactor, master, agent, tracker, peer)
    finally:
        await agent.stop()
        await master.stop()


@pytest_twisted.ensureDeferred
async def test_worker_info_announces_exactly_the_commands(rig: Rig) -> None:
    reply = await rig.peer.request(WORKER_INFO, {}, timeout=WAIT)
    assert set(reply.body["commands"]) == set(COMMANDS)


@pytest_twisted.ensureDeferred
async def test_mkdir_stat_listdir_glob_rmfile_rmdir_cpdir(rig: Rig) -> None:
    rc, _ = await rig.run("mkdir", {"dir": ["build/a/b", "build/c"]})
    assert rc == 0 and (rig.basedir / "build/a/b").is_dir()
    (rig.basedir / "build/a/f.txt").write_text("hello")
    rc, ups = await rig.run("stat", {"file": "f.txt", "workdir": "build/a"})
    assert rc == 0 and keys(ups, "stat")[0][6] == 5  # st_size
    assert list(ups[-1]) == ["command_id", "elapsed"] and "rc" in ups[-2]  # rc before the end
    rc, ups = await rig.run("listdir", {"dir": "build/a"})
    assert keys(ups, "files") == [["b", "f.txt"]]
    rc, ups = await rig.run("glob", {"path": "build/**/*.txt"})
    assert keys(ups, "files") == [[str(rig.basedir / "build/a/f.txt")]]
    rc, _ = await rig.run("cpdir", {"fromdir": "build/a", "todir": "build/copy"})
    assert rc == 0 and (rig.basedir / "build/copy/f.txt").read_text() == "hello"
    rc, _ = await rig.run("rmfile", {"path": "build/a/f.txt"})
    assert rc == 0 and not (rig.basedir / "build/a/f.txt").exists()
    rc, ups = await rig.run("rmfile", {"path": "build/a/f.txt"})
    assert rc == 2 and keys(ups, "header")[0].startswith("rmfile: No such file or directory")
    rc, _ = await rig.run("rmdir", {"dir": ["build/a", "build/never"]})
    assert rc == 0 and not (rig.basedir / "build/a").exists()


@pytest_twisted.ensureDeferred
async def test_paths_must_stay_in_the_basedir(rig: Rig) -> None:
    for command, args in [
        ("rmdir", {"dir": "../outside"}),
        ("stat", {"file": "/etc/passwd"}),
        ("uploadFile", {"workersrc": "~/.ssh/id_rsa"}),
        ("rmdir", {"dir": "."}),
    ]:
        rc, ups = await rig.run(command, args)
        assert rc == 1, command
        assert (
            "outside the worker's basedir" in keys(ups, "header")[0]
            or "basedir itself" in (keys(ups, "header")[0])
        )


@pytest_twisted.ensureDeferred
async def test_upload_file_round_trip_with_stamp(rig: Rig, tmp_path: Path) -> None:
    payload = os.urandom(700 * 1024)
    src = rig.basedir / "build" / "blob.bin"
    src.parent.mkdir(parents=True)
    src.write_bytes(payload)
    os.utime(src, (1_000_000, 2_000_000))
    dest = tmp_path / "master" / "blob.bin"
    args = {"workdir": "build", "workersrc": "blob.bin", "blocksize": 64 * 1024, "keepstamp": True}
    rc, ups = await rig.run("uploadFile", args, writer=FileWriter(dest))
    assert rc == 0 and dest.read_bytes() == payload
    assert dest.stat().st_mtime == 2_000_000
    assert keys(ups, "header") == [f"sending {src}\n"]


@pytest_twisted.ensureDeferred
async def test_upload_maxsize_truncates_and_missing_file_fails(rig: Rig, tmp_path: Path) -> None:
    (rig.basedir / "big").write_bytes(b"x" * 1000)
    dest = tmp_path / "cut"
    rc, ups = await rig.run(
        "uploadFile", {"workersrc": "big", "maxsize": 100}, writer=FileWriter(dest)
    )
    assert rc == 1 and "Maximum filesize reached" in keys(ups, "stderr")[0]
    assert dest.read_bytes() == b"x" * 100
    rc, ups = await rig.run("uploadFile", {"workersrc": "nope"}, writer=FileWriter(dest))
    assert rc == 1 and keys(ups, "stderr") == [f"Cannot open file '{rig.basedir}/nope' for upload"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("compress", [None, "gz", "bz2"])
async def test_upload_directory(rig: Rig, tmp_path: Path, compress: str | None) -> None:
    tree = rig.basedir / "out"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("A")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)))
    dest = tmp_path / "unpacked"
    args = {"workersrc": "out", "compress": compress}
    rc, _ = await rig.run("uploadDirectory", args, writer=DirectoryWriter(dest))
    assert rc == 0
    assert (dest / "a.txt").read_text() == "A"
    assert (dest / "sub" / "b.bin").read_bytes() == bytes(range(256))


@pytest_twisted.ensureDeferred
async def test_download_file_pipelined_and_maxsize(rig: Rig, tmp_path: Path) -> None:
    payload = os.urandom(300 * 1024 + 7)
    source = tmp_path / "src.bin"
    source.write_bytes(payload)
    args = {"workdir": "build", "workerdest": "sub/dl.bin", "blocksize": 16 * 1024, "mode": 0o640}
    rc, _ = await rig.run("downloadFile", args, reader=FileReader(source))
    target = rig.basedir / "build/sub/dl.bin"
    assert rc == 0 and target.read_bytes() == payload
    assert target.stat().st_mode & 0o777 == 0o640
    args = {"workerdest": "short", "maxsize": 10}
    rc, ups = await rig.run("downloadFile", args, reader=BytesReader(b"0123456789abc"))
    assert rc == 1 and (rig.basedir / "short").read_bytes() == b"0123456789"
    assert "Maximum filesize reached" in keys(ups, "stderr")[0]


@pytest_twisted.ensureDeferred
async def test_a_worker_sending_too_much_fails_the_transfer(rig: Rig, tmp_path: Path) -> None:
    (rig.basedir / "f").write_bytes(b"y" * 5000)
    dest = tmp_path / "limited"
    writer = FileWriter(dest, maxsize=1000)  # the master's own limit, whatever the args say
    rc, _ = await rig.run("uploadFile", {"workersrc": "f"}, writer=writer)
    assert rc == 1 and not dest.exists()


def test_file_args_defaults_and_errors() -> None:
    assert file_args("upload_file", {"workersrc": "x", "blocksize": 10**9})["blocksize"] == (
        512 * 1024
    )
    assert file_args("stat", {"file": "f"})["workdir"] == "."
    with pytest.raises(Exception, match=r"start_command.args.dir: is required"):
        file_args("mkdir", {})
    with pytest.raises(Exception, match=r"compress"):
        file_args("uploadDirectory", {"workersrc": "d", "compress": "xz"})
    with pytest.raises(Exception, match=r"not a file command"):
        file_args("shell", {})


def test_tar_filter_refuses_links_out(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as archive:
        info = tarfile.TarInfo("../escape.txt")
        archive.addfile(info)
    writer = DirectoryWriter(tmp_path / "dest")
    writer.write(evil.read_bytes())
    with pytest.raises(Exception, match="cannot unpack"):
        writer.unpack()
    assert not (tmp_path / "escape.txt").exists()
