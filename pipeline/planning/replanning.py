"""Planning again within a run: rows whose file decodes longer or shorter than planned."""

from __future__ import annotations

from pipeline.config import Config
from pipeline.intake.durations import DECODED, DurationCache, Entry
from pipeline.items import Batch, Item, ItemResult
from pipeline.output.sink import OutputDir
from pipeline.planning.batches import plan_batches
from pipeline.planning.windows import plan_items
from pipeline.planning.work import RowFacts


class Replanner:
    """Rows whose file decodes longer than planned (a wrong duration_s, a header that
    underestimates), or shorter (an overstated duration_s: segments planned past the file's end
    would fail), are planned again from the decoded length within the run, and annotated whole:
    nothing is silently cut, no good audio becomes an error. The decoded length goes to OUT's duration cache before any result of
    the new plan, so a resumed run plans the row the same way; results of the old plan stop
    counting (sink: one plan per row). A row planned again whose file is still longer (it changes
    while it is read) keeps its duration_mismatch error. Everything it needs travels with the item
    (its row, location and source); it keeps only the rows it planned again."""

    def __init__(self, durations: DurationCache, facts: RowFacts, sink: OutputDir, config: Config):
        self.durations, self.facts, self.sink, self.config = durations, facts, sink, config
        self.replanned: dict[str, float] = {}  # id -> the duration it was planned again from

    def stale(self, result: ItemResult) -> bool:
        """A result of an older plan of a row planned again in this run (still in flight then)."""
        plan = self.replanned.get(result.item.id)
        return plan is not None and result.item.planned_s != plan

    def replan(self, result: ItemResult) -> list[Item] | None:
        item = result.item
        if result.measured_s is None or item.id in self.replanned:
            return None
        seconds = result.measured_s
        version = item.source.version if item.source is not None else None
        if version is not None:
            self.durations.add([Entry(item.path, version, seconds, DECODED)])
        self.replanned[item.id] = seconds
        if item.row < self.facts.until:
            self.facts.planned[item.row] = seconds
        self.sink.forget(item.id)
        return plan_items([item.row], [item.id], [item.path], [seconds], self.config.segment_search_s, [item.source])

    def batches(self, items: list[Item]) -> list[Batch]:
        """The items planned again, batched as the run's own batches are."""
        return plan_batches(items, self.config.batch_audio_s, self.config.batch_items)
