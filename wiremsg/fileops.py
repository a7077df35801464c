"""Buildbot's file commands on the worker: transfers and file-system operations.

:class:`FileCommand` runs one of :data:`~wiremsg.vocabulary.FILE_COMMANDS` for a
:class:`~wiremsg.runner.CommandRunner`, with Buildbot's argument names and update keys:

- ``mkdir``, ``rmdir``, ``cpdir``, ``rmfile``: ``rc`` (0, or the ``errno`` with a ``header``
  ``"mkdir: No such file or directory: PATH"`` as Buildbot words it).
- ``stat``: ``stat`` (the 10 numbers of ``os.stat``), ``rc``. ``glob`` and ``listdir``:
  ``files``, ``rc``.
- ``uploadFile``: a ``header`` ``"sending PATH"``, ``file_write`` blocks, ``file_close``, then
  ``file_utime`` when ``keepstamp``; ``uploadDirectory`` sends a tar (``compress``: none, gz,
  bz2) and ends with ``file_unpack``; ``downloadFile`` asks ``file_read`` until an empty block
  and sends ``file_close``. ``maxsize`` truncates, with ``stderr`` saying so and ``rc`` 1.
- Every command ends with ``stderr`` (if any), ``rc``, ``elapsed`` and ``complete``.

Better than Buildbot, where that is compatible: uploads do not wait for each block's answer
(the runner's flow control bounds what is in flight), downloads keep :data:`READ_AHEAD` reads
outstanding, and every path must stay inside the worker's basedir (Buildbot follows absolute
paths, ``..`` and ``~`` anywhere): one that leaves it ends the command with ``rc`` 1 and a
``header`` saying so.
"""

from __future__ import annotations

import glob
import os
import shutil
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from wiremsg.message import JSON, Message
from wiremsg.vocabulary import (
    COMPLETE,
    FILE_CLOSE,
    FILE_READ,
    FILE_UNPACK,
    FILE_UTIME,
    FILE_WRITE,
    UPDATE,
    Complete,
    FileChunk,
    FileDone,
    FileRead,
    FileUtime,
    FileWrite,
    Update,
)

if TYPE_CHECKING:
    from wiremsg.runner import CommandRunner

__all__ = ["READ_AHEAD", "READ_TIMEOUT", "FileCommand", "PathError"]

log = Logger()

READ_AHEAD = 4
"""``file_read`` requests a download keeps outstanding."""
READ_TIMEOUT = 120.0
"""Seconds one ``file_read`` may wait for its answer."""


class PathError(Exception):
    """A command's path leaves the worker's basedir."""


class _Interrupted(Exception):
    pass


class FileCommand:
    """One file command (see the module docstring); ``ended`` fires after ``complete``."""

    def __init__(
        self, runner: CommandRunner, command_id: str, command: str, args: dict[str, Any]
    ) -> None:
        self.runner = runner
        self.command_id = command_id
        self.command = command
        self.args = args
        self.ended: Deferred[None] = Deferred()
        self.interrupted = False
        self.rc = 0
        self.stderr: str | None = None
        self._start = runner.reactor.seconds()

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, kind: str, body: dict[str, JSON]) -> None:
        try:
            self.runner.send(kind, body)
        except Exception:
            log.failure("command {id}: cannot send {kind}", id=self.command_id, kind=kind)

    def _update(self, **keys: Any) -> None:
        extra: dict[str, JSON] = {k: keys.pop(k) for k in ("stat", "files") if k in keys}
        self._send(UPDATE, Update(self.command_id, extra=extra, **keys).to_body())

    async def _writable(self) -> None:
        flow = self.runner.flow
        if not flow.writable:
            await flow.when_writable()

    def path(self, *parts: str) -> str:
        """``parts`` joined under the basedir. :raises PathError: if it leaves the basedir."""
        base = self.runner.basedir
        joined = os.path.normpath(os.path.join(base, *(os.path.expanduser(p) for p in parts)))
        real_base = os.path.realpath(base)
        parent = os.path.realpath(os.path.dirname(joined))
        inside = os.path.commonpath([real_base, parent]) == real_base
        if not inside or os.path.commonpath([base, joined]) != base:
            raise PathError(f"{os.path.join(*parts)} is outside the worker's basedir {base}")
        return joined

    def interrupt(self) -> None:
        """Stop at the next block (transfers); the command ends with ``rc`` 1."""
        self.interrupted = True

    def run(self) -> Deferred[None]:
        """Run the command to its ``complete``; never fails."""
        d = Deferred.fromCoroutine(self._run())
        d.addErrback(lambda f: log.failure("command {id} crashed", f, id=self.command_id))
        d.addBoth(lambda _: self.ended.callback(None))
        return d

    async def _run(self) -> None:
        try:
            await getattr(self, f"_do_{self.command}")()
        except PathError as exc:
            self._update(header=f"{self.command}: {exc}\n")
            self.rc = 1
        except _Interrupted:
            self.rc = 1
        except OSError as exc:
            where = exc.filename or ""
            self._update(header=f"{self.command}: {exc.strerror or exc}: {where}\n")
            self.rc = exc.errno or 1
        except Exception as exc:
            log.failure("command {id} failed", id=self.command_id)
            self._update(header=f"{self.command}: {type(exc).__name__}: {exc}\n")
            self.rc = 1
        if self.stderr:
            self._update(stderr=self.stderr)
        self._update(rc=self.rc)
        if not self.interrupted:
            self._update(elapsed=self.runner.reactor.seconds() - self._start)
        self._send(COMPLETE, Complete(self.command_id).to_body())

    def _thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        reactor = self.runner.reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    def _paths(self) -> list[str]:
        value = self.args["dir"]
        return [self.path(p) for p in (value if isinstance(value, list) else [value])]

    # -- file-system commands ---------------------------------------------------------------

    async def _do_mkdir(self) -> None:
        for path in self._paths():
            os.makedirs(path, exist_ok=True)

    async def _do_rmdir(self) -> None:
        for path in self._paths():
            if path == os.path.normpath(self.runner.basedir):
                raise PathError("refusing to remove the worker's basedir itself")
            await self._thread(_remove_tree, path)

    async def _do_cpdir(self) -> None:
        src = self.path(str(self.args["fromdir"]))
        dst = self.path(str(self.args["todir"]))
        await self._thread(shutil.copytree, src, dst, True, None, shutil.copy2, False, True)

    async def _do_stat(self) -> None:
        st = os.stat(self.path(str(self.args["workdir"]), str(self.args["file"])))
        self._update(stat=list(tuple(st)))

    async def _do_glob(self) -> None:
        pattern = self.path(str(self.args["path"]))
        self._update(files=sorted(glob.glob(pattern, recursive=True)))

    async def _do_listdir(self) -> None:
        self._update(files=sorted(os.listdir(self.path(str(self.args["dir"])))))

    async def _do_rmfile(self) -> None:
        os.remove(self.path(str(self.args["path"])))

    # -- transfers --------------------------------------------------------------------------

    def _source(self) -> str:
        return self.path(str(self.args["workdir"]), str(self.args["workersrc"]))

    async def _send_blocks(self, fp: IO[bytes], path: str) -> None:
        remaining = self.args.get("maxsize")
        blocksize = int(self.args["blocksize"])
        while not self.interrupted:
            length = blocksize if remaining is None else min(blocksize, int(remaining))
            if length <= 0:
                self.stderr = f"Maximum filesize reached, truncating file '{path}'"
                self.rc = 1
                return
            data = fp.read(length)
            if not data:
                return
            if remaining is not None:
                remaining = int(remaining) - len(data)
            self._send(FILE_WRITE, FileWrite(self.command_id, data).to_body())
            await self._writable()
        raise _Interrupted()

    async def _do_uploadFile(self) -> None:
        path = self._source()
        try:
            fp = open(path, "rb")
        except OSError:
            self.stderr = f"Cannot open file '{path}' for upload"
            self.rc = 1
            self._update(header=f"sending {path}\n")
            self._send(FILE_CLOSE, FileDone(self.command_id).to_body())
            return
        self._update(header=f"sending {path}\n")
        try:
            stamp = os.fstat(fp.fileno())
            await self._send_blocks(fp, path)
        finally:
            fp.close()
            self._send(FILE_CLOSE, FileDone(self.command_id).to_body())
        if self.args.get("keepstamp"):
            utime = FileUtime(self.command_id, stamp.st_atime, stamp.st_mtime)
            self._send(FILE_UTIME, utime.to_body())

    async def _do_uploadDirectory(self) -> None:
        path = self._source()
        compress = self.args.get("compress")
        with tempfile.TemporaryFile(prefix="wiremsg-transfer-") as fp:
            try:
                await self._thread(_tar, fp, path, compress)
            except OSError as exc:
                self.stderr = f"Cannot read directory '{path}' for upload: {exc}"
                self.rc = 1
                return
            fp.seek(0)
            self._update(header=f"sending {path}\n")
            await self._send_blocks(fp, path)
        self._send(FILE_UNPACK, FileDone(self.command_id).to_body())

    async def _do_downloadFile(self) -> None:
        path = self.path(str(self.args["workdir"]), str(self.args["workerdest"]))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fp = open(path, "wb")
            mode = self.args.get("mode")
            if isinstance(mode, int):
                os.chmod(path, mode)
        except OSError:
            self.stderr = f"Cannot open file '{path}' for download"
            self.rc = 1
            self._send(FILE_CLOSE, FileDone(self.command_id).to_body())
            return
        try:
            await self._receive_blocks(fp, path)
        finally:
            fp.close()
            self._send(FILE_CLOSE, FileDone(self.command_id).to_body())

    async def _receive_blocks(self, fp: IO[bytes], path: str) -> None:
        request = self.runner.request
        if request is None:
            raise RuntimeError("this runner cannot ask the master for data")
        blocksize = int(self.args["blocksize"])
        maxsize = self.args.get("maxsize")
        to_ask = None if maxsize is None else int(maxsize)
        asked: deque[Deferred[Message]] = deque()
        eof = False
        try:
            while not self.interrupted:
                while not eof and len(asked) < READ_AHEAD and (to_ask is None or to_ask > 0):
                    length = blocksize if to_ask is None else min(blocksize, to_ask)
                    body = FileRead(self.command_id, length).to_body()
                    asked.append(request(FILE_READ, body, READ_TIMEOUT))
                    if to_ask is not None:
                        to_ask -= length
                if not asked:
                    break
                reply = await asked.popleft()
                data = FileChunk.from_body(reply.body).data
                if not data:
                    eof = True
                    continue
                fp.write(data)
            else:
                raise _Interrupted()
        finally:
            for d in asked:
                d.addErrback(lambda _: None)
        if not eof:
            self.stderr = f"Maximum filesize reached, truncating file '{path}'"
            self.rc = 1


def _remove_tree(path: str) -> None:
    def retry(func: Callable[..., Any], target: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(target) or ".", 0o700)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, 0o700)
        func(target)

    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, onerror=retry)


def _tar(fp: IO[bytes], path: str, compress: str | None) -> None:
    if not os.path.isdir(path):
        raise NotADirectoryError(20, "Not a directory", path)
    mode = {"gz": "w|gz", "bz2": "w|bz2"}.get(compress or "", "w")
    with tarfile.open(mode=mode, fileobj=fp) as archive:  # type: ignore[call-overload]
        archive.add(path, "")
