"""The driver's single writer: results as they come from the workers, buffered and committed to
OUT as parts (output/sink.py), with the progress bar and the counts the run reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from pipeline.items import Item, ItemResult
from pipeline.output.console import Console
from pipeline.output.sink import OutputDir
from pipeline.output.timeline import Timeline
from pipeline.reasons import TRANSIENT, Reason

log = logging.getLogger(__name__)

# A row in flight: [its items still to come in this run, whether one failed, whether one failed
# transiently, the audio its results decoded so far (ms)].
_LEFT, _FAILED, _TRANSIENT, _DECODED = range(4)


class Committer:
    """Buffers results and commits them as parts; also drives the progress bar. Returns, for the
    runner to dispatch, the batches of rows planned again (replanner: planning/replanning.py's, or
None where no row is planned again).

    Rows are added as planning reaches them (add: a window's items), so the bar's total grows with
    each window. Its memory is the rows in flight only: a row's bookkeeping goes when its last
    result comes.

    The bar counts audio in whole milliseconds, each item rounded once: its total is then exactly
    the sum of its updates, so it never passes 100% (float sums taken in another order did, which
    made tqdm clamp the bar and print a negative ETA).
    """

    def __init__(self, sink: OutputDir, columns, items: Iterable[Item], console: Console, commit_items: int,
                 commit_seconds: float, replanner=None, timeline: Timeline | None = None):
        self.sink, self.columns = sink, columns
        self.timeline = timeline  # each worker's returns over time, for the report
        self.replanner = replanner
        self.console = console
        self.bar = None  # shown once the first rows are added (a bar of nothing would show 0/0)
        self.commit_items, self.commit_seconds = commit_items, commit_seconds
        self.buffer: list[ItemResult] = []
        self.stats: dict | None = None
        self.stats_total: dict = {}  # this invocation's generation counts and times (its runs/ file records them)
        self.last_flush = time.monotonic()
        self.in_flight: dict[str, list] = {}  # rows with results still to come (see _LEFT...)
        self.total_rows = 0
        self.rows_done = 0  # rows whose every item has a result
        self.rows_completed = 0  # of those, rows with no transient failure (committed for good)
        self.rows_with_errors = 0
        # This invocation's audio annotated, as decoded (its throughput): not as planned, which an
        # overstated duration_s inflates (the bar, which must reach its total, counts the plan).
        self.audio_ms_done = 0
        self.audio_ms_planned = 0
        self.items_planned = 0
        self.add(items)

    def add(self, items: Iterable[Item]) -> None:
        """Rows this run will send (a planning window's items, or error results to commit)."""
        added = 0
        for item in items:
            state = self.in_flight.get(item.id)
            if state is None:
                self.in_flight[item.id] = [1, False, False, 0]
                self.total_rows += 1
            else:
                state[_LEFT] += 1
            added += audio_ms(item)
            self.items_planned += 1
        if added:
            self._grow(added)

    def _grow(self, added_ms: int) -> None:
        self.audio_ms_planned += added_ms
        if self.bar is None:
            self.bar = self.console.progress_bar(added_ms)
            # Until the first results: loading the model and compiling can take minutes.
            self.bar.set_postfix_str("starting workers")
        else:
            self.bar.total += added_ms
            self.bar.refresh()

    def __call__(self, results: list[ItemResult], stats: dict | None, worker: dict | None = None) -> list | None:
        """worker: the ready() info of the worker that returned these results (None: no worker did)."""
        results, again = self._replanned(results)
        self.buffer.extend(results)
        if stats is not None:
            self.stats = stats if self.stats is None else {k: self.stats[k] + stats[k] for k in stats}
            self.stats_total = {k: self.stats_total.get(k, 0) + v for k, v in stats.items()}
        decoded = 0
        for r in results:
            state = self.in_flight.get(r.item.id)
            if state is None:
                raise RuntimeError(f"a result for {r.item.key}, which this run did not plan (or already finished)")
            state[_LEFT] -= 1
            state[_FAILED] |= r.status != "ok"
            state[_TRANSIENT] |= r.error in TRANSIENT
            state[_DECODED] += decoded_ms(r)
            decoded += decoded_ms(r)
            if state[_LEFT] == 0:
                del self.in_flight[r.item.id]
                self.rows_done += 1
                self.rows_completed += not state[_TRANSIENT]
                self.rows_with_errors += state[_FAILED]
        self.audio_ms_done += decoded
        if self.timeline is not None:
            self.timeline.record(worker, decoded / 1000)
        if self.bar is not None:
            # The text first: update() redraws the bar, and it should show this batch's counts.
            self.bar.set_postfix_str(f"rows {self.rows_done}/{self.total_rows}, errors {self.rows_with_errors}",
                                     refresh=False)
            self.bar.update(sum(audio_ms(r.item) for r in results))
        if len(self.buffer) >= self.commit_items or time.monotonic() - self.last_flush > self.commit_seconds:
            self.flush()
        return self.replanner.batches(again) if again else None

    def _replanned(self, results: list[ItemResult]) -> tuple[list[ItemResult], list[Item]]:
        """Drop results of rows planned again; plan again the rows whose length differs from their plan."""
        if self.replanner is None:
            return results, []
        kept, again = [], []
        for r in results:
            if self.replanner.stale(r):
                continue
            items = self.replanner.replan(r) if r.error == Reason.DURATION_MISMATCH else None
            if items is None:
                kept.append(r)
                continue
            self.buffer = [b for b in self.buffer if b.item.id != r.item.id]
            kept = [k for k in kept if k.item.id != r.item.id]
            state = self.in_flight.setdefault(r.item.id, [0, False, False, 0])
            state[_LEFT] = len(items)
            # Its results so far belong to the old plan, replaced: their audio is not this run's.
            self.audio_ms_done -= state[_DECODED]
            state[_DECODED] = 0
            self._grow(sum(audio_ms(i) for i in items))
            again += items
        return kept, again

    def flush(self) -> None:
        if self.buffer:
            self.sink.commit(self.buffer, self.columns, self.stats)
        self.buffer, self.stats = [], None
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self.bar is not None:
            self.bar.close()

    def close_after_failure(self) -> None:
        """Commit what is buffered while an error ends the run: the error, not a second one from
        this commit (OUT may be what failed), is what the run reports."""
        try:
            self.close()
        except Exception as exc:
            log.warning("could not commit the %d results still buffered: %s", len(self.buffer), exc)


def audio_ms(item: Item) -> int:
    return round((item.end_s - item.start_s) * 1000)


def decoded_ms(result: ItemResult) -> int:
    """The audio an ok result annotated, as decoded (its actual cut points)."""
    if result.status != "ok" or result.start_s is None or result.end_s is None:
        return 0
    return round((result.end_s - result.start_s) * 1000)
