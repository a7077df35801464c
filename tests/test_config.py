"""The workers file, secrets and HOST:PORT parsing: every problem is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from wiremsg.config import ConfigError, WorkerEntry, load_workers, parse_host_port, read_secret


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "workers.toml"
    p.write_text(text)
    return p


def test_load_workers(tmp_path: Path) -> None:
    p = write(
        tmp_path, '[workers.a]\nsecret = "s1"\ntags = ["linux"]\n\n[workers."b.c"]\nsecret = "s2"\n'
    )
    assert load_workers(p) == {
        "a": WorkerEntry("a", "s1", ("linux",)),
        "b.c": WorkerEntry("b.c", "s2", ()),
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[workers.a]\nsecret = \n", "not valid TOML"),
        ("title = 'x'\n", "no [workers.NAME] tables"),
        ("workers = 3\n", "no [workers.NAME] tables"),
        ("[workers]\na = 'x'\n", "workers.a must be a table"),
        ("[workers.a]\ntags = []\n", 'workers.a needs secret = "..."'),
        ("[workers.a]\nsecret = ''\n", 'workers.a needs secret = "..."'),
        ("[workers.a]\nsecret = 5\n", 'workers.a needs secret = "..."'),
        ("[workers.a]\nsecret = 'x'\ntags = 'linux'\n", "workers.a.tags must be a list"),
    ],
)
def test_bad_workers_files(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_workers(write(tmp_path, text))
    message = str(caught.value)
    assert problem in message and "workers.toml" in message and "\n" not in message


def test_unreadable_workers_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read workers file .*missing\.toml"):
        load_workers(tmp_path / "missing.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_workers(tmp_path / "bin.toml")


def test_read_secret(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("  hunter2  \nignored\n")
    assert read_secret(str(f), {}) == "hunter2"
    assert read_secret(None, {"WIREMSG_SECRET": "from-env"}) == "from-env"
    f.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(str(f), {})
    with pytest.raises(ConfigError, match="cannot read secret file"):
        read_secret(str(tmp_path / "nope"), {})
    with pytest.raises(ConfigError, match="WIREMSG_SECRET"):
        read_secret(None, {})


def test_parse_host_port() -> None:
    assert parse_host_port("127.0.0.1:8789") == ("127.0.0.1", 8789)
    assert parse_host_port("http://localhost:80/") == ("localhost", 80)
    assert parse_host_port("9000") == ("127.0.0.1", 9000)
    assert parse_host_port("[::1]:5") == ("::1", 5)
    for bad in ("host:port", "h:70000", ""):
        with pytest.raises(ConfigError):
            parse_host_port(bad)
