"""The final tables, streamed: annotations.parquet and segments.parquet in manifest order, with the
driver's memory bounded by CHUNK_ROWS manifest rows, whatever the size of the run.

Committed parts hold results in the order they finished, not in manifest order. One pass reads
them batch by batch and sorts each result into a local temporary file by its row's chunk (rows
[0, CHUNK_ROWS), [CHUNK_ROWS, 2 * CHUNK_ROWS), ...); every result of a row lands in the same chunk.
Then each chunk in turn is read, reduced to the current results (one plan per row, one result per
key), combined into its rows (output/tables.py), and appended to both tables. The counts run.json
reports are gathered on the way (Totals).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.intake.manifest_table import Manifest
from pipeline.intake.sources import CurrentSources
from pipeline.output.sink import OutputDir, one_plan_per_id, one_per_key, segment_schema
from pipeline.output.tables import annotations_output, current_segments, segments_output
from pipeline.reasons import TRANSIENT

CHUNK_ROWS = 50_000


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
    totals = Totals()
    scratch = Path(tempfile.mkdtemp(prefix="pipeline-final-"))
    try:
        chunks = _sort_into_chunks(sink, manifest, current, columns, chunk_rows, scratch)
        schema = segment_schema(columns)
        with sink.table_writer("annotations.parquet", _annotations_schema(manifest, columns, tasks)) as annotations, \
                sink.table_writer("segments.parquet", segments_output(schema.empty_table()).schema) as segments:
            for chunk in range(max(1, -(-manifest.num_rows // chunk_rows))):
                where = chunks.get(chunk)
                table = pq.read_table(where, schema=schema) if where is not None else schema.empty_table()
                table = one_per_key(one_plan_per_id(table, current.planned))
                rows = list(range(chunk * chunk_rows, min(manifest.num_rows, (chunk + 1) * chunk_rows)))
                subset = manifest.subset(rows)
                found = current_segments(table, subset)
                rows_table = annotations_output(found, subset, [planned[r] for r in rows], columns, tasks)
                annotations.write_table(rows_table)
                segments.write_table(segments_output(found))
                totals.add(rows_table, found)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return totals


def _sort_into_chunks(sink: OutputDir, manifest: Manifest, current: CurrentSources, columns: dict[str, str],
                      chunk_rows: int, scratch: Path) -> dict[int, Path]:
    """One pass over the committed parts: each current result into its row's chunk file."""
    ids = pa.array(manifest.ids, pa.string())
    schema = segment_schema(columns)
    writers: dict[int, pq.ParquetWriter] = {}
    files: dict[int, Path] = {}
    try:
        for batch in sink.batches(columns):
            table = pa.Table.from_batches([batch], schema=schema)
            if current is not None and table.num_rows:
                table = table.filter(pa.array(current.mask(table), pa.bool_()))
            position = pc.index_in(table.column("id"), value_set=ids)
            table = table.filter(pc.is_valid(position))  # ids no longer in the manifest
            position = position.filter(pc.is_valid(position))
            chunk_of = pc.divide(position.cast(pa.int64()), chunk_rows).to_pylist()
            for chunk in sorted(set(chunk_of)):
                if chunk not in writers:
                    files[chunk] = scratch / f"chunk-{chunk}.parquet"
                    writers[chunk] = pq.ParquetWriter(files[chunk], schema)
                writers[chunk].write_table(table.filter(pc.equal(pa.array(chunk_of, pa.int64()), chunk)))
    finally:
        for writer in writers.values():
            writer.close()
    return files


def _annotations_schema(manifest: Manifest, columns: dict[str, str], tasks: list[str]) -> pa.Schema:
    """annotations.parquet's schema: what annotations_output makes of no rows of this manifest."""
    empty = manifest.subset([])
    return annotations_output(segment_schema(columns).empty_table(), empty, [], columns, tasks).schema
