"""Real processes on loopback for the end-to-end tests: ``wiremsg master`` / ``worker`` / ``run``
as a user runs them (:class:`Proc`, :class:`Cluster`), and a TCP proxy whose connections a
test can cut (:class:`CuttingProxy`). Every wait is bounded; every process is killed at the end.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wiremsg.address import parse_address

WORKERS = {f"w{n}": f"secret-{n}" for n in range(1, 8)}
WAIT = 30.0


class Proc:
    """A child process whose stdout lines are read by a thread (so reads can time out)."""

    def __init__(
        self, argv: list[str], env: dict[str, str] | None = None, stderr_path: Path | None = None
    ) -> None:
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "wb") if stderr_path else subprocess.PIPE
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "wiremsg", *argv],
            stdout=subprocess.PIPE,
            stderr=self._err,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put("")

    def expect(self, prefix: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line starting {prefix!r} within {timeout}s")
            line = self.lines.get(timeout=left)
            if line == "":
                raise AssertionError(
                    f"process exited before printing {prefix!r}: {self.stderr_text()}"
                )
            if line.startswith(prefix):
                return line.strip()

    def stderr_text(self) -> str:
        if self.stderr_path is not None:
            return self.stderr_path.read_text(errors="replace")
        return ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=15)
        if self._err is not subprocess.PIPE:
            self._err.close()  # type: ignore[union-attr]
        return self.popen.returncode


class Cluster:
    """Masters (one, or several sharing a broker address) and workers, on loopback.

    :param listen: the masters' ``--listen`` URL (default ``SCHEME://127.0.0.1:0``).
    :param grace: the masters' ``--grace`` (seconds a lost worker's session is kept).
    :ivar url: what workers give as ``--master``: the first master's bound address, or the
        listen URL itself when that carries a password (printed redacted).
    """

    def __init__(
        self, tmp: Path, scheme: str, listen: str | None = None, grace: float = 3.0
    ) -> None:
        self.tmp = tmp
        self.scheme = scheme
        self.listen = listen or f"{scheme}://127.0.0.1:0"
        self.grace = grace
        self.workers_file = tmp / "workers.toml"
        self.workers_file.write_text(
            "".join(f'[workers.{n}]\nsecret = "{s}"\n\n' for n, s in WORKERS.items())
        )
        self.masters: list[Proc] = []
        self.controls: list[str] = []
        self.workers: dict[str, Proc] = {}
        bound = self.add_master()
        self.master, self.control = self.masters[0], self.controls[0]
        self.url = self.listen if parse_address(self.listen).password else bound

    def add_master(self) -> str:
        """Start one more master on the listen URL; returns the address it printed."""
        log = "master.log" if not self.masters else f"master-{len(self.masters) + 1}.log"
        proc = Proc(
            [
                "master",
                "--listen",
                self.listen,
                "--workers",
                str(self.workers_file),
                "--control",
                "127.0.0.1:0",
                "--heartbeat",
                "1",
                "--grace",
                f"{self.grace:g}",
            ],
            stderr_path=self.tmp / log,
        )
        self.masters.append(proc)
        bound = proc.expect("listening on ").split()[-1]
        self.controls.append(proc.expect("control on ").split()[-1])
        return bound

    def upstream(self) -> tuple[str, int]:
        """The host and port workers connect to (the master's, or the broker's)."""
        addr = parse_address(self.url)
        assert addr.port is not None
        return addr.host, addr.port

    def via(self, port: int) -> str:
        """:attr:`url` with the port replaced (to go through a proxy on loopback)."""
        return str(parse_address(self.url).with_port(port))

    def start_worker(
        self,
        name: str,
        master: str | None = None,
        secret: str | None = None,
        tags: str = "",
        wait: bool = True,
    ) -> Proc:
        basedir = self.tmp / f"basedir-{name}-{len(self.workers)}"
        proc = Proc(
            [
                "worker",
                "--name",
                name,
                "--master",
                master or self.url,
                "--basedir",
                str(basedir),
                "--tags",
                tags,
            ],
            env={"WIREMSG_SECRET": secret or WORKERS[name]},
            stderr_path=self.tmp / f"{name}-{len(self.workers)}.log",
        )
        self.workers[f"{name}-{len(self.workers)}"] = proc
        if wait:
            proc.expect("attached to ")
        return proc

    def run(
        self, *args: str, timeout: float = 60, control: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wiremsg", "run", "--control", control or self.control, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @contextmanager
    def start_run(self, *args: str) -> Iterator[subprocess.Popen[str]]:
        """``wiremsg run`` in the background, killed on the way out if still running."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "wiremsg", "run", "--control", self.control, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def status(self, control: str | None = None) -> dict[str, Any]:
        argv = ["status", "--control", control or self.control, "--json"]
        out = subprocess.run(
            [sys.executable, "-m", "wiremsg", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return json.loads(out)  # type: ignore[no-any-return]

    def wait_state(
        self, name: str, state: str | None, timeout: float = WAIT, control: str | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {w["name"]: w["state"] for w in self.status(control)["workers"]}
            if states.get(name) == state:
                return
            time.sleep(0.2)  # polling another process's state: nothing to await here
        raise AssertionError(f"{name} never became {state}")

    def close(self) -> None:
        for proc in [*self.workers.values(), *self.masters]:
            proc.stop()


def py(code: str) -> list[str]:
    return ["--", sys.executable, "-c", code]


class CuttingProxy:
    """A TCP proxy on loopback whose connections the test can cut."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.pairs.append((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    s.close()  # a reset, as when a NAT box or a cable drops the connection
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()
        self.cut()
