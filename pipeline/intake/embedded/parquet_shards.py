"""Parquet shards that hold their audio (a binary `audio` column, or the Hugging Face Audio struct
{bytes, path}) as manifests. The driver reads every column but the audio bytes: the other columns,
and for the struct its `path` leaf (projection: the bytes' column chunks are never requested).
Each row's `audio` value becomes a reference to its cell (refs.ParquetCell, shown as `shard#row`),
which a worker reads later, by row group (parquet_cells.py).

Whether a row's bytes are null (the struct's "read path") is not known without reading them, so
the row group's statistics decide: no nulls (the usual Hub dataset), every cell is read for its
bytes; all null (a dataset of paths), each row is its `path`, resolved as a manifest path is;
some null, every cell carries its path as a fallback that the worker reads when the bytes are null.
A null struct, or no path where there are no bytes, is a no_audio row, never a failed manifest.

Ids: the `id` column; else the job's `id_column`; else `<shard name>/<row index>`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.intake.embedded.parquet_cells import AUDIO_COLUMN, holds_bytes
from pipeline.intake.embedded.refs import NoAudio, ParquetCell
from pipeline.reasons import Failure, Reason
from pipeline.storage import Location

ID = "id"


class ShardError(UserError, ValueError):
    """A shard that cannot be a manifest; the message names it (manifests report it as theirs)."""


def holds_audio_bytes(path: Location) -> bool:
    """True when the file is Parquet with an `audio` column of bytes (its footer says; a file
    that cannot be read is left to the manifest reader, which names the problem)."""
    try:
        with storage.open_input(path) as f:
            schema = read_footer(f).schema.to_arrow_schema()
    except Exception:
        return False
    return AUDIO_COLUMN in schema.names and holds_bytes(schema.field(AUDIO_COLUMN).type)


def shard_table(path: Location, id_column: str | None = None) -> tuple[pa.Table, str]:
    """The manifest rows of one shard (every column but the audio bytes; `audio` the rows'
    references) and a digest of its version (size and mtime, or ETag: no byte of it is hashed)."""
    shard = absolute(path)
    with storage.open_input(path) as f:
        # No pre-buffering: it merges nearby column chunks into one read, audio bytes between them too.
        parquet = pq.ParquetFile(f, metadata=read_footer(f), pre_buffer=False)
        schema = parquet.schema_arrow
        kind = schema.field(AUDIO_COLUMN).type
        struct = pa.types.is_struct(kind)
        has_path = struct and kind.get_field_index("path") >= 0
        columns = [n for n in schema.names if n != AUDIO_COLUMN] + ([f"{AUDIO_COLUMN}.path"] if has_path else [])
        bytes_leaf = _leaf_index(parquet, f"{AUDIO_COLUMN}.bytes" if struct else AUDIO_COLUMN)
        pieces, first = [], 0
        for group in range(parquet.num_row_groups):
            meta = parquet.metadata.row_group(group)
            table = parquet.read_row_group(group, columns=columns)
            paths = table.column(AUDIO_COLUMN).combine_chunks().field("path") if has_path else None
            nulls = _null_count(meta.column(bytes_leaf)) if bytes_leaf is not None else None
            audio = _audio_values(shard, group, first, meta.num_rows, nulls, paths, struct)
            if has_path:
                table = table.drop_columns([AUDIO_COLUMN])
            pieces.append(table.append_column(AUDIO_COLUMN, pa.array(audio, pa.string())))
            first += meta.num_rows
    table = pa.concat_tables(pieces) if pieces else schema.empty_table().drop_columns([AUDIO_COLUMN]).append_column(
        AUDIO_COLUMN, pa.array([], pa.string()))
    table = with_ids(table, id_column, lambda: [f"{shard.name}/{row}" for row in range(table.num_rows)])
    digest = hashlib.sha256(f"{shard}\t{storage.version(path)}".encode()).hexdigest()
    return table, digest


def read_footer(f) -> pq.FileMetaData:
    """The file's metadata, reading exactly its footer: pyarrow's own footer read takes the last
    64 kB, which in a shard are mostly the last row group's audio bytes."""
    size = f.seek(0, 2)
    if size < 12:
        raise ValueError("too small to be Parquet")
    f.seek(size - 8)
    tail = f.read(8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or not 0 < length <= size - 12:
        raise ValueError("not a Parquet file (no footer)")
    f.seek(size - 8 - length)
    footer = f.read(length)
    return pq.read_metadata(pa.BufferReader(b"PAR1" + footer + tail))


def _audio_values(shard: Location, group: int, first: int, rows: int, nulls: int | None, paths, struct: bool) -> list[str]:
    """Each row's manifest audio value (see the module docstring)."""
    path_values = paths.to_pylist() if paths is not None else [None] * rows
    if nulls == rows:  # no bytes in this row group: its rows are paths (or have no audio at all)
        return [p if p and p.strip() else str(NoAudio(f"{shard}#{first + i}", Failure(
            Reason.NO_AUDIO, f"{shard.name}#{first + i} holds no audio: " +
            ("its bytes and path are null" if struct else "its value is null"))))
            for i, p in enumerate(path_values)]
    fallback = nulls is None or nulls > 0
    return [str(ParquetCell(shard, first + i, group, (p or "") if fallback else "")) for i, p in enumerate(path_values)]


def _leaf_index(parquet: pq.ParquetFile, path: str) -> int | None:
    meta = parquet.metadata.row_group(0) if parquet.num_row_groups else None
    if meta is None:
        return None
    return next((i for i in range(meta.num_columns) if meta.column(i).path_in_schema == path), None)


def _null_count(column) -> int | None:
    stats = column.statistics
    return stats.null_count if stats is not None and stats.has_null_count else None


def with_ids(table: pa.Table, id_column: str | None, default) -> pa.Table:
    """`id` first: the table's own, else the id_column's values, else default() (a list)."""
    if ID in table.column_names:
        return table
    if id_column:
        if id_column not in table.column_names:
            raise ShardError(f"the job's id_column {id_column!r} is not a column of the manifest; it has "
                                f"{table.column_names[:20]}")
        values = table.column(id_column)
        if pa.types.is_integer(values.type):  # exact as text: a number in a shard has no zeros to lose
            values = pc.cast(values, pa.string())
        return table.add_column(0, ID, values)
    return table.add_column(0, ID, pa.array(default(), pa.string()))


def absolute(path: Location) -> Location:
    """A shard's location as workers elsewhere can find it: absolute (object URLs already are)."""
    return Path(os.path.abspath(path)) if isinstance(path, Path) else path
