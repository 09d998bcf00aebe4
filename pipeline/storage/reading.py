"""Reading: what is at a location (info, version) and its bytes (open_input, read_bytes), for local
paths and objects alike. Tests inject read faults here (inject_read_faults)."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipeline.storage.errors import ObjectNotFound
from pipeline.storage.input_files import ObjectFile, QuietLocalFile
from pipeline.storage.locations import Location, ObjectPath
from pipeline.storage.s3 import s3_filesystem, with_retries


@dataclass(frozen=True)
class Info:
    kind: str  # "file", "dir", "other" (a pipe, device...) or "missing"
    size: int | None = None


def info(where: Location) -> Info:
    """What is at `where`. Local paths follow symlinks; raises PermissionError (AccessDenied) when
    the store or the file system will not say, StorageUnavailable when it does not answer."""
    if isinstance(where, ObjectPath):
        if not where.key:
            return Info("dir")
        found = with_retries(lambda: s3_filesystem().get_file_info(where.fs_path), where)
        kind = {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(found.type, "missing")
        return Info(kind, found.size if kind == "file" else None)
    try:
        st = where.stat()
    except (FileNotFoundError, NotADirectoryError):
        return Info("missing")
    kind = "file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "other"
    return Info(kind, st.st_size if kind == "file" else None)


def version(where: Location) -> str | None:
    """What identifies this version of a file without reading it: its size and modification time
    (in nanoseconds) locally, its size and ETag on object storage (every upload of an object gives
    it a new ETag). None when no file is there (missing, a folder, a prefix). Raises
    PermissionError (AccessDenied) or StorageUnavailable as info() does."""
    if isinstance(where, ObjectPath):
        if not where.key:
            return None

        def head() -> dict:
            with s3_filesystem().open_input_file(where.fs_path) as f:  # one HEAD request
                return {k: v.decode() if isinstance(v, bytes) else v for k, v in (f.metadata() or {}).items()}

        try:
            found = with_retries(head, where)
        except ObjectNotFound:
            return None
        # An S3-compatible store that sends no ETag still sends Last-Modified, which an upload changes.
        tag = f"etag={found['ETag']}" if found.get("ETag") else f"modified={found.get('Last-Modified')}"
        return f"size={found.get('Content-Length')} {tag}"
    try:
        st = where.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return f"size={st.st_size} mtime_ns={st.st_mtime_ns}" if stat.S_ISREG(st.st_mode) else None


def content_sha256(where: Location) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks: what --verify-content compares."""
    digest = hashlib.sha256()
    with open_input(where) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Tests inject read faults here (an EIO once, a stalled read): called with every location opened
# for reading, it may raise or block. None in production. See pipeline/testing/faults.py.
_read_fault: Callable[[Location], None] | None = None


def inject_read_faults(fault: Callable[[Location], None] | None) -> None:
    global _read_fault
    _read_fault = fault


def open_input(where: Location, quiet: bool = False):
    """A seekable binary file: the local file itself, or an ObjectFile read in byte ranges (quiet:
    failed reads are kept in .error, see ObjectFile and QuietLocalFile). Raises FileNotFoundError /
    PermissionError (ObjectNotFound / AccessDenied)."""
    if _read_fault is not None:
        _read_fault(where)
    if isinstance(where, ObjectPath):
        return ObjectFile(where, quiet)
    return QuietLocalFile(where) if quiet else open(where, "rb")


def read_bytes(where: Location) -> bytes:
    if isinstance(where, ObjectPath):
        with open_input(where) as f:
            return f.read()
    return where.read_bytes()


def read_blocks(where: Location, block_bytes: int = 8 << 20):
    """A file's bytes in blocks (what read_bytes gives whole, without holding it)."""
    if isinstance(where, ObjectPath):
        with ObjectFile(where) as f:
            yield from iter(lambda: f.read(block_bytes), b"")
        return
    with open(where, "rb") as f:
        yield from iter(lambda: f.read(block_bytes), b"")


def read_error(source) -> OSError | None:
    """The error a quiet ObjectFile or QuietLocalFile kept, if any (None for anything else)."""
    return source.error if isinstance(source, (ObjectFile, QuietLocalFile)) else None
