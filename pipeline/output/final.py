"""The final tables, streamed: annotations.parquet and segments.parquet in manifest order, with the
driver's memory bounded whatever the size of the run.

Committed parts hold results in the order they finished, not in manifest order, and may hold
several results for a key or a row (sink.CurrentResults says which count). The tables are written
in three steps:
1. which results count is decided over the state columns of every result (light: ids, keys, plans,
   reasons, runs; what every run's resume reads too), columnar;
2. the results are streamed from the parts batch by batch, less those that do not count, each with
   its row's position in this manifest, into DuckDB, which sorts them by (position, segment) within
   SORT_MEMORY and spills the rest to a temporary folder;
3. the sorted results are read back in chunks of CHUNK_ROWS manifest rows, each combined into its
   rows (output/tables.py) and appended to both tables.
The counts run.json reports are gathered on the way (Totals).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.intake.manifest_table import Manifest
from pipeline.intake.sources import CurrentSources
from pipeline.output.current_results import CurrentResults
from pipeline.output.sink import OutputDir, segment_schema
from pipeline.output.tables import annotations_output, current_segments, segments_output
from pipeline.reasons import TRANSIENT

CHUNK_ROWS = 50_000
# What DuckDB may hold of the results it sorts before it spills to disk (measured at a million
# results: pipeline/bench/final_tables.py), and the threads it sorts with.
SORT_MEMORY = "512MB"
SORT_THREADS = 2
_POSITION = "position"
SORTED_BATCH = 16_384  # results per batch read back from the sort


@dataclass
class Totals:
    """What run.json counts over the final tables."""

    rows_by_status: Counter = field(default_factory=Counter)
    rows_by_error: Counter = field(default_factory=Counter)
    segments_by_status: Counter = field(default_factory=Counter)
    ok_audio_s: float = 0.0
    transient_segments: int = 0  # results that failed transiently (_SUCCESS records them)

    @property
    def rows(self) -> int:
        return sum(self.rows_by_status.values())

    @property
    def segments(self) -> int:
        return sum(self.segments_by_status.values())

    def add(self, annotations: pa.Table, segments: pa.Table) -> None:
        self.rows_by_status.update(annotations.column("status").to_pylist())
        self.rows_by_error.update(e for e in annotations.column("error").to_pylist() if e)
        statuses = segments.column("status").to_pylist()
        self.segments_by_status.update(statuses)
        self.transient_segments += sum(e in TRANSIENT for e in segments.column("error").to_pylist())
        ok = segments.filter(pc.equal(segments.column("status"), "ok"))
        self.ok_audio_s += pc.sum(pc.subtract(ok.column("end_s"), ok.column("start_s"))).as_py() or 0.0


def write_tables(sink: OutputDir, manifest: Manifest, current: CurrentSources, planned: list,
                 columns: dict[str, str], tasks: list[str], chunk_rows: int = CHUNK_ROWS) -> Totals:
    """Write annotations.parquet and segments.parquet for this manifest from OUT's committed parts."""
    import duckdb

    totals = Totals()
    schema = segment_schema(columns)
    scratch = Path(tempfile.mkdtemp(prefix="pipeline-final-"))
    try:
        database = duckdb.connect(config={"memory_limit": SORT_MEMORY, "threads": SORT_THREADS,
                                          "temp_directory": str(scratch)})
        try:
            reader = pa.RecordBatchReader.from_batches(schema.append(pa.field(_POSITION, pa.int64())),
                                                       _counted_results(sink, manifest, current, columns))
            database.register("results", reader)
            ordered = database.sql(f"SELECT * FROM results ORDER BY {_POSITION}, segment").to_arrow_reader(SORTED_BATCH)
            with sink.table_writer("annotations.parquet", _annotations_schema(manifest, columns, tasks)) as annotations, \
                    sink.table_writer("segments.parquet", segments_output(schema.empty_table()).schema) as segments:
                for chunk, table in _chunks(ordered, schema, manifest.num_rows, chunk_rows):
                    rows = list(range(chunk * chunk_rows, min(manifest.num_rows, (chunk + 1) * chunk_rows)))
                    subset = manifest.subset(rows)
                    found = current_segments(table, subset)
                    rows_table = annotations_output(found, subset, [planned[r] for r in rows], columns, tasks)
                    annotations.write_table(rows_table)
                    segments.write_table(segments_output(found))
                    totals.add(rows_table, found)
        finally:
            database.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return totals


def _counted_results(sink: OutputDir, manifest: Manifest, current: CurrentSources | None,
                     columns: dict[str, str]) -> Iterator[pa.RecordBatch]:
    """Every result that counts for this manifest, batch by batch, with its row's position in it.
    What counts is decided once over the state columns of all results (light, and read by every
    run's resume anyway); the parts are then read whole, batch by batch in the same order, and each
    batch takes its rows' decisions by its offset in that order."""
    state = sink.state()
    position = pc.index_in(state.column("id"), value_set=pa.array(manifest.ids, pa.string()))
    counted = pc.is_valid(position)  # ids no longer in the manifest do not
    if current is not None and state.num_rows:
        counted = pc.and_(counted, current.mask(state))
    candidates = state.filter(counted)
    keep = np.zeros(state.num_rows, dtype=bool)
    keep[np.flatnonzero(counted.to_numpy(zero_copy_only=False))] = \
        CurrentResults(current.planned if current is not None else {}).mask(candidates).to_numpy(zero_copy_only=False)
    keep = pa.array(keep)
    position = position.cast(pa.int64())
    offset = 0
    for batch in sink.batches(columns):
        rows = slice(offset, offset + batch.num_rows)
        if not pc.all(pc.equal(batch.column("key"), state.column("key")[rows])).as_py():
            raise RuntimeError("the committed parts changed while the final tables were written")
        chosen = keep[rows]
        table = pa.Table.from_batches([batch]).append_column(_POSITION, position[rows])
        offset += batch.num_rows
        yield from table.filter(chosen).to_batches()
    if offset != state.num_rows:
        raise RuntimeError("the committed parts changed while the final tables were written")


def _chunks(ordered: pa.RecordBatchReader, schema: pa.Schema, num_rows: int,
            chunk_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """The results sorted by position, cut at every chunk_rows manifest rows: (chunk, its results),
    for every chunk of the manifest (one without results too: tables.py then says what is missing)."""
    chunk, held = 0, []
    for batch in ordered:
        table = pa.Table.from_batches([batch])
        while table.num_rows:
            inside = pc.sum(pc.less(table.column(_POSITION), (chunk + 1) * chunk_rows)).as_py() or 0
            held.append(table.slice(0, inside))
            if inside == table.num_rows:
                break
            yield chunk, _results(held, schema)
            chunk, held, table = chunk + 1, [], table.slice(inside)
    for chunk in range(chunk, max(1, -(-num_rows // chunk_rows))):
        yield chunk, _results(held, schema)
        held = []


def _results(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """The sorted results of one chunk as the parts' schema (DuckDB may name nested fields its own way)."""
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).drop_columns([_POSITION]).cast(schema)


def _annotations_schema(manifest: Manifest, columns: dict[str, str], tasks: list[str]) -> pa.Schema:
    """annotations.parquet's schema: what annotations_output makes of no rows of this manifest."""
    empty = manifest.subset([])
    return annotations_output(segment_schema(columns).empty_table(), empty, [], columns, tasks).schema
