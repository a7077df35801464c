"""The AMP benchmark runs end to end in its quick mode and reports every figure it promises.

A smoke test: it checks the shape of the one-line JSON report, never a speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "amp.py"
TIMEOUT = 60.0

IMPLS = ("wiremsg_json", "wiremsg_msgpack", "raw_amp", "pb")
RATIOS = (
    "ratio_msgs_vs_raw_amp",
    "ratio_msgs_vs_pb",
    "ratio_rtt_p50_vs_raw_amp",
    "ratio_msgs_vs_raw_amp_msgpack",
    "ratio_msgs_vs_pb_msgpack",
    "ratio_rtt_p50_vs_raw_amp_msgpack",
)
TARGETS = (
    "msgs_vs_raw_amp",
    "msgs_vs_pb",
    "rtt_p50_vs_raw_amp",
    "msgs_vs_raw_amp_msgpack",
    "msgs_vs_pb_msgpack",
    "rtt_p50_vs_raw_amp_msgpack",
)


def _run_quick() -> tuple[int, str, str]:
    """Run ``amp.py --quick`` in its own process group; kill the group if it overruns."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"benchmarks/amp.py --quick took over {TIMEOUT:g}s\n{err[-3000:]}")
    finally:
        if proc.poll() is None:  # pragma: no cover - only on an unexpected exception
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    code, out, err = _run_quick()
    assert code == 0, err[-3000:]
    lines = out.splitlines()
    assert len(lines) == 1, f"stdout must be exactly one line, got {len(lines)}"
    parsed = json.loads(lines[0])
    assert isinstance(parsed, dict)
    return parsed


def test_one_json_line_with_every_implementation(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "amp"
    assert report["quick"] is True
    for impl in IMPLS:
        figures = report[impl]
        for key in ("msgs_per_s", "rtt_p50_us", "rtt_p99_us"):
            assert isinstance(figures[key], int | float) and figures[key] > 0, (impl, key)
        assert figures["rtt_p50_us"] <= figures["rtt_p99_us"]
    for impl in ("wiremsg_json", "wiremsg_msgpack", "raw_amp"):
        assert report[impl]["large_mb_per_s"] > 0
    assert report["wiremsg_json"]["codec"] == "json"
    assert report["wiremsg_msgpack"]["codec"] == "msgpack"


def test_ratios_and_targets(report: dict[str, Any]) -> None:
    for key in RATIOS:
        assert isinstance(report[key], float) and report[key] > 0, key
    assert set(TARGETS) <= set(report["targets_met"])
    for key in TARGETS:
        assert isinstance(report["targets_met"][key], bool), key
    assert set(report["targets"]) == {"msgs_vs_raw_amp", "msgs_vs_pb", "rtt_p50_vs_raw_amp"}


def test_context_is_recorded(report: dict[str, Any]) -> None:
    assert report["params"]["small_size"] == 200
    assert report["params"]["large_size"] == 65536
    assert {"python", "twisted", "cpus", "pinned"} <= set(report["env"])
    assert report["elapsed_s"] < TIMEOUT
