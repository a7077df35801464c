"""Pure translation between Buildbot's PB worker protocol and the wiremsg vocabulary.

No PB, no I/O: every function takes the plain values a PB call carries (after unjellying) or a
vocabulary body, and returns the other side's. Values from PB are hostile until checked here:
anything that does not have the shape Buildbot sends raises :class:`TranslationError` naming
what is wrong, and the caller drops that peer.

The mapping (BUILDBOT-PB.md §1):

==============================================  ============================================
PB                                              wiremsg
==============================================  ============================================
``getWorkerInfo()`` → dict                      ``worker_info`` reply (:func:`info_from_pb`)
``startCommand(ref, id, name, args)``           ``start_command`` (:func:`start_from_pb`,
                                                :func:`start_to_pb`)
``ref.update([[{key: value}, 0], ...])``        ``update`` per key (:func:`updates_from_pb`,
                                                :func:`updates_to_pb`)
``ref.complete(failure)``                       ``complete`` (:func:`complete_from_pb`)
``interruptCommand(id, why)``                   ``interrupt``
``print(message)`` / ``shutdown()``             ``print`` / ``shutdown``
``writer.write/utime/close/unpack``             ``file_write/file_utime/file_close/file_unpack``
``reader.read(n)`` / ``reader.close()``         ``file_read`` / ``file_close``
==============================================  ============================================

Paths: a PB worker resolves a command's paths against its *builder's* directory; a wiremsg
worker against its basedir. :func:`rebase_args` puts a builder directory in front of the paths
of each command, so a wiremsg worker serving a Buildbot master finds the same files.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from typing import Any

from wiremsg.message import JSON
from wiremsg.vocabulary import (
    BUILDBOT_SHELL_ARGS,
    CPDIR,
    FILE_COMMANDS,
    GLOB,
    LISTDIR,
    MKDIR,
    RMDIR,
    RMFILE,
    SHELL,
    STAT,
    TIMEOUT,
    TIMEOUT_WITHOUT_OUTPUT,
    TRANSFER_COMMANDS,
    BodyError,
    CommandFailure,
    Complete,
    StartCommand,
    Update,
    WorkerInfo,
    canonical_command,
    file_args,
)

__all__ = [
    "HELLO_INFO_KEYS",
    "MAX_TEXT",
    "UPDATE_ORDER",
    "WORKER_EXCEPTION",
    "TranslationError",
    "complete_from_pb",
    "complete_to_pb",
    "hello_info",
    "info_from_pb",
    "info_to_pb",
    "rebase_args",
    "split_text",
    "start_from_pb",
    "start_to_pb",
    "updates_from_pb",
    "updates_to_pb",
]

MAX_TEXT = 64 * 1024
"""The most UTF-8 bytes of text one PB ``update`` carries (far below banana's 640 KiB)."""
UPDATE_ORDER = (
    "header",
    "stdout",
    "stderr",
    "log",
    "stat",
    "files",
    "failure_reason",
    "rc",
    "elapsed",
)
"""The update keys both sides know, in the order one vocabulary ``update`` applies them."""
WORKER_EXCEPTION = "worker_exception"
"""The ``complete.failure.code`` of a command that raised in a Buildbot worker."""
HELLO_INFO_KEYS = ("admin", "host", "access_uri", "version", "system", "basedir", "numcpus")
"""The facts of a PB worker that travel in its wiremsg hello (the rest is in ``worker_info``)."""
MAX_HELLO_VALUE = 1024
"""The most characters of each fact in the hello (its frame is small)."""

_TEXT_KEYS = frozenset({"header", "stdout", "stderr"})
_ENV_VAR = re.compile(r"\$\{([^}]*)\}")


class TranslationError(ValueError):
    """A PB value or a vocabulary body does not have the shape the other side needs."""


# -- helpers ----------------------------------------------------------------------------------


def _text(value: object, where: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        return value
    raise TranslationError(f"{where}: expected text, got {type(value).__name__}")


def _json(value: object, where: str, depth: int = 0) -> JSON:
    """``value`` as JSON (tuples become lists, bytes text); :raises TranslationError:."""
    if depth > 16:
        raise TranslationError(f"{where}: nested too deeply")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TranslationError(f"{where}: {value!r} is not a finite number")
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, list | tuple):
        return [_json(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, JSON] = {}
        for k, v in value.items():
            key = _text(k, f"{where} key")
            out[key] = _json(v, f"{where}.{key}", depth + 1)
        return out
    raise TranslationError(f"{where}: {type(value).__name__} is not plain data")


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` UTF-8 bytes, never inside a character."""
    data = text.encode()
    if len(data) <= limit:
        return [text]
    out: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1
        out.append(data[start:end].decode())
        start = end
    return out


# -- updates ----------------------------------------------------------------------------------


def _update_value(key: str, value: object, where: str) -> JSON:
    if key in _TEXT_KEYS or key == "failure_reason":
        return _text(value, where)
    if key == "rc":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TranslationError(f"{where}: rc must be an integer")
        return value
    if key == "elapsed":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise TranslationError(f"{where}: elapsed must be a non-negative number")
        return float(value)
    if key == "log":
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise TranslationError(f"{where}: log must be (logname, text)")
        return [_text(value[0], where), _text(value[1], where)]
    if key == "stat":
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise TranslationError(f"{where}: stat must be a tuple of numbers")
        return list(value)
    if key == "files":
        if not isinstance(value, list | tuple):
            raise TranslationError(f"{where}: files must be a list")
        return [_text(v, where) for v in value]
    return _json(value, where)


def updates_from_pb(command_id: str, updates: object) -> tuple[list[dict[str, JSON]], int]:
    """The argument of a PB ``update`` call → vocabulary ``update`` bodies (one per pair, keys
    in :data:`UPDATE_ORDER`) and the highest update number (what ``update`` answers).

    :raises TranslationError: not a list of ``[{key: value}, number]`` pairs, or a value of
        the wrong type for its key.
    """
    if not isinstance(updates, list | tuple):
        raise TranslationError("update: expected a list of [dict, number] pairs")
    bodies: list[dict[str, JSON]] = []
    highest = 0
    for i, pair in enumerate(updates):
        where = f"update[{i}]"
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not isinstance(pair[0], dict):
            raise TranslationError(f"{where}: expected [dict, number]")
        update, num = pair
        if isinstance(num, int) and not isinstance(num, bool):
            highest = max(highest, num)
        fields: dict[str, JSON] = {}
        for key, value in update.items():
            name = _text(key, f"{where} key")
            fields[name] = _update_value(name, value, f"{where}.{name}")
        ordered = {k: fields.pop(k) for k in UPDATE_ORDER if k in fields}
        extra = {k: v for k, v in ordered.items() if k in ("log", "stat", "files")}
        extra.update(fields)  # keys newer Buildbots may add: kept as they are
        body = Update(
            command_id,
            header=ordered.get("header"),  # type: ignore[arg-type]
            stdout=ordered.get("stdout"),  # type: ignore[arg-type]
            stderr=ordered.get("stderr"),  # type: ignore[arg-type]
            failure_reason=ordered.get("failure_reason"),  # type: ignore[arg-type]
            rc=ordered.get("rc"),  # type: ignore[arg-type]
            elapsed=ordered.get("elapsed"),  # type: ignore[arg-type]
            extra=extra,
        ).to_body()
        bodies.append(body)
    return bodies, highest


def updates_to_pb(body: object) -> Iterator[list[list[Any]]]:
    """A vocabulary ``update`` body → the arguments of PB ``update`` calls, one key per call as
    the Buildbot worker sends them (``[[{key: value}, 0]]``), texts cut at :data:`MAX_TEXT`.

    :raises TranslationError: the body is not an ``update``.
    """
    try:
        update = Update.from_body(body)
    except BodyError as exc:
        raise TranslationError(str(exc)) from None
    values: dict[str, Any] = dict(update.extra)
    for key in ("header", "stdout", "stderr", "failure_reason", "rc", "elapsed"):
        value = getattr(update, key)
        if value is not None:
            values[key] = value
    for key in [*UPDATE_ORDER, *sorted(set(values) - set(UPDATE_ORDER))]:
        if key not in values:
            continue
        value = values[key]
        if key in _TEXT_KEYS and isinstance(value, str):
            for piece in split_text(value):
                yield [[{key: piece}, 0]]
            continue
        if key == "stat" and isinstance(value, list):
            value = tuple(value)
        elif key == "log" and isinstance(value, list) and len(value) == 2:
            value = (value[0], value[1])
        yield [[{key: value}, 0]]


def complete_from_pb(command_id: str, failure: str | None) -> dict[str, JSON]:
    """PB ``complete(failure)`` (the failure as text, or None) → a ``complete`` body."""
    if failure is None:
        return Complete(command_id).to_body()
    return Complete(command_id, CommandFailure(WORKER_EXCEPTION, failure)).to_body()


def complete_to_pb(body: object) -> str | None:
    """A ``complete`` body → the text of the failure to send with PB ``complete``, or None.

    Timeouts are not failures in Buildbot (its worker reports them as ``failure_reason`` and
    completes normally); anything else is.
    """
    try:
        complete = Complete.from_body(body)
    except BodyError as exc:
        raise TranslationError(str(exc)) from None
    failure = complete.failure
    if failure is None or failure.code in (TIMEOUT, TIMEOUT_WITHOUT_OUTPUT):
        return None
    return f"{failure.code}: {failure.reason}"


# -- worker info ------------------------------------------------------------------------------


def info_from_pb(info: object) -> WorkerInfo:
    """A Buildbot worker's ``getWorkerInfo()`` → :class:`~wiremsg.vocabulary.WorkerInfo`:
    ``commands`` from ``worker_commands``, ``os`` from ``system``; everything else (``admin``,
    ``host``, ``environ``, ``numcpus``, ``os_*``...) in ``extra``.

    :raises TranslationError: not a dict of plain data, or ``worker_commands`` malformed.
    """
    if not isinstance(info, dict):
        raise TranslationError("getWorkerInfo: expected a dict")
    plain = _json(info, "getWorkerInfo")
    assert isinstance(plain, dict)
    commands = plain.pop("worker_commands", {}) or {}
    if not isinstance(commands, dict) or not all(isinstance(v, str) for v in commands.values()):
        raise TranslationError("getWorkerInfo.worker_commands: expected {name: version}")
    fields = {}
    for key, source in (("basedir", "basedir"), ("os", "system"), ("version", "version")):
        value = plain.pop(source, "")
        fields[key] = value if isinstance(value, str) else str(value)
    return WorkerInfo(commands=commands, extra=plain, **fields)


def hello_info(info: WorkerInfo) -> dict[str, JSON]:
    """The few facts of a PB worker worth showing in ``status`` (its hello is small)."""
    out: dict[str, JSON] = {"backend": "pb", "os": info.os, "version": info.version}
    out["basedir"] = info.basedir[:MAX_HELLO_VALUE]
    for key in HELLO_INFO_KEYS:
        value = info.extra.get(key)
        if isinstance(value, str):
            out[key] = value.strip()[:MAX_HELLO_VALUE]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
    return out


def info_to_pb(info: WorkerInfo, environ: Mapping[str, str]) -> dict[str, Any]:
    """A wiremsg worker's :class:`~wiremsg.vocabulary.WorkerInfo` → what a Buildbot master
    expects from ``getWorkerInfo()``: ``worker_commands``, ``basedir``, ``system`` (``posix``),
    ``version``, ``environ`` and the ``extra`` facts (``admin``, ``host``, ``numcpus``...)."""
    out: dict[str, Any] = {k: v for k, v in info.extra.items() if isinstance(v, str | int | float)}
    out.update(
        worker_commands=dict(info.commands),
        basedir=info.basedir,
        system=os.name,
        version=info.version,
        environ=dict(environ),
        delete_leftover_dirs=False,
    )
    return out


# -- commands ---------------------------------------------------------------------------------

_SHELL_TO_PB = {ours: theirs for theirs, ours in BUILDBOT_SHELL_ARGS.items()}

# Per command, the arguments that are paths relative to the builder's directory.
_PATH_ARGS: Mapping[str, tuple[str, ...]] = {
    SHELL: ("workdir",),
    MKDIR: ("dir",),
    RMDIR: ("dir",),
    CPDIR: ("fromdir", "todir"),
    STAT: ("workdir",),
    GLOB: ("path",),
    LISTDIR: ("dir",),
    RMFILE: ("path",),
    **dict.fromkeys(TRANSFER_COMMANDS, ("workdir",)),
}


def rebase_args(command: str, args: Mapping[str, Any], builddir: str) -> dict[str, Any]:
    """``args`` with each path argument of ``command`` put under ``builddir`` (a PB worker's
    paths are relative to its builder's directory, a wiremsg worker's to its basedir)."""
    out = dict(args)
    if not builddir or builddir == ".":
        return out
    for key in _PATH_ARGS.get(canonical_command(command), ()):
        value = out.get(key)
        if value is None and key == "workdir":
            value = ""
        if isinstance(value, str):
            out[key] = posixpath.join(builddir, value) if value else builddir
        elif isinstance(value, list):
            out[key] = [posixpath.join(builddir, v) if isinstance(v, str) else v for v in value]
    return out


def _env_from_pb(env: object, environ: Mapping[str, str]) -> dict[str, str | None]:
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise TranslationError("startCommand.args.env: expected a dict")
    out: dict[str, str | None] = {}
    for key, value in env.items():
        name = _text(key, "startCommand.args.env key")
        if value is None:
            out[name] = None
            continue
        if isinstance(value, list | tuple):  # Buildbot joins a list with the path separator
            value = os.pathsep.join(_text(v, f"env.{name}") for v in value)
        text = _text(value, f"env.{name}")
        out[name] = _ENV_VAR.sub(lambda m: environ.get(m.group(1), ""), text)
    return out


def start_from_pb(
    command_id: object,
    command: object,
    args: object,
    builddir: str = "",
    environ: Mapping[str, str] | None = None,
) -> dict[str, JSON]:
    """PB ``startCommand(ref, id, name, args)`` → a ``start_command`` body.

    Remote references in ``args`` (``writer``, ``reader``) are left out: the caller keeps them.
    Shell arguments get their snake_case names, ``env`` lists are joined and ``${VAR}`` is
    expanded from ``environ`` as Buildbot's worker does; paths are put under ``builddir``.

    :raises TranslationError: an id or name that is not text, or args that are not plain data.
    """
    cid = _text(command_id, "startCommand.command_id")
    name = canonical_command(_text(command, "startCommand.command"))
    if not isinstance(args, dict):
        raise TranslationError("startCommand.args: expected a dict")
    raw = {_text(k, "startCommand.args key"): v for k, v in args.items()}
    raw.pop("writer", None)
    raw.pop("reader", None)
    if name == SHELL:
        raw = {BUILDBOT_SHELL_ARGS.get(k, k): v for k, v in raw.items()}
        raw["env"] = _env_from_pb(raw.get("env"), environ or {})
    plain = _json(rebase_args(name, raw, builddir), "startCommand.args")
    try:
        return StartCommand(cid, name, plain).to_body()  # type: ignore[arg-type]
    except BodyError as exc:
        raise TranslationError(str(exc)) from None


def start_to_pb(body: object) -> tuple[str, str, dict[str, Any]]:
    """A ``start_command`` body → ``(command_id, name, args)`` for PB ``startCommand``, with
    Buildbot's camelCase shell arguments, and every argument of a file command (defaults
    filled in). The caller adds ``writer``/``reader`` references.

    :raises TranslationError: the body is not a ``start_command``.
    """
    try:
        start = StartCommand.from_body(body)
    except BodyError as exc:
        raise TranslationError(str(exc)) from None
    name = canonical_command(start.command)
    args: dict[str, Any] = dict(start.args)
    if name == SHELL:
        args = {_SHELL_TO_PB.get(k, k): v for k, v in args.items()}
    elif name in FILE_COMMANDS:  # Buildbot's worker needs every argument its master sends
        try:
            args = file_args(name, args)
        except BodyError as exc:
            raise TranslationError(str(exc)) from None
    return start.command_id, name, args
