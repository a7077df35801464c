"""Configuration files and secrets for the command line.

The master's workers file is TOML, one table per worker::

    [workers.builder-1]
    secret = "s3cret"
    tags = ["linux", "x86_64"]     # optional: a default the worker's own tags add to

A worker's secret comes from ``--secret-file`` or the ``WIREMSG_SECRET`` environment variable.
Every problem raises :class:`ConfigError` with one line that names the file and what is wrong.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from wiremsg.errors import WiremsgError

SECRET_ENV = "WIREMSG_SECRET"
"""The environment variable a worker reads its secret from when no file is given."""


class ConfigError(WiremsgError, ValueError):
    """A configuration file or value is missing or malformed; the message says which."""


@dataclass(frozen=True)
class WorkerEntry:
    """One worker in the master's workers file."""

    name: str
    secret: str
    tags: tuple[str, ...] = field(default_factory=tuple)


def load_workers(path: str | os.PathLike[str]) -> dict[str, WorkerEntry]:
    """Read a workers file.

    :raises ConfigError: unreadable file, invalid TOML, no workers, or a worker without a
        non-empty string secret or with tags that are not a list of strings.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read workers file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"workers file {p} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"workers file {p} is not valid TOML: {exc}") from None
    table = data.get("workers")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"workers file {p} has no [workers.NAME] tables")
    entries: dict[str, WorkerEntry] = {}
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"workers file {p}: workers.{name} must be a table")
        secret = spec.get("secret")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f'workers file {p}: workers.{name} needs secret = "..."')
        tags = spec.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise ConfigError(f"workers file {p}: workers.{name}.tags must be a list of strings")
        entries[name] = WorkerEntry(name, secret, tuple(tags))
    return entries


def read_secret(secret_file: str | None, environ: dict[str, str] | None = None) -> str:
    """The worker's secret: the first line of ``secret_file``, else ``$WIREMSG_SECRET``.

    :raises ConfigError: the file cannot be read or is empty, or neither source is given.
    """
    env = os.environ if environ is None else environ
    if secret_file:
        try:
            text = Path(secret_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read secret file {secret_file}: {exc.strerror or exc}"
            ) from None
        secret = text.splitlines()[0].strip() if text.strip() else ""
        if not secret:
            raise ConfigError(f"secret file {secret_file} is empty")
        return secret
    secret = env.get(SECRET_ENV, "")
    if not secret:
        raise ConfigError(f"no secret: pass --secret-file FILE or set {SECRET_ENV}")
    return secret


def parse_host_port(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (or an ``http://HOST:PORT`` URL) to a pair.

    :raises ConfigError: a missing or out-of-range port.
    """
    text = value.strip()
    if "://" in text:
        text = text.split("://", 1)[1].rstrip("/")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = default_host, text
    host = host.strip("[]") or default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{value!r} is not HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} in {value!r} is out of range")
    return host, port
