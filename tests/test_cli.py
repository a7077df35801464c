"""The ``wiremsg`` command as a real process: exit codes and output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def wiremsg(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wiremsg", *args], capture_output=True, text=True, timeout=timeout
    )


def check_demo_output(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    steps = [line for line in lines if "demo-worker stdout|" in line]
    assert [s.split("] ")[0][-3:] for s in steps[:-1]] == [f"{n}/6" for n in range(1, 7)]
    assert steps[-1].endswith("build ok")
    assert any(line.endswith("stderr| warning: 1 test skipped") for line in lines)
    assert "master: build finished with rc=0" in lines
    summary = lines[-1]
    assert summary.startswith("summary: ") and "RTT" in summary and "elapsed" in summary
    assert "Traceback" not in proc.stderr and "Unhandled" not in proc.stderr


def test_demo_on_memory_streams_a_build_and_summarises() -> None:
    check_demo_output(wiremsg("demo", "--backend", "memory"))


def test_demo_on_a_backend_not_yet_available_is_a_clear_error() -> None:
    import io

    from twisted.internet.defer import Deferred

    from tests.clockwork import result
    from wiremsg.demo import run_demo

    out = io.StringIO()
    code = result(Deferred.fromCoroutine(run_demo(None, out, "carrier-pigeon")))
    assert code == 2 and "not available yet" in out.getvalue()


def test_demo_without_a_broker_is_one_clear_line() -> None:
    import os
    import socket

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "wiremsg", "demo", "--backend", "amqp"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "WIREMSG_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/"},
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("wiremsg demo: no usable AMQP broker")
    assert "refused" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "guest:guest" not in proc.stderr
    assert "rabbitmq-server -detached" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("bogus",),
        ("demo", "--backend", "carrier-pigeon"),
        ("run", "--all"),
        ("run", "--worker", "a", "--tag", "b", "--", "true"),
        ("master", "--listen", "amp://h:1"),
        ("worker", "--name", "w"),
    ],
)
def test_bad_usage_exits_2_without_traceback(args: tuple[str, ...]) -> None:
    proc = wiremsg(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "usage: wiremsg" in proc.stderr


def test_unreachable_master_is_one_clear_line() -> None:
    for args in (("status",), ("run", "--all", "--", "true")):
        proc = wiremsg(*args[:1], "--control", "127.0.0.1:9", *args[1:])
        assert proc.returncode == 1
        assert proc.stderr.startswith("wiremsg: cannot reach the master's control endpoint")
        assert proc.stderr.count("\n") == 1


def test_bad_workers_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "workers.toml"
    bad.write_text("[workers.w1]\n")
    for workers in (str(bad), str(tmp_path / "missing.toml")):
        proc = wiremsg(
            "master", "--listen", "amp://127.0.0.1:0", "--workers", workers, "--control", "off"
        )
        assert proc.returncode == 1
        assert proc.stderr.startswith("wiremsg: ") and proc.stderr.count("\n") == 1
        assert "workers" in proc.stderr


def test_worker_without_a_secret_is_one_clear_line() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "WIREMSG_SECRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "wiremsg", "worker", "--name", "w", "--master", "memory://x"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 1
    assert proc.stderr == "wiremsg: no secret: pass --secret-file FILE or set WIREMSG_SECRET\n"


@pytest.mark.parametrize("backend", ["amp", "zmq", "amqp"])
def test_demo_runs_the_worker_as_a_process_and_leaves_none_behind(
    backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "amqp":
        request.getfixturevalue("amqp_broker")  # skips, or fails in CI, without RabbitMQ
    proc = wiremsg("demo", "--backend", backend, timeout=90)
    check_demo_output(proc)
    host = "guest:***@127.0.0.1:5672/?prefix=wiremsg-demo-" if backend == "amqp" else "127.0.0.1:"
    assert f"master: listening on {backend}://{host}" in proc.stdout
    started = [line for line in proc.stdout.splitlines() if "started worker process" in line]
    assert len(started) == 1
    pid = int(started[0].split("pid ")[1].rstrip(")"))
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_keys_zmq_writes_a_curve_key_pair(tmp_path: Path) -> None:
    import stat

    proc = wiremsg("keys", "zmq", "--dir", str(tmp_path), "--name", "master")
    assert proc.returncode == 0, proc.stderr
    public, secret = tmp_path / "master.key", tmp_path / "master.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    from wiremsg.keys import load_key

    assert load_key(public) in proc.stdout
    again = wiremsg("keys", "zmq", "--dir", str(tmp_path), "--name", "master")
    assert again.returncode == 1 and "exists" in again.stderr and again.stderr.count("\n") == 1
    assert (
        wiremsg("keys", "zmq", "--dir", str(tmp_path), "--name", "master", "--force").returncode
        == 0
    )
