"""Batches: how planned Items group into Batches for dispatch, and which of them a run takes
within its work budgets.

Pure functions over durations: no audio, no Ray, no model. Batches are units of dispatch and retry,
not model shapes: a worker packs the clips of the batches it holds into its fixed-shape rows
(pipeline.model.packing), whatever their lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    the batches it holds), as it did when batches followed ids. The result depends only on the set
    of items, not on their input order: a rerun plans the same batches (and batch ids). Rows whose audio is a Parquet cell
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
    chosen: list[Item] = []
    audio_s = 0.0
    for taken, row_items in enumerate(rows.values()):
        if max_rows is not None and taken == max_rows:
            return chosen, "max_rows"
        row_s = sum(_budget_s(i) for i in row_items)
        if max_audio_s is not None and audio_s + row_s > max_audio_s:
            if not chosen:  # heads the queue and alone exceeds the budget: its first segments that fit
                for item in row_items:
                    if audio_s + _budget_s(item) > max_audio_s:
                        break
                    chosen.append(item)
                    audio_s += _budget_s(item)
            return chosen, "max_hours"
        chosen += row_items
        audio_s += row_s
    return chosen, None


def _budget_s(item: Item) -> float:
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
