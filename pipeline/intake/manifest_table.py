"""Manifests: the Parquet table of audio to annotate, validated before any model loads, then read
in record batches of the columns each step needs.

Schema (manifests/README.md is the user-facing description):
    id          string, unique, not null, not empty
    audio       string path or s3:// URL; relative paths resolve against the manifest's folder (its
                prefix, for a manifest on object storage), or against the audio root when the run
                sets one
    duration_s  optional: seconds as float or int, >= 0, or null (unknown: read from headers later)
    language    optional: string (e.g. "en") or null
Every other column is carried through to the output untouched.

A Manifest is a handle, not the table: the files, their row counts, the normalised schema, a digest
of the bytes and each row's id hash (8 bytes a row, what resume and the output join on). Nothing
holds the manifest's rows: planning reads id, audio and duration_s window by window, the final
tables read every column chunk by chunk (Manifest.batches). Validation streams the same way
(manifest_checks.py), so a bad manifest stops the run with one message naming the offending ids or
rows, never a traceback, whatever its size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.key_index import hash_strings
from pipeline.storage import Location

ID, AUDIO, DURATION, LANGUAGE = "id", "audio", "duration_s", "language"
SCHEMA_COLUMNS = (ID, AUDIO, DURATION, LANGUAGE)
# The types the schema columns are read as (cast from compatible ones: manifest_checks.py).
SCHEMA_TYPES = {ID: pa.string(), AUDIO: pa.string(), DURATION: pa.float64(), LANGUAGE: pa.string()}
DIGEST_CHARS = 20
BATCH_ROWS = 65_536  # rows per batch read (a manifest file's row groups are joined or cut to this)
_DIGEST_BLOCK = 8 << 20


class ManifestError(UserError):
    """A manifest that cannot be used; the message names the offending ids or rows."""


@dataclass(frozen=True)
class ManifestBatch:
    """Consecutive rows of one manifest file: rows [start, start + table.num_rows) of the manifest."""

    start: int
    file: int  # index in Manifest.files
    table: pa.Table

    @property
    def stop(self) -> int:
        return self.start + self.table.num_rows


@dataclass(frozen=True, eq=False)
class Manifest:
    """A validated manifest (read_manifest, manifest_set.read_manifests). Several manifest files read
    as one keep, in `files` and `file_rows`, which file each row came from: relative audio paths
    resolve against their own file's folder. `tables` holds a file's rows themselves where they
    were made in memory (a shard that holds its audio: intake/embedded, whose rows are built from
    it without its bytes; a manifest made from a table in tests); other files are read batch by
    batch."""

    path: Location  # a local file or an s3:// object; for several files, what named them (folder or glob)
    files: tuple[Location, ...]  # the files read, in row order
    file_rows: tuple[int, ...]  # rows of each of `files`
    schema: pa.Schema  # id, audio (and duration_s, language where present) as SCHEMA_TYPES, the rest as read
    digest: str = ""  # of the bytes read: every file's name and bytes for several (manifest_set.py)
    id_hashes: np.ndarray | None = None  # each row's key_index.hash_strings(id)
    tables: tuple[pa.Table | None, ...] = ()  # per file: its rows in memory, or None (read from the file)
    warnings: tuple[str, ...] = ()  # duration_s values that cannot be right (manifest_checks.py)

    @classmethod
    def from_table(cls, path: Location, table: pa.Table, digest: str = "") -> Manifest:
        """A manifest of rows already in memory (already normalised and checked)."""
        return cls(path, (path,), (table.num_rows,), table.schema, digest,
                   hash_strings(table.column(ID)), (table,))

    @property
    def num_rows(self) -> int:
        return sum(self.file_rows)

    @property
    def base_dir(self) -> Location:
        """Where relative audio paths of a single manifest resolve when no audio root is set (a
        folder or a prefix); base_dir_of gives each file's."""
        return self.path.parent

    def base_dir_of(self, file: int) -> Location:
        """The folder relative audio paths of rows from files[file] resolve against."""
        return self.files[file].parent

    @property
    def passthrough_columns(self) -> list[str]:
        return [name for name in self.schema.names if name not in SCHEMA_COLUMNS]

    @property
    def columns(self) -> list[str]:
        """Every column the output carries: the schema columns (optional ones as nulls where the
        manifest lacks them), then the pass-through columns."""
        return [*SCHEMA_COLUMNS, *self.passthrough_columns]

    def field(self, name: str) -> pa.Field:
        if name in self.schema.names:
            return self.schema.field(name)
        if name in SCHEMA_TYPES:
            return pa.field(name, SCHEMA_TYPES[name])
        raise KeyError(name)

    def batches(self, columns: Sequence[str] | None = None, rows: int = BATCH_ROWS, start: int = 0,
                stop: int | None = None) -> Iterator[ManifestBatch]:
        """Rows [start, stop) in order, in batches of at most `rows` rows from one file, with these
        columns (default: Manifest.columns) as the schema says (optional ones null where absent)."""
        columns = list(columns) if columns is not None else self.columns
        stop = self.num_rows if stop is None else min(stop, self.num_rows)
        offset = 0
        for file, count in enumerate(self.file_rows):
            first, offset = offset, offset + count
            if offset <= start or first >= stop or count == 0:
                continue
            pieces = self._file_batches(file, columns, max(0, start - first), min(count, stop - first))
            for at, table in _rebatched(pieces, rows):
                yield ManifestBatch(first + at, file, self._normalised(table, columns))

    def read_rows(self, rows: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        """These rows (ascending positions) with these columns, reading only the batches that hold them."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return pa.schema([self.field(c) for c in (columns or self.columns)]).empty_table()
        found = []
        for batch in self.batches(columns, start=int(rows[0]), stop=int(rows[-1]) + 1):
            inside = rows[(rows >= batch.start) & (rows < batch.stop)] - batch.start
            if len(inside):
                found.append(batch.table.take(pa.array(inside)))
        return pa.concat_tables(found)

    def _file_batches(self, file: int, columns: list[str], start: int, stop: int) -> Iterator[tuple[int, pa.Table]]:
        """(row within the file, table) for the file's rows [start, stop), row group by row group."""
        held = self.tables[file] if self.tables else None
        if held is not None:
            present = [c for c in columns if c in held.column_names]
            yield start, held.select(present).slice(start, stop - start)
            return
        with open_parquet(self.files[file]) as parquet:
            present = [c for c in columns if c in parquet.schema_arrow.names]
            at = 0
            for group in range(parquet.num_row_groups):
                group_rows = parquet.metadata.row_group(group).num_rows
                first, at = at, at + group_rows
                if at <= start or first >= stop:
                    continue
                # Streamed within a row group too: a file written as one huge group costs a batch.
                batch_at = first
                for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=present):
                    lo, hi = max(start, batch_at), min(stop, batch_at + batch.num_rows)
                    if lo < hi:
                        yield lo, pa.Table.from_batches([batch]).slice(lo - batch_at, hi - lo)
                    batch_at += batch.num_rows

    def _normalised(self, table: pa.Table, columns: list[str]) -> pa.Table:
        arrays, fields = [], []
        for name in columns:
            field = self.field(name)
            if name in table.column_names:
                column = table.column(name)
                arrays.append(column if column.type == field.type else column.cast(field.type))
            else:
                arrays.append(pa.nulls(table.num_rows, field.type))
            fields.append(field)
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    # --- whole columns, for small manifests (tests, `manifest validate`): the driver never uses these ---

    @cached_property
    def table(self) -> pa.Table:
        """Every row and column in memory: for small manifests only."""
        return pa.concat_tables([b.table for b in self.batches()]) if self.num_rows else \
            pa.schema([self.field(c) for c in self.columns]).empty_table()

    @property
    def ids(self) -> list[str]:
        return self.table.column(ID).to_pylist()

    @property
    def paths(self) -> list[str]:
        return self.table.column(AUDIO).to_pylist()

    @property
    def durations(self) -> list[float | None]:
        return self.table.column(DURATION).to_pylist()

    @property
    def languages(self) -> list[str | None]:
        return self.table.column(LANGUAGE).to_pylist()

    @property
    def base_dirs(self) -> list[Location]:
        """Each row's base folder for relative audio paths (base_dir_of its file)."""
        return [self.base_dir_of(f) for f, n in enumerate(self.file_rows) for _ in range(n)]


def _rebatched(pieces: Iterator[tuple[int, pa.Table]], rows: int) -> Iterator[tuple[int, pa.Table]]:
    """Consecutive tables joined and cut into tables of `rows` rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    pending_rows, at = 0, None
    for start, table in pieces:
        if at is None:
            at = start
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= rows:
            joined = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
            yield at, joined.slice(0, rows)
            at += rows
            rest = joined.slice(rows)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
    if pending_rows:
        yield at, pa.concat_tables(pending) if len(pending) > 1 else pending[0]


class open_parquet:
    """A manifest file opened for reading (a context manager): local or on object storage."""

    def __init__(self, where: Location):
        self.where = where
        self.source = None

    def __enter__(self) -> pq.ParquetFile:
        fs, path = storage.filesystem(self.where)
        self.source = fs.open_input_file(path)
        # ParquetFile, not read_table: a single file, no dataset or partition guessing from its path.
        return pq.ParquetFile(self.source)

    def __exit__(self, *exc) -> None:
        if self.source is not None:
            self.source.close()


def file_digest(where: Location) -> str:
    """SHA-256 of a manifest file's bytes, read in blocks (a finished run's manifest told from a
    changed one)."""
    digest = hashlib.sha256()
    for block in storage.read_blocks(where, _DIGEST_BLOCK):
        digest.update(block)
    return digest.hexdigest()[:DIGEST_CHARS]


def duration_warnings(manifest: Manifest) -> list[str]:
    """duration_s values that cannot be right, found when the manifest was checked (each warning
    naming rows). They are not errors: a file shorter than its plan is planned again from its
    decoded length and annotated whole, but the work budgets, the progress bar and the time
    estimate go by these values."""
    return list(manifest.warnings)
