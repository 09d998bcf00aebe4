"""Local writes that readers see whole or not at all: a temporary file beside the target, fsynced
and renamed into place; a failure (a full disk, a read-only folder) is a WriteFailed that names the
file and why, and leaves nothing under the target's name."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.storage.errors import StorageError, WriteFailed


def write_atomic(path: Path, write) -> None:
    """write(tmp_path) into a temporary file beside path, fsync it, then rename it into place."""
    with atomic_file(path) as tmp:
        write(tmp)


@contextmanager
def atomic_file(path: Path) -> Iterator[str]:
    """A temporary file beside path to write; when the block ends without raising, it is fsynced
    and renamed into place (removed otherwise)."""
    with _local_write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
        os.close(fd)
        try:
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            _readable(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


_WRITE_HINTS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "no permission to write there",
                errno.EPERM: "no permission to write there"}


@contextmanager
def _local_write(path: Path) -> Iterator[None]:
    """Local write errors as WriteFailed (a UserError: the command prints it and exits 2)."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        hint = _WRITE_HINTS.get(exc.errno)
        raise WriteFailed(f"cannot write {path}: {exc.strerror or exc}" + (f" ({hint})" if hint else "")) from exc


def _readable(tmp: str) -> None:
    """mkstemp creates 0600 files; outputs get the usual permissions (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
