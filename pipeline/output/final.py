"""The final tables, streamed: annotations.parquet and segments.parquet in manifest order, with the
driver's memory bounded whatever the size of the run.

Committed parts hold results in the order they finished, not in manifest order, and may hold
several results for a key or a row (current_results.CurrentResults says which count). The tables
are written in three steps:
1. which results count is decided over the state columns of every result (light: ids, keys, plans,
   reasons, runs, sources), columnar: a result's row is the manifest position it recorded, confirmed
   by its id's hash (Manifest.id_hashes), or found by that hash when the manifest moved rows since;
   its sources are compared with the row's as planning found them (RowsNow);
2. the results are streamed from the parts batch by batch, less those that do not count, each with
   its row's position in this manifest, into DuckDB, which sorts them by (position, segment) within
   SORT_MEMORY and spills the rest to a temporary folder;
3. the sorted results are read back in chunks of CHUNK_ROWS manifest rows, each combined with its
   manifest rows (read from the manifest for that chunk only) into its rows (output/tables.py).
The counts run.json reports are gathered on the way (Totals). output/delta.py reads OUT the same
way for the rows of one runs/ file.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.intake.manifest_table import ID, Manifest
from pipeline.intake.sources import SOURCE_COLUMNS, CurrentSources, SourceKeys, is_current
from pipeline.key_index import hash_strings
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
        self.rows_by_status.update(_counts(annotations.column("status")))
        self.rows_by_error.update(_counts(annotations.column("error").drop_null()))
        self.segments_by_status.update(_counts(segments.column("status")))
        errors = segments.column("error")
        self.transient_segments += int(pc.sum(pc.is_in(errors, value_set=pa.array(sorted(TRANSIENT)))).as_py() or 0)
        ok = segments.filter(pc.equal(segments.column("status"), "ok"))
        self.ok_audio_s += pc.sum(pc.subtract(ok.column("end_s"), ok.column("start_s"))).as_py() or 0.0


def _counts(values) -> dict:
    counted = pc.value_counts(values)
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))


class RowsNow:
    """Each manifest row's audio and plan now, as planning found them (planning/work.RowFacts: rows
    it did not plan, in a run that stopped early, are taken as they were committed), or for a
    manifest small enough to hold (tests, benchmarks) its CurrentSources and planned durations."""

    def __init__(self, facts=None, verify_content: bool = False, sources: CurrentSources | None = None,
                 planned: list | None = None):
        self.facts, self.verify_content = facts, verify_content
        self.sources, self.planned_list = sources, planned

    def current_mask(self, state: pa.Table, positions: np.ndarray) -> np.ndarray:
        """Which results (state columns, each at its manifest position) still describe their row."""
        if self.sources is not None:
            return self.sources.mask(state).to_numpy(zero_copy_only=False)
        keep = np.ones(state.num_rows, bool)
        if self.facts is None:
            return keep
        known = np.flatnonzero((positions >= 0) & (positions < self.facts.until))
        if len(known):
            rows = positions[known]
            recorded = SourceKeys.of(*(state.column(c).take(pa.array(known)) for c in SOURCE_COLUMNS))
            now = SourceKeys(self.facts.audio[rows], self.facts.duration_s[rows], self.facts.version[rows],
                             self.facts.sha256[rows])
            keep[known] = is_current(recorded, now, self.verify_content)
        return keep

    def plans_at(self, state: pa.Table, positions: np.ndarray) -> pa.Array:
        """Each result's row's planned duration now (null: not known)."""
        if self.sources is not None:
            planned = self.sources.planned
            return pa.array([planned.get(i) for i in state.column("id").to_pylist()], pa.float64())
        plans = np.full(len(positions), np.nan)
        if self.facts is not None:
            known = (positions >= 0) & (positions < self.facts.until)
            plans[known] = self.facts.planned[positions[known]]
        return pa.array(plans, mask=np.isnan(plans))

    def planned(self, start: int, n: int) -> list:
        """The planned durations of rows [start, start + n) (None where not known)."""
        if self.planned_list is not None:
            return list(self.planned_list[start:start + n])
        if self.facts is None:
            return [None] * n
        stop = min(start + n, self.facts.until)
        known = self.facts.planned[start:stop].tolist() if stop > start else []
        return [None if p != p else p for p in known] + [None] * (n - len(known))


def write_tables(sink: OutputDir, manifest: Manifest, now: RowsNow, columns: dict[str, str], tasks: list[str],
                 chunk_rows: int = CHUNK_ROWS) -> Totals:
    """Write annotations.parquet and segments.parquet for this manifest from OUT's committed parts."""
    totals = Totals()
    schema = segment_schema(columns)
    with sink.table_writer("annotations.parquet", annotations_schema(manifest, columns, tasks)) as annotations, \
            sink.table_writer("segments.parquet", segments_output(schema.empty_table()).schema) as segments:
        for start, rows, table in current_by_chunk(sink, manifest, now, columns, chunk_rows):
            found = current_segments(table, rows.column(ID))
            rows_table = annotations_output(found, rows, now.planned(start, rows.num_rows), columns, tasks)
            annotations.write_table(rows_table)
            segments.write_table(segments_output(found))
            totals.add(rows_table, found)
    return totals


def current_by_chunk(sink: OutputDir, manifest: Manifest, now: RowsNow, columns: dict[str, str], chunk_rows: int,
                     keep: Callable[[pa.Table], np.ndarray] | None = None,
                     chunks: set[int] | None = None) -> Iterator[tuple[int, pa.Table, pa.Table]]:
    """(first row, the chunk's manifest rows, its results that count) for each chunk of chunk_rows
    manifest rows in order. keep: which results to consider at all (over the state columns; default
    every one); chunks: only these chunks (by index; the others' manifest rows are not read)."""
    import duckdb

    schema = segment_schema(columns)
    scratch = Path(tempfile.mkdtemp(prefix="pipeline-final-"))
    try:
        database = duckdb.connect(config={"memory_limit": SORT_MEMORY, "threads": SORT_THREADS,
                                          "temp_directory": str(scratch)})
        try:
            reader = pa.RecordBatchReader.from_batches(schema.append(pa.field(_POSITION, pa.int64())),
                                                       _counted_results(sink, manifest, now, columns, keep))
            database.register("results", reader)
            ordered = database.sql(f"SELECT * FROM results ORDER BY {_POSITION}, segment").to_arrow_reader(SORTED_BATCH)
            for index, table in _chunks(ordered, schema, manifest.num_rows, chunk_rows):
                if chunks is not None and index not in chunks:
                    continue
                start = index * chunk_rows
                yield start, manifest_rows(manifest, start, min(manifest.num_rows, start + chunk_rows)), table
        finally:
            database.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def manifest_rows(manifest: Manifest, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of the manifest, every column (across its files' boundaries)."""
    found = [b.table for b in manifest.batches(start=start, stop=stop, rows=max(1, stop - start))]
    if not found:
        return pa.schema([manifest.field(c) for c in manifest.columns]).empty_table()
    return pa.concat_tables(found) if len(found) > 1 else found[0]


class Positions:
    """Where results' ids are in the manifest: the row they recorded, confirmed by the id's hash,
    else found by that hash (a sorted index of the manifest's id hashes, built when first needed).
    A hash only places a result in a chunk: tables.current_segments joins on the ids themselves."""

    def __init__(self, manifest: Manifest):
        self.hashes = manifest.id_hashes
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    def of(self, table: pa.Table) -> np.ndarray:
        """Each result's manifest row, -1 for ids the manifest no longer has."""
        hashes = hash_strings(table.column("id"))
        rows = pc.fill_null(table.column("row"), -1).to_numpy(zero_copy_only=False).astype(np.int64) \
            if "row" in table.column_names else np.full(table.num_rows, -1, np.int64)
        inside = (rows >= 0) & (rows < len(self.hashes))
        confirmed = np.zeros(len(rows), bool)
        confirmed[inside] = self.hashes[rows[inside]] == hashes[inside]
        if confirmed.all():
            return rows
        if self._sorted is None:
            order = np.argsort(self.hashes, kind="stable")
            self._sorted = (self.hashes[order], order)
        ordered, order = self._sorted
        lost = np.flatnonzero(~confirmed)
        at = np.minimum(np.searchsorted(ordered, hashes[lost]), max(0, len(ordered) - 1))
        found = (len(ordered) > 0) & (ordered[at] == hashes[lost])
        rows[lost] = np.where(found, order[at], -1)
        return rows


def _counted_results(sink: OutputDir, manifest: Manifest, now: RowsNow, columns: dict[str, str],
                     keep: Callable[[pa.Table], np.ndarray] | None) -> Iterator[pa.RecordBatch]:
    """Every result that counts for this manifest, batch by batch, with its row's position in it.
    What counts is decided once over the state columns of all results (light, and read by every
    run's resume anyway); the parts are then read whole, batch by batch in the same order, and each
    batch takes its rows' decisions by its offset in that order."""
    state = sink.state()
    position = Positions(manifest).of(state) if state.num_rows else np.zeros(0, np.int64)
    counted = position >= 0  # ids no longer in the manifest do not
    if keep is not None and state.num_rows:
        counted &= keep(state)
    if state.num_rows:
        counted &= now.current_mask(state, position)
    chosen = np.flatnonzero(counted)
    decided = np.zeros(state.num_rows, bool)
    if len(chosen):
        candidates = state.take(pa.array(chosen))
        plans = now.plans_at(candidates, position[chosen])
        decided[chosen] = CurrentResults({}).mask(candidates, plans).to_numpy(zero_copy_only=False)
    offset = 0
    for batch in sink.batches(columns):
        rows = slice(offset, offset + batch.num_rows)
        if not pc.all(pc.equal(batch.column("key"), state.column("key")[rows])).as_py():
            raise RuntimeError("the committed parts changed while the final tables were written")
        table = pa.Table.from_batches([batch]).append_column(_POSITION, pa.array(position[rows], pa.int64()))
        offset += batch.num_rows
        yield from table.filter(pa.array(decided[rows])).to_batches()
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


def annotations_schema(manifest: Manifest, columns: dict[str, str], tasks: list[str]) -> pa.Schema:
    """annotations.parquet's schema: what annotations_output makes of no rows of this manifest."""
    empty = pa.schema([manifest.field(c) for c in manifest.columns]).empty_table()
    return annotations_output(segment_schema(columns).empty_table(), empty, [], columns, tasks).schema

