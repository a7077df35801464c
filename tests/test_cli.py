"""The ``wiremsg`` command as a real process: exit codes and output."""

from __future__ import annotations

import subprocess
import sys


def wiremsg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wiremsg", *args], capture_output=True, text=True, timeout=60
    )


def test_demo_streams_a_build_and_summarises() -> None:
    proc = wiremsg("demo")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    steps = [line for line in lines if "demo-worker | stdout:" in line]
    assert [s.split("] ")[0][-3:] for s in steps[:-1]] == [f"{n}/6" for n in range(1, 7)]
    assert steps[-1].endswith("build ok")
    assert "master: build finished with rc=0" in lines
    summary = lines[-1]
    assert summary.startswith("summary: ") and "RTT" in summary and "elapsed" in summary
    assert proc.stderr == ""


def test_demo_on_a_backend_not_yet_available_is_a_clear_error() -> None:
    proc = wiremsg("demo", "--backend", "zmq")
    assert proc.returncode == 2
    assert "not available yet" in proc.stdout


def test_bad_usage_exits_2_without_traceback() -> None:
    for args in ((), ("bogus",), ("demo", "--backend", "carrier-pigeon")):
        proc = wiremsg(*args)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and "usage: wiremsg" in proc.stderr
