"""Manifests: the Parquet table of audio to annotate, read and validated before any model loads.

Schema (manifests/README.md is the user-facing description):
    id          string, unique, not null, not empty
    audio       string path or s3:// URL; relative paths resolve against the manifest's folder (its
                prefix, for a manifest on object storage), or against the audio root when the run
                sets one
    duration_s  optional: seconds as float or int, >= 0, or null (unknown: read from headers later)
    language    optional: string (e.g. "en") or null
Every other column is carried through to the output untouched.

Validation is vectorised with pyarrow.compute, so a million rows check in about a second, and a
bad manifest stops the run with one message naming the offending ids or rows, never a traceback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.storage import Location

ID, AUDIO, DURATION, LANGUAGE = "id", "audio", "duration_s", "language"
SCHEMA_COLUMNS = (ID, AUDIO, DURATION, LANGUAGE)
DIGEST_CHARS = 20
_EXAMPLES = 10  # offending ids shown per problem; the message also gives the total count


class ManifestError(UserError):
    """A manifest that cannot be used; the message names the offending ids or rows."""


@dataclass(frozen=True, eq=False)
class Manifest:
    """A validated manifest. `table` holds id, audio and language as string and duration_s as
    float64 (cast from compatible types); other columns are exactly as read. Several manifest
    files read as one (intake/manifest_set.py) keep, in `files` and `file_rows`, which file each row
    came from: relative audio paths resolve against their own file's folder."""

    path: Location  # a local file or an s3:// object; for several files, what named them (folder or glob)
    table: pa.Table
    files: tuple[Location, ...] = ()  # the files read, in row order (empty: just `path`)
    file_rows: tuple[int, ...] = ()  # rows of each of `files`
    digest: str = ""  # of the bytes read: every file's name and bytes for several (intake/manifest_set.py)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @property
    def base_dir(self) -> Location:
        """Where relative audio paths of a single manifest resolve when no audio root is set (a
        folder or a prefix); see base_dirs for several."""
        return self.path.parent

    @cached_property
    def row_files(self) -> list[Location]:
        """The manifest file each row came from."""
        if not self.files:
            return [self.path] * self.num_rows
        return [f for f, n in zip(self.files, self.file_rows) for _ in range(n)]

    @property
    def base_dirs(self) -> list[Location]:
        """Each row's base folder for relative audio paths: its own manifest file's folder."""
        return [f.parent for f in self.row_files]

    @cached_property
    def ids(self) -> list[str]:
        return self.table.column(ID).to_pylist()

    @cached_property
    def paths(self) -> list[str]:
        return self.table.column(AUDIO).to_pylist()

    @cached_property
    def durations(self) -> list[float | None]:
        return self._optional(DURATION)

    @cached_property
    def languages(self) -> list[str | None]:
        return self._optional(LANGUAGE)

    @property
    def passthrough_columns(self) -> list[str]:
        return [name for name in self.table.column_names if name not in SCHEMA_COLUMNS]

    def _optional(self, name: str) -> list:
        if name in self.table.column_names:
            return self.table.column(name).to_pylist()
        return [None] * self.num_rows

    def subset(self, rows: list[int]) -> Manifest:
        """These rows only, in this order (e.g. the rows of one run's delta)."""
        files = self.row_files
        return Manifest(self.path, self.table.take(pa.array(rows, pa.int64())), tuple(files[r] for r in rows),
                        (1,) * len(rows), self.digest)


def read_manifest(path: str | Path | Location, allow_empty: bool = False, id_column: str | None = None) -> Manifest:
    """Read and validate a manifest (a local file or an s3:// object); raises ManifestError listing
    every problem found. allow_empty: a file with no rows is valid (one of several manifests, e.g.
    a day with no new audio). A Parquet file whose audio column holds the audio itself, or a
    WebDataset tar shard, reads as its rows (intake/embedded; id_column: where their ids are)."""
    try:
        path = storage.location(path)
    except storage.UnsupportedLocation as exc:
        raise ManifestError(str(exc)) from None
    table, digest = _read_shard(path, id_column) or _read_table(path)
    table = _normalise_types(table, path)
    problems = _row_problems(table, allow_empty)
    if problems:
        raise ManifestError(f"{path} is not a valid manifest (rows count from 0):\n"
                            + "\n".join(f"  - {p}" for p in problems))
    return Manifest(path, table, (path,), (table.num_rows,), digest)


def _read_shard(path: Location, id_column: str | None) -> tuple[pa.Table, str] | None:
    """A shard's rows (never its audio bytes) and a digest of its version, or None for a manifest
    that lists audio by path."""
    from pipeline.intake.embedded import parquet_shards, webdataset

    if not webdataset.is_tar(path) and not parquet_shards.holds_audio_bytes(path):
        return None
    try:
        if webdataset.is_tar(path):
            table, _, digest = webdataset.shards_table([path], id_column)
        else:
            table, digest = parquet_shards.shard_table(path, id_column)
    except parquet_shards.ShardError as exc:
        raise ManifestError(str(exc)) from None
    except (storage.StorageError, PermissionError) as exc:
        raise ManifestError(f"cannot read the shard {path}: {exc}") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"{path} is not a readable shard: {exc}") from None
    return table, digest[:DIGEST_CHARS]


def _read_table(path: Location) -> tuple[pa.Table, str]:
    """The file's table and a digest of its bytes (read once: the digest tells a finished run's
    manifest from a changed one)."""
    try:
        found = storage.info(path)
        if found.kind == "missing":
            missing = storage.missing_detail(path) if isinstance(path, storage.ObjectPath) else f"{path} does not exist"
            raise ManifestError(f"manifest {missing}")
        if found.kind == "dir":
            raise ManifestError(f"{path} is a folder; give the manifest's .parquet file")
        data = storage.read_bytes(path)
        # ParquetFile, not read_table: a single file, no dataset or partition guessing from its path.
        return pq.ParquetFile(pa.BufferReader(data)).read(), hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]
    except (storage.StorageError, PermissionError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc}") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"{path} is not a readable Parquet file: {exc}") from None


def _normalise_types(table: pa.Table, path: Path) -> pa.Table:
    names = table.column_names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ManifestError(f"{path}: column(s) {repeated} appear more than once")
    missing = [c for c in (ID, AUDIO) if c not in names]
    if missing:
        near = [n for n in names if n.strip().lower() in missing]
        hint = f" (column names are case-sensitive: found {near})" if near else ""
        raise ManifestError(f"{path}: missing required column(s) {missing}; it has {names[:20]}{hint}")
    problems = []
    for name, target in ((ID, pa.string()), (AUDIO, pa.string()), (DURATION, pa.float64()),
                         (LANGUAGE, pa.string())):
        if name not in names:
            continue
        column = table.column(name)
        if _castable(column.type, target):
            table = table.set_column(names.index(name), name, column.cast(target))
        else:
            problems.append(_type_problem(name, column.type))
    if problems:
        raise ManifestError(f"{path} has columns of the wrong type:\n"
                            + "\n".join(f"  - {p}" for p in problems))
    return table


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    """Only lossless, unsurprising casts: string flavours to string, numbers to float seconds."""
    if pa.types.is_dictionary(source):
        source = source.value_type
    if pa.types.is_null(source):  # a column that is entirely null
        return True
    if pa.types.is_string(target):
        return any(check(source) for check in (pa.types.is_string, pa.types.is_large_string,
                                                pa.types.is_string_view))
    return pa.types.is_integer(source) or pa.types.is_floating(source)


def _type_problem(name: str, found: pa.DataType) -> str:
    if name == ID and pa.types.is_integer(found):
        # Not cast silently: zero-padded ids ("00042") would already have lost their zeros, and
        # the output's ids must equal what the user wrote.
        return (f"column 'id' has type {found}; ids must be strings. Cast them before writing the "
                f"manifest, e.g. pandas: df['id'] = df['id'].astype(str); pyarrow: "
                f"table.set_column(table.schema.get_field_index('id'), 'id', table['id'].cast(pa.string()))")
    if name == DURATION:
        return f"column 'duration_s' has type {found}; it must hold seconds as numbers (float or int) or null"
    what = {ID: "ids must be strings", AUDIO: "audio paths must be strings",
            LANGUAGE: "languages must be strings (e.g. 'en') or null"}[name]
    return f"column '{name}' has type {found}; {what}"


def _row_problems(table: pa.Table, allow_empty: bool = False) -> list[str]:
    if table.num_rows == 0:
        return [] if allow_empty else ["it has no rows, so there is nothing to annotate"]
    ids = table.column(ID)
    problems = []

    def report(mask, what, values=None):
        rows = pc.indices_nonzero(pc.fill_null(mask, False).combine_chunks())
        if len(rows):
            problems.append(_describe(ids, rows, what, values))

    report(pc.is_null(ids), "a null id")
    report(pc.equal(pc.utf8_length(ids), 0), "an empty id")
    counts = pc.value_counts(ids.drop_null())
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        values = repeated.field("values")[:_EXAMPLES].to_pylist()
        shown = ", ".join(f"{v!r} ({c} rows)" for v, c in zip(values, repeated.field("counts").to_pylist()))
        more = f" and {len(repeated) - _EXAMPLES} more" if len(repeated) > _EXAMPLES else ""
        problems.append(f"{_count(len(repeated), 'id')} appear{'s' if len(repeated) == 1 else ''} "
                        f"more than once: {shown}{more}")
    paths = table.column(AUDIO)
    report(pc.is_null(paths), "a null audio path")
    report(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(paths)), 0), "an empty audio path")
    if DURATION in table.column_names:
        durations = table.column(DURATION)
        report(pc.invert(pc.is_finite(durations)),
               "a duration_s that is NaN or infinite (use null for an unknown duration)", durations)
        report(pc.less(durations, 0), "a negative duration_s", durations)
    return problems


# duration_s values that cannot be right: a day or more for one recording; and a column of whole
# numbers whose median is 1000 or more (17 minutes a clip), which is milliseconds written as seconds.
IMPLAUSIBLE_S = 24 * 3600.0
MILLISECONDS_MEDIAN = 1000.0


def duration_warnings(manifest: Manifest) -> list[str]:
    """duration_s values that cannot be right, each warning naming rows (vectorised). They are not
    errors: a file shorter than its plan is planned again from its decoded length and annotated
    whole, but the work budgets, the progress bar and the time estimate go by these values."""
    table = manifest.table
    if DURATION not in table.column_names:
        return []
    durations, warnings = table.column(DURATION), []
    over = pc.indices_nonzero(pc.fill_null(pc.greater(durations, IMPLAUSIBLE_S), False).combine_chunks())
    if len(over):
        warnings.append(_describe(table.column(ID), over, "a duration_s over 24 hours", durations))
    known = durations.filter(pc.fill_null(pc.greater(durations, 0), False))
    if len(known) and pc.all(pc.equal(pc.floor(known), known)).as_py():
        median = pc.quantile(known, q=0.5, interpolation="lower")[0].as_py()
        if median >= MILLISECONDS_MEDIAN:
            warnings.append(f"duration_s holds whole numbers with a median of {median:g}: these look like "
                            "milliseconds, not seconds (divide them by 1000)")
    return warnings


def _describe(ids: pa.ChunkedArray, rows: pa.Array, what: str, values=None) -> str:
    shown_rows = rows[:_EXAMPLES]
    shown_ids = ids.take(shown_rows).to_pylist()
    shown_values = values.take(shown_rows).to_pylist() if values is not None else [None] * len(shown_ids)
    parts = []
    for row, id_, value in zip(shown_rows.to_pylist(), shown_ids, shown_values):
        where = f"row {row}" + (f": {value}" if values is not None else "")
        parts.append(f"{id_!r} ({where})" if id_ else where)
    more = f" and {len(rows) - _EXAMPLES} more" if len(rows) > _EXAMPLES else ""
    verb = "has" if len(rows) == 1 else "have"
    return f"{_count(len(rows), 'row')} {verb} {what}: {', '.join(parts)}{more}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
