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
import time
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.intake.manifest_table import Manifest
from pipeline.intake.sources import CurrentSources
from pipeline.output.sink import OutputDir, Progress
from pipeline.output.tables import annotations_output, current_segments
from pipeline.storage import Location

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # sorts as time does; no ':' (awkward in file names and URLs)
_NAME = re.compile(r"^(\d{8}T\d{6}Z)\.parquet$")
METADATA_KEY = b"pipeline.run"


def run_stamp(started: float, taken: set[str]) -> str:
    """The invocation's UTC start to the second, one second later while a stamp is taken (two
    invocations within one second)."""
    while True:
        stamp = time.strftime(STAMP_FORMAT, time.gmtime(started))
        if stamp not in taken:
            return stamp
        started += 1


def written_stamps(sink: OutputDir) -> set[str]:
    return {m.group(1) for m in map(_NAME.match, storage.list_names(sink.runs)) if m}


def delta_ids(rows: pa.Table, written: set[str]) -> set[str]:
    """Ids whose every segment has a result and whose latest result's run has no runs/ file yet.
    rows: one current result per key (sink.Progress.rows). Results from before runs were recorded
    (no stamp) belong to no delta."""
    segments: dict[str, int] = defaultdict(int)
    expected: dict[str, int] = {}
    latest: dict[str, str] = {}
    columns = (rows.column(name).to_pylist() for name in ("id", "n_segments", "run"))
    for item_id, n, run in zip(*columns):
        segments[item_id] += 1
        expected[item_id] = n
        latest[item_id] = max(latest.get(item_id, ""), run or "")
    return {i for i, count in segments.items() if count == expected[i] and latest[i] and latest[i] not in written}


@dataclass(frozen=True)
class DeltaWritten:
    location: Location | None  # None: no row completed since the last runs/ file
    statuses: list[str]  # each of its rows' status, for the error gate


def write_run_delta(sink: OutputDir, manifest: Manifest, sources: CurrentSources, planned: list,
                    columns: dict[str, str], tasks: list[str], stamp: str, run: dict,
                    after: Progress | None = None) -> DeltaWritten:
    """OUT/runs/<stamp>.parquet: every row completed since the last runs/ file, with its
    annotations. sources, planned: every row's audio now and its planned duration (planning's
    Work); after: OUT's progress now, if read."""
    after = after or sink.progress(sources)
    ids = delta_ids(after.rows, written_stamps(sink))
    rows = [r for r, item_id in enumerate(manifest.ids) if item_id in ids]
    if not rows:
        return DeltaWritten(None, [])
    subset = manifest.subset(rows)
    segments = current_segments(sink.segments(columns, sources, ids=subset.ids), subset)
    table = annotations_output(segments, subset, [planned[r] for r in rows], columns, tasks)
    where = write(sink, stamp, table, {**run, "stamp": stamp, "rows": len(rows)})
    return DeltaWritten(where, table.column("status").to_pylist())


def write(sink: OutputDir, stamp: str, rows: pa.Table, run: dict) -> Location:
    """Write one invocation's delta; run: what to record about the invocation (see last_run)."""
    where = sink.runs / f"{stamp}.parquet"
    storage.make_dirs(sink.runs)
    table = rows.replace_schema_metadata({**(rows.schema.metadata or {}), METADATA_KEY: json.dumps(run).encode()})
    storage.write_table(where, table, compression="zstd")
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
