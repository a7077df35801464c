"""wiremsg worker → old master: ``wiremsg worker --master pb://...`` serves a real Buildbot
4.3.0 master's build of ShellCommand, StringDownload, a ShellCommand reading that file,
FileUpload, DirectoryUpload, MakeDirectory and RemoveDirectory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.compat.legacy import BuildbotMaster, require_buildbot
from tests.procs import Proc

PAYLOAD = bytes(range(256)) * 1200  # 300 KiB: several upload blocks
TEXT = "downloaded text, é\\nsecond line\\n"

STEPS = """\
py = sys.executable
out = {out!r}
f.addStep(steps.ShellCommand(name="hello", logEnviron=False,
    command=["sh", "-c", "echo hello-from-step; echo to-stderr 1>&2"]))
f.addStep(steps.StringDownload("{text}", workerdest="data.txt", name="download"))
f.addStep(steps.ShellCommand(name="readback", command=["cat", "data.txt"], logEnviron=False))
f.addStep(steps.ShellCommand(name="makefiles", logEnviron=False, command=[py, "-c",
    "import os; os.makedirs('tree/sub', exist_ok=True); "
    "open('blob.bin', 'wb').write(bytes(range(256)) * 1200); "
    "open('tree/sub/x.txt', 'w').write('in a tree')"]))
f.addStep(steps.FileUpload(name="upload", workersrc="blob.bin", masterdest=out + "/blob.bin"))
f.addStep(steps.DirectoryUpload(name="dirupload", workersrc="tree", masterdest=out + "/tree"))
f.addStep(steps.MakeDirectory(name="mkdir", dir="build/made"))
f.addStep(steps.RemoveDirectory(name="rmdir", dir="build/tree"))
"""


def worker_argv(port: int, secret: Path, basedir: Path) -> list[str]:
    """``wiremsg worker`` serving the master on ``port`` as ``wm1``."""
    return [
        "worker",
        "--name",
        "wm1",
        "--master",
        f"pb://127.0.0.1:{port}",
        "--secret-file",
        str(secret),
        "--basedir",
        str(basedir),
    ]


def test_a_buildbot_master_build_served_by_a_wiremsg_worker(tmp_path: Path) -> None:
    require_buildbot()
    out = tmp_path / "uploaded"
    steps = STEPS.format(out=str(out), text=TEXT)
    master = BuildbotMaster(tmp_path / "master", "wm1", "pass1", "import sys\n" + steps)
    secret = tmp_path / "secret"
    secret.write_text("pass1\n")
    basedir = tmp_path / "worker"
    worker: Proc | None = None
    try:
        master.start()
        bad = tmp_path / "bad-secret"
        bad.write_text("not-the-password\n")
        refused = subprocess.run(
            [sys.executable, "-m", "wiremsg", *worker_argv(master.port, bad, tmp_path / "bad")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1 and "unauthorized" in refused.stderr.lower()
        worker = Proc(
            worker_argv(master.port, secret, basedir), stderr_path=tmp_path / "worker.log"
        )
        worker.expect("attached to pb://")
        master.sendchange()
        build, results = master.wait_build()
        assert results == 0, master.log()[-4000:] + worker.stderr_text()[-4000:]
        hello = master.step_log(build, "hello")
        assert "ohello-from-step\n" in hello and "eto-stderr\n" in hello
        assert "hsh -c 'echo hello-from-step; echo to-stderr 1>&2'" in hello  # header first
        readback = master.step_log(build, "readback")
        assert "odownloaded text, é\nosecond line\n" in readback
        assert (out / "blob.bin").read_bytes() == PAYLOAD
        assert (out / "tree" / "sub" / "x.txt").read_text() == "in a tree"
        builddir = basedir / "runtests" / "build"
        assert (builddir / "made").is_dir() and not (builddir / "tree").exists()
        assert (builddir / "data.txt").read_text() == "downloaded text, é\nsecond line\n"
        steps = master.query("SELECT name, results FROM steps WHERE buildid=? ORDER BY id", build)
        assert all(result == 0 for _, result in steps)
        assert [name for name, _ in steps] == [
            "worker_preparation",
            "hello",
            "download",
            "readback",
            "makefiles",
            "upload",
            "dirupload",
            "mkdir",
            "rmdir",
        ]
    finally:
        if worker is not None:
            worker.stop()
        master.stop()
