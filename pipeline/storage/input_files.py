"""Seekable binary files for readers that take file objects (libsndfile, pyarrow, hashing): an
object read in byte ranges, and a local file whose failed reads a C reader can survive."""

from __future__ import annotations

import io
from pathlib import Path

from pipeline.storage.errors import StorageError
from pipeline.storage.locations import ObjectPath
from pipeline.storage.s3 import s3_filesystem, with_retries

MIN_BLOCK, MAX_BLOCK = 64 << 10, 8 << 20  # read-ahead of ranged GETs (see ObjectFile)


class ObjectFile(io.RawIOBase):
    """An object as a seekable binary file. Reads are ranged GETs with a read-ahead that starts at
    MIN_BLOCK and doubles while reads continue where the last one ended (up to MAX_BLOCK), so a
    header check costs one small request and a long sequential decode few large ones.

    With quiet=True a failed read is kept in .error and reads as the end of the file: readers in C
    (libsndfile's callbacks) cannot receive a Python exception, so the caller checks .error after."""

    def __init__(self, where: ObjectPath, quiet: bool = False):
        self.where, self.quiet, self.error = where, quiet, None
        self._file = with_retries(lambda: s3_filesystem().open_input_file(where.fs_path), where)
        self._size = self._file.size()
        self._pos = 0
        self._buffer, self._buffer_start = b"", 0
        self._block = MIN_BLOCK

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._size - self._pos)
        if count <= 0 or self.error is not None:
            return 0
        offset = self._pos - self._buffer_start
        if not (0 <= offset and offset + count <= len(self._buffer)):
            sequential = self._pos == self._buffer_start + len(self._buffer)
            self._block = min(2 * self._block, MAX_BLOCK) if sequential else MIN_BLOCK
            start, length = self._pos, min(max(count, self._block), self._size - self._pos)
            try:
                self._buffer = with_retries(lambda: self._file.read_at(length, start), self.where)
            except StorageError as exc:
                self.error, self._buffer = exc, b""
                if self.quiet:
                    return 0
                raise
            self._buffer_start, offset = start, 0
            count = min(count, len(self._buffer))
        buffer[:count] = self._buffer[offset:offset + count]
        self._pos += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class QuietLocalFile(io.RawIOBase):
    """A local file whose failed reads (EIO, ESTALE...) are kept in .error and read as the end of
    the file, for readers in C that cannot receive a Python exception (see ObjectFile)."""

    def __init__(self, where: Path):
        self.error = None
        self._file = open(where, "rb", buffering=0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def readinto(self, buffer) -> int:
        if self.error is not None:
            return 0
        try:
            return self._file.readinto(buffer)
        except OSError as exc:
            self.error = exc
            return 0

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()
