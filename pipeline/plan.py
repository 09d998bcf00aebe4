"""Planning: what a manifest becomes (Items) and how Items group into Batches for dispatch.

Pure functions over durations: no audio, no Ray, no model. A clip of at most the 30 s window is one
Item; longer audio is split into n equal nominal windows. Each inner cut may later move up to
search_s toward a pause (pipeline.intake.segment), so a window is planned as if it were search_s
longer at every inner edge, and still fits the window. Cuts land on the 10 ms mel-frame grid, so a
decoded segment is never more frames than its planned window plus that slack.

Batches are units of dispatch and retry, not model shapes: a worker packs the clips of the batches
it holds into its fixed-shape rows (pipeline.model.packing), whatever their lengths.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from pipeline.items import Batch, Item
from pipeline.shapes import WINDOW_S, fits_window, frames_for_seconds

# With the smallest n, windows are longer than (WINDOW_S - 2 * search_s) / 2, and neighbouring
# cuts' search ranges (2 * search_s wide) must never overlap, or two cuts could cross.
MAX_SEARCH_S = WINDOW_S / 6


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small objects.

    Allocation-triggered collections would rescan every live Item again and again (about a
    quarter of a million-row plan's time); Items hold no reference cycles, so nothing is missed.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_search(search_s: float) -> None:
    if not 0 <= search_s < MAX_SEARCH_S:
        raise ValueError(
            f"segment search radius {search_s} s must be >= 0 and below {MAX_SEARCH_S:g} s, "
            "so that neighbouring cuts can never cross"
        )


def segment_windows(duration_s: float, search_s: float) -> list[tuple[float, float]]:
    """Nominal windows of a file: [(0, duration)] when it fits the 30 s window, else n equal
    windows covering [0, duration] contiguously, n the smallest count for which every window plus
    2 * search_s fits the 30 s window. Consecutive windows share their boundary value exactly."""
    _check_search(search_s)
    if not math.isfinite(duration_s):
        raise ValueError(f"cannot segment a duration of {duration_s}")
    if _fits_window(duration_s):
        return [(0.0, float(duration_s))]
    return _long_windows(float(duration_s), search_s)


def _long_windows(duration_s: float, search_s: float) -> list[tuple[float, float]]:
    # Start from the real-valued bound on n, less one in case float division rounded it up past
    # an integer, and step up on the nominal length first (cheap); then check the actual windows,
    # whose lengths can differ from duration / n in the last bit.
    n = max(2, math.ceil(duration_s / (WINDOW_S - 2 * search_s)) - 1)
    while True:
        while not _fits_window(duration_s / n + 2 * search_s):
            n += 1
        # Boundaries are computed once and shared by both neighbours, so windows are contiguous
        # exactly; the last edge is the duration itself, not duration * n / n.
        edges = [duration_s * k / n for k in range(n)] + [duration_s]
        windows = list(zip(edges, edges[1:]))
        if all(_fits_window(end - start + 2 * search_s) for start, end in windows):
            break
        n += 1
    if duration_s / n <= 2 * search_s:  # only reachable just below MAX_SEARCH_S
        raise ValueError(f"search radius {search_s} s is too large for {duration_s} s windows")
    return windows


def _fits_window(seconds: float) -> bool:
    return fits_window(frames_for_seconds(seconds))


def plan_items(
    rows: Sequence[int],
    ids: Sequence[str],
    paths: Sequence[str],
    durations_s: Sequence[float | None],
    search_s: float,
) -> list[Item]:
    """One Item per clip of at most 30 s, one Item per nominal window of longer audio.

    A duration that is not a positive finite number (an empty or unreadable file, a missing
    value) is planned as one Item with window (0, 0), so decoding reports the real error for that
    row instead of planning crashing. Ids must be unique: they are the resume keys and the output
    identity.
    """
    if not len(rows) == len(ids) == len(paths) == len(durations_s):
        raise ValueError("rows, ids, paths and durations_s must have the same length")
    _check_search(search_s)
    # Plain Python floats: numpy scalars would make the per-row arithmetic several times slower.
    durations = np.asarray(durations_s, dtype=np.float64).tolist()

    with _gc_paused():
        return _plan_rows(zip(rows, ids, paths, durations), search_s)


def _plan_rows(manifest_rows, search_s: float) -> list[Item]:
    items: list[Item] = []
    seen: set[str] = set()
    for row, item_id, path, duration in manifest_rows:
        if item_id in seen:
            raise ValueError(f"id {item_id!r} appears more than once in the manifest")
        seen.add(item_id)
        if not (duration > 0 and math.isfinite(duration)):  # NaN fails the comparison too
            items.append(Item(row, item_id, path, 0, 1, 0.0, 0.0, 0.0))
        elif _fits_window(duration):
            items.append(Item(row, item_id, path, 0, 1, 0.0, duration, duration))
        else:
            windows = _long_windows(duration, search_s)
            for segment, (start, end) in enumerate(windows):
                items.append(Item(row, item_id, path, segment, len(windows), start, end, duration))
    return items


def plan_batches(items: Sequence[Item], audio_s: float, max_items: int) -> list[Batch]:
    """Group Items into Batches of about audio_s seconds of audio and at most max_items items.

    Items keep (id, segment) order, so a batch mixes lengths (what lets a worker fill its rows:
    a long clip leaves room that short ones fill) and the result depends only on the set of items,
    not on their input order: a rerun plans the same batches (and batch ids).
    """
    if audio_s <= 0 or max_items < 1:
        raise ValueError("audio_s and max_items must be positive")
    with _gc_paused():
        order = sorted(items, key=lambda item: (item.id, item.segment))
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
        row_s = sum(i.end_s - i.start_s for i in row_items)
        if max_audio_s is not None and audio_s + row_s > max_audio_s:
            if not chosen:  # heads the queue and alone exceeds the budget: its first segments that fit
                for item in row_items:
                    if audio_s + item.end_s - item.start_s > max_audio_s:
                        break
                    chosen.append(item)
                    audio_s += item.end_s - item.start_s
            return chosen, "max_hours"
        chosen += row_items
        audio_s += row_s
    return chosen, None
