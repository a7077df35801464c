"""What a build says: the message kinds between a master and a worker, and their bodies.

The kinds mirror Buildbot's worker API (see BUILDBOT-PB.md §1.2 to §1.5) so that a PB bridge
translates each way without loss. Every body is a plain JSON object; each has a frozen dataclass
here whose ``to_body()`` builds it and whose ``from_body()`` checks a received one, raising
:class:`BodyError` naming the offending field (``start_command.args.workdir: ...``). Keys a
class does not know are ignored, except where it has an ``extra`` field, which keeps them (so a
bridge can carry Buildbot-only keys through untouched).

``worker_info`` (request, master → worker; body ``{}``)
    Reply :class:`WorkerInfo`: ``{commands: {name: version}, basedir, os, version, ...}``; the
    worker may add any other keys (Buildbot's ``admin``, ``host``, ``numcpus``, ...).
``start_command`` (request, master → worker) — :class:`StartCommand`
    ``{command_id, command: "shell", args}``; for ``shell``, ``args`` is :class:`ShellArgs`:
    ``{command: str | [str, ...], workdir, env: {name: str | null}, timeout, max_time,
    want_stdout, want_stderr, initial_stdin, sigterm_time, ...}``. The reply is ``{}`` once the
    process runs, or an error whose code is one of :data:`BAD_BODY`, :data:`UNKNOWN_COMMAND`,
    :data:`DUPLICATE_COMMAND`, :data:`SPAWN_FAILED`. A command that failed to start sends no
    ``update`` or ``complete``.
``update`` (one-way, worker → master) — :class:`Update`
    ``{command_id, header?, stdout?, stderr?, failure_reason?, rc?, elapsed?}``: Buildbot's
    update keys. Text arrives in order per stream; a worker may put several keys in one update,
    which a receiver applies in that field order. ``rc`` is negative (``-signal``) when a signal
    ended the process. Buildbot-only keys (``log``, ``stat``, ``files``) go in ``extra``.
``complete`` (one-way, worker → master) — :class:`Complete`
    ``{command_id, failure?: {code, reason}}``: the last message about a command. ``failure``
    is set when the command was killed by :data:`TIMEOUT` (``max_time``) or
    :data:`TIMEOUT_WITHOUT_OUTPUT` (``timeout``); an interrupt is not a failure.
``interrupt`` (request, master → worker) — :class:`Interrupt`
    ``{command_id, why}``; reply :class:`InterruptReply` ``{interrupted: bool}`` (false when
    no such command is running, e.g. it just finished; its ``complete`` is then on its way).
``print`` (one-way, master → worker) — :class:`Print`
    ``{message}``: text for the worker's log (Buildbot's "attached", "ping", "keepalive").
``shutdown`` (request, master → worker) — :class:`Shutdown`
    ``{}``; reply ``{}``, then the worker stops.

File commands and transfers. ``start_command`` also runs Buildbot's file commands
(:data:`FILE_COMMANDS`: ``uploadFile``, ``uploadDirectory``, ``downloadFile``, ``mkdir``,
``rmdir``, ``cpdir``, ``stat``, ``glob``, ``listdir``, ``rmfile``) with Buildbot's argument
names, checked by :func:`file_args`. Their results are ``update`` keys (``rc``, ``stat``,
``files``, ``stderr``, ``header``). A transfer's bytes travel in messages tied to the command,
base64 in JSON, pipelined (the session orders and flow-controls them, so no block waits for
the previous one's answer):

``file_write`` (one-way, worker → master) — :class:`FileWrite`
    ``{command_id, data}``: the next block of an upload (a file, or a tar of a directory).
``file_utime`` (one-way, worker → master) — :class:`FileUtime`
    ``{command_id, atime, mtime}``: stamp the uploaded file (``keepstamp``), after its close.
``file_close`` (one-way, either way's end) — :class:`FileDone`
    ``{command_id}``: the upload is complete (rename it into place), or a download is done.
``file_unpack`` (one-way, worker → master) — :class:`FileDone`
    ``{command_id}``: the directory upload is complete: unpack the tar.
``file_read`` (request, worker → master) — :class:`FileRead`
    ``{command_id, length}``; reply :class:`FileChunk` ``{data}`` with at most ``length``
    bytes, empty at the end. A worker may keep several reads outstanding.

Buildbot's camelCase shell arguments map to ours by :data:`BUILDBOT_SHELL_ARGS`.
"""

from __future__ import annotations

import base64
import binascii
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from wiremsg.errors import MessageError
from wiremsg.message import JSON

__all__ = [
    "BAD_BODY",
    "BUILDBOT_SHELL_ARGS",
    "COMMANDS",
    "COMMAND_ALIASES",
    "COMMAND_VERSION",
    "COMPLETE",
    "CPDIR",
    "DOWNLOAD_FILE",
    "DUPLICATE_COMMAND",
    "FILE_CLOSE",
    "FILE_COMMANDS",
    "FILE_READ",
    "FILE_UNPACK",
    "FILE_UTIME",
    "FILE_WRITE",
    "GLOB",
    "INTERRUPT",
    "KINDS",
    "LISTDIR",
    "MAX_BLOCKSIZE",
    "MKDIR",
    "PRINT",
    "RMDIR",
    "RMFILE",
    "SHELL",
    "SHUTDOWN",
    "SPAWN_FAILED",
    "START_COMMAND",
    "STAT",
    "TIMEOUT",
    "TIMEOUT_WITHOUT_OUTPUT",
    "TRANSFER_COMMANDS",
    "UNKNOWN_COMMAND",
    "UPDATE",
    "UPLOAD_DIRECTORY",
    "UPLOAD_FILE",
    "WORKER_INFO",
    "BodyError",
    "CommandFailure",
    "Complete",
    "FileChunk",
    "FileDone",
    "FileRead",
    "FileUtime",
    "FileWrite",
    "Interrupt",
    "InterruptReply",
    "Print",
    "ShellArgs",
    "Shutdown",
    "StartCommand",
    "Update",
    "WorkerInfo",
    "canonical_command",
    "file_args",
]

# -- kinds ----------------------------------------------------------------------------------------

WORKER_INFO = "worker_info"
"""Request, master → worker: what the worker is and which commands it runs."""
START_COMMAND = "start_command"
"""Request, master → worker: start a command (reply ``{}`` once it runs)."""
UPDATE = "update"
"""One-way, worker → master: a command's output and status."""
COMPLETE = "complete"
"""One-way, worker → master: a command ended (the last message about it)."""
INTERRUPT = "interrupt"
"""Request, master → worker: kill a running command."""
PRINT = "print"
"""One-way, master → worker: a line for the worker's log."""
SHUTDOWN = "shutdown"
"""Request, master → worker: stop the worker process."""

FILE_WRITE = "file_write"
"""One-way, worker → master: the next block of an upload."""
FILE_UTIME = "file_utime"
"""One-way, worker → master: the uploaded file's access and modification times."""
FILE_CLOSE = "file_close"
"""One-way, worker → master: an upload is complete, or a download is done."""
FILE_UNPACK = "file_unpack"
"""One-way, worker → master: a directory upload is complete; unpack it."""
FILE_READ = "file_read"
"""Request, worker → master: the next block of a download (empty at the end)."""

KINDS = frozenset(
    {
        WORKER_INFO,
        START_COMMAND,
        UPDATE,
        COMPLETE,
        INTERRUPT,
        PRINT,
        SHUTDOWN,
        FILE_WRITE,
        FILE_UTIME,
        FILE_CLOSE,
        FILE_UNPACK,
        FILE_READ,
    }
)
"""Every kind this module defines."""

SHELL = "shell"
"""The command name of a shell command (Buildbot's ``shell``)."""
UPLOAD_FILE = "uploadFile"
"""Send a worker's file to the master (``file_write``..., ``file_close``, ``file_utime``)."""
UPLOAD_DIRECTORY = "uploadDirectory"
"""Send a worker's directory to the master as a tar (``file_write``..., ``file_unpack``)."""
DOWNLOAD_FILE = "downloadFile"
"""Fetch a file from the master (``file_read``..., ``file_close``)."""
MKDIR = "mkdir"
"""Create directories (``dir``: one path or a list)."""
RMDIR = "rmdir"
"""Remove directory trees (``dir``: one path or a list)."""
CPDIR = "cpdir"
"""Copy a directory tree (``fromdir`` → ``todir``)."""
STAT = "stat"
"""``os.stat`` a file; the result is the ``stat`` update key (a list of 10 numbers)."""
GLOB = "glob"
"""Expand a pattern (``**`` recursive); the result is the ``files`` update key."""
LISTDIR = "listdir"
"""List a directory; the result is the ``files`` update key."""
RMFILE = "rmfile"
"""Remove one file."""

FILE_COMMANDS = (
    UPLOAD_FILE,
    UPLOAD_DIRECTORY,
    DOWNLOAD_FILE,
    MKDIR,
    RMDIR,
    CPDIR,
    STAT,
    GLOB,
    LISTDIR,
    RMFILE,
)
"""Buildbot's file commands, which the runner executes besides ``shell``."""
COMMANDS = (SHELL, *FILE_COMMANDS)
"""Every command a wiremsg worker runs (and announces in ``worker_info``)."""
TRANSFER_COMMANDS = frozenset({UPLOAD_FILE, UPLOAD_DIRECTORY, DOWNLOAD_FILE})
"""The commands that move a file's bytes in ``file_*`` messages."""
COMMAND_ALIASES: Mapping[str, str] = {
    "upload_file": UPLOAD_FILE,
    "upload_directory": UPLOAD_DIRECTORY,
    "download_file": DOWNLOAD_FILE,
}
"""Buildbot's snake_case aliases of the transfer commands."""
MAX_BLOCKSIZE = 512 * 1024
"""The largest transfer block: Buildbot's PB carries at most 640 KiB in one string."""
COMMAND_VERSION = "3.3"
"""The version reported for each command in ``worker_info`` (Buildbot's ``command_version``)."""

# -- error and failure codes ----------------------------------------------------------------------

BAD_BODY = "bad_body"
"""A request's body does not have its kind's shape."""
UNKNOWN_COMMAND = "unknown_command"
"""``start_command`` names a command this worker does not run."""
DUPLICATE_COMMAND = "duplicate_command"
"""``start_command`` reuses the id of a command still running."""
SPAWN_FAILED = "spawn_failed"
"""The process could not be started (no such program, not executable, ...)."""
TIMEOUT = "timeout"
"""The command ran longer than ``max_time`` and was killed (Buildbot's ``failure_reason``)."""
TIMEOUT_WITHOUT_OUTPUT = "timeout_without_output"
"""The command printed nothing for ``timeout`` seconds and was killed."""

BUILDBOT_SHELL_ARGS: Mapping[str, str] = {
    "maxTime": "max_time",
    "sigtermTime": "sigterm_time",
}
"""Buildbot shell argument names that differ from ours (others are spelt alike)."""


class BodyError(MessageError):
    """A body does not have its kind's shape; ``path`` names the field (e.g. ``update.rc``)."""

    code = BAD_BODY
    """The error code a worker answers a malformed request with."""


# -- field readers --------------------------------------------------------------------------------


def _object(body: object, path: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BodyError(path, f"must be an object, not {type(body).__name__}")
    return body


def _text(value: str, path: str) -> str:
    if "\x00" in value:
        raise BodyError(path, "must not contain NUL characters")
    return value


def _str(d: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
    value = d.get(key)
    if value is None:
        if default is None:
            raise BodyError(f"{path}.{key}", "is required")
        return default
    if not isinstance(value, str):
        raise BodyError(f"{path}.{key}", f"must be a string, not {type(value).__name__}")
    return value


def _opt_str(d: Mapping[str, Any], key: str, path: str) -> str | None:
    return None if d.get(key) is None else _str(d, key, path)


def _id(d: Mapping[str, Any], path: str) -> str:
    value = _str(d, "command_id", path)
    if not value:
        raise BodyError(f"{path}.command_id", "must not be empty")
    return value


def _bool(d: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BodyError(f"{path}.{key}", f"must be true or false, not {type(value).__name__}")
    return value


def _opt_int(d: Mapping[str, Any], key: str, path: str) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BodyError(f"{path}.{key}", f"must be an integer, not {type(value).__name__}")
    return value


def _number(value: object, path: str, positive: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BodyError(path, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise BodyError(path, f"must be a {kind} finite number, not {value!r}")
    return float(value)


def _opt_number(d: Mapping[str, Any], key: str, path: str, positive: bool = False) -> float | None:
    return _number(d.get(key), f"{path}.{key}", positive)


def _or_empty(value: object) -> object:
    return {} if value is None else value


def _extra(d: Mapping[str, Any], known: frozenset[str]) -> dict[str, JSON]:
    return {k: v for k, v in d.items() if k not in known}


def _put(body: dict[str, JSON], **fields: JSON) -> dict[str, JSON]:
    body.update((k, v) for k, v in fields.items() if v is not None)
    return body


# -- bodies ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInfo:
    """The reply to ``worker_info``.

    :param commands: the commands the worker runs, by name, with their versions.
    :param basedir: the worker's base directory (absolute).
    :param os: the operating system (``sys.platform``: ``linux``, ``darwin``, ...).
    :param version: the worker software's version.
    :param extra: any further facts, sent as top-level keys (Buildbot's ``admin``, ...).
    """

    commands: Mapping[str, str]
    basedir: str
    os: str
    version: str
    extra: Mapping[str, JSON] = field(default_factory=dict)

    _KNOWN = frozenset({"commands", "basedir", "os", "version"})

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        return {
            **self.extra,
            "commands": dict(self.commands),
            "basedir": self.basedir,
            "os": self.os,
            "version": self.version,
        }

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        path = WORKER_INFO
        d = _object(body, path)
        commands = _object(_or_empty(d.get("commands")), f"{path}.commands")
        for name, version in commands.items():
            if not isinstance(version, str):
                raise BodyError(f"{path}.commands.{name}", "must be a version string")
        return cls(
            commands=dict(commands),
            basedir=_str(d, "basedir", path, ""),
            os=_str(d, "os", path, ""),
            version=_str(d, "version", path, ""),
            extra=_extra(d, cls._KNOWN),
        )


@dataclass(frozen=True)
class StartCommand:
    """A ``start_command`` request: run ``command`` (e.g. :data:`SHELL`) with ``args``.

    ``args`` stays a raw object here; parse a shell command's with :meth:`ShellArgs.from_body`.
    """

    command_id: str
    command: str
    args: Mapping[str, JSON] = field(default_factory=dict)

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        return {"command_id": self.command_id, "command": self.command, "args": dict(self.args)}

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        path = START_COMMAND
        d = _object(body, path)
        command = _str(d, "command", path)
        if not command:
            raise BodyError(f"{path}.command", "must not be empty")
        return cls(_id(d, path), command, _object(_or_empty(d.get("args")), f"{path}.args"))


_ARGS = f"{START_COMMAND}.args"


@dataclass(frozen=True)
class ShellArgs:
    """The ``args`` of a ``shell`` command (Buildbot's, in snake_case).

    :param command: an argv list (run as is, looked up on the command's ``PATH``) or a string
        (run by ``/bin/sh -c``).
    :param workdir: relative to the worker's basedir, which it may not leave; created if
        missing. ``"."`` is the basedir itself.
    :param env: variables set on top of the worker's environment; ``None`` removes one.
    :param timeout: kill the command after this many seconds without output (None: never).
    :param max_time: kill the command after this many seconds in all (None: never).
    :param want_stdout: send stdout (else it is read and dropped); likewise ``want_stderr``.
    :param initial_stdin: text written to the command's stdin, which is then closed (it is
        closed at once without it).
    :param sigterm_time: seconds between SIGTERM and SIGKILL when killing (None: the
        runner's default).
    :param extra: keys not listed here (Buildbot's ``usePTY``, ``logfiles``, ...), kept as is.
    """

    command: str | tuple[str, ...]
    workdir: str = "."
    env: Mapping[str, str | None] = field(default_factory=dict)
    timeout: float | None = None
    max_time: float | None = None
    want_stdout: bool = True
    want_stderr: bool = True
    initial_stdin: str | None = None
    sigterm_time: float | None = None
    extra: Mapping[str, JSON] = field(default_factory=dict)

    _KNOWN = frozenset(
        {
            "command",
            "workdir",
            "env",
            "timeout",
            "max_time",
            "want_stdout",
            "want_stderr",
            "initial_stdin",
            "sigterm_time",
        }
    )

    def __post_init__(self) -> None:
        if isinstance(self.command, list):
            object.__setattr__(self, "command", tuple(self.command))
        if not self.workdir:
            object.__setattr__(self, "workdir", ".")
        self._check()

    def _check(self) -> None:
        path = _ARGS
        cmd = self.command
        if isinstance(cmd, str):
            if not cmd.strip():
                raise BodyError(f"{path}.command", "must not be empty")
            _text(cmd, f"{path}.command")
        else:
            if not cmd:
                raise BodyError(f"{path}.command", "must not be an empty list")
            for i, arg in enumerate(cmd):
                if not isinstance(arg, str):
                    raise BodyError(f"{path}.command[{i}]", "must be a string")
                _text(arg, f"{path}.command[{i}]")
            if not cmd[0]:
                raise BodyError(f"{path}.command[0]", "must not be empty")
        wd = _text(self.workdir, f"{path}.workdir")
        norm = posixpath.normpath(wd)
        if posixpath.isabs(wd) or norm == ".." or norm.startswith("../"):
            raise BodyError(f"{path}.workdir", f"{wd!r} is not inside the worker's basedir")
        for name, value in self.env.items():
            where = f"{path}.env.{name}"
            if not isinstance(name, str) or not name or "=" in name or "\x00" in name:
                raise BodyError(where, "is not a valid variable name")
            if value is not None and not isinstance(value, str):
                raise BodyError(where, "must be a string or null")
            if value is not None:
                _text(value, where)
        if self.initial_stdin is not None:
            _text(self.initial_stdin, f"{path}.initial_stdin")
        _number(self.timeout, f"{path}.timeout", positive=True)
        _number(self.max_time, f"{path}.max_time", positive=True)
        _number(self.sigterm_time, f"{path}.sigterm_time")

    @property
    def argv(self) -> list[str]:
        """The argv to execute: the list itself, or ``/bin/sh -c`` and the string."""
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return list(self.command)

    def to_body(self) -> dict[str, JSON]:
        """The JSON object (the ``args`` of a ``start_command``)."""
        cmd: JSON = self.command if isinstance(self.command, str) else list(self.command)
        body: dict[str, JSON] = {**self.extra, "command": cmd, "workdir": self.workdir}
        if self.env:
            body["env"] = dict(self.env)
        if not self.want_stdout:
            body["want_stdout"] = False
        if not self.want_stderr:
            body["want_stderr"] = False
        return _put(
            body,
            timeout=self.timeout,
            max_time=self.max_time,
            initial_stdin=self.initial_stdin,
            sigterm_time=self.sigterm_time,
        )

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received ``args`` object. :raises BodyError: naming the first bad field."""
        path = _ARGS
        d = _object(body, path)
        raw = d.get("command")
        command: str | tuple[str, ...]
        if isinstance(raw, str):
            command = raw
        elif isinstance(raw, list):
            command = tuple(raw)
        elif raw is None:
            raise BodyError(f"{path}.command", "is required")
        else:
            raise BodyError(f"{path}.command", "must be a string or a list of strings")
        return cls(
            command=command,
            workdir=_str(d, "workdir", path, "."),
            env=dict(_object(_or_empty(d.get("env")), f"{path}.env")),
            timeout=_opt_number(d, "timeout", path, positive=True),
            max_time=_opt_number(d, "max_time", path, positive=True),
            want_stdout=_bool(d, "want_stdout", path, True),
            want_stderr=_bool(d, "want_stderr", path, True),
            initial_stdin=_opt_str(d, "initial_stdin", path),
            sigterm_time=_opt_number(d, "sigterm_time", path),
            extra=_extra(d, cls._KNOWN),
        )


@dataclass(frozen=True)
class Update:
    """An ``update``: some of Buildbot's update keys for one command.

    :param header: text about the command (its command line, why it was killed, ...).
    :param stdout: the next piece of stdout (whole lines where possible).
    :param stderr: the next piece of stderr.
    :param failure_reason: :data:`TIMEOUT` or :data:`TIMEOUT_WITHOUT_OUTPUT` when killed so.
    :param rc: the exit code; ``-N`` when signal N ended the process.
    :param elapsed: seconds the command ran.
    :param extra: other Buildbot update keys (``log``, ``stat``, ``files``), kept as is.
    """

    command_id: str
    header: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    failure_reason: str | None = None
    rc: int | None = None
    elapsed: float | None = None
    extra: Mapping[str, JSON] = field(default_factory=dict)

    _KNOWN = frozenset(
        {"command_id", "header", "stdout", "stderr", "failure_reason", "rc", "elapsed"}
    )

    def to_body(self) -> dict[str, JSON]:
        """The JSON body (keys that are None are left out)."""
        return _put(
            {**self.extra, "command_id": self.command_id},
            header=self.header,
            stdout=self.stdout,
            stderr=self.stderr,
            failure_reason=self.failure_reason,
            rc=self.rc,
            elapsed=self.elapsed,
        )

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        path = UPDATE
        d = _object(body, path)
        return cls(
            command_id=_id(d, path),
            header=_opt_str(d, "header", path),
            stdout=_opt_str(d, "stdout", path),
            stderr=_opt_str(d, "stderr", path),
            failure_reason=_opt_str(d, "failure_reason", path),
            rc=_opt_int(d, "rc", path),
            elapsed=_opt_number(d, "elapsed", path),
            extra=_extra(d, cls._KNOWN),
        )


@dataclass(frozen=True)
class CommandFailure:
    """Why a command failed: a ``code`` (:data:`TIMEOUT`, ...) and a human ``reason``."""

    code: str
    reason: str

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        return {"code": self.code, "reason": self.reason}

    @classmethod
    def from_body(cls, body: object, path: str = f"{COMPLETE}.failure") -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        d = _object(body, path)
        return cls(_str(d, "code", path), _str(d, "reason", path, ""))


@dataclass(frozen=True)
class Complete:
    """A ``complete``: the command ended; ``failure`` says why if it failed to run properly."""

    command_id: str
    failure: CommandFailure | None = None

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        body: dict[str, JSON] = {"command_id": self.command_id}
        if self.failure is not None:
            body["failure"] = self.failure.to_body()
        return body

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        d = _object(body, COMPLETE)
        raw = d.get("failure")
        failure = None if raw is None else CommandFailure.from_body(raw)
        return cls(_id(d, COMPLETE), failure)


@dataclass(frozen=True)
class Interrupt:
    """An ``interrupt`` request: kill command ``command_id``, saying ``why``."""

    command_id: str
    why: str = ""

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        return {"command_id": self.command_id, "why": self.why}

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        d = _object(body, INTERRUPT)
        return cls(_id(d, INTERRUPT), _str(d, "why", INTERRUPT, ""))


@dataclass(frozen=True)
class InterruptReply:
    """The reply to ``interrupt``: whether a running command was found and is being killed."""

    interrupted: bool

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        return {"interrupted": self.interrupted}

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        path = f"{INTERRUPT} reply"
        return cls(_bool(_object(body, path), "interrupted", path, False))


@dataclass(frozen=True)
class Print:
    """A ``print``: a message for the worker's log."""

    message: str

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        return {"message": self.message}

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        return cls(_str(_object(body, PRINT), "message", PRINT, ""))


@dataclass(frozen=True)
class Shutdown:
    """A ``shutdown`` request: the worker answers ``{}`` and stops."""

    def to_body(self) -> dict[str, JSON]:
        """The JSON body (empty)."""
        return {}

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: if it is not an object."""
        _object(_or_empty(body), SHUTDOWN)
        return cls()


# -- file commands and transfers ------------------------------------------------------------------

_PATH = "path"
_PATHS = "paths"
_INT = "int"
_BOOL = "bool"

# Per command: argument → (type, required, default). A missing optional argument takes its
# default; keys not listed are kept as they are (Buildbot's ``logEnviron``, ``timeout``, ...).
_FILE_ARGS: Mapping[str, Mapping[str, tuple[str, bool, JSON]]] = {
    UPLOAD_FILE: {
        "workdir": (_PATH, False, "."),
        "workersrc": (_PATH, True, None),
        "maxsize": (_INT, False, None),
        "blocksize": (_INT, False, 256 * 1024),
        "keepstamp": (_BOOL, False, False),
    },
    UPLOAD_DIRECTORY: {
        "workdir": (_PATH, False, "."),
        "workersrc": (_PATH, True, None),
        "maxsize": (_INT, False, None),
        "blocksize": (_INT, False, 256 * 1024),
        "compress": ("compress", False, None),
    },
    DOWNLOAD_FILE: {
        "workdir": (_PATH, False, "."),
        "workerdest": (_PATH, True, None),
        "maxsize": (_INT, False, None),
        "blocksize": (_INT, False, 16 * 1024),
        "mode": (_INT, False, None),
    },
    MKDIR: {"dir": (_PATHS, True, None)},
    RMDIR: {"dir": (_PATHS, True, None)},
    CPDIR: {"fromdir": (_PATH, True, None), "todir": (_PATH, True, None)},
    STAT: {"file": (_PATH, True, None), "workdir": (_PATH, False, ".")},
    GLOB: {"path": (_PATH, True, None)},
    LISTDIR: {"dir": (_PATH, True, None)},
    RMFILE: {"path": (_PATH, True, None)},
}


def canonical_command(name: str) -> str:
    """A command's name with Buildbot's aliases resolved (``upload_file`` → ``uploadFile``)."""
    return COMMAND_ALIASES.get(name, name)


def file_args(command: str, args: object) -> dict[str, JSON]:
    """Check the ``args`` of a file command (:data:`FILE_COMMANDS`) and fill in defaults.

    Paths are strings relative to the worker's basedir (the runner refuses any that leave
    it); ``dir`` of ``mkdir``/``rmdir`` may be a list; ``blocksize`` is capped at
    :data:`MAX_BLOCKSIZE`. Unknown keys are kept.

    :raises BodyError: an unknown command, or naming the first bad argument.
    """
    path = _ARGS
    spec = _FILE_ARGS.get(canonical_command(command))
    if spec is None:
        raise BodyError(f"{START_COMMAND}.command", f"{command!r} is not a file command")
    d = dict(_object(_or_empty(args), path))
    for key, (kind, required, default) in spec.items():
        where = f"{path}.{key}"
        value = d.get(key)
        if value is None:
            if required:
                raise BodyError(where, "is required")
            d[key] = default
            continue
        if kind == _PATH:
            if not isinstance(value, str):
                raise BodyError(where, f"must be a string, not {type(value).__name__}")
            _text(value, where)
        elif kind == _PATHS:
            items = value if isinstance(value, list) else [value]
            if not items or not all(isinstance(v, str) and v for v in items):
                raise BodyError(where, "must be a path or a non-empty list of paths")
            for v in items:
                _text(v, where)
        elif kind == _INT:
            number = _opt_int(d, key, path)
            if number is not None and number < 0:
                raise BodyError(where, f"must not be negative, not {number}")
            if key == "blocksize":
                if not number:
                    raise BodyError(where, "must be positive")
                d[key] = min(number, MAX_BLOCKSIZE)
        elif kind == _BOOL:
            _bool(d, key, path, False)
        elif value not in ("gz", "bz2"):
            raise BodyError(where, f"must be null, 'gz' or 'bz2', not {value!r}")
    return d


def _b64(d: Mapping[str, Any], key: str, path: str) -> bytes:
    text = _str(d, key, path, "")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise BodyError(f"{path}.{key}", "is not base64") from None


def _b64_text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class FileWrite:
    """A ``file_write``: the next ``data`` block of command ``command_id``'s upload."""

    command_id: str
    data: bytes

    def to_body(self) -> dict[str, JSON]:
        """The JSON body (``data`` in base64)."""
        return {"command_id": self.command_id, "data": _b64_text(self.data)}

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        d = _object(body, FILE_WRITE)
        return cls(_id(d, FILE_WRITE), _b64(d, "data", FILE_WRITE))


@dataclass(frozen=True)
class FileUtime:
    """A ``file_utime``: set the uploaded file's access and modification times."""

    command_id: str
    atime: float
    mtime: float

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        return {"command_id": self.command_id, "atime": self.atime, "mtime": self.mtime}

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        d = _object(body, FILE_UTIME)
        atime = _opt_number(d, "atime", FILE_UTIME)
        mtime = _opt_number(d, "mtime", FILE_UTIME)
        if atime is None or mtime is None:
            raise BodyError(f"{FILE_UTIME}.atime", "atime and mtime are required")
        return cls(_id(d, FILE_UTIME), atime, mtime)


@dataclass(frozen=True)
class FileDone:
    """A ``file_close`` or ``file_unpack``: the transfer of ``command_id`` is complete."""

    command_id: str

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        return {"command_id": self.command_id}

    @classmethod
    def from_body(cls, body: object, kind: str = FILE_CLOSE) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        return cls(_id(_object(body, kind), kind))


@dataclass(frozen=True)
class FileRead:
    """A ``file_read`` request: up to ``length`` more bytes of ``command_id``'s download."""

    command_id: str
    length: int

    def to_body(self) -> dict[str, JSON]:
        """The JSON body."""
        return {"command_id": self.command_id, "length": self.length}

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        d = _object(body, FILE_READ)
        length = _opt_int(d, "length", FILE_READ)
        if length is None or length <= 0:
            raise BodyError(f"{FILE_READ}.length", "must be a positive integer")
        return cls(_id(d, FILE_READ), min(length, MAX_BLOCKSIZE))


@dataclass(frozen=True)
class FileChunk:
    """The reply to ``file_read``: the next bytes, empty at the end of the file."""

    data: bytes

    def to_body(self) -> dict[str, JSON]:
        """The JSON body (``data`` in base64)."""
        return {"data": _b64_text(self.data)}

    @classmethod
    def from_body(cls, body: object) -> Self:
        """Parse a received body. :raises BodyError: naming the first bad field."""
        path = f"{FILE_READ} reply"
        return cls(_b64(_object(body, path), "data", path))
