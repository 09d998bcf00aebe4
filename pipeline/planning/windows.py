"""Windows: what a manifest row becomes (Items), from its duration.

Pure functions over durations: no audio, no Ray, no model. A clip of at most the 30 s window is one
Item; longer audio is split into n equal nominal windows. Each inner cut may later move up to
search_s toward a pause (pipeline.intake.segment), so a window is planned as if it were search_s
longer at every inner edge, and still fits the window. Cuts land on the 10 ms mel-frame grid, so a
decoded segment is never more frames than its planned window plus that slack.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from pipeline.items import Item, Source
from pipeline.shapes import WINDOW_S, fits_window, frames_for_seconds

# With the smallest n, windows are longer than (WINDOW_S - 2 * search_s) / 2, and neighbouring
# cuts' search ranges (2 * search_s wide) must never overlap, or two cuts could cross.
MAX_SEARCH_S = WINDOW_S / 6


@contextmanager
def gc_paused() -> Iterator[None]:
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
    sources: Sequence[Source | None] | None = None,
) -> list[Item]:
    """One Item per clip of at most 30 s, one Item per nominal window of longer audio.

    A duration that is not a positive finite number (an empty or unreadable file, a missing
    value) is planned as one Item with window (0, 0), so decoding reports the real error for that
    row instead of planning crashing. Ids must be unique: they are the resume keys and the output
    identity. sources: each row's audio as planned, carried by its items (Item.source).
    """
    if not len(rows) == len(ids) == len(paths) == len(durations_s):
        raise ValueError("rows, ids, paths and durations_s must have the same length")
    _check_search(search_s)
    # Plain Python floats: numpy scalars would make the per-row arithmetic several times slower.
    durations = np.asarray(durations_s, dtype=np.float64).tolist()
    sources = [None] * len(rows) if sources is None else sources

    with gc_paused():
        return _plan_rows(zip(rows, ids, paths, durations, sources), search_s)


def _plan_rows(manifest_rows, search_s: float) -> list[Item]:
    items: list[Item] = []
    seen: set[str] = set()
    for row, item_id, path, duration, source in manifest_rows:
        if item_id in seen:
            raise ValueError(f"id {item_id!r} appears more than once in the manifest")
        seen.add(item_id)
        if not (duration > 0 and math.isfinite(duration)):  # NaN fails the comparison too
            items.append(Item(row, item_id, path, 0, 1, 0.0, 0.0, 0.0, source))
        elif _fits_window(duration):
            items.append(Item(row, item_id, path, 0, 1, 0.0, duration, duration, source))
        else:
            windows = _long_windows(duration, search_s)
            for segment, (start, end) in enumerate(windows):
                items.append(Item(row, item_id, path, segment, len(windows), start, end, duration, source))
    return items
