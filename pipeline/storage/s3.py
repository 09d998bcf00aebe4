"""The object store: pyarrow's S3FileSystem for this process's settings, and every call to it
retried and its failures classified (errors.py).

Library: pyarrow.fs.S3FileSystem (the AWS C++ SDK underneath). It is already a pinned dependency,
so object storage adds no package; its files are seekable and read byte ranges on demand (what
libsndfile needs to decode a segment of a long file without downloading it); it reads and writes
Parquet and datasets directly; and the SDK retries throttling (503 SlowDown, 429), 5xx answers,
timeouts and dropped connections with its standard exponential back-off. fsspec/s3fs would bring
aiobotocore, aiohttp and a second S3 stack for the same result.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from functools import lru_cache

import pyarrow.fs as pafs

from pipeline.storage.errors import AccessDenied, ObjectNotFound, StorageError, StorageUnavailable
from pipeline.storage.locations import Location, ObjectPath
from pipeline.storage.settings import Settings, current_settings

_ATTEMPTS = 3  # whole operations, on top of the SDK's per-request retries (see with_retries)
_BACKOFF_S = 0.2


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


def s3_filesystem() -> pafs.S3FileSystem:
    """The object store as this process's settings reach it (one per settings, reused)."""
    return _s3(current_settings())


def filesystem(where: Location) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem that holds `where`, and its path there (for datasets and Parquet)."""
    if isinstance(where, ObjectPath):
        return s3_filesystem(), where.fs_path
    return pafs.LocalFileSystem(), str(where)


# The SDK's error names as pyarrow words them ("AWS Error SLOW_DOWN during GetObject operation").
_DENIED = re.compile(r"ACCESS_DENIED|HTTP status 403|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|"
                     r"EXPIRED_TOKEN|AccessDenied|Forbidden")
_MISSING = re.compile(r"NO_SUCH_KEY|NO_SUCH_BUCKET|HTTP status 404|RESOURCE_NOT_FOUND")
# INTERNAL_FAILURE also covers "Failed to flush response stream": an error answer (say a 503) to a
# short range read whose XML body did not fit the read's buffer, which the SDK does not retry.
_TRANSIENT = re.compile(r"SLOW_DOWN|THROTTL|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|NETWORK_CONNECTION|"
                        r"REQUEST_TIMEOUT|HTTP status (429|5\d\d)|curlCode|[Tt]imeout|timed out")


def is_transient(exc: OSError) -> bool:
    """An error the object store's client raised that says it was unavailable, not that it refused."""
    return isinstance(exc, StorageUnavailable) or bool(_TRANSIENT.search(" ".join(str(exc).split())))


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


def with_retries(operation: Callable, where: ObjectPath, attempts: int = _ATTEMPTS):
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
    bucket = no_bucket_detail(where)
    return f"{where} does not exist" + (f": {bucket}" if bucket else "")


def no_bucket_detail(where: ObjectPath) -> str | None:
    settings = current_settings()
    try:
        bucket = _s3(settings).get_file_info(where.bucket).type
    except OSError:
        return None  # may not list or head the bucket: say nothing about it
    return f"there is no bucket '{where.bucket}' at {settings.describe()}" if bucket == pafs.FileType.NotFound else None
