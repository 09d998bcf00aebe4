"""OUT/runs/<UTC start>.parquet: the rows an invocation committed, so that a downstream job picks up
exactly what changed (tonight's delta) without diffing whole tables.

A file holds, with annotations.parquet's columns, every row that became complete (each of its
segments has a result) since the previous runs/ file was written: the rows this invocation
committed, and those of an earlier invocation killed before it could write its own (its results
carry its stamp, which has no file). A row labelled again (its audio changed, or a transient
failure was retried) is in the later file again. Reading the files in name order, which is time
order, therefore replays every committed row and misses none, whether or not the runs finished;
annotations.parquet, by contrast, is rewritten only when a run finishes.

An invocation that completes no row writes no file. Each file's Parquet metadata records its run
(start, wall time, audio and items committed, outcome): the dry run estimates from the latest.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.intake.manifest_table import Manifest
from pipeline.key_index import hash_strings
from pipeline.output.committed import run_number
from pipeline.output.final import CHUNK_ROWS, RowsNow, current_by_chunk
from pipeline.output.sink import OutputDir
from pipeline.output.tables import annotations_output, current_segments
from pipeline.storage import Location

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # sorts as time does; no ':' (awkward in file names and URLs)
_NAME = re.compile(r"^(\d{8}T\d{6}Z)\.parquet$")
METADATA_KEY = b"pipeline.run"
_READ_ROWS = 262_144


def run_stamp(started: float, taken: set[str], taken_numbers: set[int] = frozenset()) -> str:
    """The invocation's UTC start to the second, one second later while a stamp is taken (two
    invocations within one second): a runs/ file's (taken), or results' (taken_numbers: run_number)."""
    while True:
        stamp = time.strftime(STAMP_FORMAT, time.gmtime(started))
        if stamp not in taken and int(stamp[:8] + stamp[9:15]) not in taken_numbers:
            return stamp
        started += 1


def written_stamps(sink: OutputDir) -> set[str]:
    return {m.group(1) for m in map(_NAME.match, storage.list_names(sink.runs)) if m}


@dataclass(frozen=True)
class DeltaWritten:
    location: Location | None  # None: no row completed since the last runs/ file
    rows: int = 0  # rows in it
    failed: int = 0  # of them, rows whose status is not ok (the error gate's measure)


def unwritten_ids(sink: OutputDir, written: set[str]) -> np.ndarray:
    """Hashes of the ids with a result whose run has no runs/ file yet (a light pass over OUT)."""
    found = []
    for batch in sink.state_batches(("id", "run"), _READ_ROWS):
        runs = batch.column("run")
        new = pc.and_(pc.is_valid(runs), pc.invert(pc.is_in(runs, value_set=pa.array(sorted(written), pa.string()))))
        ids = batch.column("id").filter(new)
        if len(ids):
            found.append(np.unique(hash_strings(ids)))
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)


def _completed_rows(table: pa.Table, n: int, written: set[str]) -> np.ndarray:
    """Rows (of a chunk of n) whose every segment has a result and whose latest result's run has
    no runs/ file yet; table: the chunk's current results (tables.current_segments)."""
    rows = table.column("row").to_numpy()
    counts = np.bincount(rows, minlength=n)
    expected = np.zeros(n, np.int64)
    np.maximum.at(expected, rows, table.column("n_segments").to_numpy().astype(np.int64))
    latest = np.zeros(n, np.int64)
    numbers = run_number(table.column("run"))
    np.maximum.at(latest, rows, numbers)
    done = (counts > 0) & (counts == expected) & (latest > 0)
    stamps = run_number(pa.array(sorted(written), pa.string())) if written else np.zeros(0, np.int64)
    return np.flatnonzero(done & ~np.isin(latest, stamps))


def write_run_delta(sink: OutputDir, manifest: Manifest, now: RowsNow, columns: dict[str, str], tasks: list[str],
                    stamp: str, run: dict, chunk_rows: int = CHUNK_ROWS) -> DeltaWritten:
    """OUT/runs/<stamp>.parquet: every row completed since the last runs/ file, with its
    annotations, in manifest order. now: each row's sources as planning found them. Streamed: the
    rows are found chunk by chunk of the manifest (output/final.py) among the ids that have a
    result of a run without a file, and written through a local file first (its row count goes in
    the metadata)."""
    written = written_stamps(sink)
    candidates = unwritten_ids(sink, written)
    if not len(candidates):
        return DeltaWritten(None)
    in_manifest = np.flatnonzero(np.isin(manifest.id_hashes, candidates))
    chunks = set((in_manifest // chunk_rows).tolist())

    def candidate(table: pa.Table) -> np.ndarray:
        return np.isin(hash_strings(table.column("id")), candidates)

    scratch = Path(tempfile.mkdtemp(prefix="pipeline-delta-"))
    rows, failed, writer = 0, 0, None
    try:
        for start, manifest_rows, table in current_by_chunk(sink, manifest, now, columns, chunk_rows, candidate, chunks):
            found = current_segments(table, manifest_rows.column("id"))
            completed = _completed_rows(found, manifest_rows.num_rows, written)
            if not len(completed):
                continue
            chosen = manifest_rows.take(pa.array(completed))
            segments = current_segments(found, chosen.column("id"))
            planned = now.planned(start, manifest_rows.num_rows)
            planned = [planned[r] for r in completed.tolist()]
            part = annotations_output(segments, chosen, planned, columns, tasks)
            if writer is None:
                writer = pq.ParquetWriter(scratch / "delta.parquet", part.schema)
            writer.write_table(part)
            rows += part.num_rows
            failed += int(pc.sum(pc.not_equal(part.column("status"), "ok")).as_py() or 0)
        if writer is None:
            return DeltaWritten(None)
        writer.close()
        writer = None
        where = write(sink, stamp, pq.ParquetFile(scratch / "delta.parquet"), {**run, "stamp": stamp, "rows": rows})
        return DeltaWritten(where, rows, failed)
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(scratch, ignore_errors=True)


def write(sink: OutputDir, stamp: str, rows: pa.Table | pq.ParquetFile, run: dict) -> Location:
    """Write one invocation's delta (rows: a table, or a local Parquet file streamed batch by batch);
    run: what to record about the invocation (see last_run)."""
    where = sink.runs / f"{stamp}.parquet"
    storage.make_dirs(sink.runs)
    schema = rows.schema_arrow if isinstance(rows, pq.ParquetFile) else rows.schema
    schema = schema.with_metadata({**(schema.metadata or {}), METADATA_KEY: json.dumps(run).encode()})
    with storage.table_writer(where, schema, compression="zstd") as writer:
        if isinstance(rows, pq.ParquetFile):
            for batch in rows.iter_batches():
                writer.write_table(pa.Table.from_batches([batch]).replace_schema_metadata(schema.metadata))
        else:
            writer.write_table(rows.replace_schema_metadata(schema.metadata))
    return where


def last_run(sink: OutputDir) -> dict | None:
    """What the latest invocation that annotated audio recorded (its runs/ file's metadata), or None."""
    fs, _ = storage.filesystem(sink.runs)
    for stamp in sorted(written_stamps(sink), reverse=True):
        where = sink.runs / f"{stamp}.parquet"
        metadata = pq.read_schema(storage.filesystem(where)[1], filesystem=fs).metadata or {}
        if METADATA_KEY in metadata:
            run = json.loads(metadata[METADATA_KEY])
            if run.get("audio_s") and run.get("wall_s"):
                return run
    return None
