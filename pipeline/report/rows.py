"""The output rows a report describes, read a few columns at a time in record batches.

A finished run's rows are annotations.parquet. A run stopped early (a budget, a stop request)
leaves annotations.parquet as the last finished run wrote it, or absent; what OUT has committed is
then the replay of runs/ files (output/delta.py): every row from the latest file that holds it.
Either way the rows are streamed: only the columns asked for, batch by batch, never the whole
table as Python objects (a 10M-row OUT).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.output.delta import METADATA_KEY, written_stamps
from pipeline.output.sink import OutputDir
from pipeline.storage import Location

BATCH_ROWS = 65_536
FINAL = "final"  # annotations.parquet
COMMITTED = "committed"  # the replay of runs/


@dataclass
class RunFile:
    """One invocation's runs/ file: its stamp and what it recorded about itself."""

    stamp: str
    location: Location
    info: dict  # its metadata (started, outcome, wall_s, audio_s, rows, timeline, ...)
    num_rows: int


def run_files(sink: OutputDir) -> list[RunFile]:
    """Every runs/ file, oldest first, with its metadata (one footer read each)."""
    fs, _ = storage.filesystem(sink.runs)
    found = []
    for stamp in sorted(written_stamps(sink)):
        where = sink.runs / f"{stamp}.parquet"
        metadata = pq.read_metadata(storage.filesystem(where)[1], filesystem=fs)
        raw = (metadata.metadata or {}).get(METADATA_KEY)
        found.append(RunFile(stamp, where, json.loads(raw) if raw else {}, metadata.num_rows))
    return found


class Rows:
    """Output rows from one or more Parquet files; `keep` masks rows replaced by a later file."""

    def __init__(self, kind: str, files: Sequence[Location], schema: pa.Schema, keep: list | None = None):
        self.kind = kind
        self.files = list(files)
        self.schema = schema
        self.keep = keep  # per file: a boolean array over its rows, or None (every row)

    @property
    def names(self) -> list[str]:
        return self.schema.names

    def batches(self, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """These columns (those the output has; a file lacking one reads it as nulls) in batches."""
        wanted = pa.schema([self.schema.field(c) for c in columns if c in self.schema.names])
        for index, where in enumerate(self.files):
            fs, path = storage.filesystem(where)
            with fs.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                present = [c for c in wanted.names if c in parquet.schema_arrow.names]
                mask = self.keep[index] if self.keep is not None else None
                offset = 0
                for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=present):
                    length = batch.num_rows
                    batch = _conform(batch, wanted)
                    if mask is not None:  # rows a later runs/ file holds again
                        batch = batch.filter(mask.slice(offset, length))
                    offset += length
                    yield batch


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for field in schema:
        if field.name in batch.schema.names:
            column = batch.column(field.name)
            arrays.append(column if column.type == field.type else column.cast(field.type, safe=False))
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def read_rows(sink: OutputDir, kind: str | None = None, runs: list[RunFile] | None = None) -> Rows:
    """The rows to describe. kind: FINAL or COMMITTED, or None to choose: annotations.parquet when
    the latest invocation finished (or none wrote a runs/ file), else the replay of runs/."""
    runs = run_files(sink) if runs is None else runs
    final = sink.path / "annotations.parquet"
    has_final = storage.info(final).kind == "file"
    if kind is None:
        latest_finished = not runs or runs[-1].info.get("outcome") == "finished"
        kind = FINAL if has_final and latest_finished else COMMITTED if runs else FINAL
    if kind == FINAL:
        if not has_final:
            return Rows(FINAL, [], pa.schema([]))
        fs, path = storage.filesystem(final)
        return Rows(FINAL, [final], pq.read_schema(path, filesystem=fs))
    return _replay(runs)


def _replay(runs: list[RunFile]) -> Rows:
    """Every id's row from the latest runs/ file that holds it."""
    if not runs:
        return Rows(COMMITTED, [], pa.schema([]))
    schemas, orders = [], []
    for index, run in enumerate(runs):
        fs, path = storage.filesystem(run.location)
        schemas.append(pq.read_schema(path, filesystem=fs))
        ids = pq.read_table(path, columns=["id"], filesystem=fs).column("id")
        orders.append(pa.table({"id": ids, "order": pa.array((index << 40) + _arange(len(ids)), pa.int64())}))
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    if len(runs) == 1:
        return Rows(COMMITTED, [runs[0].location], schema)
    every = pa.concat_tables(orders)
    latest = every.group_by("id").aggregate([("order", "max")]).column("order_max")
    keep = [pc.is_in(table.column("order"), value_set=latest).combine_chunks() for table in orders]
    keep = [None if pc.all(mask).as_py() else mask for mask in keep]
    return Rows(COMMITTED, [r.location for r in runs], schema, keep)


def _arange(n: int):
    import numpy as np

    return np.arange(n, dtype=np.int64)
