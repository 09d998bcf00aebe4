"""Local writes that readers see whole or not at all: a temporary file beside the target, fsynced
and renamed into place; a failure (a full disk, a read-only folder) is a WriteFailed that names the
file and why, and leaves nothing under the target's name."""

from __future__ import annotations

import errno
import os
import secrets
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
        tmp = _create_temporary(path)
        try:
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            _present(tmp, path)
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


def _create_temporary(path: Path) -> str:
    """A new, empty file beside path under a name no one else uses, created with mode 0666 for the
    kernel to apply the process umask to: the permissions any file the user writes gets (tempfile's
    0600 would hide outputs from a group that reads them). The mode is given at creation: the
    process umask is never read by setting it, which would race with files other threads create
    (the lock's heartbeat writes while commits do)."""
    for _ in range(100):
        tmp = path.parent / f".tmp-{path.name}-{secrets.token_hex(6)}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def _present(tmp: str, path: Path) -> None:
    """The complete temporary file takes the target's name (readers see the old file or this one)."""
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
