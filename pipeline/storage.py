"""Where bytes live: local paths and `s3://bucket/key` URLs on S3-compatible object stores (AWS S3,
Huawei OBS, MinIO, Ceph...) behind one small interface. Manifests, audio, `manifest build` and the
output folder read and write through here, and nothing else opens a manifest value itself.

Library: pyarrow.fs.S3FileSystem (the AWS C++ SDK underneath). It is already a pinned dependency,
so object storage adds no package; its files are seekable and read byte ranges on demand (what
libsndfile needs to decode a segment of a long file without downloading it); it reads and writes
Parquet and datasets directly; and the SDK retries throttling (503 SlowDown, 429), 5xx answers,
timeouts and dropped connections with its standard exponential back-off. fsspec/s3fs would bring
aiobotocore, aiohttp and a second S3 stack for the same result.

Local paths behave exactly as before: plain `open`, and writes go to a temporary file beside the
target that is fsynced and renamed. An object is uploaded from bytes already in memory: below the
multipart size as one PutObject (the whole object or nothing), above it in parts completed at
close. A failed or killed write leaves no object, or at worst one that no commit record names:
output/sink.py builds its commit protocol on that, since object stores have no rename.

Errors: object-store failures are raised as ObjectNotFound (a FileNotFoundError), AccessDenied (a
PermissionError) or StorageUnavailable (transient: still failing after the SDK's retries and ours),
all StorageErrors, so callers map them to reason codes as they map local OSErrors.

Configuration (Settings): the endpoint, region, addressing style and retry attempts come from job
keys, else from the standard AWS variables (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_REGION or
AWS_DEFAULT_REGION, AWS_MAX_ATTEMPTS). The driver resolves them once and ships them to the Ray
workers. Credentials never travel: each process finds its own through the AWS SDK's chain
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, ~/.aws/credentials and AWS_PROFILE,
or the machine's instance role).
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import io
import os
import posixpath
import random
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import UserError

SCHEME = "s3"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MIN_BLOCK, _MAX_BLOCK = 64 << 10, 8 << 20  # read-ahead of ranged GETs (see ObjectFile)
_ATTEMPTS = 3  # whole operations, on top of the SDK's per-request retries (see _call)
_BACKOFF_S = 0.2


# --- locations ---------------------------------------------------------------------------------------

class UnsupportedLocation(UserError, ValueError):
    """A URL this pipeline does not read (any scheme but s3://), or an s3:// URL that names no object."""


@dataclass(frozen=True, order=True)
class ObjectPath:
    """`s3://bucket/key`, with the few path operations the pipeline needs (name, suffix, parent,
    `/`, relative_to). Keys are treated as POSIX paths: `.` and `..` collapse, a trailing `/` goes,
    so prefixes behave as folders."""

    bucket: str
    key: str = ""  # "" is the bucket itself

    @classmethod
    def parse(cls, url: str) -> ObjectPath:
        rest = url[len(SCHEME) + 3:]
        bucket, _, key = rest.partition("/")
        if not bucket or bucket in (".", "..") or any(c.isspace() for c in bucket):
            raise UnsupportedLocation(f"{url} names no bucket (expected s3://bucket/key)")
        normal = _normal_key(key)
        if normal is None:
            raise UnsupportedLocation(f"{url} leaves its bucket ('..' above the bucket's root)")
        return cls(bucket, normal)

    def __str__(self) -> str:
        return f"{SCHEME}://{self.bucket}/{self.key}"

    @property
    def fs_path(self) -> str:
        """The path pyarrow's S3FileSystem takes: bucket/key."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key).stem

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.bucket, posixpath.dirname(self.key))

    def joined(self, relative: str) -> ObjectPath | None:
        """This prefix joined with a relative path, or None when `..` climbs above the bucket."""
        key = _normal_key(posixpath.join(self.key, relative) if self.key else relative)
        return None if key is None else ObjectPath(self.bucket, key)

    def __truediv__(self, relative: str) -> ObjectPath:
        joined = self.joined(relative)
        if joined is None:
            raise UnsupportedLocation(f"{self} / {relative} leaves the bucket")
        return joined

    def is_relative_to(self, other: ObjectPath) -> bool:
        return (isinstance(other, ObjectPath) and self.bucket == other.bucket
                and (not other.key or self.key == other.key or self.key.startswith(other.key + "/")))

    def relative_to(self, other: ObjectPath) -> PurePosixPath:
        if not self.is_relative_to(other):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.key).relative_to(other.key or ".")


Location = Path | ObjectPath


def _normal_key(key: str) -> str | None:
    key = key.strip("/")
    if not key:
        return ""
    normal = posixpath.normpath(key)
    if normal == ".":
        return ""
    return None if normal == ".." or normal.startswith("../") else normal


def is_url(value) -> bool:
    return isinstance(value, str) and _URL.match(value) is not None


def location(value: str | os.PathLike) -> Location:
    """A local path or an s3:// URL as a Location. Other URL schemes raise UnsupportedLocation."""
    if isinstance(value, (Path, ObjectPath)):
        return value
    text = os.fspath(value)
    match = _URL.match(text)
    if match is None:
        return Path(text)
    if match.group(1).lower() != SCHEME:
        raise UnsupportedLocation(
            f"{text} is a {match.group(1)}:// URL; only local paths and s3:// URLs are read (S3, "
            "Huawei OBS, MinIO and other S3-compatible stores: see the README's 'Object storage')")
    return ObjectPath.parse(SCHEME + text[len(match.group(1)):])


# --- configuration ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """How to reach the object store; no credentials (each process finds its own)."""

    endpoint_url: str | None = None  # None: AWS S3 itself; else e.g. https://obs.cn-north-4.myhuaweicloud.com
    region: str | None = None  # None: the SDK's default resolution
    virtual_addressing: bool = False  # bucket.endpoint/key even with a custom endpoint (path style otherwise)
    max_attempts: int = 5  # per request, with the SDK's exponential back-off
    cache_bytes: int = 2 << 30  # local copies of objects that only ffmpeg decodes, per process

    @classmethod
    def resolve(cls, endpoint_url: str | None = None, region: str | None = None,
                virtual_addressing: bool = False, max_attempts: int | None = None,
                cache_gb: float | None = None, env=None) -> Settings:
        """Values given here (job keys) first, then the standard AWS environment variables."""
        env = os.environ if env is None else env
        attempts = max_attempts or env.get("AWS_MAX_ATTEMPTS") or cls.max_attempts
        if not str(attempts).isdigit():
            raise UserError(f"AWS_MAX_ATTEMPTS must be a whole number of attempts, got {attempts!r}")
        return cls(
            endpoint_url=endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            virtual_addressing=virtual_addressing,
            max_attempts=max(1, int(attempts)),
            cache_bytes=int(cache_gb * (1 << 30)) if cache_gb is not None else cls.cache_bytes,
        )

    @classmethod
    def from_config(cls, config) -> Settings:
        return cls.resolve(config.s3_endpoint_url, config.s3_region, config.s3_virtual_addressing,
                           config.s3_max_attempts, config.object_cache_gb)

    def describe(self) -> str:
        return self.endpoint_url or "AWS S3"


_configured: Settings | None = None


def configure(settings: Settings | None) -> None:
    """Set this process's object-store settings (the driver from the job, workers from the spec).
    None goes back to the environment's."""
    global _configured
    _configured = settings
    if settings is not None:
        _cache.limit = settings.cache_bytes


def current_settings() -> Settings:
    return _configured if _configured is not None else Settings.resolve()


@lru_cache(maxsize=8)
def _s3(settings: Settings) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=settings.endpoint_url, region=settings.region,
        force_virtual_addressing=settings.virtual_addressing,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=settings.max_attempts),
        # Uploads start at close(): an object smaller than a multipart part is one PutObject,
        # which either creates the whole object or nothing.
        allow_delayed_open=True,
    )


def filesystem(where: Location) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem that holds `where`, and its path there (for datasets and Parquet)."""
    if isinstance(where, ObjectPath):
        return _s3(current_settings()), where.fs_path
    return pafs.LocalFileSystem(), str(where)


# --- errors ----------------------------------------------------------------------------------------

class StorageError(OSError, UserError):
    """An object store refused or failed an operation; the message names the object and why. A
    UserError too: when the manifest or OUT cannot be read or written, the command prints the
    message and stops (committed work stays; the rerun resumes), with no traceback."""


class ObjectNotFound(StorageError, FileNotFoundError):
    pass


class AccessDenied(StorageError, PermissionError):
    pass


class StorageUnavailable(StorageError):
    """Transient: throttling, 5xx, timeouts or dropped connections outlasted every retry."""


# The SDK's error names as pyarrow words them ("AWS Error SLOW_DOWN during GetObject operation").
_DENIED = re.compile(r"ACCESS_DENIED|HTTP status 403|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|"
                     r"EXPIRED_TOKEN|AccessDenied|Forbidden")
_MISSING = re.compile(r"NO_SUCH_KEY|NO_SUCH_BUCKET|HTTP status 404|RESOURCE_NOT_FOUND")
# INTERNAL_FAILURE also covers "Failed to flush response stream": an error answer (say a 503) to a
# short range read whose XML body did not fit the read's buffer, which the SDK does not retry.
_TRANSIENT = re.compile(r"SLOW_DOWN|THROTTL|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|NETWORK_CONNECTION|"
                        r"REQUEST_TIMEOUT|HTTP status (429|5\d\d)|curlCode|[Tt]imeout|timed out")


def _classify(exc: OSError, where: ObjectPath) -> StorageError:
    if isinstance(exc, StorageError):
        return exc
    text = " ".join(str(exc).split())
    if isinstance(exc, FileNotFoundError) or _MISSING.search(text):
        return ObjectNotFound(missing_detail(where))
    if isinstance(exc, PermissionError) or _DENIED.search(text):
        return AccessDenied(f"the object store denied access to {where}: {text}")
    if _TRANSIENT.search(text):
        return StorageUnavailable(f"the object store kept failing on {where} (retried): {text}")
    return StorageError(f"cannot use {where}: {text}")


def _call(operation: Callable, where: ObjectPath, attempts: int = _ATTEMPTS):
    """Run one object-store operation. The SDK already retried each request; a transient failure
    that still comes out (see _TRANSIENT) retries the whole operation up to `attempts` times with
    exponential back-off before it is raised as StorageUnavailable."""
    for attempt in range(attempts):
        try:
            return operation()
        except OSError as exc:
            error = _classify(exc, where)
            if not isinstance(error, StorageUnavailable) or attempt == attempts - 1:
                raise error from exc
        time.sleep(_BACKOFF_S * 2 ** attempt * random.uniform(0.5, 1.0))


def missing_detail(where: ObjectPath) -> str:
    """Says whether the object or its whole bucket is missing: a wrong bucket or endpoint is a
    different fix from a missing file."""
    bucket = _no_bucket(where)
    return f"{where} does not exist" + (f": {bucket}" if bucket else "")


def _no_bucket(where: ObjectPath) -> str | None:
    settings = current_settings()
    try:
        bucket = _s3(settings).get_file_info(where.bucket).type
    except OSError:
        return None  # may not list or head the bucket: say nothing about it
    return f"there is no bucket '{where.bucket}' at {settings.describe()}" if bucket == pafs.FileType.NotFound else None


# --- reading ---------------------------------------------------------------------------------------

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
        found = _call(lambda: _s3(current_settings()).get_file_info(where.fs_path), where)
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
            with _s3(current_settings()).open_input_file(where.fs_path) as f:  # one HEAD request
                return {k: v.decode() if isinstance(v, bytes) else v for k, v in (f.metadata() or {}).items()}

        try:
            found = _call(head, where)
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


class ObjectFile(io.RawIOBase):
    """An object as a seekable binary file. Reads are ranged GETs with a read-ahead that starts at
    _MIN_BLOCK and doubles while reads continue where the last one ended (up to _MAX_BLOCK), so a
    header check costs one small request and a long sequential decode few large ones.

    With quiet=True a failed read is kept in .error and reads as the end of the file: readers in C
    (libsndfile's callbacks) cannot receive a Python exception, so the caller checks .error after."""

    def __init__(self, where: ObjectPath, quiet: bool = False):
        self.where, self.quiet, self.error = where, quiet, None
        self._file = _call(lambda: _s3(current_settings()).open_input_file(where.fs_path), where)
        self._size = self._file.size()
        self._pos = 0
        self._buffer, self._buffer_start = b"", 0
        self._block = _MIN_BLOCK

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
            self._block = min(2 * self._block, _MAX_BLOCK) if sequential else _MIN_BLOCK
            start, length = self._pos, min(max(count, self._block), self._size - self._pos)
            try:
                self._buffer = _call(lambda: self._file.read_at(length, start), self.where)
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


def read_error(source) -> OSError | None:
    """The error a quiet ObjectFile or QuietLocalFile kept, if any (None for anything else)."""
    return source.error if isinstance(source, (ObjectFile, QuietLocalFile)) else None


# --- writing ---------------------------------------------------------------------------------------

def write_bytes(where: Location, data: bytes) -> None:
    """Readers see the old content or the new, never a mix: locally a temporary file renamed into
    place; on an object store one upload of `data`, which becomes visible only when complete."""
    if isinstance(where, ObjectPath):
        def upload():
            out = _s3(current_settings()).open_output_stream(where.fs_path)
            out.write(data)
            out.close()  # the upload happens (or completes) here: before this, no object exists

        # One attempt here (the SDK retries each request): a large object goes up in parts, and
        # a failed multipart upload may still be completed by its stream's destructor, which a
        # second attempt could race. What a failed write leaves is never committed (see sink).
        try:
            _call(upload, where, attempts=1)
        except ObjectNotFound:
            raise ObjectNotFound(f"cannot write {where}: {_no_bucket(where) or 'the store says it does not exist'}") from None
        return
    _atomic(where, lambda tmp: Path(tmp).write_bytes(data))


def write_table(where: Location, table: pa.Table, **options) -> None:
    """A Parquet file (options go to pyarrow.parquet.write_table), written as write_bytes does."""
    if isinstance(where, ObjectPath):
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, **options)
        write_bytes(where, buffer.getvalue().to_pybytes())
        return
    _atomic(where, lambda tmp: pq.write_table(table, tmp, **options))


@contextmanager
def table_writer(where: Location, schema: pa.Schema, **options) -> Iterator[pq.ParquetWriter]:
    """A Parquet file written piece by piece (writer.write_table, writer.write_batch), with
    bounded memory, and presented only once complete: locally a temporary file beside the target,
    fsynced and renamed; on an object store a local temporary file uploaded at the end (one
    multipart upload, visible only when complete). Nothing is presented if the block raises."""
    if isinstance(where, ObjectPath):
        fd, tmp = tempfile.mkstemp(prefix="pipeline-upload-", suffix=".parquet")
        os.close(fd)
        try:
            with pq.ParquetWriter(tmp, schema, **options) as writer:
                yield writer

            def upload():
                with open(tmp, "rb") as source:
                    out = _s3(current_settings()).open_output_stream(where.fs_path)
                    shutil.copyfileobj(source, out, _MAX_BLOCK)
                    out.close()

            _call(upload, where, attempts=1)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    with _atomic_file(where) as tmp, pq.ParquetWriter(tmp, schema, **options) as writer:
        yield writer


def _atomic(path: Path, write) -> None:
    """write(tmp_path) into a temporary file beside path, fsync it, then rename it into place."""
    with _atomic_file(path) as tmp:
        write(tmp)


@contextmanager
def _atomic_file(path: Path) -> Iterator[str]:
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


class WriteFailed(StorageError):
    """A local write failed (a full disk, a read-only or unwritable folder): nothing was presented
    under the target's name; the message says which file and why."""


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


def make_dirs(where: Location) -> None:
    """Create a local folder and its parents; object stores have no folders to create."""
    if isinstance(where, Path):
        where.mkdir(parents=True, exist_ok=True)


def delete(where: Location) -> None:
    """Remove one file or object; a missing one is fine."""
    if isinstance(where, ObjectPath):
        def remove():
            try:
                _s3(current_settings()).delete_file(where.fs_path)
            except FileNotFoundError:
                pass

        _call(remove, where)
        return
    where.unlink(missing_ok=True)


def delete_tree(where: Location) -> None:
    """Remove a folder (or every object under a prefix) and all it holds; a missing one is fine."""
    if isinstance(where, ObjectPath):
        _call(lambda: _s3(current_settings()).delete_dir_contents(where.fs_path, missing_dir_ok=True), where)
        return
    shutil.rmtree(where, ignore_errors=True)


# --- listing ---------------------------------------------------------------------------------------

def list_names(folder: Location) -> list[str]:
    """Names of the files directly in a folder (objects directly under a prefix), sorted; a
    missing folder holds none."""
    if isinstance(folder, ObjectPath):
        selector = pafs.FileSelector(folder.fs_path, recursive=False, allow_not_found=True)
        found = _call(lambda: _s3(current_settings()).get_file_info(selector), folder)
        return sorted(posixpath.basename(f.path) for f in found if f.type == pafs.FileType.File)
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def walk_files(folder: Location) -> list[Location]:
    """Every file under a folder, recursively (objects under a prefix). Local symlinked folders
    are not followed, so a link cycle cannot loop forever."""
    if isinstance(folder, ObjectPath):
        selector = pafs.FileSelector(folder.fs_path, recursive=True, allow_not_found=True)
        found = _call(lambda: _s3(current_settings()).get_file_info(selector), folder)
        return [ObjectPath.parse(f"{SCHEME}://{f.path}") for f in found if f.type == pafs.FileType.File]
    files = []
    for parent, _, names in os.walk(folder):
        files += [Path(parent, n) for n in names if os.path.isfile(os.path.join(parent, n))]
    return files


# --- local copies for ffmpeg ---------------------------------------------------------------------------

@dataclass
class _Copy:
    path: Path
    size: int
    users: int = 0
    last_used: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class _LocalCache:
    """Copies of objects that only ffmpeg decodes (it reads local files only), kept so that the
    segments and cut windows of one long file download it once. Bounded by `limit` bytes (plus
    the copies in use at that moment): the least recently used idle copies go first. Each process
    has its own folder, removed at exit; folders of processes that died without exiting are swept
    by the next process that makes one."""

    root = Path(tempfile.gettempdir()) / "pipeline-object-cache"

    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.copies: dict[tuple, _Copy] = {}
        self.folder: Path | None = None

    def _folder(self) -> Path:
        if self.folder is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep_dead()
            self.folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.root))
            atexit.register(self.clear)
        return self.folder

    def _sweep_dead(self) -> None:
        for entry in self.root.iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)

    @contextmanager
    def copy_of(self, where: ObjectPath) -> Iterator[Path]:
        found = info(where)
        if found.kind != "file":
            raise ObjectNotFound(missing_detail(where))
        key = (current_settings().endpoint_url, str(where), found.size)
        with self.lock:
            copy = self.copies.get(key)
            fetch = copy is None
            if fetch:
                self._evict(room_for=found.size)
                folder = Path(tempfile.mkdtemp(dir=self._folder()))
                copy = self.copies[key] = _Copy(folder / (where.name or "object"), found.size)
            copy.users += 1
        try:
            if fetch:
                try:
                    _call(lambda: _download(where, copy.path), where)
                except BaseException as exc:
                    copy.error = exc
                    with self.lock:
                        self.copies.pop(key, None)
                    shutil.rmtree(copy.path.parent, ignore_errors=True)
                    raise
                finally:
                    copy.ready.set()
            else:
                copy.ready.wait()
                if copy.error is not None:
                    raise copy.error
            yield copy.path
        finally:
            with self.lock:
                copy.users -= 1
                copy.last_used = time.monotonic()
                self._evict(room_for=0)

    def _evict(self, room_for: int) -> None:
        """Drop idle copies, least recently used first, until `room_for` more bytes fit the limit."""
        total = sum(c.size for c in self.copies.values())
        for key, copy in sorted(self.copies.items(), key=lambda kv: kv[1].last_used):
            if total + room_for <= self.limit:
                break
            if copy.users == 0 and copy.ready.is_set():
                shutil.rmtree(copy.path.parent, ignore_errors=True)
                del self.copies[key]
                total -= copy.size

    def clear(self) -> None:
        with self.lock:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
            self.copies.clear()


def _download(where: ObjectPath, target: Path) -> None:
    with _s3(current_settings()).open_input_stream(where.fs_path) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _MAX_BLOCK)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_cache = _LocalCache(Settings.cache_bytes)


@contextmanager
def local_copy(where: Location) -> Iterator[Path]:
    """A local file with the content of `where` (the file itself when it is local), for tools that
    read only local files (ffmpeg). Objects come from the bounded per-process cache."""
    if isinstance(where, ObjectPath):
        with _cache.copy_of(where) as path:
            yield path
    else:
        yield where


def clear_local_cache() -> None:
    """Remove this process's local copies now (also done at exit)."""
    _cache.clear()
