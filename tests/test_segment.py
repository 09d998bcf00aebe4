"""Cuts at pauses: they land in the pause, stay within the search range and the window, and both
neighbouring segments (processed apart) derive the same cut."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.items import Item
from pipeline.planning.windows import plan_items
from pipeline.intake.segment import boundary_nominals, find_cut, search_window, segment_bounds
from pipeline.shapes import fits_window, frames_for_samples

SR = 16_000
SEARCH = 2.0


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Loud noise with a syllable-rate envelope: never quite silent, like continuous speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t)
    return (0.3 * envelope * rng.standard_normal(t.size)).astype(np.float32)


def decode(audio: np.ndarray, nominal_s: float, search_s: float = SEARCH):
    """What a worker does for one boundary: decode exactly the search window of the file."""
    start_s, end_s = search_window(nominal_s, search_s)
    first, last = round(start_s * SR), min(round(end_s * SR), audio.size)
    return audio[first:last], first / SR


def test_cut_lands_in_a_pause_near_but_not_at_nominal():
    audio = speech_like(60.0)
    pause = (31.2, 31.5)  # 200-500 ms after the nominal cut at 31.0 s
    audio[round(pause[0] * SR):round(pause[1] * SR)] *= 0.001
    window, start = decode(audio, 31.0)
    cut = find_cut(window, SR, start, 31.0, SEARCH)
    assert pause[0] < cut < pause[1]
    assert round(cut * 100) == pytest.approx(cut * 100, abs=1e-9)  # on the 10 ms grid


def test_the_quietest_of_several_pauses_wins():
    audio = speech_like(60.0)
    audio[round(29.5 * SR):round(29.8 * SR)] *= 0.05
    audio[round(32.3 * SR):round(32.6 * SR)] *= 0.001  # deeper, though farther from nominal
    window, start = decode(audio, 31.0)
    assert 32.3 < find_cut(window, SR, start, 31.0, SEARCH) < 32.6


def test_silence_cuts_at_the_nominal_point():
    audio = np.zeros(60 * SR, dtype=np.float32)
    window, start = decode(audio, 31.004)
    assert find_cut(window, SR, start, 31.004, SEARCH) == 31.0
    window, start = decode(audio, 26.0)
    assert find_cut(window, SR, start, 26.0, SEARCH) == 26.0


def test_noise_everywhere_still_cuts_within_the_search_range():
    audio = np.random.default_rng(1).standard_normal(60 * SR).astype(np.float32)
    window, start = decode(audio, 30.0)
    cut = find_cut(window, SR, start, 30.0, SEARCH)
    assert 28.0 <= cut <= 32.0


def test_same_window_same_cut():
    audio = speech_like(60.0, seed=3)
    window, start = decode(audio, 40.0)
    cuts = {find_cut(window.copy(), SR, start, 40.0, SEARCH) for _ in range(5)}
    assert len(cuts) == 1


def test_a_window_cut_short_by_the_end_of_the_file():
    audio = speech_like(41.0)
    audio[round(40.5 * SR):] *= 0.001
    window, start = decode(audio, 40.0)  # asks for 38-42 s, gets 38-41 s
    cut = find_cut(window, SR, start, 40.0, SEARCH)
    assert 40.5 <= cut <= 41.0


def test_empty_window_returns_nominal():
    assert find_cut(np.zeros(0, dtype=np.float32), SR, 38.0, 40.0, SEARCH) == 40.0


def test_non_finite_samples_do_not_attract_the_cut():
    audio = speech_like(60.0)
    audio[round(29.0 * SR):round(29.3 * SR)] = np.nan
    audio[round(31.5 * SR):round(31.8 * SR)] *= 0.01
    window, start = decode(audio, 30.0)
    assert 31.5 < find_cut(window, SR, start, 30.0, SEARCH) < 31.8


def test_stereo_is_rejected():
    with pytest.raises(ValueError, match="mono"):
        find_cut(np.zeros((2, 100)), SR, 0.0, 0.0, SEARCH)


@settings(max_examples=150, deadline=None)
@given(
    nominal=st.floats(min_value=0.0, max_value=20.0),
    search=st.floats(min_value=0.0, max_value=4.9),
    start_shift=st.floats(min_value=-6.0, max_value=6.0),
    seconds=st.floats(min_value=0.0, max_value=12.0),
    seed=st.integers(0, 3),
    silent=st.booleans(),
)
def test_cut_is_within_search_range_and_window(nominal, search, start_shift, seconds, seed, silent):
    window_start = max(0.0, nominal + start_shift)
    window = np.zeros(round(seconds * SR), np.float32) if silent else speech_like(seconds, seed)
    cut = find_cut(window, SR, window_start, nominal, search)
    window_end = window_start + window.size / SR
    overlaps = window.size > 0 and max(nominal - search, window_start) <= min(nominal + search, window_end)
    if not overlaps:
        assert cut == nominal
        return
    assert nominal - search <= cut <= nominal + search
    assert window_start <= cut <= window_end
    if min(nominal + search, window_end) - max(nominal - search, window_start) >= 0.01:
        assert cut == round(cut * 100) / 100  # on the 10 ms grid
    assert find_cut(window, SR, window_start, nominal, search) == cut


@settings(max_examples=40, deadline=None)
@given(
    duration=st.floats(min_value=30.5, max_value=150.0),
    search=st.sampled_from([0.0, 0.5, 2.0, 4.0]),
    seed=st.integers(0, 5),
)
def test_segments_from_cuts_are_contiguous_and_bounded(duration, search, seed):
    audio = speech_like(duration, seed)
    audio[np.random.default_rng(seed).random(audio.size) < 0.3] = 0.0  # scattered quiet spots
    items = plan_items([0], ["f"], ["f.wav"], [duration], search)
    cuts = {}
    for item in items:
        for nominal in boundary_nominals(item):
            if nominal is not None and nominal not in cuts:
                window, start = decode(audio, nominal, search)
                cuts[nominal] = find_cut(window, SR, start, nominal, search)

    def cut(nominal):
        return None if nominal is None else cuts[nominal]

    bounds = [segment_bounds(item, *map(cut, boundary_nominals(item))) for item in items]
    assert bounds[0][0] == 0.0 and bounds[-1][1] == duration
    for (_, end), (start, _) in zip(bounds, bounds[1:]):
        assert end == start
    for item, (start, end) in zip(items, bounds):
        assert start < end
        assert end - start <= item.end_s - item.start_s + 2 * search + 1e-9
        # What the worker will decode still fits the model's window.
        frames = frames_for_samples(round(end * SR) - round(start * SR))
        assert fits_window(frames)


def test_segment_bounds_of_a_single_clip_and_wiring_mistakes():
    clip = Item(0, "a", "a.wav", 0, 1, 0.0, 12.5)
    assert boundary_nominals(clip) == (None, None)
    assert segment_bounds(clip, None, None) == (0.0, 12.5)
    middle = Item(0, "b", "b.wav", 1, 3, 20.0, 40.0)
    assert boundary_nominals(middle) == (20.0, 40.0)
    assert segment_bounds(middle, 19.37, 41.2) == (19.37, 41.2)
    with pytest.raises(ValueError, match="cut before"):
        segment_bounds(middle, None, 41.2)
    with pytest.raises(ValueError):
        segment_bounds(clip, 1.0, None)
