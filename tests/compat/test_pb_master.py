"""Old worker → wiremsg master: a real ``buildbot-worker`` 4.3.0 logs in through
``wiremsg master --pb-listen`` and takes work through ``wiremsg run`` like a native worker."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat.legacy import BuildbotWorker, PBCluster, require_buildbot
from tests.procs import WORKERS, py


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PBCluster, BuildbotWorker]]:
    require_buildbot()
    tmp = tmp_path_factory.mktemp("pb-master")
    cluster = PBCluster(tmp, "amp")
    legacy = BuildbotWorker(tmp / "legacy-w1", cluster.pb_port, "w1", WORKERS["w1"])
    try:
        legacy.start()
        cluster.start_worker("w2")  # a native AMP worker beside it
        cluster.wait_backend("w1", "pb")
        yield cluster, legacy
    finally:
        legacy.kill()
        cluster.close()


def test_status_shows_the_legacy_worker_with_backend_pb(
    fleet: tuple[PBCluster, BuildbotWorker],
) -> None:
    cluster, legacy = fleet
    workers = {w["name"]: w for w in cluster.status()["workers"]}
    assert workers["w1"]["backend"] == "pb" and workers["w1"]["state"] == "attached"
    assert workers["w1"]["address"].startswith("pb 127.0.0.1:")
    assert workers["w1"]["info"]["version"] == "4.3.0"
    assert workers["w2"]["backend"] == "amp"
    log = legacy.log()  # Buildbot's order: attached (x1 + one per builder) before the login
    assert log.count("message from master: attached") >= 2
    assert log.index("message from master: attached") < log.index("worker is ready")


def test_run_2000_ordered_lines_stderr_and_exit_code(
    fleet: tuple[PBCluster, BuildbotWorker],
) -> None:
    cluster, _ = fleet
    start = time.monotonic()
    proc = cluster.run(
        "--worker",
        "w1",
        *py(
            "import sys\nfor i in range(2000): print(f'line {i}')\n"
            "print('something odd', file=sys.stderr)\nsys.exit(3)"
        ),
    )
    assert proc.stdout.splitlines() == [f"line {i}" for i in range(2000)]
    assert proc.stderr == "something odd\n"
    assert proc.returncode == 3
    assert time.monotonic() - start < 15


def test_run_all_reaches_legacy_and_native_workers(
    fleet: tuple[PBCluster, BuildbotWorker],
) -> None:
    cluster, _ = fleet
    proc = cluster.run("--all", *py("import os; print('hi from', os.getcwd().count('/') > 0)"))
    assert sorted(proc.stdout.splitlines()) == ["w1: hi from True", "w2: hi from True"]
    assert proc.returncode == 0
    failing = cluster.run("--all", *py("import sys; sys.exit(7)"))
    assert failing.returncode == 7


def test_interrupt_a_legacy_command(fleet: tuple[PBCluster, BuildbotWorker]) -> None:
    cluster, _ = fleet
    code = "import time\nprint('started', flush=True)\ntime.sleep(60)"
    with cluster.start_run("--worker", "w1", *py(code)) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"  # streamed at once: no 5 s buffering
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
    assert rc != 0 and time.monotonic() - start < 15


def test_killed_worker_is_noticed_and_reattaches_when_restarted(
    fleet: tuple[PBCluster, BuildbotWorker],
) -> None:
    cluster, legacy = fleet
    legacy.kill()
    cluster.wait_state("w1", None)  # the master noticed: w1 is gone
    legacy.start()
    cluster.wait_backend("w1", "pb")
    proc = cluster.run("--worker", "w1", *py("print('back')"))
    assert proc.stdout == "back\n" and proc.returncode == 0


def test_a_wrong_secret_is_refused(fleet: tuple[PBCluster, BuildbotWorker], tmp_path: Path) -> None:
    cluster, _ = fleet
    intruder = BuildbotWorker(tmp_path / "intruder", cluster.pb_port, "w3", "wrong")
    try:
        intruder.start()
        deadline = time.monotonic() + 20
        while "unauthorized login" not in intruder.log().lower():
            assert time.monotonic() < deadline, intruder.log()
            time.sleep(0.2)  # polling another process's log
        assert "w3" not in {w["name"] for w in cluster.status()["workers"]}
    finally:
        intruder.kill()
