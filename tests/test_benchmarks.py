"""The AMP, ZeroMQ and AMQP benchmarks run end to end in their quick mode and report every figure
they promise.

Smoke tests: they check the shape of the one-line JSON report, never a speed.
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


def _run_quick(script: Path = SCRIPT, timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """Run ``script --quick`` in its own process group; kill the group if it overruns."""
    proc = subprocess.Popen(
        [sys.executable, str(script), "--quick"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"benchmarks/{script.name} --quick took over {timeout:g}s\n{err[-3000:]}")
    finally:
        if proc.poll() is None:  # pragma: no cover - only on an unexpected exception
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


def _one_json_line(*args: Any) -> dict[str, Any]:
    """Run a benchmark with ``--quick``; it must succeed and print exactly one JSON object."""
    code, out, err = _run_quick(*args)
    assert code == 0, err[-3000:]
    lines = out.splitlines()
    assert len(lines) == 1, f"stdout must be exactly one line, got {len(lines)}"
    parsed = json.loads(lines[0])
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return _one_json_line()


def test_one_json_line_with_every_implementation(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "amp"
    assert report["quick"] is True
    for impl in IMPLS:
        figures = report[impl]
        for key in ("msgs_per_s", "rtt_p50_us", "rtt_p99_us"):
            assert isinstance(figures[key], int | float) and figures[key] > 0, (impl, key)
        assert figures["rtt_p50_us"] <= figures["rtt_p99_us"]
        assert len(figures["rtt_p50_us_blocks"]) == report["params"]["rtt_blocks"], impl
    assert report["rtt_interleaved"] is True
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


# -- benchmarks/zmq.py --------------------------------------------------------------------

ZMQ_SCRIPT = ROOT / "benchmarks" / "zmq.py"
ZMQ_TIMEOUT = 30.0
"""Seconds ``zmq.py --quick`` may take (it needs a few) before its process group is killed."""
ZMQ_IMPLS = ("wiremsg_json", "wiremsg_msgpack", "raw_zmq")
ZMQ_RATIOS = tuple(
    f"ratio_{name}_vs_raw_zmq{suffix}"
    for suffix in ("", "_msgpack")
    for name in ("msgs", "rtt_p50", "rtt_p99", "large")
)
ZMQ_TARGETS = (
    "msgs_vs_raw_zmq",
    "rtt_p50_vs_raw_zmq",
    "msgs_vs_raw_zmq_msgpack",
    "rtt_p50_vs_raw_zmq_msgpack",
)


@pytest.fixture(scope="module")
def zmq_report() -> dict[str, Any]:
    pytest.importorskip("zmq")
    return _one_json_line(ZMQ_SCRIPT, ZMQ_TIMEOUT)


def test_zmq_one_json_line_with_every_implementation(zmq_report: dict[str, Any]) -> None:
    assert zmq_report["benchmark"] == "zmq"
    assert zmq_report["quick"] is True
    for impl in ZMQ_IMPLS:
        figures = zmq_report[impl]
        for key in ("msgs_per_s", "rtt_p50_us", "rtt_p99_us", "large_mb_per_s"):
            assert isinstance(figures[key], int | float) and figures[key] > 0, (impl, key)
        assert figures["rtt_p50_us"] <= figures["rtt_p99_us"]
        assert figures["strays"] == 0, impl
        blocks = figures["rtt_p50_us_blocks"]  # round trips measured in interleaved blocks
        assert len(blocks) == zmq_report["params"]["rtt_blocks"] and min(blocks) > 0, impl
    assert zmq_report["rtt_interleaved"] is True
    assert zmq_report["wiremsg_json"]["codec"] == "json"
    assert zmq_report["wiremsg_msgpack"]["codec"] == "msgpack"
    assert zmq_report["wiremsg_json"]["small_msgs_per_batch"] >= 1


def test_zmq_ratios_and_targets(zmq_report: dict[str, Any]) -> None:
    for key in ZMQ_RATIOS:
        assert isinstance(zmq_report[key], float) and zmq_report[key] > 0, key
    assert set(zmq_report["targets"]) == {"msgs_vs_raw_zmq", "rtt_p50_vs_raw_zmq"}
    assert set(ZMQ_TARGETS) == set(zmq_report["targets_met"])
    for key in ZMQ_TARGETS:
        assert isinstance(zmq_report["targets_met"][key], bool), key


def test_zmq_context_is_recorded(zmq_report: dict[str, Any]) -> None:
    assert zmq_report["params"]["small_size"] == 200
    assert zmq_report["params"]["large_size"] == 65536
    assert {"python", "twisted", "cpus", "pinned", "pyzmq", "libzmq"} <= set(zmq_report["env"])
    assert zmq_report["elapsed_s"] < ZMQ_TIMEOUT


# -- benchmarks/amqp.py -------------------------------------------------------------------

AMQP_SCRIPT = ROOT / "benchmarks" / "amqp.py"
AMQP_TIMEOUT = 40.0
"""Seconds ``amqp.py --quick`` may take (a few, through the broker) before it is killed."""
AMQP_IMPLS = ("wiremsg_json", "wiremsg_msgpack", "raw_pika")
AMQP_RATIOS = tuple(
    f"ratio_{name}_vs_raw_pika{suffix}"
    for suffix in ("", "_msgpack")
    for name in ("msgs", "rtt_p50", "rtt_p99", "large")
)
AMQP_TARGETS = (
    "msgs_vs_raw_pika",
    "rtt_p50_vs_raw_pika",
    "msgs_vs_raw_pika_msgpack",
    "rtt_p50_vs_raw_pika_msgpack",
)


@pytest.fixture(scope="module")
def amqp_report(amqp_broker: str) -> dict[str, Any]:
    return _one_json_line(AMQP_SCRIPT, AMQP_TIMEOUT)


def test_amqp_one_json_line_with_every_implementation(amqp_report: dict[str, Any]) -> None:
    assert amqp_report["benchmark"] == "amqp"
    assert amqp_report["quick"] is True
    for impl in AMQP_IMPLS:
        figures = amqp_report[impl]
        for key in ("msgs_per_s", "rtt_p50_us", "rtt_p99_us", "large_mb_per_s"):
            assert isinstance(figures[key], int | float) and figures[key] > 0, (impl, key)
        assert figures["rtt_p50_us"] <= figures["rtt_p99_us"]
        assert figures["strays"] == 0, impl
    assert amqp_report["wiremsg_json"]["codec"] == "json"
    assert amqp_report["wiremsg_msgpack"]["codec"] == "msgpack"
    assert amqp_report["wiremsg_json"]["small_msgs_per_message"] >= 1


def test_amqp_ratios_and_targets(amqp_report: dict[str, Any]) -> None:
    for key in AMQP_RATIOS:
        assert isinstance(amqp_report[key], float) and amqp_report[key] > 0, key
    assert set(amqp_report["targets"]) == {"msgs_vs_raw_pika", "rtt_p50_vs_raw_pika"}
    assert set(AMQP_TARGETS) == set(amqp_report["targets_met"])
    for key in AMQP_TARGETS:
        assert isinstance(amqp_report["targets_met"][key], bool), key


def test_amqp_context_is_recorded_and_the_broker_is_left_clean(
    amqp_report: dict[str, Any],
) -> None:
    assert amqp_report["params"]["small_size"] == 200
    assert amqp_report["params"]["large_size"] == 65536
    assert {"python", "twisted", "cpus", "pinned", "pika", "rabbitmq"} <= set(amqp_report["env"])
    assert "guest:guest" not in json.dumps(amqp_report), "no password in the report"
    assert amqp_report["elapsed_s"] < AMQP_TIMEOUT
    from tests.broker import queue_exists

    assert not queue_exists(f"{amqp_report['params']['prefix']}.masters")


# -- benchmarks/rtt_cost.py ----------------------------------------------------------------


def _rtt_cost(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rtt_cost.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_rtt_cost_times_round_trips_in_one_process() -> None:
    out = _rtt_cost("memory", "--count", "50", "--warmup", "10")
    assert out.endswith(" us per round trip (both sides, one process)\n"), out
    assert float(out.split()[0]) > 0


def test_rtt_cost_counts_bytecodes_per_round_trip() -> None:
    out = _rtt_cost("zmq", "--opcodes", "--count", "20", "--warmup", "5")
    first, *rest = out.splitlines()
    assert first.startswith("bytecodes per round trip: ")
    assert int(first.rsplit(" ", 1)[1]) > 500
    assert any(line.split()[-1] == "wiremsg/session.py" for line in rest), out
