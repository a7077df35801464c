"""End to end with real processes on loopback: ``wiremsg master``, ``wiremsg worker``s and
``wiremsg run``/``status``, as a user runs them. Every wait is bounded; every process is
killed at the end."""

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

import pytest

WORKERS = {f"w{n}": f"secret-{n}" for n in range(1, 8)}
TAGS = {"w1": "linux,fast", "w2": "linux", "w3": "bsd"}
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
    def __init__(self, tmp: Path, scheme: str) -> None:
        self.tmp = tmp
        self.scheme = scheme
        workers_file = tmp / "workers.toml"
        workers_file.write_text(
            "".join(f'[workers.{n}]\nsecret = "{s}"\n\n' for n, s in WORKERS.items())
        )
        self.master = Proc(
            [
                "master",
                "--listen",
                f"{scheme}://127.0.0.1:0",
                "--workers",
                str(workers_file),
                "--control",
                "127.0.0.1:0",
                "--heartbeat",
                "1",
                "--grace",
                "3",
            ],
            stderr_path=tmp / "master.log",
        )
        self.url = self.master.expect("listening on ").split()[-1]
        self.control = self.master.expect("control on ").split()[-1]
        self.workers: dict[str, Proc] = {}

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

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wiremsg", "run", "--control", self.control, *args],
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

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "wiremsg", "status", "--control", self.control, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return json.loads(out)  # type: ignore[no-any-return]

    def wait_state(self, name: str, state: str | None, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {w["name"]: w["state"] for w in self.status()["workers"]}
            if states.get(name) == state:
                return
            time.sleep(0.2)  # polling another process's state: nothing to await here
        raise AssertionError(f"{name} never became {state}")

    def close(self) -> None:
        for proc in self.workers.values():
            proc.stop()
        self.master.stop()


BACKENDS = ["amp", "zmq"]
"""The network backends the whole end-to-end suite runs over."""


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp(f"e2e-{request.param}"), request.param)
    try:
        for name in ("w1", "w2", "w3"):
            c.start_worker(name, tags=TAGS[name])
        yield c
    finally:
        c.close()


def py(code: str) -> list[str]:
    return ["--", sys.executable, "-c", code]


def test_status_lists_the_workers(cluster: Cluster) -> None:
    workers = {w["name"]: w for w in cluster.status()["workers"]}
    assert {"w1", "w2", "w3"} <= set(workers)
    w1 = workers["w1"]
    assert (w1["state"], w1["backend"], w1["tags"]) == (
        "attached",
        cluster.scheme,
        ["linux", "fast"],
    )
    table = subprocess.run(
        [sys.executable, "-m", "wiremsg", "status", "--control", cluster.control],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert table.returncode == 0 and table.stdout.startswith("NAME")
    assert any(line.startswith("w3 ") and "attached" in line for line in table.stdout.splitlines())


def test_run_on_one_worker_3000_lines_stderr_and_exit_code(cluster: Cluster) -> None:
    proc = cluster.run(
        "--worker",
        "w1",
        *py(
            "import sys\nfor i in range(3000): print(f'line {i}')\n"
            "print('something odd', file=sys.stderr)\nsys.exit(3)"
        ),
    )
    assert proc.stdout.splitlines() == [f"line {i}" for i in range(3000)]
    assert proc.stderr == "something odd\n"
    assert proc.returncode == 3


def test_run_by_tag_prefixes_each_worker(cluster: Cluster) -> None:
    proc = cluster.run("--tag", "linux", *py("print('hello'); print('world')"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in ("w1", "w2"):
        assert [x for x in lines if x.startswith(f"{name}: ")] == [
            f"{name}: hello",
            f"{name}: world",
        ]
    assert not any(x.startswith("w3") for x in lines)


def test_run_all_exit_code_is_the_first_failing_worker_by_name(cluster: Cluster) -> None:
    # The command runs in BASEDIR/build, and each worker's basedir is named basedir-NAME-N.
    code = (
        "import os, sys\nrc = {'w1': 0, 'w2': 5, 'w3': 7}[os.path.basename("
        "os.path.dirname(os.getcwd())).split('-')[1]]\nsys.exit(rc)"
    )
    proc = cluster.run("--all", *py(code))
    assert proc.returncode == 5, proc.stderr


def test_one_mebibyte_of_output_arrives_intact(cluster: Cluster) -> None:
    code = (
        "import sys\nfor i in range(16384):\n"
        "    sys.stdout.write(f'{i:08d}' + 'abcdefghijklmnopqrstuvwxyz0123456789' * 1 + "
        "'\\u00e9\\u4e2d' + 'x' * 14 + '\\n')"
    )
    proc = cluster.run("--worker", "w2", *py(code))
    expected = "".join(
        f"{i:08d}abcdefghijklmnopqrstuvwxyz0123456789\u00e9\u4e2d{'x' * 14}\n" for i in range(16384)
    )
    assert proc.returncode == 0
    assert len(expected.encode()) >= 1 << 20
    assert proc.stdout == expected


def test_timeout_stops_the_command_and_exits_124(cluster: Cluster) -> None:
    started = time.monotonic()
    proc = cluster.run(
        "--worker",
        "w1",
        "--timeout",
        "1",
        *py("import time\nprint('working', flush=True)\ntime.sleep(60)"),
    )
    assert proc.returncode == 124, proc.stderr
    assert proc.stdout == "working\n"
    assert time.monotonic() - started < 20


def test_unknown_worker_and_no_match_are_clear_errors(cluster: Cluster) -> None:
    proc = cluster.run("--worker", "nobody", "--", "true")
    assert proc.returncode == 1
    assert proc.stderr == "wiremsg: unknown worker 'nobody': not attached to this master\n"
    proc = cluster.run("--tag", "sparc", "--", "true")
    assert proc.returncode == 1 and "no attached worker has tag 'sparc'" in proc.stderr


def test_sigint_to_run_interrupts_the_remote_command(cluster: Cluster, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = (
        f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "print('started', flush=True)\ntime.sleep(120)"
    )
    with cluster.start_run("--worker", "w3", *py(code)) as run:
        assert run.stdout is not None
        assert run.stdout.readline() == "started\n"
        pid = int(pidfile.read_text())
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
    assert run.returncode == 128 + signal.SIGTERM, err
    assert "interrupting the remote command" in err
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_worker_killed_mid_command_fails_run_clearly(cluster: Cluster) -> None:
    victim = cluster.start_worker("w4")
    with cluster.start_run(
        "--worker", "w4", *py("import time\nprint('started', flush=True)\ntime.sleep(60)")
    ) as run:
        assert run.stdout is not None and run.stdout.readline() == "started\n"
        victim.stop(signal.SIGKILL)
        _, err = run.communicate(timeout=30)
    assert run.returncode == 255
    assert err == "wiremsg: w4: worker w4 was lost during the command\n"


def test_worker_killed_and_restarted_is_noticed_and_reattaches(cluster: Cluster) -> None:
    first = cluster.start_worker("w7")
    cluster.wait_state("w7", "attached")
    killed_at = time.monotonic()
    first.stop(signal.SIGKILL)
    cluster.wait_state("w7", "detached", timeout=10)
    noticed = time.monotonic() - killed_at
    assert noticed < 3 * 1.0 + 2  # within the heartbeat timeout (3 x 1 s), plus polling
    cluster.start_worker("w7")  # a new process: a fresh session replaces the dead one
    workers = {w["name"]: w for w in cluster.status()["workers"]}
    assert workers["w7"]["state"] == "attached"
    proc = cluster.run("--worker", "w7", *py("print('back')"))
    assert (proc.returncode, proc.stdout) == (0, "back\n")


def test_wrong_secret_is_refused_and_named_in_the_master_log(cluster: Cluster) -> None:
    impostor = cluster.start_worker("w5", secret="not-it", wait=False)
    assert impostor.popen.wait(timeout=30) == 1
    err = impostor.stderr_text()
    assert err.strip().endswith("wiremsg: auth_failed: authentication failed for worker 'w5'")
    log = (cluster.tmp / "master.log").read_text()
    refused = [line for line in log.splitlines() if "refused link" in line and "'w5'" in line]
    assert len(refused) == 1 and "auth_failed" in refused[0] and "wrong proof" in refused[0]


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


def test_tcp_cut_twice_mid_stream_delivers_every_line_once(cluster: Cluster) -> None:
    host, port = cluster.url.split("://")[1].rsplit(":", 1)
    proxy = CuttingProxy((host, int(port)))
    try:
        cluster.start_worker("w6", master=f"{cluster.scheme}://127.0.0.1:{proxy.port}")
        code = (
            "import sys, time\nfor i in range(6000):\n    print(f'line {i}', flush=True)\n"
            "    if i % 200 == 0: time.sleep(0.05)\nsys.exit(4)"
        )
        with cluster.start_run("--worker", "w6", *py(code)) as run:
            assert run.stdout is not None
            lines = [run.stdout.readline() for _ in range(1000)]
            proxy.cut()
            lines += [run.stdout.readline() for _ in range(1000)]
            proxy.cut()
            # Not communicate(): it reads the raw pipe and would lose what readline() buffered.
            rest = run.stdout.read()
            assert run.stderr is not None
            err = run.stderr.read()
            run.wait(timeout=60)
        got = "".join(lines).splitlines() + rest.splitlines()
        assert got == [f"line {i}" for i in range(6000)], err
        assert run.returncode == 4
        assert proxy.accepted >= 3  # it really reconnected twice
    finally:
        proxy.close()
