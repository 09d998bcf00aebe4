"""What the report counts, in one pass over the output rows (record batches, Arrow compute).

Per batch the work is vectorised: value counts of status, reason, language and tags, a numpy
histogram of durations and of each task's log-probability. Rows become Python objects only when
they are kept: the first few examples of each reason, and the rows of the samples (bottom-k of a
random key, or of the log-probability, per stratum), so the cost and memory do not grow with the
number of rows beyond the counts themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REASON_EXAMPLES = 3
SAMPLE_ROWS = 50  # the stratified sample, over statuses
MIN_PER_STATUS = 5  # a rare status still gets this many rows (when it has them)
PER_TASK_ROWS = 8  # per task: its lowest-confidence rows (with a logprob column)
SEED = 20_241_204  # the sample is the same on every rebuild of the same OUT

# Durations (s): bins a person reads at a glance, not equal widths (hence a bar per bin).
DURATION_EDGES = (0, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
# Mean log-probability per token: most mass lies in (-3, 0]; what is lower is one bin.
LOGPROB_LOW, LOGPROB_STEP = -6.0, 0.25
LOGPROB_EDGES = tuple(np.arange(LOGPROB_LOW, 0.0 + 1e-9, LOGPROB_STEP))

# Columns the figures read besides the task columns.
BASE_COLUMNS = ("id", "audio", "status", "error", "error_detail", "duration_s", "language")
LOGPROB_COLUMN = "logprob"
# Scored moderation's map label -> P(yes): rows per tenth of P(yes), per label, to set thresholds by.
SCORES_COLUMN = "moderation_scores"
SCORE_BINS = 10


DURATION_LABELS = ("0–1s", "1–2s", "2–5s", "5–10s", "10–20s", "20–30s", "30s–1m", "1–2m",
                   "2–5m", "5–10m", "10–30m", "30m–1h", "≥1h")


@dataclass
class LogprobFigures:
    counts: np.ndarray  # rows per bin: [< LOGPROB_LOW, then one per LOGPROB_STEP up to 0]
    rows: int = 0
    total: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.rows if self.rows else None

    def bins(self) -> list[tuple[str, int]]:
        labels = [f"< {LOGPROB_LOW:g}"] + [f"{lo:g}" for lo in LOGPROB_EDGES[:-1]]
        return list(zip(labels, self.counts.tolist()))


class _BottomK:
    """The k rows with the smallest keys seen so far (ties: the earlier row), materialised only
    when they enter."""

    def __init__(self, k: int):
        self.k = k
        self.kept: list[tuple[float, int, dict]] = []
        self.seen = 0

    def threshold(self) -> float:
        return self.kept[-1][0] if len(self.kept) >= self.k else np.inf

    def offer(self, batch: pa.RecordBatch, positions: np.ndarray, keys: np.ndarray) -> None:
        if not len(positions):
            return
        order = self.seen
        self.seen += len(positions)
        below = keys < self.threshold()
        positions, keys = positions[below], keys[below]
        if len(positions) > self.k:
            best = np.argsort(keys, kind="stable")[: self.k]
            positions, keys = positions[best], keys[best]
        if not len(positions):
            return
        rows = batch.take(pa.array(positions, pa.int64())).to_pylist()
        self.kept += [(float(k), order + int(i), row) for i, (k, row) in enumerate(zip(keys, rows))]
        self.kept.sort(key=lambda e: (e[0], e[1]))
        del self.kept[self.k:]

    def rows(self, n: int | None = None) -> list[dict]:
        return [row for _, _, row in self.kept[:n]]


@dataclass
class Figures:
    rows: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_reason: Counter = field(default_factory=Counter)
    reason_examples: dict[str, list[dict]] = field(default_factory=dict)
    durations: np.ndarray = field(default_factory=lambda: np.zeros(len(DURATION_EDGES), np.int64))
    duration_unknown: int = 0
    audio_s: float = 0.0  # every row's duration_s
    ok_audio_s: float = 0.0  # ok rows'
    languages: Counter = field(default_factory=Counter)  # rows with labels (ok, partial); None: none detected
    tags: dict[str, Counter] = field(default_factory=dict)  # list column -> tag counts
    rows_with_tags: dict[str, int] = field(default_factory=dict)
    logprob: dict[str, LogprobFigures] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # label -> rows per tenth of P(yes)
    sample: list[dict] = field(default_factory=list)
    lowest: dict[str, list[dict]] = field(default_factory=dict)  # task -> its lowest-confidence rows

    def duration_bins(self) -> list[tuple[str, int]]:
        bins = list(zip(DURATION_LABELS, self.durations.tolist()))
        return bins + ([("unknown", self.duration_unknown)] if self.duration_unknown else [])

    def score_bins(self, label: str) -> list[tuple[str, int]]:
        return [(f"{i / SCORE_BINS:.1f}", int(n)) for i, n in enumerate(self.scores[label])]


def _map_entries(column: pa.Array) -> pa.Array:
    """A map column's (key, value) entries, flattened over its rows (offsets honoured)."""
    entries = pa.ListArray.from_arrays(column.offsets, pa.StructArray.from_arrays(
        [column.keys, column.items], ["key", "value"]))
    return entries


def logprob_entries(column: pa.Array, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(row positions, values) of one task's mean log-probability, from a map<task, value> column
    (flattened once: a lookup per row and task costs 25x more) or a struct column; None for any
    other type."""
    if pa.types.is_map(column.type):
        entries = _map_entries(column)
        flat, parents = pc.list_flatten(entries), pc.list_parent_indices(entries)
        wanted = pc.and_(pc.equal(flat.field("key"), task), pc.array_take(column.is_valid(), parents))
        return parents.filter(wanted).to_numpy(), _floats(flat.field("value").filter(wanted))
    if pa.types.is_struct(column.type) and column.type.get_field_index(task) >= 0:
        values = _floats(pc.struct_field(column, task))
        return np.arange(len(values)), values
    return None


def _floats(array: pa.Array) -> np.ndarray:
    return array.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN


class Gatherer:
    """Takes the rows batch by batch (add), then gives the Figures (finish). tasks: the task
    columns, in the page's order; list_columns: those that hold tags; has_logprob: whether the
    rows have a logprob column (task -> mean log-probability per token)."""

    def __init__(self, tasks: Sequence[str], list_columns: Sequence[str], has_logprob: bool, has_scores: bool = False):
        self.tasks, self.list_columns, self.has_logprob = list(tasks), list(list_columns), has_logprob
        self.has_scores = has_scores
        self.figures = Figures(tags={c: Counter() for c in list_columns}, rows_with_tags={c: 0 for c in list_columns})
        self.rng = np.random.default_rng(SEED)
        self.strata: dict[str, _BottomK] = {}
        self.per_task = {t: _BottomK(PER_TASK_ROWS) for t in tasks}
        self.logprob = {t: LogprobFigures(np.zeros(len(LOGPROB_EDGES), np.int64)) for t in tasks} if has_logprob else {}

    def add(self, batch: pa.RecordBatch) -> None:
        figures, n = self.figures, batch.num_rows
        if not n:
            return
        figures.rows += n
        keys = self.rng.random(n)
        status = batch.column("status")
        for value in pc.value_counts(status).to_pylist():
            figures.by_status[value["values"]] += value["counts"]
            stratum = self.strata.setdefault(value["values"], _BottomK(SAMPLE_ROWS))
            positions = np.flatnonzero(pc.equal(status, value["values"]).to_numpy(zero_copy_only=False))
            stratum.offer(batch, positions, keys[positions])
        _reasons(figures, batch)
        _durations(figures, batch, pc.equal(status, "ok").to_numpy(zero_copy_only=False))
        labelled = pc.not_equal(status, "error")
        if "language" in batch.schema.names:
            for value in pc.value_counts(batch.column("language").filter(labelled)).to_pylist():
                figures.languages[value["values"]] += value["counts"]
        for column in self.list_columns:
            values = batch.column(column)
            figures.rows_with_tags[column] += pc.sum(pc.greater(pc.list_value_length(values), 0)).as_py() or 0
            tags = pc.utf8_lower(pc.utf8_trim_whitespace(pc.list_flatten(values)))
            for value in pc.value_counts(tags).to_pylist():
                if value["values"]:
                    figures.tags[column][value["values"]] += value["counts"]
        if self.has_scores:
            _scores(figures, batch.column(SCORES_COLUMN))
        for task in self.tasks:
            entries = logprob_entries(batch.column(LOGPROB_COLUMN), task) if self.has_logprob else None
            if entries is not None:
                self._logprob(task, batch, *entries)

    def _logprob(self, task: str, batch: pa.RecordBatch, positions: np.ndarray, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        positions, values = positions[finite], values[finite]
        found = self.logprob[task]
        found.rows += len(values)
        found.total += float(values.sum())
        bins = np.bincount(np.digitize(values, LOGPROB_EDGES), minlength=len(LOGPROB_EDGES) + 1)
        found.counts += bins[: len(LOGPROB_EDGES)] + _above_zero(values)
        self.per_task[task].offer(batch, positions, values)

    def finish(self) -> Figures:
        figures = self.figures
        figures.logprob = {t: f for t, f in self.logprob.items() if f.rows}
        figures.lowest = {t: k.rows() for t, k in self.per_task.items() if k.kept}
        figures.sample = _allocate(self.strata, figures.by_status)
        return figures


def gather(batches: Iterable[pa.RecordBatch], tasks: Sequence[str], list_columns: Sequence[str],
           has_logprob: bool, has_scores: bool = False) -> Figures:
    gatherer = Gatherer(tasks, list_columns, has_logprob, has_scores)
    for batch in batches:
        gatherer.add(batch)
    return gatherer.finish()


def _above_zero(values: np.ndarray) -> np.ndarray:
    """Values at or above 0 (rounding can give +0.0) belong to the last bin, not past it."""
    extra = np.zeros(len(LOGPROB_EDGES), np.int64)
    extra[-1] = int((values >= LOGPROB_EDGES[-1]).sum())
    return extra


def _scores(figures: Figures, column: pa.Array) -> None:
    if not pa.types.is_map(column.type) or column.null_count == len(column):
        return
    entries = _map_entries(column)
    flat = pc.list_flatten(entries).filter(pc.array_take(column.is_valid(), pc.list_parent_indices(entries)))
    labels, values = flat.field("key"), _floats(flat.field("value"))
    tenths = np.clip((values * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)
    for label in pc.unique(labels).to_pylist():
        chosen = pc.equal(labels, label).to_numpy(zero_copy_only=False)
        found = figures.scores.setdefault(label, np.zeros(SCORE_BINS, np.int64))
        found += np.bincount(tenths[chosen], minlength=SCORE_BINS)


def _reasons(figures: Figures, batch: pa.RecordBatch) -> None:
    error = batch.column("error")
    if error.null_count == len(error):
        return
    errors = None
    for value in pc.value_counts(error.drop_null()).to_pylist():
        reason = value["values"]
        figures.by_reason[reason] += value["counts"]
        examples = figures.reason_examples.setdefault(reason, [])
        if len(examples) < REASON_EXAMPLES:
            if errors is None:
                errors = error.to_numpy(zero_copy_only=False).astype(object)
            positions = np.flatnonzero(errors == reason)[: REASON_EXAMPLES - len(examples)]
            chosen = batch.select(["id", "audio", "error_detail"]).take(pa.array(positions, pa.int64()))
            examples += chosen.to_pylist()


def _durations(figures: Figures, batch: pa.RecordBatch, ok: np.ndarray) -> None:
    values = _floats(batch.column("duration_s"))
    known = np.isfinite(values)
    figures.duration_unknown += int((~known).sum())
    figures.durations += np.bincount(np.clip(np.digitize(values[known], DURATION_EDGES) - 1, 0, None),
                                     minlength=len(DURATION_EDGES))[: len(DURATION_EDGES)]
    figures.audio_s += float(values[known].sum())
    figures.ok_audio_s += float(values[ok & known].sum())


def _allocate(strata: dict[str, _BottomK], counts: Counter) -> list[dict]:
    """SAMPLE_ROWS rows over the statuses: each gets MIN_PER_STATUS (or all it has), the rest go
    in proportion to the statuses' counts (largest remainders). Each stratum's rows are a uniform
    random subset (the smallest random keys)."""
    total = sum(counts.values())
    if not total:
        return []
    budget = min(SAMPLE_ROWS, total)
    share = {s: min(counts[s], MIN_PER_STATUS) for s in counts}
    left = budget - sum(share.values())
    while left > 0:
        room = {s: counts[s] - share[s] for s in counts if counts[s] > share[s]}
        if not room:
            break
        room_total = sum(room.values())
        for s in sorted(room, key=lambda s: (-room[s], s)):
            take = min(room[s], max(1, int(left * room[s] / room_total)), left)
            share[s] += take
            left -= take
            if not left:
                break
    order = sorted(share, key=lambda s: (s != "ok", s))
    return [row for s in order for row in strata[s].rows(share[s])] if strata else []
