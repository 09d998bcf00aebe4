"""Cut points for long audio, chosen at pauses.

Long audio is planned as equal nominal windows (pipeline/planning/windows.py). Each inner boundary
then moves to the quietest point within search_s of its nominal time, so a word is less likely to
be split.

Both segments next to a boundary are processed independently, possibly on different machines, and
must agree on the cut without talking to each other. So the cut is a pure function of the audio in
a window fixed by the boundary alone, [nominal - search_s, nominal + search_s] clipped to the file
(search_window), and of nothing about the segment asking. Each side decodes that window, calls
find_cut, and gets the same answer.

Cuts land on the 10 ms mel-frame grid (absolute time, so both sides share it), which keeps a
segment's frame count within what the planner reserved for it.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.items import Item
from pipeline.shapes import FRAMES_PER_SECOND

# Short-time energy frame: long enough to smooth over a single pitch period (so a cut is not
# placed in the trough of one voiced cycle), short enough to fit inside a pause between words.
ENERGY_FRAME_S = 0.025
# Candidate cuts per second: the mel-frame hop (10 ms).
CUT_GRID_PER_S = FRAMES_PER_SECOND


def search_window(nominal_s: float, search_s: float) -> tuple[float, float]:
    """The audio to decode for one boundary: [nominal - search, nominal + search], clipped at the
    file start (decoding clips the end at the end of the file)."""
    return max(0.0, nominal_s - search_s), nominal_s + search_s


def boundary_nominals(item: Item) -> tuple[float | None, float | None]:
    """Nominal times of the cuts before and after a segment; None at the file's edges."""
    before = item.start_s if item.segment > 0 else None
    after = item.end_s if item.segment < item.n_segments - 1 else None
    return before, after


def _grid_range(lo_s: float, hi_s: float) -> tuple[int, int]:
    """First and last grid tick t (time t / CUT_GRID_PER_S) with lo_s <= time <= hi_s, compared
    in floats exactly as the returned time will be, so a cut never strays out by a rounding."""
    first = math.ceil(lo_s * CUT_GRID_PER_S)
    while first / CUT_GRID_PER_S < lo_s:
        first += 1
    while (first - 1) / CUT_GRID_PER_S >= lo_s:
        first -= 1
    last = math.floor(hi_s * CUT_GRID_PER_S)
    while last / CUT_GRID_PER_S > hi_s:
        last -= 1
    while (last + 1) / CUT_GRID_PER_S <= hi_s:
        last += 1
    return first, last


def _frame_energy(samples: np.ndarray, centres: np.ndarray, frame_len: int) -> np.ndarray:
    """Mean square of the frame_len samples centred on each index. Frames overhanging the window
    are averaged over the samples they do cover; non-finite energy counts as loudest."""
    offsets = np.arange(frame_len) - frame_len // 2
    index = centres[:, None] + offsets[None, :]
    inside = (index >= 0) & (index < samples.size)
    squares = np.square(samples.astype(np.float64))
    values = np.where(inside, squares[np.clip(index, 0, samples.size - 1)], 0.0)
    counts = inside.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        energy = values.sum(axis=1) / counts
    return np.where(np.isfinite(energy), energy, np.inf)


def find_cut(
    window: np.ndarray, sample_rate: int, window_start_s: float, nominal_s: float, search_s: float
) -> float:
    """The absolute time (s) of the quietest point near a nominal boundary.

    window holds mono samples starting at window_start_s (normally search_window(...)'s start).
    Candidates are the 10 ms grid times within both [nominal - search, nominal + search] and the
    window; each is scored by the mean energy of a 25 ms frame centred on it. The lowest score
    wins; ties (digital silence, say) go to the candidate nearest the nominal time, then to the
    earlier one. A window cut short by the end of the file just has fewer candidates. An empty
    window, or one that misses the search range, returns nominal_s unchanged.
    """
    samples = np.asarray(window)
    if samples.ndim != 1:
        raise ValueError(f"find_cut needs mono samples, got shape {samples.shape}")
    window_end_s = window_start_s + samples.size / sample_rate
    lo_s = max(nominal_s - search_s, window_start_s)
    hi_s = min(nominal_s + search_s, window_end_s)
    if samples.size == 0 or lo_s > hi_s:
        return float(nominal_s)
    first, last = _grid_range(lo_s, hi_s)
    if first > last:  # a window shorter than one grid step
        return float(min(max(nominal_s, lo_s), hi_s))

    ticks = np.arange(first, last + 1)
    times = ticks / CUT_GRID_PER_S
    centres = np.round((times - window_start_s) * sample_rate).astype(np.int64)
    frame_len = max(1, round(ENERGY_FRAME_S * sample_rate))
    energy = _frame_energy(samples, centres, frame_len)

    quietest = np.flatnonzero(energy == energy.min())
    # argmin returns the first of equal distances, i.e. the earlier candidate.
    best = quietest[np.argmin(np.abs(times[quietest] - nominal_s))]
    return int(ticks[best]) / CUT_GRID_PER_S


def segment_bounds(item: Item, cut_before: float | None, cut_after: float | None) -> tuple[float, float]:
    """(start_s, end_s) of a segment from the cuts at its boundaries.

    cut_before is None exactly for the first segment (it starts at 0) and cut_after exactly for
    the last (it ends at item.end_s, the file's end); anything else is a wiring mistake.
    """
    before, after = boundary_nominals(item)
    if (cut_before is None) != (before is None) or (cut_after is None) != (after is None):
        raise ValueError(
            f"segment {item.segment} of {item.n_segments} of {item.id!r} needs "
            f"{'no' if before is None else 'a'} cut before and {'no' if after is None else 'a'} cut after"
        )
    start = 0.0 if cut_before is None else cut_before
    end = item.end_s if cut_after is None else cut_after
    return start, end
