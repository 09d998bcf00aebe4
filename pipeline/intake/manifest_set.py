"""Several manifests read as one. MANIFEST may be a file, a folder of Parquet files (searched
recursively), a glob such as `incoming/date=*/` (date-partitioned incoming folders), locally or on
object storage, or several of those (what a shell passes after expanding an unquoted glob).

- Files: every `.parquet` file (and WebDataset `.tar` shard, intake/embedded) found, in path order, so `date=YYYY-MM-DD` partitions come oldest
  first. Names starting with `.` or `_` (temporary files, `_SUCCESS`, `_temporary/`) are skipped,
  as Spark and Hive skip them.
- Globs: `*`, `?` and `[...]` match within one path part, `**` any number of parts; a pattern that
  matches a folder takes every Parquet file under it. The same on object storage, where the prefix
  before the first wildcard is listed.
- Each file is validated on its own (messages name the file). A file with no rows is fine (a day
  without new audio); no rows in any file is an error.
- Ids must be unique across all files; a repeated id is named with the files that hold it.
- Pass-through columns may differ between files: a column a file lacks is null for its rows.
- A relative audio path resolves against its own file's folder (Manifest.base_dirs).
- The digest covers every file's name and bytes, so a finished run is recognised only when no file
  was added, removed or changed (for shards that hold their audio: their versions, not their bytes).
- A brace range names shards as WebDataset writes them: `shards/shard-{000000..000099}.tar`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.intake.embedded.webdataset import expand_braces
from pipeline.intake.manifest_checks import read_manifest, repeated_ids
from pipeline.intake.manifest_table import DIGEST_CHARS, Manifest, ManifestError
from pipeline.storage import Location, ObjectPath

_WILDCARD = re.compile(r"[*?[]")
_READERS = 8  # manifest files read at once (object stores: a request or a few each)
_NAMED = 10  # repeated ids named in the message


def read_manifests(sources: str | Path | Location | Sequence[str | Path | Location],
                   id_column: str | None = None) -> Manifest:
    """Read and validate one manifest or several as one (see the module's docstring). id_column:
    where the ids of shards without an `id` column are (intake/embedded)."""
    sources = _expanded(sources)
    if not sources:
        raise ManifestError("no manifest given")
    if len(sources) == 1 and not _is_glob(sources[0]):
        single = _location(sources[0])
        if _kind(single) != "dir":
            return read_manifest(single, id_column=id_column)  # one file: exactly as before, digest included
    files = manifest_files(sources)
    with ThreadPoolExecutor(_READERS) as pool:
        manifests = list(pool.map(lambda f: read_manifest(f, allow_empty=True, id_column=id_column), files))
    try:
        schema = pa.unify_schemas([m.schema for m in manifests], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ManifestError(f"the manifests under {_describe(sources)} do not fit together: {exc}") from None
    if sum(m.num_rows for m in manifests) == 0:
        raise ManifestError(f"the {len(files)} manifest(s) under {_describe(sources)} have no rows, "
                            "so there is nothing to annotate")
    hashes = np.concatenate([m.id_hashes for m in manifests])
    _check_unique_ids(manifests, hashes)
    digest = hashlib.sha256("\n".join(f"{f}\t{m.digest}" for f, m in zip(files, manifests)).encode())
    tables = tuple(m.tables[0] if m.tables else None for m in manifests)
    return Manifest(_location(sources[0]) if len(sources) == 1 else _common_folder(files), tuple(files),
                    tuple(m.num_rows for m in manifests), schema, digest.hexdigest()[:DIGEST_CHARS], hashes,
                    tables if any(t is not None for t in tables) else (),
                    tuple(f"{m.path}: {w}" for m in manifests for w in m.warnings))


def manifest_files(sources: Sequence[str | Path | Location]) -> list[Location]:
    """Every manifest file the sources name, without repeats, in path order."""
    found: dict[str, Location] = {}
    for source in _expanded(sources):
        for path in _files_of(source):
            found[str(path)] = path
    if not found:
        raise ManifestError(f"no Parquet manifests or tar shards found in {_describe(sources)}")
    return [found[name] for name in sorted(found)]


def default_out_name(sources: str | Path | Location | Sequence) -> str:
    """outputs/<this>/ when no OUT is given: a file's stem, a folder's name, a glob's last folder
    before its first wildcard ('incoming' for 'incoming/date=*/'), the folder holding several."""
    sources = _expanded(sources)
    if len(sources) > 1:  # e.g. the partitions a shell expanded a glob to: the folder holding them
        return _common_location([_split_glob(s)[0] for s in sources]).name or "manifests"
    base, pattern = _split_glob(sources[0])
    if pattern:
        return base.name or "manifests"
    return base.stem if base.suffix in (".parquet", ".tar") else base.name


def _expanded(sources) -> list:
    """The sources as a list, WebDataset brace ranges (`shard-{000000..000099}.tar`) spelled out."""
    sources = [sources] if isinstance(sources, (str, Path, ObjectPath)) else list(sources)
    return [one for source in sources for one in
            (expand_braces(source) if isinstance(source, str) and "{" in source else [source])]


def _files_of(source) -> list[Location]:
    base, pattern = _split_glob(source)
    if not pattern:
        kind = _kind(base)
        if kind == "file":
            return [base]
        if kind != "dir":
            raise ManifestError(f"manifest {base} does not exist")
        pattern = ["**"]
    return [path for path in _walk(base) if path.suffix.lower() in (".parquet", ".tar")
            and _matches(pattern, _relative_parts(path, base))]


def _walk(base: Location) -> list[Location]:
    try:
        return storage.walk_files(base)
    except (storage.StorageError, PermissionError) as exc:
        raise ManifestError(f"cannot list manifests under {base}: {exc}") from None


def _matches(pattern: list[str], parts: list[str]) -> bool:
    """True when the pattern matches these path parts, or a folder above them (their first
    parts); hidden and underscore names never match."""
    if any(part.startswith((".", "_")) for part in parts):
        return False
    return _match(pattern, parts)


def _match(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return True  # the pattern named a folder above the file (or the file itself)
    if pattern[0] == "**":
        return _match(pattern[1:], parts) or (bool(parts) and _match(pattern, parts[1:]))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match(pattern[1:], parts[1:])


def _split_glob(source) -> tuple[Location, list[str]]:
    """(the location before the first wildcard, the pattern's remaining parts)."""
    text = str(source)
    location = _location(text)
    if not _WILDCARD.search(text):
        return location, []
    if isinstance(location, ObjectPath):
        if _WILDCARD.search(location.bucket):
            raise ManifestError(f"{text}: a bucket name cannot be a glob")
        parts = location.key.split("/")
        fixed = _fixed_count(parts)
        return ObjectPath(location.bucket, "/".join(parts[:fixed])), parts[fixed:]
    parts = list(location.parts)
    fixed = _fixed_count(parts)
    return Path(*parts[:fixed]) if fixed else Path("."), parts[fixed:]


def _fixed_count(parts: list[str]) -> int:
    return next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), len(parts))


def _relative_parts(path: Location, base: Location) -> list[str]:
    if isinstance(path, ObjectPath):
        return list(path.relative_to(base).parts)
    return list(path.parts[len(base.parts):])


def _is_glob(source) -> bool:
    return _WILDCARD.search(str(source)) is not None


def _location(source) -> Location:
    try:
        return storage.location(source)
    except storage.UnsupportedLocation as exc:
        raise ManifestError(str(exc)) from None


def _kind(where: Location) -> str:
    try:
        return storage.info(where).kind
    except (storage.StorageError, PermissionError) as exc:
        raise ManifestError(f"cannot read the manifest {where}: {exc}") from None


def _check_unique_ids(manifests: list[Manifest], hashes: np.ndarray) -> None:
    """Ids unique across the files (each file's own repeats were found when it was read)."""
    repeated = repeated_ids(manifests, hashes)
    if not repeated:
        return
    shown = "; ".join(f"{i!r} in {', '.join(str(manifests[m].path) for m in where)}"
                      for i, where in sorted(repeated.items())[:_NAMED])
    more = f" and {len(repeated) - _NAMED} more" if len(repeated) > _NAMED else ""
    raise ManifestError(f"{len(repeated)} id(s) appear in more than one manifest (ids must be unique across "
                        f"them): {shown}{more}")


def _common_folder(files: list[Location]) -> Location:
    """The deepest folder holding every file (what several sources are shown as)."""
    return _common_location([f.parent for f in files])


def _common_location(locations: list[Location]) -> Location:
    """The deepest folder (or prefix) that is or holds each of these."""
    first = locations[0]
    if isinstance(first, ObjectPath):
        if any(not isinstance(o, ObjectPath) or o.bucket != first.bucket for o in locations):
            return first
        common = []
        for parts in zip(*(o.key.split("/") for o in locations)):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        return ObjectPath(first.bucket, "/".join(common))
    try:
        return Path(os.path.commonpath([str(o) for o in locations]))
    except ValueError:  # local and object paths mixed, or relative and absolute
        return first


def _describe(sources: Sequence) -> str:
    return ", ".join(str(s) for s in sources)
