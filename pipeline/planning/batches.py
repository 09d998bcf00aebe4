"""Batches: how planned Items group into Batches for dispatch, and which of them a run takes
within its work budgets.

Pure functions over durations: no audio, no Ray, no model. Batches are units of dispatch and retry,
not model shapes: a worker packs the clips of the batches it holds into its fixed-shape rows
(pipeline.model.packing), whatever their lengths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipeline.intake.embedded import refs
from pipeline.items import Batch, Item
from pipeline.planning.windows import gc_paused
from pipeline.shapes import WINDOW_S


def plan_batches(items: Sequence[Item], audio_s: float, max_items: int) -> list[Batch]:
    """Group Items into Batches of about audio_s seconds of audio and at most max_items items, in
    the order they are dispatched: manifest order, (row, segment), where rows of several manifests
    follow their files' order (oldest partition first). So what a run stopped early (--max-wall, a
    signal, a crash) has done is the head of the manifest, whatever its ids, and the rows left wait
    at the head of the next run's queue: none can starve behind rows that sort before it by id.

    Consecutive rows go together, so a batch mixes lengths as the manifest does (what lets a worker
    fill its rows: a long clip leaves room that short ones fill; a worker packs the clips of all
    the batches it holds), as it did when batches followed ids, and work is dispatched in the order
    the budgets take it. The result depends only on the set of items, not on their input order: a
    rerun plans the same batches (and batch ids). A run plans its batches window by window
    (planning/work.py), so a batch never spans two planning windows. Rows whose audio is a Parquet cell
    come after the others, by shard and row group first (in manifest order again: a dataset's rows
    follow its shards'): a worker reads a row group once for a batch, so its rows should share batches.
    """
    if audio_s <= 0 or max_items < 1:
        raise ValueError("audio_s and max_items must be positive")
    with gc_paused():
        order = sorted(items, key=lambda item: (_row_group(item.path), item.row, item.segment))
        batches: list[Batch] = []
        current: list[Item] = []
        seconds = 0.0
        for item in order:
            current.append(item)
            seconds += item.end_s - item.start_s
            if seconds >= audio_s or len(current) == max_items:
                batches.append(Batch(tuple(current)))
                current, seconds = [], 0.0
        if current:
            batches.append(Batch(tuple(current)))
        return batches


class Budget:
    """The work budgets of a run, spent row by row in manifest order (see within_budget)."""

    def __init__(self, max_rows: int | None, max_audio_s: float | None):
        self.max_rows, self.max_audio_s = max_rows, max_audio_s
        self.rows = 0
        self.audio_s = 0.0
        self.limited_by: str | None = None  # set once a row did not fit: nothing more is taken

    @property
    def spent(self) -> bool:
        return self.limited_by is not None

    @property
    def rows_left(self) -> int | None:
        """Rows it may still take (None: no row budget)."""
        return None if self.max_rows is None else self.max_rows - self.rows

    def take(self, row_items: Sequence[Item]) -> list[Item]:
        """The items of the next row (its clip, or its segments still to do) this run takes: all of
        them while both budgets hold; none once a row did not fit (limited_by says which budget),
        except the first segments of a row longer than the whole audio budget heading the queue."""
        return list(row_items[:self.take_seconds([budget_s(i) for i in row_items])])

    def take_seconds(self, segments: Sequence[float]) -> int:
        """take, for a row given as its segments' lengths: how many of its first segments are taken."""
        if self.spent:
            return 0
        if self.max_rows is not None and self.rows == self.max_rows:
            self.limited_by = "max_rows"
            return 0
        row_s = sum(segments)
        if self.max_audio_s is not None and self.audio_s + row_s > self.max_audio_s:
            self.limited_by = "max_hours"
            taken = 0
            if self.rows == 0:  # heads the queue and alone exceeds the budget: its first segments that fit
                for seconds in segments:
                    if self.audio_s + seconds > self.max_audio_s:
                        break
                    taken += 1
                    self.audio_s += seconds
                self.rows += bool(taken)
            return taken
        self.rows += 1
        self.audio_s += row_s
        return len(segments)

    @property
    def unlimited(self) -> bool:
        return self.max_rows is None and self.max_audio_s is None


def budget_s(item: Item) -> float:
    """The audio an item counts for in the budgets: its window, or for a row whose length is not
    known before decoding (a Parquet cell without duration_s: planned_s 0) one whole window, the
    most it can be without being planned again."""
    if item.planned_s == 0 and item.end_s <= item.start_s:
        return WINDOW_S
    return item.end_s - item.start_s


def _row_group(path: str) -> tuple[str, int]:
    """(shard, row group) for a Parquet cell, ("", 0) for anything else."""
    if not path.startswith(refs.PARQUET_ROW):
        return "", 0
    cell = refs.parse(path)
    return str(cell.shard), cell.group


def count_batches(seconds: Iterable[float], audio_s: float, max_items: int) -> int:
    """How many batches plan_batches makes of items of these lengths (in order), without the items."""
    batches, in_batch, total = 0, 0, 0.0
    for length in seconds:
        in_batch += 1
        total += length
        if total >= audio_s or in_batch == max_items:
            batches += 1
            in_batch, total = 0, 0.0
    return batches + (in_batch > 0)


def within_budget(items: Sequence[Item], max_rows: int | None,
                  max_audio_s: float | None) -> tuple[list[Item], str | None]:
    """The items a run with these work budgets dispatches, and the budget ("max_rows" or
    "max_hours") that left work for later runs (None when every item fits).

    Whole rows in manifest order (a row's items are its clip, or its segments still to do) while
    both budgets hold: never more rows, nor more audio, than they allow (None: no limit). The first
    row that does not fit ends the selection, so rows are worked through as a queue and a long file
    is never overtaken night after night by shorter ones. Only a row longer than the whole audio
    budget is cut, at a segment boundary, when it heads the queue: its first segments go now and
    the rest in the next runs (each segment is committed on its own). A budget of at least one
    segment (30 s) always takes at least one item.
    """
    rows: dict[int, list[Item]] = {}
    for item in sorted(items, key=lambda i: (i.row, i.segment)):
        rows.setdefault(item.row, []).append(item)
    budget = Budget(max_rows, max_audio_s)
    chosen: list[Item] = []
    for row_items in rows.values():
        chosen += budget.take(row_items)
        if budget.spent:
            break
    return chosen, budget.limited_by
