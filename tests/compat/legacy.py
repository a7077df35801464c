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
        log = open(self.basedir / "stdout.log", "ab")
        self.popen = subprocess.Popen(
            [str(BIN / "buildbot-worker"), "start", "--nodaemon", str(self.basedir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

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
