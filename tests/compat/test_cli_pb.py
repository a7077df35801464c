"""The command line's PB options: clear errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def wiremsg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wiremsg", *args], capture_output=True, text=True, timeout=60
    )


def test_a_bad_pb_endpoint_is_one_clear_line(tmp_path: Path) -> None:
    workers = tmp_path / "workers.toml"
    workers.write_text('[workers.w1]\nsecret = "s"\n')
    proc = wiremsg(
        "master",
        "--listen",
        "amp://127.0.0.1:0",
        "--workers",
        str(workers),
        "--control",
        "off",
        "--pb-listen",
        "bogus:1234",
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("wiremsg: --pb-listen 'bogus:1234'")
    assert "Traceback" not in proc.stderr


def test_a_pb_master_must_be_alone_and_well_formed(tmp_path: Path) -> None:
    env_secret = ["--secret-file", str(tmp_path / "s")]
    (tmp_path / "s").write_text("x\n")
    both = wiremsg(
        "worker", "--name", "w", "--master", "pb://h:1", "--master", "amp://h:2", *env_secret
    )
    assert both.returncode == 1 and "cannot be combined" in both.stderr
    bad = wiremsg("worker", "--name", "w", "--master", "pb://:x", *env_secret)
    assert bad.returncode == 1 and "pb://HOST[:PORT]" in bad.stderr
