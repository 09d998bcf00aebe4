"""What OUT holds, as planning needs it: every committed result reduced to a few numbers, found by
its row's id a window of manifest rows at a time. The anti-join of resume.

One read of the parts' light columns (never the annotations) gives, per committed result: its id
(kept to confirm matches; found by a sorted array of id hashes, key_index.KeyIndex), segment and
segment count, whether it lasts (a transient failure, or an error --retry-errors names, is tried
again), whether it is ok, its run, the duration its plan was made from, and its source as hashes
(intake/sources.py). About 90 bytes a result, whatever the annotations hold.

For a window of manifest rows, lookup() keeps the results that still describe each row's audio
(sources.is_current), then one plan per row (the row's planned duration when known, else the plan
of its best result: lasting over transient, then the latest run, then the longer plan), then one
result per key (lasting over transient, then the latest run): the rules output/sink.py applies to
whole tables, here in numpy over the window's results only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.intake.sources import SourceKeys, is_current
from pipeline.key_index import KeyIndex
from pipeline.reasons import TRANSIENT

_COLUMNS = ("id", "segment", "n_segments", "status", "error", "run", "planned_s",
            "source_audio", "source_duration_s", "source_version", "source_sha256")
_READ_ROWS = 262_144


def run_number(runs: pa.Array) -> np.ndarray:
    """A run stamp (20260101T000000Z) as a number that sorts as it does; 0 for none."""
    digits = pc.replace_substring_regex(pc.fill_null(runs, ""), r"[^0-9]", "")
    digits = pc.if_else(pc.equal(digits, ""), "0", digits)
    return pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class WindowProgress:
    """What OUT holds for a window's rows (arrays by row of the window)."""

    done: np.ndarray  # bool: every segment has a lasting current result (nothing to do)
    done_keys: tuple[np.ndarray, np.ndarray]  # (row, segment) of lasting current results of rows not done
    changed: np.ndarray  # bool: has results for audio that changed since (labelled again)
    finished: np.ndarray  # bool: every segment has a current result, lasting or not
    status: np.ndarray  # object: "ok", "error" or "partial" for finished rows, else None
    transient: np.ndarray  # bool: finished with a transient failure (tried again)

    @classmethod
    def nothing(cls, n: int) -> WindowProgress:
        no = np.zeros(n, bool)
        return cls(no, (np.zeros(0, np.int64), np.zeros(0, np.int64)), no, no, np.full(n, None, object), no)


class CommittedIndex:
    """OUT's committed results, reduced and found by id (see the module docstring)."""

    def __init__(self, batches=(), retry_errors=frozenset()):
        retry = [str(r) for r in retry_errors]
        ids, parts = [], {name: [] for name in ("segment", "n", "lasting", "transient", "ok", "run", "planned",
                                                "audio", "duration", "version", "sha256")}
        for batch in batches:
            table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
            error = table.column("error")
            transient = pc.fill_null(pc.is_in(error, value_set=pa.array(sorted(TRANSIENT), pa.string())), False)
            retried = pc.fill_null(pc.is_in(error, value_set=pa.array(retry, pa.string())), False)
            ids.append(table.column("id").combine_chunks())
            parts["segment"].append(table.column("segment").to_numpy().astype(np.int32))
            parts["n"].append(table.column("n_segments").to_numpy().astype(np.int32))
            parts["transient"].append(transient.to_numpy(zero_copy_only=False))
            parts["lasting"].append(~(transient.to_numpy(zero_copy_only=False) | retried.to_numpy(zero_copy_only=False)))
            parts["ok"].append(pc.fill_null(pc.equal(table.column("status"), "ok"), False).to_numpy(zero_copy_only=False))
            parts["run"].append(run_number(table.column("run")))
            parts["planned"].append(pc.fill_null(table.column("planned_s"), np.nan).to_numpy(zero_copy_only=False))
            keys = SourceKeys.of(table.column("source_audio"), table.column("source_duration_s"),
                                 table.column("source_version"), table.column("source_sha256"))
            parts["audio"].append(keys.audio)
            parts["duration"].append(keys.duration_s)
            parts["version"].append(keys.version)
            parts["sha256"].append(keys.sha256)
        ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
        self.index = KeyIndex(ids)
        order = self.index.order
        joined = {k: (np.concatenate(v) if v else np.zeros(0))[order] for k, v in parts.items()}
        self.segment, self.n_segments = joined["segment"].astype(np.int32), joined["n"].astype(np.int32)
        self.lasting, self.transient = joined["lasting"].astype(bool), joined["transient"].astype(bool)
        self.ok, self.run = joined["ok"].astype(bool), joined["run"].astype(np.int64)
        self.planned = joined["planned"].astype(np.float64)
        self.sources = SourceKeys(joined["audio"].astype(np.uint64), joined["duration"].astype(np.float64),
                                  joined["version"].astype(np.uint64), joined["sha256"].astype(np.uint64))

    @classmethod
    def read(cls, sink, retry_errors=frozenset()) -> CommittedIndex:
        """Every committed result in OUT (sink: output.sink.OutputDir)."""
        return cls(sink.state_batches(_COLUMNS, _READ_ROWS), retry_errors)

    def __len__(self) -> int:
        return len(self.index)

    def runs(self) -> set[int]:
        return set(np.unique(self.run).tolist()) - {0}

    def done_hashes(self) -> np.ndarray:
        """Hashes of the ids whose every segment has a lasting result (any source, any plan): what
        a count of rows left assumes of rows not planned in this run."""
        if not len(self):
            return np.zeros(0, np.uint64)
        hashes = self.index.hashes
        starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
        lasting = np.add.reduceat(self.lasting.astype(np.int64), starts)
        expected = np.maximum.reduceat(self.n_segments, starts)
        return hashes[starts][lasting >= expected]

    def lookup(self, ids: pa.Array, now: SourceKeys, planned: np.ndarray, verify_content: bool,
               id_hashes: np.ndarray | None = None) -> WindowProgress:
        """What OUT holds for these rows: their ids, their sources now, their planned durations (NaN:
        not known yet, the best result's plan counts)."""
        n = len(ids)
        if not len(self):
            return WindowProgress.nothing(n)
        rows, slots = self.index.pairs(ids, id_hashes, slots=True)
        if not len(rows):
            return WindowProgress.nothing(n)
        current = is_current(self.sources.take(slots), now.take(rows), verify_content)
        changed = np.zeros(n, bool)
        changed[rows[~current]] = True
        rows, slots = rows[current], slots[current]
        rows, slots = _one_plan(rows, slots, self.planned, self.lasting, self.transient, self.run, planned)
        if not len(rows):
            return WindowProgress(np.zeros(n, bool), (np.zeros(0, np.int64), np.zeros(0, np.int64)), changed,
                                  np.zeros(n, bool), np.full(n, None, object), np.zeros(n, bool))
        # One result per key: lasting over transient, then the latest run (the last after sorting).
        segment = self.segment[slots]
        order = np.lexsort((self.run[slots], ~self.transient[slots], segment, rows))
        rows, slots, segment = rows[order], slots[order], segment[order]
        last = np.r_[(rows[1:] != rows[:-1]) | (segment[1:] != segment[:-1]), True]
        rows, slots, segment = rows[last], slots[last], segment[last]
        lasting = self.lasting[slots]
        keys = np.bincount(rows, minlength=n)
        lasting_keys = np.bincount(rows, weights=lasting, minlength=n).astype(np.int64)
        ok_keys = np.bincount(rows, weights=self.ok[slots], minlength=n).astype(np.int64)
        expected = np.zeros(n, np.int64)
        np.maximum.at(expected, rows, self.n_segments[slots])
        done = (keys > 0) & (lasting_keys >= expected)
        finished = (keys > 0) & (keys >= expected)
        transient = np.zeros(n, bool)
        transient[rows[self.transient[slots]]] = True
        status = np.full(n, None, object)
        status[finished] = np.where(ok_keys[finished] == keys[finished], "ok",
                                    np.where(ok_keys[finished] == 0, "error", "partial"))
        partial = lasting & ~done[rows]
        return WindowProgress(done, (rows[partial], segment[partial].astype(np.int64)), changed, finished, status,
                              transient & finished)


def _one_plan(rows, slots, plans, lasting, transient, runs, planned):
    """The pairs of one plan per row: the row's planned duration where known, else its best
    result's plan; results from before plans were recorded (NaN) count with any plan."""
    plan = plans[slots]
    now = planned[rows]
    unknown = np.isnan(now) & ~np.isnan(plan)
    chosen = now.copy()
    if unknown.any():
        # The best result of each row whose plan is not known: lasting over transient, then the
        # latest run, then the longer plan (the last after sorting).
        r, s = rows[unknown], slots[unknown]
        order = np.lexsort((plans[s], runs[s], ~transient[s], r))
        r, s = r[order], s[order]
        last = np.r_[r[1:] != r[:-1], True]
        best = np.full(len(planned), np.nan)
        best[r[last]] = plans[s[last]]
        chosen = np.where(np.isnan(now), best[rows], now)
    keep = np.isnan(plan) | (plan == chosen)
    return rows[keep], slots[keep]
