"""Planning: what a manifest becomes (Items) and how Items group into Batches of declared shapes.

Pure functions over durations: no audio, no Ray, no model. Every rule about what fits where comes
from pipeline.shapes (frames_for_seconds, fits_bucket), so the planner and the workers can never
disagree about a bucket's capacity.

Long audio (more than the 30 s window) is split into n equal nominal windows. Each inner cut may
later move up to search_s toward a pause (pipeline.intake.segment), so a window is planned as if it were
search_s longer at every inner edge. Cuts land on the 10 ms mel-frame grid, so a decoded segment
is never more frames than its planned window plus that slack.
"""

from __future__ import annotations

import gc
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from pipeline.items import Batch, Item
from pipeline.shapes import (
    WINDOW_FRAMES,
    WINDOW_S,
    bucket_frames_for_seconds,
    fits_bucket,
    frames_for_seconds,
)

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


def _capacity_frames(bucket_s: float) -> int:
    """The most valid frames a bucket holds under shapes.fits_bucket (-1 when it holds none)."""
    bucket_frames = bucket_frames_for_seconds(bucket_s)
    # fits_bucket is monotone in the clip's frames, so bisect for the largest clip that fits.
    lo, hi = -1, bucket_frames
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits_bucket(mid, bucket_frames):
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Buckets:
    """Buckets in increasing order with their capacities, looked up once per planning call."""

    def __init__(self, buckets_s: Sequence[float]):
        self.buckets = sorted(float(b) for b in buckets_s)
        if not self.buckets:
            raise ValueError("no buckets to plan into")
        self.capacities = [_capacity_frames(b) for b in self.buckets]
        # Clip frames -> bucket for every frame count up to the window: one list index per clip
        # keeps a million-row plan fast.
        self._by_frames = [self._scan(frames) for frames in range(WINDOW_FRAMES + 1)]

    def _scan(self, frames: int) -> float | None:
        for bucket, capacity in zip(self.buckets, self.capacities):
            if frames <= capacity:
                return bucket
        return None

    def for_frames(self, frames: int) -> float | None:
        if frames > WINDOW_FRAMES:  # no bucket is larger than the window
            return None
        return self._by_frames[frames] if frames >= 0 else self._scan(frames)


def bucket_for(duration_s: float, buckets_s: Sequence[float]) -> float | None:
    """The smallest bucket that holds a clip of duration_s (with the margin), None past 30 s."""
    return _Buckets(buckets_s).for_frames(frames_for_seconds(duration_s))


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
    return fits_bucket(frames_for_seconds(seconds), WINDOW_FRAMES)


def plan_items(
    rows: Sequence[int],
    ids: Sequence[str],
    paths: Sequence[str],
    durations_s: Sequence[float | None],
    buckets_s: Sequence[float],
    search_s: float,
) -> list[Item]:
    """One Item per clip of at most 30 s, one Item per nominal window of longer audio.

    A clip goes to the smallest bucket that holds it. A window of long audio goes to the smallest
    bucket that holds it plus its search slack: search_s at each inner edge (2 * search_s for an
    inner window, search_s for the first and last, whose outer edge is the file's edge).
    A duration that is not a positive finite number (an empty or unreadable file, a missing
    value) is planned as one Item with window (0, 0) in the smallest bucket, so decoding reports
    the real error for that row instead of planning crashing.
    Ids must be unique: they are the resume keys and the output identity.
    """
    if not len(rows) == len(ids) == len(paths) == len(durations_s):
        raise ValueError("rows, ids, paths and durations_s must have the same length")
    _check_search(search_s)
    buckets = _Buckets(buckets_s)
    if buckets.capacities[-1] < WINDOW_FRAMES:
        raise ValueError(f"the largest bucket must be the {WINDOW_S} s window to plan long audio")
    # Plain Python floats: numpy scalars would make the per-row arithmetic several times slower.
    durations = np.asarray(durations_s, dtype=np.float64).tolist()

    with _gc_paused():
        return _plan_rows(zip(rows, ids, paths, durations), buckets, search_s)


def _plan_rows(manifest_rows, buckets: _Buckets, search_s: float) -> list[Item]:
    smallest = buckets.buckets[0]
    items: list[Item] = []
    seen: set[str] = set()
    for row, item_id, path, duration in manifest_rows:
        if item_id in seen:
            raise ValueError(f"id {item_id!r} appears more than once in the manifest")
        seen.add(item_id)
        if not (duration > 0 and math.isfinite(duration)):  # NaN fails the comparison too
            items.append(Item(row, item_id, path, 0, 1, 0.0, 0.0, smallest))
            continue
        bucket = buckets.for_frames(frames_for_seconds(duration))
        if bucket is not None:
            items.append(Item(row, item_id, path, 0, 1, 0.0, duration, bucket))
            continue
        windows = _long_windows(duration, search_s)
        last = len(windows) - 1
        for segment, (start, end) in enumerate(windows):
            slack = search_s * ((segment > 0) + (segment < last))
            bucket = buckets.for_frames(frames_for_seconds(end - start + slack))
            items.append(Item(row, item_id, path, segment, len(windows), start, end, bucket))
    return items


def plan_batches(items: Sequence[Item], batch_sizes: Mapping[float, int]) -> list[Batch]:
    """Group Items into Batches: one bucket per batch, at most batch_sizes[bucket] items each.

    Buckets come in increasing order; within a bucket items are sorted by window length, then
    (id, segment), so clips of similar length share a batch. The result depends only on the set
    of items, not on their input order, so a rerun plans the same batches (and batch ids).
    """
    with _gc_paused():
        return _group_batches(items, batch_sizes)


def _group_batches(items: Sequence[Item], batch_sizes: Mapping[float, int]) -> list[Batch]:
    by_bucket: dict[float, list[Item]] = defaultdict(list)
    for item in items:
        by_bucket[item.bucket_s].append(item)

    batches: list[Batch] = []
    for bucket in sorted(by_bucket):
        size = batch_sizes.get(bucket)
        if size is None or size < 1:
            raise ValueError(f"no usable batch size for the {bucket} s bucket (got {size!r})")
        # (id, segment) is what Item.key spells as a string: as unique, and cheaper to sort.
        order = sorted(
            (item.end_s - item.start_s, item.id, item.segment, position)
            for position, item in enumerate(by_bucket[bucket])
        )
        group = [by_bucket[bucket][entry[-1]] for entry in order]
        for start in range(0, len(group), size):
            batches.append(Batch(bucket, tuple(group[start : start + size])))
    return batches


def batch_sizes_for_budget(
    buckets_s: Sequence[float],
    bytes_per_clip: Callable[[float], int],
    budget_bytes: int,
    max_batch: int,
) -> dict[float, int]:
    """Clips per batch for each bucket: as many as the memory budget holds, at least 1 (a clip
    that alone exceeds the budget still runs, one at a time) and at most max_batch.

    bytes_per_clip is the model package's estimate of one clip's working memory in a bucket;
    shorter buckets need less, so they get bigger batches.
    """
    if budget_bytes <= 0 or max_batch < 1:
        raise ValueError("budget_bytes and max_batch must be positive")
    sizes: dict[float, int] = {}
    for bucket in buckets_s:
        per_clip = bytes_per_clip(bucket)
        if per_clip <= 0:
            raise ValueError(f"bytes_per_clip({bucket}) must be positive, got {per_clip}")
        sizes[bucket] = max(1, min(max_batch, int(budget_bytes // per_clip)))
    return sizes
