"""Planning invariants: every clip and segment planned once, windows contiguous and within the 30 s
window with their search slack, every item in exactly one batch, batches bounded and deterministic."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.planning.batches import plan_batches
from pipeline.planning.windows import MAX_SEARCH_S, plan_items, segment_windows
from pipeline.shapes import WINDOW_FRAMES, fits_window, frames_for_seconds


def fits(seconds: float) -> bool:
    return fits_window(frames_for_seconds(seconds))


def plan(durations, search_s=2.0):
    n = len(durations)
    return plan_items(range(n), [f"id{i}" for i in range(n)], [f"/a/{i}.wav" for i in range(n)],
                      durations, search_s)


durations = st.lists(
    st.one_of(
        st.floats(min_value=0.001, max_value=200.0),
        st.sampled_from([0.0, -1.0, 4.96, 4.97, 5.0, 29.99, 30.0, 30.01, 52.0, 56.0, 60.0]),
    ),
    max_size=40,
)
searches = st.floats(min_value=0.0, max_value=MAX_SEARCH_S - 0.01)


def test_exactly_30_s_is_one_item_and_just_over_is_segmented():
    assert frames_for_seconds(30.0) == WINDOW_FRAMES
    assert segment_windows(30.0, 2.0) == [(0.0, 30.0)]
    assert [(i.segment, i.n_segments) for i in plan([30.0])] == [(0, 1)]
    assert [(i.segment, i.n_segments) for i in plan([30.01])] == [(0, 2), (1, 2)]


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
        assert fits(duration)
        return
    assert not fits(duration)
    for start, end in windows:
        assert end - start > 2 * search_s  # neighbouring cuts' search ranges never overlap
        assert fits(end - start + 2 * search_s)
    # One window fewer would not fit (to within a frame, for float rounding).
    assert duration / (len(windows) - 1) + 2 * search_s > 30.0 - 0.01


def test_search_radius_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="search radius"):
        segment_windows(100.0, MAX_SEARCH_S)
    with pytest.raises(ValueError, match="search radius"):
        segment_windows(100.0, -0.1)


# --- plan_items ---

@settings(max_examples=200)
@given(durations, searches)
def test_every_clip_and_segment_is_planned_once_and_fits_the_window(durations, search_s):
    items = plan(durations, search_s)
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
        if duration <= 0:
            assert [(s.start_s, s.end_s) for s in segments] == [(0.0, 0.0)]
            continue
        assert segments[0].start_s == 0.0 and segments[-1].end_s == duration
        for before, after in zip(segments, segments[1:]):
            assert before.end_s == after.start_s
        last = len(segments) - 1
        for s in segments:
            slack = search_s * ((s.segment > 0) + (s.segment < last))
            assert fits(s.end_s - s.start_s + slack)
        assert (len(segments) == 1) == fits(duration)


def test_bad_durations_are_planned_not_fatal():
    items = plan([0.0, -3.0, float("nan"), None, float("inf")])
    assert [(i.segment, i.n_segments, i.end_s) for i in items] == [(0, 1, 0.0)] * 5


def test_duplicate_ids_are_rejected():
    with pytest.raises(ValueError, match="more than once"):
        plan_items([0, 1], ["a", "a"], ["x", "y"], [1.0, 2.0], 2.0)


def test_mismatched_columns_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        plan_items([0], ["a", "b"], ["x"], [1.0], 2.0)


# --- plan_batches ---

@settings(max_examples=200)
@given(durations, st.floats(min_value=0.5, max_value=300.0), st.integers(min_value=1, max_value=9),
       st.randoms(use_true_random=False))
def test_batches_hold_every_item_once_within_their_bounds(durations, audio_s, max_items, rng):
    items = plan(durations)
    batches = plan_batches(items, audio_s, max_items)
    planned = [item for batch in batches for item in batch.items]
    assert sorted(i.key for i in planned) == sorted(i.key for i in items)
    assert len(planned) == len(items)
    for batch in batches:
        assert 1 <= len(batch.items) <= max_items
        # Full before it closes: only the item that reached the audio budget may cross it.
        assert sum(i.end_s - i.start_s for i in batch.items[:-1]) < audio_s
    # Deterministic, whatever the input order.
    shuffled = list(items)
    rng.shuffle(shuffled)
    again = plan_batches(shuffled, audio_s, max_items)
    assert [b.items for b in again] == [b.items for b in batches]
    assert [b.batch_id for b in again] == [b.batch_id for b in batches]


def test_batches_close_at_their_audio_budget():
    batches = plan_batches(plan([10.0, 25.0, 30.0, 5.0, 1.0]), 30.0, 64)
    assert [[i.end_s for i in b.items] for b in batches] == [[10.0, 25.0], [30.0], [5.0, 1.0]]


def test_batches_follow_the_manifest_not_the_ids():
    """Ids that sort against the manifest: dispatch still starts at the manifest's head."""
    ids = [f"z{9 - i}" for i in range(10)]  # z9, z8, ... z0 in manifest order
    items = plan_items(range(10), ids, [f"/a/{i}.wav" for i in range(10)], [5.0, 40.0, *[5.0] * 8], 2.0)
    batches = plan_batches(items, 20.0, 3)
    assert [(i.row, i.segment) for b in batches for i in b.items] == sorted((i.row, i.segment) for i in items)
    assert batches[0].items[0].id == "z9"


def test_no_items_no_batches_and_bounds_are_checked():
    assert plan_batches([], 60.0, 8) == []
    with pytest.raises(ValueError):
        plan_batches(plan([1.0]), 0.0, 8)
    with pytest.raises(ValueError):
        plan_batches(plan([1.0]), 60.0, 0)


def test_a_mixed_manifest_plans_quickly_enough_to_notice_regressions():
    # Not a timing assert: a sanity run over a few thousand mixed rows, checking totals.
    rng = random.Random(0)
    durations = [rng.uniform(1, 60) for _ in range(5000)]
    items = plan(durations)
    batches = plan_batches(items, 120.0, 64)
    assert sum(len(b.items) for b in batches) == len(items)
    expected = sum(1 if fits(d) else len(segment_windows(d, 2.0)) for d in durations)
    assert len(items) == expected
    assert not any(math.isnan(i.end_s) for i in items)
