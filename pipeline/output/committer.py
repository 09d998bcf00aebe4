"""The driver's single writer: results as they come from the workers, buffered and committed to
OUT as parts (output/sink.py), with the progress bar and the counts the run reports."""

from __future__ import annotations

import logging
import time
from collections import Counter

from pipeline.items import Item, ItemResult
from pipeline.output.console import Console
from pipeline.output.sink import OutputDir
from pipeline.output.timeline import Timeline
from pipeline.reasons import Reason

log = logging.getLogger(__name__)


class Committer:
    """Buffers results and commits them as parts; also drives the progress bar. Returns, for the
    runner to dispatch, the batches of rows planned again (replanner: planning/replanning.py's, or
None where no row is planned again).

    The bar counts audio in whole milliseconds, each item rounded once: its total is then exactly
    the sum of its updates, so it never passes 100% (float sums taken in another order did, which
    made tqdm clamp the bar and print a negative ETA).
    """

    def __init__(self, sink: OutputDir, columns, items: list[Item], console: Console, commit_items: int,
                 commit_seconds: float, replanner=None, timeline: Timeline | None = None):
        self.sink, self.columns = sink, columns
        self.timeline = timeline  # each worker's returns over time, for the report
        self.replanner = replanner
        self.bar = console.progress_bar(sum(audio_ms(i) for i in items))
        # Until the first results: loading the model and compiling can take minutes.
        self.bar.set_postfix_str("starting workers")
        self.commit_items, self.commit_seconds = commit_items, commit_seconds
        self.buffer: list[ItemResult] = []
        self.stats: dict | None = None
        self.stats_total: dict = {}  # this invocation's generation counts and times (its runs/ file records them)
        self.last_flush = time.monotonic()
        self.items_left = Counter(i.id for i in items)  # per row: its items still to come in this run
        self.total_rows = len(self.items_left)
        self.rows_done = 0
        self.rows_with_errors: set[str] = set()
        # This invocation's audio annotated, as decoded (its throughput): not as planned, which an
        # overstated duration_s inflates (the bar, which must reach its total, counts the plan).
        self.audio_ms_done = 0
        self.decoded_ms_by_id: Counter = Counter()  # the part of it each row's results hold

    def __call__(self, results: list[ItemResult], stats: dict | None, worker: dict | None = None) -> list | None:
        """worker: the ready() info of the worker that returned these results (None: no worker did)."""
        results, again = self._replanned(results)
        self.buffer.extend(results)
        if stats is not None:
            self.stats = stats if self.stats is None else {k: self.stats[k] + stats[k] for k in stats}
            self.stats_total = {k: self.stats_total.get(k, 0) + v for k, v in stats.items()}
        for r in results:
            self.items_left[r.item.id] -= 1
            self.rows_done += self.items_left[r.item.id] == 0
            if r.status != "ok":
                self.rows_with_errors.add(r.item.id)
        # The text first: update() redraws the bar, and it should show this batch's counts.
        self.bar.set_postfix_str(f"rows {self.rows_done}/{self.total_rows}, errors {len(self.rows_with_errors)}",
                                 refresh=False)
        decoded = sum(decoded_ms(r) for r in results)
        self.audio_ms_done += decoded
        for r in results:
            self.decoded_ms_by_id[r.item.id] += decoded_ms(r)
        if self.timeline is not None:
            self.timeline.record(worker, decoded / 1000)
        self.bar.update(sum(audio_ms(r.item) for r in results))
        if len(self.buffer) >= self.commit_items or time.monotonic() - self.last_flush > self.commit_seconds:
            self.flush()
        return self.replanner.batches(again) if again else None

    def _replanned(self, results: list[ItemResult]) -> tuple[list[ItemResult], list[Item]]:
        """Drop results of rows planned again; plan again the rows found longer than planned."""
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
            self.items_left[r.item.id] = len(items)
            # Its results so far belong to the old plan, replaced: their audio is not this run's.
            self.audio_ms_done -= self.decoded_ms_by_id.pop(r.item.id, 0)
            self.bar.total += sum(audio_ms(i) for i in items)
            again += items
        return kept, again

    def flush(self) -> None:
        if self.buffer:
            self.sink.commit(self.buffer, self.columns, self.stats)
        self.buffer, self.stats = [], None
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
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
