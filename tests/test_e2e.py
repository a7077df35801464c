"""End to end with real processes on loopback: ``wiremsg master``, ``wiremsg worker``s and
``wiremsg run``/``status``, as a user runs them. Every wait is bounded; every process is
killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import broker_url, delete_topology, new_prefix
from tests.procs import Cluster, CuttingProxy, py

TAGS = {"w1": "linux,fast", "w2": "linux", "w3": "bsd"}

BACKENDS = ["amp", "zmq", "amqp"]
"""The network backends the whole end-to-end suite runs over (amqp through RabbitMQ)."""


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    scheme: str = request.param
    prefix = listen = None
    if scheme == "amqp":
        request.getfixturevalue("amqp_broker")  # skips, or fails in CI, without RabbitMQ
        prefix = new_prefix("e2e")
        listen = broker_url(prefix)
    c = Cluster(tmp_path_factory.mktemp(f"e2e-{scheme}"), scheme, listen)
    try:
        for name in ("w1", "w2", "w3"):
            c.start_worker(name, tags=TAGS[name])
        yield c
    finally:
        c.close()
        if prefix is not None:
            delete_topology(prefix)


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


def test_tcp_cut_twice_mid_stream_delivers_every_line_once(cluster: Cluster) -> None:
    proxy = CuttingProxy(cluster.upstream())  # to the master, or to the broker (amqp)
    try:
        cluster.start_worker("w6", master=cluster.via(proxy.port))
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
