"""The examples run as a user would run them, and do what their comments promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("script", ["embed_master.py", "worker_process.py"])
def test_examples_are_short(script: str) -> None:
    assert len((EXAMPLES / script).read_text().splitlines()) < 80


def test_embed_master() -> None:
    out = run("embed_master.py")
    assert "attached: builder-1 tags=['linux', 'x86_64']" in out
    assert "echo: {'echo': {'hello': 'worker'}}" in out
    assert "remote error, as expected: no_handler" in out
    assert out.index("'configure'") < out.index("'compile'") < out.index("'link'")
    assert "builder-1: {'rc': 0}" in out


def test_worker_process() -> None:
    out = run("worker_process.py")
    assert "worker attached: amp://127.0.0.1:" in out
    assert "compile finished: {'rc': 0}" in out
    assert "registered workers left: []" in out
