"""Locations: a local path or an `s3://bucket/key` URL, parsed once into a Path or an ObjectPath.
Any other URL scheme is refused with a message that says what is read."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import UserError

SCHEME = "s3"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


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
            "Huawei OBS, MinIO and other S3-compatible stores: see docs/object-storage.md)")
    return ObjectPath.parse(SCHEME + text[len(match.group(1)):])
