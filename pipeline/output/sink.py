"""The output folder (a local folder or an s3:// prefix): committed parts, resume state, and the
final Parquet files.

Layout of OUT:
    state.json                the run's identity (fingerprint and settings), written when OUT is first used
    parts/part-<d>-<t>.parquet segment results: <d> a digest of the keys it holds, <t> a random token
    commits/<part>.json       a part's commit record: the part is committed once its record exists
    segments.parquet          one row per segment (final)
    annotations.parquet       one row per manifest id (final)
    run.json                  what ran and how it went (final)
    runs/<start>.parquet      the rows each invocation committed (output/delta.py)
    _SUCCESS                  completion marker, written last

The commit protocol holds without an atomic rename, so the same code serves object stores:
1. A part is written under a key no other write uses (digest and random token): nothing is ever
   overwritten, and two attempts at the same items never meet.
2. Its commit record is written after the part, and only once the part's write has completed.
3. Readers list commit records and read only the parts they name; a part without a record
   (a run killed between the two writes, a failed upload) is ignored, and the next open() sweeps
   it, with any record whose part is gone.
4. Final files are written after every part is committed, and _SUCCESS last; a rerun that has new
   work removes _SUCCESS before committing anything.
A killed run therefore resumes from exactly the committed parts, and every key is committed once.
Locally each file is still written to a temporary name, fsynced and renamed (storage.write_bytes),
so a reader never sees half a file; on object stores each file is one upload, visible only when
complete. Parts named part-<digest>.parquet without a token were committed by rename before
commit records existed, and count as committed.

A result whose reason is transient (reasons.TRANSIENT: the object store kept failing) is written
like any other, so the output has its row, but it does not count as committed: the next run plans
that key again, and a lasting result for a key replaces its transient ones when the parts are read.
_SUCCESS records how many transient results the run ended with; while there are any, a rerun is
not a no-op.

Every result also records its provenance: the invocation that committed it (`run`, its UTC start
stamp) and its audio's source (intake/sources.py). Readers given the current sources ignore the
results of audio that changed since, so those rows are planned and committed again; where a key
still has several current results, a lasting one wins over transient ones, then the latest run.
Parts written before provenance existed read with nulls there and count as current.

The driver is the only writer, and one run at a time holds OUT (output/lock.py): every commit
first checks, through `guard`, that this run still owns it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from contextlib import contextmanager
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.intake.sources import SOURCE_COLUMNS, SOURCE_FIELDS, CurrentSources
from pipeline.items import ItemResult, Source
from pipeline.key_index import hash_strings
from pipeline.output import answer_columns
from pipeline.output.current_results import current_results
from pipeline.reasons import TRANSIENT
from pipeline.storage import Location

STATS_METADATA_KEY = b"pipeline.stats"
SUCCESS = "_SUCCESS"
FINAL_FILES = ("annotations.parquet", "segments.parquet", "run.json", SUCCESS)
_PART = re.compile(r"^part-[0-9a-f]{20}(-[0-9a-f]+)?\.parquet$")
_LEGACY_PART = re.compile(r"^part-[0-9a-f]{20}\.parquet$")
_RECORD = ".json"
_READERS = 8  # parts whose footers are read at once (object stores: one request each)


def atomic_write_bytes(path: Location, data: bytes) -> None:
    storage.write_bytes(path, data)


def atomic_write_table(path: Location, table: pa.Table) -> None:
    storage.write_table(path, table, compression="zstd")


def column_type(kind: str) -> pa.DataType:
    """Arrow type of an annotation column: "list" -> list<string>, "scores" -> map<string, double>
    (label -> P(yes)), "string" -> string."""
    if kind == "scores":
        return pa.map_(pa.string(), pa.float64())
    return pa.list_(pa.string()) if kind == "list" else pa.string()


RUN_FIELD = pa.field("run", pa.string())
# The row's duration the result's plan was made from (Item.planned_s): one plan per row counts.
PLANNED_FIELD = pa.field("planned_s", pa.float64())
PROVENANCE_FIELDS = (RUN_FIELD, PLANNED_FIELD, *SOURCE_FIELDS)
PROVENANCE_COLUMNS = tuple(f.name for f in PROVENANCE_FIELDS)
# What resume, relabelling and deltas read from every part (not the annotations).
_STATE_COLUMNS = ("key", "id", "segment", "n_segments", "status", "error", *PROVENANCE_COLUMNS)


@dataclass(frozen=True)
class Provenance:
    """Recorded with every result committed: the invocation (its UTC start stamp) and each id's source."""

    run: str
    sources: Mapping[str, Source] = field(default_factory=dict)


def segment_schema(columns: dict[str, str]) -> pa.Schema:
    """Part schema (segments.parquet drops key, row and provenance, and shows answers' mean
    log-probabilities, not sums: output/answer_columns.py); columns: annotation column -> kind."""
    fields = [
        pa.field("key", pa.string()), pa.field("id", pa.string()), pa.field("row", pa.int64()),
        pa.field("segment", pa.int32()), pa.field("n_segments", pa.int32()),
        pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64()),
        pa.field("status", pa.string()), pa.field("error", pa.string()), pa.field("error_detail", pa.string()),
        pa.field("silent", pa.bool_()), pa.field("raw", pa.map_(pa.string(), pa.string())),
        pa.field("skipped", pa.map_(pa.string(), pa.string())),
    ]
    for name, kind in columns.items():
        fields.append(pa.field(name, column_type(kind)))
    return pa.schema(fields + list(answer_columns.PART_FIELDS) + list(PROVENANCE_FIELDS))


def results_table(results: list[ItemResult], columns: dict[str, str], stats: dict | None,
                  provenance: Provenance | None = None) -> pa.Table:
    rows = []
    for r in results:
        row = {
            "key": r.item.key, "id": r.item.id, "row": r.item.row, "segment": r.item.segment,
            "n_segments": r.item.n_segments, "start_s": r.start_s, "end_s": r.end_s, "status": r.status,
            "error": r.error, "error_detail": r.error_detail, "silent": r.silent,
            "raw": list(r.raw.items()) if r.status == "ok" else None,
            "skipped": list(r.skipped.items()) if r.status == "ok" else None,
        }
        for name in columns:
            row[name] = r.parsed.get(name)
        row.update(answer_columns.part_values(r.answers if r.status == "ok" else {}, r.retried))
        row["planned_s"] = r.item.planned_s
        if provenance is not None:
            row["run"] = provenance.run
            source = r.item.source if r.item.source is not None else provenance.sources.get(r.item.id)
            if source is not None:
                row.update(source.row())
        rows.append(row)
    schema = segment_schema(columns)
    if stats is not None:
        schema = schema.with_metadata({STATS_METADATA_KEY: json.dumps(stats).encode()})
    return pa.Table.from_pylist(rows, schema=schema)


@dataclass
class Progress:
    """What OUT holds for the current sources, from one read of the parts' light columns."""

    keys: set[str]  # keys with a lasting current result
    done_ids: set[str]  # ids whose every segment has a lasting current result
    changed_ids: set[str]  # ids with results for audio that changed since: labelled again
    rows: pa.Table  # one current result per key: key, id, segment, n_segments, status, error, run

    @classmethod
    def nothing(cls) -> Progress:
        """An empty OUT (what --restart leaves)."""
        return cls(set(), set(), set(), _empty_state().drop_columns(list(SOURCE_COLUMNS)))


class OutputDir:
    def __init__(self, path: Location | str, guard: Callable[[], None] | None = None):
        """guard: called before every write that commits or presents results (output/lock.py's
        check: a run that lost its lock on OUT must not write beside the new owner)."""
        self.path = storage.location(path)
        self.guard = guard or (lambda: None)
        self.parts = self.path / "parts"
        self.commits = self.path / "commits"
        self.runs = self.path / "runs"
        self.durations = self.path / "durations"  # intake/durations.py
        # This run's commits, as hashes of the keys with a lasting result: a key committed twice by one
        # run is a planning bug, refused (8 bytes a key; no object per key).
        self._committed_now: list[np.ndarray] = []
        self._forgotten: set[str] = set()  # rows planned again in this run: their keys may come again
        self.provenance: Provenance | None = None  # recorded with every commit (see record_provenance)

    # --- identity and resume ------------------------------------------------------------------

    def open(self, fingerprint: str, settings: dict, restart: bool) -> None:
        """Claim OUT for this run: refuse committed work from different settings unless told to
        discard it, and sweep what a killed run left behind (temporaries, uncommitted parts)."""
        state_file = self.path / "state.json"
        state = _read_json(state_file)
        if self.settings_conflict(fingerprint, settings) is not None:
            if not restart:
                self.refuse_other_settings(fingerprint, settings)
            self.discard()
            state = None
        for folder in (self.path, self.parts, self.commits):
            storage.make_dirs(folder)
        self._sweep()
        if state is None:
            atomic_write_bytes(state_file, json.dumps(
                {"fingerprint": fingerprint, "settings": settings}, indent=2, sort_keys=True).encode())

    def _sweep(self) -> None:
        for folder in (self.path, self.parts, self.commits, self.runs, self.durations):
            for name in storage.list_names(folder):
                if name.startswith(".tmp-"):
                    storage.delete(folder / name)
        parts, records = self._listing()
        for name in parts:
            if name not in records and not _LEGACY_PART.match(name):
                storage.delete(self.parts / name)  # written, never committed
        for name in records - set(parts):
            storage.delete(self.commits / (name + _RECORD))  # names a part that is gone

    def discard(self) -> None:
        storage.delete_tree(self.parts)
        storage.delete_tree(self.commits)
        for name in (*FINAL_FILES, "state.json"):
            storage.delete(self.path / name)
        self._committed_now = []

    def settings_conflict(self, fingerprint: str, settings: dict) -> list[str] | None:
        """The settings that differ from the committed work's, or None when there is none to
        conflict with (read only: what open() refuses and what a dry run reports)."""
        state = _read_json(self.path / "state.json")
        if state is None or state.get("fingerprint") == fingerprint:
            return None
        before = state.get("settings", {})
        return sorted(k for k in set(settings) | set(before) if settings.get(k) != before.get(k))

    def refuse_other_settings(self, fingerprint: str, settings: dict) -> None:
        """Raise when OUT holds work from other settings (a run would mix two kinds of output)."""
        changed = self.settings_conflict(fingerprint, settings)
        if changed is not None:
            raise UserError(f"{self.path} holds work from a run with different settings "
                            f"(changed: {', '.join(changed) or 'model files'}). Use another --out, "
                            "or pass --restart to discard that work.")

    def earlier_settings(self) -> dict | None:
        state = _read_json(self.path / "state.json")
        return None if state is None else state.get("settings", {})

    def completed_for(self, manifest_digest: str, fingerprint: str) -> bool:
        done = _read_json(self.path / SUCCESS)
        if done is None:
            return False
        return (done.get("manifest_digest") == manifest_digest and done.get("fingerprint") == fingerprint
                and not done.get("transient_failures"))

    def invalidate_final(self) -> None:
        """New work is about to be committed: the old final files no longer describe OUT."""
        storage.delete(self.path / SUCCESS)

    def _listing(self) -> tuple[list[str], set[str]]:
        """(part files, names of the parts that have a commit record)."""
        parts = [n for n in storage.list_names(self.parts) if _PART.match(n)]
        records = {n[:-len(_RECORD)] for n in storage.list_names(self.commits) if n.endswith(_RECORD)}
        return parts, records

    def committed_parts(self) -> list[Location]:
        """The parts readers use: those with a commit record (or committed by rename, before records),
        in name order (two reads of OUT see its results in the same order: output/final.py)."""
        parts, records = self._listing()
        return [self.parts / n for n in sorted(parts) if n in records or _LEGACY_PART.match(n)]

    def _dataset(self, schema: pa.Schema):
        """The committed parts as one dataset with this schema: columns a part lacks (parts from
        before provenance was recorded) read as nulls."""
        parts = self.committed_parts()
        if not parts:
            return None
        fs, _ = storage.filesystem(self.parts)
        return ds.dataset([storage.filesystem(p)[1] for p in parts], schema=schema, filesystem=fs, format="parquet")

    def state_batches(self, columns, batch_rows: int) -> Iterable[pa.RecordBatch]:
        """The committed parts' light columns (never the annotations), batch by batch."""
        schema = segment_schema({})
        dataset = self._dataset(pa.schema([schema.field(name) for name in _STATE_COLUMNS]))
        if dataset is not None:
            yield from dataset.to_batches(columns=list(columns), batch_size=batch_rows)

    def progress(self, current: CurrentSources | None = None, retry_errors: Collection[str] = ()) -> Progress:
        """Committed keys, finished ids and changed ids for these sources (None: every result is
        current), as sets: for small outputs and tests (planning reads OUT through
        output/committed.py, without an object per result). Transient failures do not count as
        committed; nor do errors whose reason is in retry_errors."""
        table = self.state()
        changed: set[str] = set()
        if current is not None and table.num_rows:
            keep = current.mask(table)
            changed = set(pc.unique(table.column("id").filter(pc.invert(keep))).to_pylist())
            table = table.filter(keep)
        table = current_results(table, current.planned if current is not None else {})
        not_counted = pa.array(sorted({*TRANSIENT, *retry_errors}), pa.string())
        lasting = table.filter(pc.invert(pc.fill_null(pc.is_in(table.column("error"), value_set=not_counted), False)))
        keys = set(lasting.column("key").to_pylist())
        per_id = lasting.group_by("id").aggregate([("key", "count"), ("n_segments", "max")])
        done = set(per_id.filter(pc.equal(per_id.column("key_count"), per_id.column("n_segments_max")))
                   .column("id").to_pylist())
        # What later commits through this OutputDir are checked against: these keys, then its own.
        self._committed_now = [np.sort(hash_strings(pa.array(sorted(keys), pa.string())))] if keys else []
        self._forgotten = set()
        return Progress(keys, done, changed, table.drop_columns(list(SOURCE_COLUMNS)))

    def state(self) -> pa.Table:
        """Every committed result's state columns (what resume reads: _STATE_COLUMNS), in one table."""
        schema = segment_schema({})
        dataset = self._dataset(pa.schema([schema.field(name) for name in _STATE_COLUMNS]))
        return dataset.to_table() if dataset is not None else _empty_state()

    def committed(self, current: CurrentSources | None = None) -> tuple[set[str], set[str]]:
        """-> (committed keys, ids whose every segment is committed), from one read of the parts."""
        found = self.progress(current)
        return found.keys, found.done_ids

    def forget(self, item_id: str) -> None:
        """This row is planned again within the run (its file's length differs from its plan): its
        results so far belong to the old plan, and its keys may be committed again."""
        self._forgotten.add(item_id)

    def record_provenance(self, provenance: Provenance) -> None:
        """Every commit from now on records this run and these sources with its results."""
        self.provenance = provenance

    # --- committing -----------------------------------------------------------------------------

    def commit(self, results: list[ItemResult], columns: dict[str, str], stats: dict | None) -> Location:
        """Write one part, then its commit record (the commit); returns the part's location."""
        self.guard()
        keys = sorted(r.item.key for r in results)
        again = self._committed_before(results)
        if again:
            raise RuntimeError(f"{again[:5]} already committed: the same items were planned twice")
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]
        name = f"part-{digest}-{secrets.token_hex(6)}.parquet"
        part = self.parts / name
        atomic_write_table(part, results_table(results, columns, stats, self.provenance))
        record = {"part": name, "rows": len(results), "keys_sha256": digest}
        try:
            atomic_write_bytes(self.commits / (name + _RECORD), json.dumps(record, sort_keys=True).encode())
        except BaseException:
            # Not committed: remove the part now if we can (open() sweeps it otherwise), so that
            # retrying the same results cannot leave two copies of these keys in parts/.
            try:
                storage.delete(part)
            except Exception:
                pass
            raise
        lasting = [r.item.key for r in results if r.error not in TRANSIENT]
        if lasting:
            self._committed_now.append(np.sort(hash_strings(pa.array(lasting, pa.string()))))
            if len(self._committed_now) > 64:  # one sorted array again, so a check stays a few searches
                self._committed_now = [np.sort(np.concatenate(self._committed_now))]
        return part

    def _committed_before(self, results: list[ItemResult]) -> list[str]:
        """Keys of these results this run committed already (with a lasting result)."""
        keys = [r.item.key for r in results if r.item.id not in self._forgotten]
        if not keys or not self._committed_now:
            return []
        hashes = hash_strings(pa.array(keys, pa.string()))
        seen = np.zeros(len(keys), bool)
        for committed in self._committed_now:
            at = np.searchsorted(committed, hashes)
            inside = at < len(committed)
            seen[inside] |= committed[at[inside]] == hashes[inside]
        return sorted(k for k, s in zip(keys, seen) if s)

    def segments(self, columns: dict[str, str], current: CurrentSources | None = None,
                 ids: Iterable[str] | None = None) -> pa.Table:
        """Every current committed result, one per key (only these ids' when given), by row and segment."""
        schema = segment_schema(columns)
        dataset = self._dataset(schema)
        if dataset is None:
            return schema.empty_table()
        wanted = None if ids is None else pc.field("id").isin(pa.array(sorted(ids), pa.string()))
        table = dataset.to_table(filter=wanted)
        if current is not None and table.num_rows:
            table = table.filter(current.mask(table))
        table = current_results(table, current.planned if current is not None else {})
        return table.sort_by([("row", "ascending"), ("segment", "ascending")])

    def batches(self, columns: dict[str, str]) -> Iterable[pa.RecordBatch]:
        """Every committed result, batch by batch (memory bounded by a batch, not by OUT)."""
        dataset = self._dataset(segment_schema(columns))
        if dataset is not None:
            yield from dataset.to_batches(batch_size=16_384)

    def part_stats(self) -> Iterable[dict]:
        fs, _ = storage.filesystem(self.parts)

        def stats(part):
            metadata = pq.read_schema(storage.filesystem(part)[1], filesystem=fs).metadata or {}
            return json.loads(metadata[STATS_METADATA_KEY]) if STATS_METADATA_KEY in metadata else None

        with ThreadPoolExecutor(_READERS) as pool:  # one footer read each: in parallel on object stores
            yield from (found for found in pool.map(stats, self.committed_parts()) if found is not None)

    @contextmanager
    def table_writer(self, name: str, schema: pa.Schema):
        """A final table in OUT, written piece by piece and presented only when complete."""
        self.guard()
        with storage.table_writer(self.path / name, schema, compression="zstd") as writer:
            yield writer

    def write_summary(self, run_info: dict, marker: dict, transient_failures: int, success: bool = True) -> None:
        """run.json, then _SUCCESS unless told not to (the error gate failed). Called after the final
        tables are written: the marker says everything is complete and consistent."""
        self.guard()
        atomic_write_bytes(self.path / "run.json", json.dumps(run_info, indent=2, sort_keys=True, default=str).encode())
        if success:
            atomic_write_bytes(self.path / SUCCESS, json.dumps({**marker, "transient_failures": transient_failures},
                                                               sort_keys=True).encode())

    def write_final(self, annotations: pa.Table, segments: pa.Table, run_info: dict, marker: dict,
                    success: bool = True) -> None:
        """Whole final tables at once (small outputs); annotate streams them (output/final.py)."""
        for name, table in (("segments.parquet", segments), ("annotations.parquet", annotations)):
            with self.table_writer(name, table.schema) as writer:
                writer.write_table(table)
        self.write_summary(run_info, marker, sum(e in TRANSIENT for e in segments.column("error").to_pylist()),
                           success)


def _empty_state() -> pa.Table:
    schema = segment_schema({})
    return pa.schema([schema.field(name) for name in _STATE_COLUMNS]).empty_table()


def _read_json(where: Location) -> dict | None:
    """A small JSON file, or None when there is none."""
    try:
        return json.loads(storage.read_bytes(where) or b"{}")
    except FileNotFoundError:
        return None
