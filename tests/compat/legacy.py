"""Real Buildbot programs for the compat tests: a ``buildbot-worker`` process and a wiremsg
master with ``--pb-listen`` (a :class:`~tests.procs.Cluster` that also speaks PB). Every wait
is bounded; every process is killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.procs import Cluster, Proc

BIN = Path(sys.executable).parent
WAIT = 30.0


def require_buildbot() -> None:
    """Skip without the ``compat-test`` extra (``make test`` installs it, so CI runs them)."""
    pytest.importorskip("buildbot_worker", reason="pip install -e '.[compat-test]'")
    pytest.importorskip("buildbot", reason="pip install -e '.[compat-test]'")


def foreground(program: str, basedir: Path) -> subprocess.Popen[bytes]:
    """``PROGRAM start --nodaemon BASEDIR`` in a process group of its own (output to
    ``BASEDIR/stdout.log``)."""
    with open(basedir / "stdout.log", "ab") as log:
        return subprocess.Popen(
            [str(BIN / program), "start", "--nodaemon", str(basedir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class BuildbotWorker:
    """A real ``buildbot-worker`` in ``basedir``, logging into ``127.0.0.1:port``."""

    def __init__(
        self, basedir: Path, port: int, name: str, secret: str, keepalive: int = 600
    ) -> None:
        self.basedir = basedir
        subprocess.run(
            [
                str(BIN / "buildbot-worker"),
                "create-worker",
                "--quiet",
                "-r",
                f"--keepalive={keepalive}",
                str(basedir),
                f"127.0.0.1:{port}",
                name,
                secret,
            ],
            check=True,
            timeout=WAIT,
            capture_output=True,
        )
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the worker in the foreground of its own process group."""
        self.popen = foreground("buildbot-worker", self.basedir)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the worker's process group and reap it."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=WAIT)

    def log(self) -> str:
        path = self.basedir / "twistd.log"
        return path.read_text(errors="replace") if path.exists() else ""


class _PBMasterProc(Proc):
    """A :class:`Proc` that adds ``--pb-listen`` to a ``master`` command line."""

    def __init__(self, argv: list[str], *args: Any, **kwargs: Any) -> None:
        if argv[:1] == ["master"]:
            argv = [*argv, "--pb-listen", "tcp:0:interface=127.0.0.1"]
        super().__init__(argv, *args, **kwargs)


class PBCluster(Cluster):
    """A :class:`Cluster` whose master also runs ``--pb-listen`` on a free loopback port."""

    pb_port: int

    def add_master(self) -> str:
        with mock.patch("tests.procs.Proc", _PBMasterProc):  # Cluster's own master, plus PB
            bound = super().add_master()
        self.pb_port = int(self.masters[-1].expect("pb listening on ").rsplit(":", 1)[-1])
        return bound

    def wait_backend(self, name: str, backend: str, timeout: float = WAIT) -> dict[str, object]:
        """Poll ``status`` until ``name`` is attached through ``backend``; its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for w in self.status()["workers"]:
                if w["name"] == name and w["state"] == "attached" and w["backend"] == backend:
                    return w  # type: ignore[no-any-return]
            time.sleep(0.2)  # polling another process's state: nothing to await here
        raise AssertionError(f"{name} never attached via {backend}")


def free_port() -> int:
    """A TCP port free on loopback right now (Buildbot's master needs a number up front)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MASTER_CFG = """\
import sys
from buildbot.plugins import changes, schedulers, steps, util, worker
c = BuildmasterConfig = {{}}
c['workers'] = [worker.Worker({name!r}, {secret!r})]
c['protocols'] = {{'pb': {{'port': "tcp:{port}:interface=127.0.0.1"}}}}
c['change_source'] = [changes.PBChangeSource(user="change", passwd="changepw")]
c['schedulers'] = [schedulers.SingleBranchScheduler(
    name="on-change", change_filter=util.ChangeFilter(branch="main"),
    treeStableTimer=None, builderNames=["runtests"])]
f = util.BuildFactory()
{steps}
c['builders'] = [util.BuilderConfig(name="runtests", workernames=[{name!r}], factory=f)]
c['db'] = {{'db_url': "sqlite:///state.sqlite"}}
c['logCompressionMethod'] = 'raw'
c['buildbotNetUsageData'] = None
"""


class BuildbotMaster:
    """A real ``buildbot`` master in ``basedir`` with one builder ``runtests`` whose steps
    are ``steps`` (Python source adding steps to the factory ``f``)."""

    def __init__(self, basedir: Path, name: str, secret: str, steps: str) -> None:
        self.basedir = basedir
        self.port = free_port()
        subprocess.run(
            [str(BIN / "buildbot"), "create-master", "-r", str(basedir)],
            check=True,
            timeout=WAIT * 2,
            capture_output=True,
        )
        cfg = MASTER_CFG.format(name=name, secret=secret, port=self.port, steps=steps)
        (basedir / "master.cfg").write_text(cfg)
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it in the foreground and wait until it runs (bounded)."""
        self.popen = foreground("buildbot", self.basedir)
        deadline = time.monotonic() + WAIT * 2
        while "BuildMaster is running" not in self.log():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the buildbot master did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)  # polling another process's log

    def sendchange(self) -> None:
        """Trigger a build as a developer would (``buildbot sendchange``)."""
        subprocess.run(
            [
                str(BIN / "buildbot"),
                "sendchange",
                "--master",
                f"127.0.0.1:{self.port}",
                "--auth",
                "change:changepw",
                "--who",
                "tester",
                "--branch",
                "main",
                "--",
                "somefile",
            ],
            check=True,
            timeout=WAIT,
            capture_output=True,
        )

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        """Rows from the master's state database."""
        import sqlite3

        with sqlite3.connect(self.basedir / "state.sqlite", timeout=10) as db:
            return db.execute(sql, args).fetchall()

    def wait_build(self, timeout: float = 60.0) -> tuple[int, int]:
        """Wait for the first build to finish; ``(build id, results)``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.query("SELECT id, results FROM builds WHERE complete_at IS NOT NULL")
            if rows:
                return int(rows[0][0]), int(rows[0][1])  # type: ignore[call-overload]
            time.sleep(0.3)  # polling another process's database
        raise AssertionError(f"no build finished:\n{self.log()[-3000:]}")

    def step_log(self, build: int, step: str) -> str:
        """The stdio log of step ``step`` (lines keep Buildbot's o/e/h prefix)."""
        rows = self.query(
            "SELECT lc.content FROM logchunks lc JOIN logs l ON lc.logid = l.id "
            "JOIN steps s ON l.stepid = s.id WHERE s.buildid = ? AND s.name = ? "
            "AND l.slug = 'stdio' ORDER BY lc.first_line",
            build,
            step,
        )
        return "".join(r[0].decode() if isinstance(r[0], bytes) else str(r[0]) for r in rows)

    def log(self) -> str:
        path = self.basedir / "twistd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=WAIT)
