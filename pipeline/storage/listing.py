"""Listing: the files in a folder, or under it, locally and on object storage."""

from __future__ import annotations

import os
import posixpath
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.storage.locations import SCHEME, Location, ObjectPath
from pipeline.storage.errors import StorageUnavailable
from pipeline.storage.s3 import s3_filesystem, with_retries
from pipeline.storage.settings import Settings, current_settings


def list_names(folder: Location) -> list[str]:
    """Names of the files directly in a folder (objects directly under a prefix), sorted; a
    missing folder holds none."""
    if isinstance(folder, ObjectPath):
        selector = pafs.FileSelector(folder.fs_path, recursive=False, allow_not_found=True)
        found = with_retries(lambda: s3_filesystem().get_file_info(selector), folder)
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
        found = with_retries(lambda: s3_filesystem().get_file_info(selector), folder)
        return [ObjectPath.parse(f"{SCHEME}://{f.path}") for f in found if f.type == pafs.FileType.File]
    files = []
    for parent, _, names in os.walk(folder):
        files += [Path(parent, n) for n in names if os.path.isfile(os.path.join(parent, n))]
    return files


def list_versions(prefix: Location) -> tuple[list[str], list[str]] | None:
    """(names, versions) of the objects directly under an object-store prefix, in one listing
    (ListObjectsV2 pages of 1,000): each version as reading.version gives it for that object
    ("size=N etag=E"). None when the store will not list the prefix (credentials that may read
    objects but not list the bucket): the caller asks object by object."""
    if not isinstance(prefix, ObjectPath):
        raise ValueError(f"{prefix} is not an object-store prefix")
    from botocore.exceptions import BotoCoreError, ClientError

    start = f"{prefix.key}/" if prefix.key else ""
    names, versions = [], []
    try:
        pages = _boto_client().get_paginator("list_objects_v2").paginate(
            Bucket=prefix.bucket, Prefix=start, Delimiter="/")
        for page in pages:
            for found in page.get("Contents", []):
                name = found["Key"][len(start):]
                if name and "/" not in name:
                    names.append(name)
                    tag = found.get("ETag")
                    # As reading.version words it: the ETag, else the time of the last upload.
                    versions.append(f"size={found['Size']} etag={tag}" if tag else
                                    f"size={found['Size']} modified={found.get('LastModified')}")
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return None
        if code in ("NoSuchBucket", "404"):
            return [], []
        raise StorageUnavailable(f"the object store kept failing listing {prefix}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"the object store kept failing listing {prefix}: {exc}") from exc
    return names, versions


def _boto_client():
    """An S3 client for this process's settings (endpoint, region, addressing, attempts), as
    pyarrow's S3FileSystem reaches the store; credentials from the same AWS chain."""
    settings = current_settings()
    return _client(settings)


@lru_cache(maxsize=4)
def _client(settings: Settings):
    import boto3
    from botocore.config import Config

    style = "virtual" if settings.virtual_addressing or not settings.endpoint_url else "path"
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
        config=Config(s3={"addressing_style": style}, retries={"max_attempts": settings.max_attempts,
                                                               "mode": "standard"}))
