"""Planning invariants: every clip and segment planned once, windows contiguous, every batch within
its declared shape; plus the edges of the bucket rules (exactly 30 s, the margin below a bucket)."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.plan import (
    MAX_SEARCH_S,
    batch_sizes_for_budget,
    bucket_for,
    plan_batches,
    plan_items,
    segment_windows,
)
from pipeline.shapes import (
    BUCKET_MARGIN_FRAMES,
    WINDOW_FRAMES,
    bucket_frames_for_seconds,
    fits_bucket,
    frames_for_seconds,
)

BUCKETS = (5.0, 10.0, 15.0, 20.0, 30.0)
SIZES = {5.0: 16, 10.0: 8, 15.0: 6, 20.0: 4, 30.0: 3}


def fits(seconds: float, bucket_s: float) -> bool:
    return fits_bucket(frames_for_seconds(seconds), bucket_frames_for_seconds(bucket_s))


def plan(durations, buckets=BUCKETS, search_s=2.0):
    n = len(durations)
    return plan_items(range(n), [f"id{i}" for i in range(n)], [f"/a/{i}.wav" for i in range(n)],
                      durations, buckets, search_s)


durations = st.lists(
    st.one_of(
        st.floats(min_value=0.001, max_value=200.0),
        st.sampled_from([0.0, -1.0, 4.96, 4.97, 5.0, 29.99, 30.0, 30.01, 52.0, 56.0, 60.0]),
    ),
    max_size=40,
)
searches = st.floats(min_value=0.0, max_value=MAX_SEARCH_S - 0.01)
# Any increasing set of valid buckets (multiples of 40 ms) that ends in the 30 s window.
bucket_sets = st.sets(st.integers(min_value=2, max_value=749), max_size=6).map(
    lambda quanta: tuple(sorted(q * 0.04 for q in quanta)) + (30.0,)
)


# --- bucket_for: the edges of the margin rule ---

def test_exactly_30_s_fills_the_window_bucket_with_no_margin():
    assert frames_for_seconds(30.0) == WINDOW_FRAMES
    assert bucket_for(30.0, BUCKETS) == 30.0
    assert segment_windows(30.0, 2.0) == [(0.0, 30.0)]


def test_just_over_30_s_has_no_bucket_and_is_segmented():
    assert bucket_for(30.01, BUCKETS) is None
    assert len(segment_windows(30.01, 2.0)) == 2


def test_a_clip_at_a_smaller_bucket_edge_goes_to_the_next_bucket():
    # 5 s is exactly 500 frames: filling the 5 s bucket to its last frame would change the final
    # audio tokens, so it needs the 10 s bucket.
    assert bucket_for(5.0, BUCKETS) == 10.0
    margin_s = BUCKET_MARGIN_FRAMES / 100
    assert bucket_for(5.0 - margin_s, BUCKETS) == 5.0
    assert bucket_for(5.0 - margin_s + 0.001, BUCKETS) == 10.0
    assert bucket_for(20.0, BUCKETS) == 30.0


def test_tiny_clips_go_to_the_smallest_bucket():
    for duration in (0.0, 1e-6, 0.001, 0.01):
        assert bucket_for(duration, BUCKETS) == 5.0


def test_unsorted_buckets_still_give_the_smallest_that_fits():
    assert bucket_for(7.0, (30.0, 10.0, 5.0)) == 10.0


# --- segment_windows ---

def test_windows_are_equal_and_minimal_in_number():
    # 56 s with 2 s search: windows of 28 s + 4 s slack do not fit 30 s, so three windows.
    windows = segment_windows(56.0, 2.0)
    assert len(windows) == 3
    assert windows[0][0] == 0.0 and windows[-1][1] == 56.0
    assert segment_windows(52.0, 2.0) == [(0.0, 26.0), (26.0, 52.0)]


@given(st.floats(min_value=0.001, max_value=3600.0), searches)
def test_windows_cover_the_file_contiguously_and_fit_with_slack(duration, search_s):
    windows = segment_windows(duration, search_s)
    assert windows[0][0] == 0.0 and windows[-1][1] == duration
    for (_, end), (start, _) in zip(windows, windows[1:]):
        assert end == start
    if len(windows) == 1:
        assert fits(duration, 30.0)
        return
    assert not fits(duration, 30.0)
    for start, end in windows:
        assert end - start > 2 * search_s  # neighbouring cuts' search ranges never overlap
        assert fits(end - start + 2 * search_s, 30.0)
    # One window fewer would not fit (to within a frame, for float rounding).
    assert duration / (len(windows) - 1) + 2 * search_s > 30.0 - 0.01


def test_search_radius_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="search radius"):
        segment_windows(100.0, MAX_SEARCH_S)
    with pytest.raises(ValueError, match="search radius"):
        segment_windows(100.0, -0.1)


# --- plan_items ---

@settings(max_examples=200)
@given(durations, bucket_sets, searches)
def test_every_clip_and_segment_is_planned_once_and_fits_its_bucket(durations, buckets, search_s):
    items = plan(durations, buckets, search_s)
    keys = [item.key for item in items]
    assert len(keys) == len(set(keys))
    by_id = {}
    for item in items:
        by_id.setdefault(item.id, []).append(item)
    assert sorted(by_id) == sorted(f"id{i}" for i in range(len(durations)))

    for i, duration in enumerate(durations):
        segments = sorted(by_id[f"id{i}"], key=lambda item: item.segment)
        assert [s.segment for s in segments] == list(range(len(segments)))
        assert all(s.n_segments == len(segments) and s.row == i for s in segments)
        assert all(s.bucket_s in buckets for s in segments)
        if duration <= 0:
            assert [(s.start_s, s.end_s, s.bucket_s) for s in segments] == [(0.0, 0.0, buckets[0])]
            continue
        assert segments[0].start_s == 0.0 and segments[-1].end_s == duration
        for before, after in zip(segments, segments[1:]):
            assert before.end_s == after.start_s
        last = len(segments) - 1
        for s in segments:
            slack = search_s * ((s.segment > 0) + (s.segment < last))
            assert fits(s.end_s - s.start_s + slack, s.bucket_s)
        if len(segments) == 1:
            # The smallest bucket that holds the clip.
            assert segments[0].bucket_s == bucket_for(duration, buckets)
            smaller = [b for b in buckets if b < segments[0].bucket_s]
            assert not any(fits(duration, b) for b in smaller)


def test_long_windows_get_smaller_buckets_when_they_fit():
    # 31 s -> two 15.5 s windows; each has one inner edge: 17.5 s -> the 20 s bucket.
    items = plan([31.0])
    assert [(i.start_s, i.end_s, i.bucket_s) for i in items] == [(0.0, 15.5, 20.0), (15.5, 31.0, 20.0)]
    # 60 s -> three 20 s windows: the ends need 22 s, the middle one 24 s: both the 30 s bucket.
    assert [i.bucket_s for i in plan([60.0])] == [30.0, 30.0, 30.0]


def test_bad_durations_are_planned_not_fatal():
    items = plan([0.0, -3.0, float("nan"), None, float("inf")])
    assert [(i.segment, i.n_segments, i.end_s, i.bucket_s) for i in items] == [(0, 1, 0.0, 5.0)] * 5


def test_duplicate_ids_are_rejected():
    with pytest.raises(ValueError, match="more than once"):
        plan_items([0, 1], ["a", "a"], ["x", "y"], [1.0, 2.0], BUCKETS, 2.0)


def test_buckets_without_the_30_s_window_are_rejected():
    with pytest.raises(ValueError, match="largest bucket"):
        plan([1.0], buckets=(5.0, 10.0))


def test_mismatched_columns_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        plan_items([0], ["a", "b"], ["x"], [1.0], BUCKETS, 2.0)


# --- plan_batches ---

@settings(max_examples=200)
@given(durations, st.integers(min_value=1, max_value=7), st.randoms(use_true_random=False))
def test_batches_hold_every_item_once_within_their_shape(durations, size, rng):
    items = plan(durations)
    sizes = {bucket: size + i for i, bucket in enumerate(BUCKETS)}
    batches = plan_batches(items, sizes)
    planned = [item for batch in batches for item in batch.items]
    assert sorted(i.key for i in planned) == sorted(i.key for i in items)
    assert len(planned) == len(items)
    for batch in batches:
        assert 1 <= len(batch.items) <= sizes[batch.bucket_s]
        assert all(item.bucket_s == batch.bucket_s for item in batch.items)
    # Deterministic, whatever the input order.
    shuffled = list(items)
    rng.shuffle(shuffled)
    again = plan_batches(shuffled, sizes)
    assert [b.items for b in again] == [b.items for b in batches]
    assert [b.batch_id for b in again] == [b.batch_id for b in batches]


def test_similar_lengths_share_a_batch():
    durations = [1.0, 4.0, 1.1, 4.1, 1.2, 4.2]
    batches = plan_batches(plan(durations), {5.0: 3})
    assert [[i.end_s for i in b.items] for b in batches] == [[1.0, 1.1, 1.2], [4.0, 4.1, 4.2]]


def test_missing_batch_size_is_an_error():
    with pytest.raises(ValueError, match="batch size"):
        plan_batches(plan([12.0]), {5.0: 4})


def test_no_items_no_batches():
    assert plan_batches([], SIZES) == []


# --- batch_sizes_for_budget ---

def test_shorter_buckets_get_bigger_batches_within_bounds():
    sizes = batch_sizes_for_budget(BUCKETS, lambda b: int(b * 100), budget_bytes=3000, max_batch=16)
    assert sizes == {5.0: 6, 10.0: 3, 15.0: 2, 20.0: 1, 30.0: 1}
    assert batch_sizes_for_budget(BUCKETS, lambda b: 1, 10**9, max_batch=16)[30.0] == 16
    # A clip that alone exceeds the budget still runs, one at a time.
    assert batch_sizes_for_budget((30.0,), lambda b: 10**12, 1, max_batch=16) == {30.0: 1}


def test_budget_arguments_are_checked():
    with pytest.raises(ValueError):
        batch_sizes_for_budget(BUCKETS, lambda b: 0, 100, 4)
    with pytest.raises(ValueError):
        batch_sizes_for_budget(BUCKETS, lambda b: 1, 100, 0)


def test_a_mixed_manifest_plans_quickly_enough_to_notice_regressions():
    # Not a timing assert: a sanity run over a few thousand mixed rows, checking totals.
    rng = random.Random(0)
    durations = [rng.uniform(1, 60) for _ in range(5000)]
    items = plan(durations)
    batches = plan_batches(items, SIZES)
    assert sum(len(b.items) for b in batches) == len(items)
    expected = sum(1 if fits(d, 30.0) else len(segment_windows(d, 2.0)) for d in durations)
    assert len(items) == expected
    assert not any(math.isnan(i.end_s) for i in items)
