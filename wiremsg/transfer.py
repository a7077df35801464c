"""The master's ends of file transfers: where an upload's bytes go, where a download's come from.

A :class:`~wiremsg.commands.CommandTracker` routes a command's ``file_write`` / ``file_utime``
/ ``file_close`` / ``file_unpack`` messages to its *writer* and answers its ``file_read``
requests from its *reader*. These are the writers and readers Buildbot's master has
(``remotetransfer.py``), with the same behaviour: a file is written to a temporary name and
renamed into place on close; a directory arrives as a tar and is unpacked with the ``data``
filter (no absolute paths, no links out, no devices). Every byte comes from a worker, so every
limit is enforced here too: ``maxsize`` (a worker that sends more fails the transfer) and the
tar filter.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from typing import IO, Protocol

__all__ = [
    "BytesReader",
    "DirectoryWriter",
    "FileReader",
    "FileWriter",
    "Reader",
    "TransferError",
    "Writer",
]


class TransferError(Exception):
    """A transfer cannot go on (too much data, a bad archive, a closed writer)."""


class Writer(Protocol):
    """Receives an upload: ``write``s, then ``close`` (then perhaps ``utime``) or ``unpack``."""

    def write(self, data: bytes) -> None:
        """Append ``data``. :raises TransferError: beyond ``maxsize`` or after close."""

    def utime(self, atime: float, mtime: float) -> None:
        """Stamp the finished file."""

    def close(self) -> None:
        """The upload is complete."""

    def unpack(self) -> None:
        """The (directory) upload is complete: unpack it."""

    def cancel(self) -> None:
        """The command ended without completing the transfer: drop what was received."""


class Reader(Protocol):
    """Serves a download: ``read(n)`` until it returns ``b""``, then ``close``."""

    def read(self, length: int) -> bytes:
        """Up to ``length`` more bytes; ``b""`` at the end."""

    def close(self) -> None:
        """The download is done."""


class FileWriter:
    """Writes an upload to ``path`` (atomically: a temporary file renamed on close).

    :param maxsize: the most bytes accepted (None: no limit).
    :param mode: permission bits given to the file on close (None: leave the default).
    """

    def __init__(
        self, path: str | os.PathLike[str], maxsize: int | None = None, mode: int | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.maxsize = maxsize
        self.mode = mode
        self.size = 0
        """Bytes received so far."""
        self.closed = False
        """True once :meth:`close` renamed the file into place."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=directory, prefix=".wiremsg-upload-")
        self._fp: IO[bytes] | None = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        """Append ``data``. :raises TransferError: beyond ``maxsize`` or after close."""
        if self._fp is None:
            raise TransferError(f"{self.path}: write after close")
        if self.maxsize is not None and self.size + len(data) > self.maxsize:
            self.cancel()
            raise TransferError(f"{self.path}: more than maxsize ({self.maxsize}) bytes")
        self._fp.write(data)
        self.size += len(data)

    def close(self) -> None:
        """Rename the file into place (and apply ``mode``). Idempotent."""
        if self._fp is None:
            return
        self._fp.close()
        self._fp = None
        if self.mode is not None:
            os.chmod(self._tmp, self.mode)
        os.replace(self._tmp, self.path)
        self.closed = True

    def utime(self, atime: float, mtime: float) -> None:
        """Set the file's access and modification times (after :meth:`close`)."""
        os.utime(self.path if self.closed else self._tmp, (atime, mtime))

    def unpack(self) -> None:
        """A file writer has nothing to unpack: the same as :meth:`close`."""
        self.close()

    def cancel(self) -> None:
        """Drop the partial file (nothing happens after :meth:`close`)."""
        if self._fp is not None:
            self._fp.close()
            self._fp = None
            try:
                os.remove(self._tmp)
            except OSError:
                pass


class DirectoryWriter(FileWriter):
    """Receives a directory as a tar (plain, gz or bz2) and unpacks it into ``path`` on
    :meth:`unpack`, with tarfile's ``data`` filter. :raises TransferError: a bad archive."""

    def __init__(self, path: str | os.PathLike[str], maxsize: int | None = None) -> None:
        self.destination = os.fspath(path)
        os.makedirs(self.destination, exist_ok=True)
        fd, tar = tempfile.mkstemp(prefix=".wiremsg-dir-", suffix=".tar")
        os.close(fd)
        super().__init__(tar, maxsize)

    def unpack(self) -> None:
        """Close the archive and extract it into the destination, then delete it."""
        self.close()
        try:
            with tarfile.open(self.path) as archive:
                archive.extractall(self.destination, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise TransferError(f"cannot unpack into {self.destination}: {exc}") from None
        finally:
            os.remove(self.path)

    def cancel(self) -> None:
        """Drop the partial archive."""
        super().cancel()
        if self.closed and os.path.exists(self.path):
            os.remove(self.path)


class FileReader:
    """Serves the file at ``path`` for a download."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fp: IO[bytes] | None = open(os.fspath(path), "rb")

    def read(self, length: int) -> bytes:
        """Up to ``length`` more bytes; ``b""`` at the end or after close."""
        return self._fp.read(length) if self._fp is not None else b""

    def close(self) -> None:
        """Close the file. Idempotent."""
        if self._fp is not None:
            self._fp.close()
            self._fp = None


class BytesReader(FileReader):
    """Serves ``data`` from memory (Buildbot's ``StringDownload``)."""

    def __init__(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self._fp = io.BytesIO(raw)
