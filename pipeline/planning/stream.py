"""A run's work as dispatch pulls it: planning windows (planning/work.py) turned into batches, one
window at a time, while what each window found is recorded (its header reads in OUT's duration
cache, its rows that cannot be read committed as error rows, its items registered with the
committer and the progress bar). annotate wires it between the planner and the runner."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.config import Config
from pipeline.intake.durations import DurationCache
from pipeline.items import Batch
from pipeline.planning.batches import plan_batches
from pipeline.planning.work import Planner, Window


@dataclass
class Totals:
    """What the windows planned so far hold."""

    windows: int = 0
    rows_with_work: int = 0  # rows with items or error results (taken by this run or not)
    rows_changed: int = 0  # of those, rows labelled again (their audio changed)
    failures: int = 0  # rows that cannot be read, committed as error rows

    def add(self, window: Window) -> None:
        self.windows += 1
        self.rows_with_work += window.rows_todo
        self.rows_changed += window.rows_changed
        self.failures += len(window.failures)


class WorkStream:
    """The planner's windows, as a run consumes them (see the module docstring)."""

    def __init__(self, planner: Planner, config: Config, durations: DurationCache):
        self.planner, self.config, self.durations = planner, config, durations
        self._windows = planner.windows()
        self.totals = Totals()
        self.committer = None  # set before batches() is pulled

    def head(self) -> list[Window]:
        """The windows with work among the first WINDOW_ROWS rows (several small manifest files
        are several windows), or up to where the budgets stop: what the start line describes."""
        found = []
        while not self.planner.head_planned:
            window = self.next_with_work()
            if window is None:
                break
            found.append(window)
        return found

    def next_with_work(self) -> Window | None:
        """The next window that has work (items or error rows), counting those without on the way."""
        for window in self._windows:
            self.totals.add(window)
            if window.has_work:
                return window
        return None

    def feed(self, window: Window) -> list[Batch]:
        """Record what a window found and return its batches: its header reads go to OUT's duration
        cache (later runs read no header twice), its rows that cannot be read are committed as error
        rows, its items are registered with the committer (the bar's total grows)."""
        self.durations.add(window.probed)
        if window.failures:
            self.committer.add(r.item for r in window.failures)
            self.committer(window.failures, None)
        self.committer.add(window.items)
        return plan_batches(window.items, self.config.batch_audio_s, self.config.batch_items)

    def batches(self, first: list[Window]) -> Iterator[Batch]:
        """The batches of these windows and of every later one, planned as they are pulled."""
        for window in first:
            yield from self.feed(window)
        while (window := self.next_with_work()) is not None:
            yield from self.feed(window)
