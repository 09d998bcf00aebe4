"""Work: what a run of these manifests on this OUT has to do, planned a window of manifest rows at a
time (WINDOW_ROWS), so that dispatch starts after the first window and the driver's memory does not
grow with the manifest. annotate and the dry run plan alike, through Planner.windows().

For each window, columnar and vectorised (no Python object, no thread-pool task per row):
1. the rows' id, audio and duration_s, read from the manifest (only those columns);
2. each row's audio now (intake/sources.py): locations resolved once per folder, versions from one
   listing per folder;
3. each row's duration to plan from, where known without reading (the manifest's duration_s, OUT's
   duration cache: intake/durations.py);
4. what OUT holds for the rows (output/committed.py): rows finished and current are skipped, keys
   committed are not planned again, rows whose audio changed are planned again.
Then, in manifest order, row by row only for rows with work: headers are read for durations still
unknown (once per distinct file, and only for rows the work budgets can still take), rows that
cannot be read become error results, and the others become Items, taken while the budgets hold.
Planning stops at the first row the budgets leave for later runs (a dry run counts on to the end).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import Config
from pipeline.intake import audio
from pipeline.intake.embedded import refs
from pipeline.intake.durations import HEADER, SCHEMA as DURATION_SCHEMA, DurationCache
from pipeline.intake.manifest_table import AUDIO, DURATION, ID, Manifest
from pipeline.intake.sources import Sources, SourceKeys
from pipeline.items import Item, ItemResult, Source, failure_result
from pipeline.output.committed import CommittedIndex, WindowProgress
from pipeline.planning.batches import Budget
from pipeline.planning.windows import plan_items, segment_windows
from pipeline.reasons import Failure, Reason
from pipeline.shapes import HOP_LENGTH, SAMPLE_RATE, WINDOW_FRAMES, WINDOW_S
from pipeline.storage import location

WINDOW_ROWS = 100_000  # manifest rows planned at a time
PROBE_THREADS = 16  # header reads are I/O-bound
ESTIMATE_PROBES = 2_000  # a dry run reads at most this many headers; it estimates the rest
HOURS_CHUNK = 16  # rows whose headers are read at a time while an audio budget is being filled


@dataclass
class Window:
    """What planning found for manifest rows [start, stop)."""

    start: int
    stop: int
    items: list[Item] = field(default_factory=list)  # what this run takes, in (row, segment) order
    failures: list[ItemResult] = field(default_factory=list)  # rows that cannot be read, not committed yet
    probed: pa.Table = field(default_factory=DURATION_SCHEMA.empty_table)  # durations read from headers
    rows_done: int = 0  # rows OUT holds finished for their audio now: nothing to do
    rows_todo: int = 0  # rows with work (items or an error result), taken by this run or not
    rows_changed: int = 0  # of those, rows labelled again: their audio changed since
    rows_retried: int = 0  # of those, rows finished with a transient failure, tried again
    items_todo: int = 0  # items of the rows with work, taken or not
    audio_todo_s: float = 0.0
    rows_taken: int = 0  # rows this run sends to the model
    finished: Counter = field(default_factory=Counter)  # rows OUT holds finished, by status
    finished_transient: int = 0  # of those, rows with a transient failure
    estimated_rows: int = 0  # rows whose duration a dry run estimated (no header read)
    estimated_s: float = 0.0
    # Rows with work whose length is not known yet (audio inside Parquet without duration_s, known
    # once decoded; or, past a spent budget, files whose headers were not read): counted in
    # rows_todo, not in audio_todo_s.
    unknown_rows: int = 0
    unknown_taken: int = 0  # of those, rows this run takes
    taken_seconds: list[float] = field(default_factory=list)  # a dry run's: the lengths of the items taken
    # A dry run's: where in taken_seconds the segments of longer files are (long files only: a few).
    segment_positions: list[int] = field(default_factory=list)

    @property
    def has_work(self) -> bool:
        """Items to run or rows to record as errors (a dry run's window: items it counted)."""
        return bool(self.items or self.taken_seconds or self.failures)


class RowFacts:
    """Per manifest row, for the rows planned so far: the duration planned from (NaN: unknown) and
    its source as planning found it (intake/sources.SourceKeys: hashes of the audio value, the
    file's version and content, and duration_s), what the final tables' and runs/ files' reading of
    OUT compares. 40 bytes a row, in arrays whose pages are touched only as windows are planned."""

    def __init__(self, rows: int):
        self.planned = np.empty(rows, np.float64)
        self.audio = np.empty(rows, np.uint64)
        self.duration_s = np.empty(rows, np.float64)
        self.version = np.empty(rows, np.uint64)
        self.sha256 = np.empty(rows, np.uint64)
        self.until = 0  # rows [0, until) are known

    def record(self, start: int, planned: np.ndarray, keys: SourceKeys) -> None:
        stop = start + len(planned)
        self.planned[start:stop] = planned
        self.audio[start:stop], self.duration_s[start:stop] = keys.audio, keys.duration_s
        self.version[start:stop], self.sha256[start:stop] = keys.version, keys.sha256
        self.until = max(self.until, stop)

    def known(self, rows: np.ndarray) -> np.ndarray:
        return rows < self.until


class Planner:
    """Plans a run of this manifest on this OUT, window by window (see the module docstring).
    count_all: plan every row to the end even after the budgets are spent (what a dry run shows);
    estimate: read at most ESTIMATE_PROBES headers and estimate the other unknown durations from
    the mean of those known (a dry run writes nothing, so what it reads it cannot keep);
    keep_facts: keep RowFacts for the final tables and runs/ files (a run, not a dry run)."""

    def __init__(self, manifest: Manifest, config: Config, committed: CommittedIndex, durations: DurationCache,
                 count_all: bool = False, estimate: bool = False, keep_facts: bool = True,
                 window_rows: int | None = None):
        self.manifest, self.config, self.committed, self.durations = manifest, config, committed, durations
        self.count_all, self.estimate = count_all, estimate
        self.make_items = not count_all  # a dry run counts (Window.taken_seconds) instead of making Items
        self.window_rows = window_rows or WINDOW_ROWS
        root = location(config.audio_root) if config.audio_root else None
        self.sources = Sources(root, config.verify_content)
        max_audio_s = config.max_hours * 3600 if config.max_hours is not None else None
        self.budget = Budget(config.max_rows, max_audio_s)
        self.facts = RowFacts(manifest.num_rows if keep_facts else 0)
        self.probes_left = ESTIMATE_PROBES if estimate else None
        self.probes = 0  # distinct files whose header was read
        self.known_s = self.known_rows = 0  # durations seen (for estimates)
        self.planned_until = 0  # rows read so far: the rest were not planned (budgets spent)

    @property
    def limited_by(self) -> str | None:
        """The budget that left rows for later runs, once planning found one."""
        return self.budget.limited_by

    @property
    def head_planned(self) -> bool:
        """Whether the windows planned so far hold the run's head (planning/stream.WorkStream.head):
        its first window_rows rows, or every row up to where a budget stopped the run."""
        return self.planned_until >= self.window_rows or bool(self.limited_by)

    def windows(self) -> Iterator[Window]:
        for batch in self.manifest.batches([ID, AUDIO, DURATION], rows=self.window_rows):
            if self.budget.spent and not self.count_all:
                return
            window = self._plan(batch.start, batch.file, batch.table)
            self.planned_until = window.stop
            yield window

    def _plan(self, start: int, file: int, table: pa.Table) -> Window:
        n = table.num_rows
        ids, paths = table.column(ID).combine_chunks(), table.column(AUDIO).combine_chunks()
        manifest_s = pc.fill_null(table.column(DURATION), np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
        base_dir = self.manifest.base_dir_of(file)
        found = self.sources.of(paths, base_dir)
        unusable = found.reason.is_valid().to_numpy(zero_copy_only=False)
        planned = self.durations.planned(found.where, found.version, manifest_s)
        planned[unusable] = np.nan
        # Sources as hashes: compared with what OUT recorded, and kept for the final tables (a dry
        # run on an empty OUT needs neither).
        keys = None
        if len(self.committed) or len(self.facts.planned):
            keys = SourceKeys.of(paths, manifest_s, found.version, found.sha256)
        hashes = self.manifest.id_hashes[start:start + n] if self.manifest.id_hashes is not None else None
        progress = self.committed.lookup(ids, keys, planned, self.config.verify_content, hashes) \
            if keys is not None else WindowProgress.nothing(n)
        known = ~np.isnan(planned)
        self.known_s += float(planned[known].sum())
        self.known_rows += int(known.sum())
        statuses, counts = np.unique(progress.status[progress.finished].astype(str), return_counts=True)
        window = Window(start, start + n, rows_done=int(progress.done.sum()),
                        finished=Counter(dict(zip(statuses.tolist(), counts.tolist()))),
                        finished_transient=int(progress.transient.sum()))
        todo = np.flatnonzero(~progress.done)
        if len(todo):
            _RowsPlan(self, window, start, table, found, planned, progress, unusable).run(todo)
        if len(self.facts.planned):
            self.facts.record(start, planned, keys)
        return window

    def probe(self, locations: list[str]) -> list:
        """Headers of these files (distinct), in parallel: AudioInfo or Failure each."""
        if not locations:
            return []
        # Audio inside a tar shard is read where it lies (its reference, not a path).
        sources = [refs.parse(where) if refs.is_embedded(where) else location(where) for where in locations]
        pool = ThreadPoolExecutor(PROBE_THREADS)
        try:
            return list(pool.map(audio.probe, sources))
        finally:  # on any exception (a signal's StopRequested included) the rest is dropped
            pool.shutdown(wait=True, cancel_futures=True)


class _RowsPlan:
    """The rows of one window that have work, in manifest order: their durations, items, errors
    and what the budgets take."""

    def __init__(self, planner: Planner, window: Window, start: int, table: pa.Table, found, planned: np.ndarray,
                 progress: WindowProgress, unusable: np.ndarray):
        self.planner, self.window, self.start, self.found = planner, window, start, found
        self.planned, self.progress, self.unusable = planned, progress, unusable
        self.config = planner.config
        self.ids = table.column(ID).combine_chunks()
        self.paths = table.column(AUDIO).combine_chunks()
        self.manifest_s = pc.fill_null(table.column(DURATION), np.nan).to_numpy(zero_copy_only=False)
        rows, segments = progress.done_keys
        self.done_keys = set(zip(rows.tolist(), segments.tolist()))
        self.partial_rows = np.unique(rows)  # rows with some segments committed for good
        self.probe_failures: dict[int, Failure] = {}
        self.estimated: set[int] = set()
        self.probed: list[tuple[str, str, float]] = []

    def run(self, todo: np.ndarray) -> None:
        budget = self.planner.budget
        window = self.window
        cursor = 0
        while cursor < len(todo):
            if budget.spent and not self.planner.count_all:
                window.rows_todo += len(todo) - cursor  # rows with work, left for later runs unread
                break
            size = len(todo) - cursor
            if not budget.spent and budget.rows_left is not None:
                size = max(1, budget.rows_left)
            elif not budget.spent and budget.max_audio_s is not None:
                size = HOURS_CHUNK
            chunk = todo[cursor:cursor + size]
            cursor += len(chunk)
            # A row budget already full takes no more rows: their headers are not read (the next
            # row ends the selection whatever its length).
            full = budget.rows_left == 0 and not self.planner.count_all
            self._durations(chunk, reading=(not budget.spent or self.planner.count_all) and not full)
            self._plan_rows(chunk)
        if self.probed:
            locations, versions, seconds = zip(*self.probed)
            window.probed = pa.table({"path": pa.array(locations, pa.string()), "version": pa.array(versions, pa.string()),
                                      "duration_s": pa.array(seconds, pa.float64()),
                                      "origin": pa.array([HEADER] * len(seconds), pa.string())}, schema=DURATION_SCHEMA)

    def _durations(self, rows: np.ndarray, reading: bool) -> None:
        """Read the headers of rows whose duration is unknown (once per distinct file); a dry run
        past its reads estimates them instead."""
        wanted = rows[np.isnan(self.planned[rows]) & ~self.unusable[rows]]
        if len(wanted):
            # A Parquet cell's duration is never read here (its bytes stay out of the driver): it is
            # planned as one item of unknown length, and a worker that finds it longer than a window
            # has it planned again from the decoded length (planning/replanning.py).
            cells = pc.starts_with(pc.fill_null(self.found.where.take(pa.array(wanted)), ""), refs.PARQUET_ROW)
            wanted = wanted[~np.asarray(cells.to_numpy(zero_copy_only=False), bool)]
        if not len(wanted) or not reading:
            return
        where = self.found.where.take(pa.array(wanted)).to_pylist()
        versions = self.found.version.take(pa.array(wanted)).to_pylist()
        files = list(dict.fromkeys(where))
        planner = self.planner
        if planner.probes_left is not None:
            files = files[:planner.probes_left]
            planner.probes_left -= len(files)
        infos = dict(zip(files, planner.probe(files)))
        planner.probes += len(files)
        estimate = planner.known_s / planner.known_rows if planner.known_rows else 0.0
        for row, path, version in zip(wanted.tolist(), where, versions):
            info = infos.get(path)
            if info is None:  # past a dry run's reads
                self.planned[row] = estimate
                self.estimated.add(row)
            elif isinstance(info, Failure):
                self.probe_failures[row] = info
            else:
                self.planned[row] = info.duration_s
                planner.known_s += info.duration_s
                planner.known_rows += 1
                if version is not None:
                    self.probed.append((path, version, info.duration_s))

    def _plan_rows(self, rows: np.ndarray) -> None:
        """Error rows, then the others' segments: taken while the budgets hold (row by row only
        while a budget is being filled), counted either way; Items only for rows taken (and only
        when the planner makes them: a dry run counts)."""
        window, budget, planner = self.window, self.planner.budget, self.planner
        window.rows_changed += int(self.progress.changed[rows].sum())
        window.rows_retried += int(self.progress.transient[rows].sum())
        failed = self.unusable[rows].copy()
        if self.probe_failures:
            failed |= np.isin(rows, np.fromiter(self.probe_failures, np.int64))
        for row in rows[failed].tolist():
            self._failure(row)
        good = rows[~failed]
        if not len(good):
            return
        planned = self.planned[good]
        unknown = np.isnan(planned)
        seconds = np.nan_to_num(planned, nan=0.0)
        seconds = np.where(seconds > 0, seconds, 0.0)  # unknown or empty: one item of nothing (decoding says why)
        # Rows that are not one clip still to do (a long file's segments, some of them committed):
        # their segments' lengths, by position in good.
        special = _long_segments(seconds, self.config.segment_search_s)
        for index in np.flatnonzero(np.isin(good, self.partial_rows)).tolist():
            row = int(good[index])
            lengths = special.get(index, [seconds[index]])
            special[index] = [x for segment, x in enumerate(lengths) if (row, segment) not in self.done_keys]
        counts = np.ones(len(good), np.int64)
        totals = seconds.copy()
        for index, lengths in special.items():
            counts[index], totals[index] = len(lengths), sum(lengths)
        window.rows_todo += int((counts > 0).sum())
        window.items_todo += int(counts.sum())
        window.audio_todo_s += float(totals.sum())
        unknown_todo = int((unknown & (counts > 0)).sum())
        window.unknown_rows += unknown_todo
        if self.estimated:
            estimated = np.isin(good, np.fromiter(self.estimated, np.int64))
            window.estimated_rows += int(estimated.sum())
            window.estimated_s += float(totals[estimated].sum())
        if budget.unlimited:
            taken = {index: None for index in np.flatnonzero(counts > 0).tolist()}  # None: all its segments
        else:
            taken = {}
            for index in np.flatnonzero(counts > 0).tolist():
                # A row of unknown length (a Parquet cell) counts as a whole window (batches.budget_s).
                lengths = special.get(index, [seconds[index] if seconds[index] > 0 else WINDOW_S])
                count = budget.take_seconds(lengths)
                if count:
                    taken[index] = count if count < len(lengths) else None
                if budget.spent:
                    break
        window.rows_taken += len(taken)
        if budget.unlimited:
            window.unknown_taken += unknown_todo  # every row with work is taken
        elif taken:
            window.unknown_taken += int(unknown[np.fromiter(taken, np.int64, len(taken))].sum())
        if planner.make_items:
            window.items += self._items(good, taken)
        else:
            for index, count in taken.items():
                lengths = special.get(index)
                if lengths is None:  # one clip
                    window.taken_seconds.append(seconds[index])
                    continue
                lengths = lengths if count is None else lengths[:count]
                at = len(window.taken_seconds)
                window.segment_positions += range(at, at + len(lengths))
                window.taken_seconds += lengths

    def _failure(self, row: int) -> None:
        """A row that cannot be read: an error result (unless its key is committed)."""
        if (row, 0) in self.done_keys:
            return
        self.window.rows_todo += 1
        if self.planner.budget.spent and not self.planner.count_all:
            return  # past where this run stops: the run that reaches it commits it
        problem = self.probe_failures.get(row)
        if self.unusable[row]:
            problem = Failure(Reason(self.found.reason[row].as_py()), self.found.detail[row].as_py())
        # planned_s 0: no plan. A later run that can read the file plans it anew, and its results
        # supersede this one (sink: one plan per id), however many segments it finds.
        item = Item(self.start + row, self.ids[row].as_py(), str(self.paths[row].as_py()), 0, 1, 0.0, 0.0,
                    planned_s=0.0, source=self._sources([row])[0])
        self.window.failures.append(failure_result(item, problem))

    def _sources(self, rows: list[int]) -> list[Source]:
        """Each row's audio as planned: recorded with its results (a later run compares it)."""
        taken = pa.array(rows, pa.int64())
        audio_values = self.paths.take(taken).to_pylist()
        versions = self.found.version.take(taken).to_pylist()
        hashes = self.found.sha256.take(taken).to_pylist()
        seconds = self.manifest_s[rows].tolist()
        return [Source(a, None if s != s else s, v, h) for a, s, v, h in zip(audio_values, seconds, versions, hashes)]

    def _items(self, good: np.ndarray, taken: dict[int, int | None]) -> list[Item]:
        """The items of the rows taken (by position in good: their first `count` segments still to
        do, None: all of them), in manifest order."""
        if not taken:
            return []
        rows = good[list(taken)].tolist()
        positions = pa.array(rows, pa.int64())
        items = plan_items([self.start + r for r in rows], self.ids.take(positions).to_pylist(),
                           self.found.where.take(positions).to_pylist(), self.planned[rows].tolist(),
                           self.config.segment_search_s, self._sources(rows))
        if self.done_keys:
            items = [i for i in items if (i.row - self.start, i.segment) not in self.done_keys]
        cut = {self.start + int(good[index]): count for index, count in taken.items() if count is not None}
        if cut:
            kept, seen = [], {}
            for item in items:
                seen[item.row] = seen.get(item.row, 0) + 1
                if item.row not in cut or seen[item.row] <= cut[item.row]:
                    kept.append(item)
            items = kept
        return items


def _long_segments(seconds: np.ndarray, search_s: float) -> dict[int, list[float]]:
    """The segments' lengths of the rows longer than the 30 s window, by position (the others are
    one clip each): planning/windows.py's nominal windows."""
    frames = np.ceil(np.round(seconds * SAMPLE_RATE) / HOP_LENGTH)
    return {int(i): [end - start for start, end in segment_windows(float(seconds[i]), search_s)]
            for i in np.flatnonzero(frames > WINDOW_FRAMES)}


def retry_errors(config: Config) -> frozenset[str]:
    """The committed error reasons this run tries again (config.retry_errors: codes, or all)."""
    if "all" in config.retry_errors:
        return frozenset(Reason)
    return frozenset(Reason(r) for r in config.retry_errors)


def rows_left_after(planner: Planner, rows_with_work: int, rows_done_now: int) -> int:
    """Rows still to do after a run: those with work in the windows it planned, less those it
    finished, plus the rows past where it stopped planning that OUT does not hold finished (by id:
    their audio was not looked at, so a change there shows only when their window is planned)."""
    manifest = planner.manifest
    rest = 0
    if planner.planned_until < manifest.num_rows and manifest.id_hashes is not None:
        later = manifest.id_hashes[planner.planned_until:]
        rest = int((~np.isin(later, planner.committed.done_hashes())).sum())
    return max(0, rows_with_work - rows_done_now) + rest
