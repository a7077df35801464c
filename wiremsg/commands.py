"""The master's side of remote commands: start one on a worker, follow its updates, end it.

A :class:`CommandTracker` sends ``start_command`` to a worker, routes the worker's ``update``
and ``complete`` messages to the right :class:`RemoteCommand` by ``command_id`` (and checks
they come from the worker that runs it), and fails the command if the worker is lost. The HTTP
control endpoint, the PB bridge and applications all start commands through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from wiremsg.errors import Timeout, WiremsgError
from wiremsg.master import Master, Peer
from wiremsg.message import Message
from wiremsg.transfer import Reader, TransferError, Writer
from wiremsg.vocabulary import (
    COMPLETE,
    FILE_CLOSE,
    FILE_READ,
    FILE_UNPACK,
    FILE_UTIME,
    FILE_WRITE,
    INTERRUPT,
    START_COMMAND,
    UPDATE,
    BodyError,
    FileChunk,
    FileDone,
    FileRead,
    FileUtime,
    FileWrite,
)

log = Logger()

START_TIMEOUT = 30.0
"""Seconds a worker may take to answer ``start_command``."""

UpdateHandler = Callable[[Mapping[str, Any]], None]


class CommandFailed(WiremsgError):
    """A remote command could not run to completion (refused, worker lost, interrupted
    before it started); the message says why."""


class RemoteCommand:
    """One command running on one worker. ``done`` fires with its exit code, or fails with
    :class:`CommandFailed`. Updates go to ``on_update`` as they arrive (each a dict with some
    of ``stdout``, ``stderr``, ``header``, ``rc``, ``elapsed``)."""

    def __init__(
        self,
        peer: Peer,
        command_id: str,
        on_update: UpdateHandler,
        writer: Writer | None = None,
        reader: Reader | None = None,
    ) -> None:
        self.peer = peer
        self.command_id = command_id
        self.on_update = on_update
        self.writer = writer
        """Where an upload's bytes go (see :mod:`wiremsg.transfer`), if it is one."""
        self.reader = reader
        """Where a download's bytes come from, if it is one."""
        self.transfer_error: str | None = None
        """Why the transfer failed on this side (too much data, bad archive, ...), if it did."""
        self.rc: int | None = None
        self.failure: Mapping[str, Any] | None = None
        """The ``failure`` of ``complete`` (e.g. ``{"code": "timeout", ...}``), if any."""
        self.done: Deferred[int] = Deferred()

    @property
    def finished(self) -> bool:
        """True once ``done`` has fired."""
        return self.done.called

    def interrupt(self, why: str = "") -> Deferred[Message]:
        """Ask the worker to interrupt the command (it kills the process group); the command
        then completes with the signal's exit code. Fires with the worker's answer."""
        return self.peer.request(
            INTERRUPT, {"command_id": self.command_id, "why": why}, timeout=START_TIMEOUT
        )

    def _finish(self, rc: int | None, failure: Mapping[str, Any] | None) -> None:
        if self.done.called:
            return
        self._end_transfer()
        if self.transfer_error is not None and not rc:
            rc = 1
        self.failure = failure
        if failure is not None and rc is None:
            reason = failure.get("reason", "") if isinstance(failure, Mapping) else ""
            self.done.errback(CommandFailed(f"{self.peer.name}: {reason or 'command failed'}"))
        else:
            self.done.callback(rc if rc is not None else -1)

    def _fail(self, message: str) -> None:
        if not self.done.called:
            self._end_transfer()
            self.done.errback(CommandFailed(message))

    def _end_transfer(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
        if self.reader is not None:
            self.reader.close()


class CommandTracker:
    """Starts commands on a master's workers and routes their updates.

    :param master: the master whose workers run the commands; the tracker registers the
        ``update`` and ``complete`` handlers on it.
    """

    def __init__(self, master: Master) -> None:
        self.master = master
        self._commands: dict[str, RemoteCommand] = {}
        master.on(UPDATE, self._update)
        master.on(COMPLETE, self._complete)
        master.on(FILE_WRITE, self._file_write)
        master.on(FILE_UTIME, self._file_utime)
        master.on(FILE_CLOSE, self._file_close)
        master.on(FILE_UNPACK, self._file_unpack)
        master.on(FILE_READ, self._file_read)

    def start(
        self,
        peer: Peer,
        args: Mapping[str, Any],
        on_update: UpdateHandler,
        command: str = "shell",
        *,
        writer: Writer | None = None,
        reader: Reader | None = None,
    ) -> RemoteCommand:
        """Start ``command`` with Buildbot-style ``args`` on ``peer``. An upload
        (``uploadFile``, ``uploadDirectory``) needs a ``writer``, a ``downloadFile`` a
        ``reader`` (see :mod:`wiremsg.transfer`)."""
        command_id = os.urandom(8).hex()
        cmd = RemoteCommand(peer, command_id, on_update, writer, reader)
        self._commands[command_id] = cmd
        cmd.done.addBoth(self._forget, command_id)
        started = peer.request(
            START_COMMAND,
            {"command_id": command_id, "command": command, "args": dict(args)},
            timeout=START_TIMEOUT,
        )

        def not_started(f: Failure) -> None:
            cmd._fail(f"{peer.name}: could not start: {f.getErrorMessage()}")
            if isinstance(f.value, Timeout):  # it may yet start: do not leave it running unobserved
                cmd.interrupt("the master gave up waiting for it to start").addErrback(
                    lambda _: None
                )

        started.addErrback(not_started)
        lost = peer.when_lost()
        lost.addCallbacks(
            lambda p: cmd._fail(f"worker {p.name} was lost during the command"),
            lambda f: f.trap(CancelledError),
        )  # cancelled: the command ended
        cmd.done.addBoth(self._cancel, lost)
        return cmd

    @property
    def running(self) -> list[RemoteCommand]:
        """Commands started and not yet finished."""
        return list(self._commands.values())

    @staticmethod
    def _cancel(result: Any, d: Deferred[Any]) -> Any:
        if not d.called:
            d.cancel()
        return result

    def _forget(self, result: int | Failure, command_id: str) -> int | Failure:
        self._commands.pop(command_id, None)
        return result

    def _lookup(self, peer: Peer, msg: Message) -> RemoteCommand | None:
        body = msg.body
        command_id = body.get("command_id") if isinstance(body, dict) else None
        cmd = self._commands.get(command_id) if isinstance(command_id, str) else None
        if cmd is None or cmd.peer.name != peer.name:
            log.warn(
                "{kind} for unknown command {id!r} from {name}",
                kind=msg.kind,
                id=command_id,
                name=peer.name,
            )
            return None
        return cmd

    def _update(self, peer: Peer, msg: Message) -> None:
        cmd = self._lookup(peer, msg)
        if cmd is None:
            return
        body: dict[str, Any] = msg.body  # type: ignore[assignment]
        if type(body.get("rc")) is int:  # not a bool
            cmd.rc = body["rc"]
        try:
            cmd.on_update(body)
        except Exception:
            log.failure("update handler of command {id} failed", id=cmd.command_id)

    def _complete(self, peer: Peer, msg: Message) -> None:
        cmd = self._lookup(peer, msg)
        if cmd is None:
            return
        body: dict[str, Any] = msg.body  # type: ignore[assignment]
        failure = body.get("failure")
        cmd._finish(cmd.rc, failure if isinstance(failure, Mapping) else None)

    # -- transfers ----------------------------------------------------------------------------

    def _transfer(self, peer: Peer, msg: Message, parse: Any) -> tuple[RemoteCommand, Any] | None:
        cmd = self._lookup(peer, msg)
        if cmd is None:
            return None
        try:
            return cmd, parse(msg.body)
        except BodyError as exc:
            self._transfer_failed(cmd, str(exc))
            return None

    @staticmethod
    def _transfer_failed(cmd: RemoteCommand, why: str) -> None:
        if cmd.transfer_error is None:
            cmd.transfer_error = why
            log.warn("transfer of command {id} failed: {why}", id=cmd.command_id, why=why)
            if cmd.writer is not None:
                cmd.writer.cancel()

    def _apply(self, cmd: RemoteCommand, action: Callable[[Writer], None]) -> None:
        if cmd.transfer_error is not None:
            return
        if cmd.writer is None:
            self._transfer_failed(cmd, "the worker sent data for a command without a writer")
            return
        try:
            action(cmd.writer)
        except (TransferError, OSError) as exc:
            self._transfer_failed(cmd, str(exc))

    def _file_write(self, peer: Peer, msg: Message) -> None:
        found = self._transfer(peer, msg, FileWrite.from_body)
        if found is not None:
            cmd, write = found
            self._apply(cmd, lambda w: w.write(write.data))

    def _file_utime(self, peer: Peer, msg: Message) -> None:
        found = self._transfer(peer, msg, FileUtime.from_body)
        if found is not None:
            cmd, stamp = found
            self._apply(cmd, lambda w: w.utime(stamp.atime, stamp.mtime))

    def _file_close(self, peer: Peer, msg: Message) -> None:
        found = self._transfer(peer, msg, FileDone.from_body)
        if found is None:
            return
        cmd = found[0]
        if cmd.reader is not None:
            cmd.reader.close()
        else:
            self._apply(cmd, lambda w: w.close())

    def _file_unpack(self, peer: Peer, msg: Message) -> None:
        found = self._transfer(peer, msg, lambda b: FileDone.from_body(b, FILE_UNPACK))
        if found is not None:
            self._apply(found[0], lambda w: w.unpack())

    def _file_read(self, peer: Peer, msg: Message) -> dict[str, Any]:
        cmd = self._lookup(peer, msg)
        if cmd is None or cmd.reader is None:
            raise TransferError("no download is running for this command")
        request = FileRead.from_body(msg.body)
        return FileChunk(cmd.reader.read(request.length)).to_body()
