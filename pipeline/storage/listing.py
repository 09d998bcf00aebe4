"""Listing: the files in a folder, or under it, locally and on object storage."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pyarrow.fs as pafs

from pipeline.storage.locations import SCHEME, Location, ObjectPath
from pipeline.storage.s3 import s3_filesystem, with_retries


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
