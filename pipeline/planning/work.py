"""Work: what a run of this manifest on this OUT has to do. Each row's audio now (its location, its
version), what OUT holds for it, the durations known without reading (the manifest's, OUT's
duration cache) and those read from file headers, then the items still to do and those the work
budgets let this run take. annotate and the dry run plan alike, through plan_work.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pipeline import storage
from pipeline.config import Config
from pipeline.intake import audio
from pipeline.intake.durations import HEADER, DurationCache, Entry
from pipeline.intake.embedded.refs import ParquetCell
from pipeline.intake.manifest_table import Manifest
from pipeline.intake.sources import CurrentSources, read_sources
from pipeline.items import Item, ItemResult, failure_result
from pipeline.output.sink import OutputDir, Progress
from pipeline.planning.batches import within_budget
from pipeline.planning.windows import plan_items
from pipeline.reasons import Failure, Reason

PROBE_THREADS = 16  # header reads are I/O-bound


@dataclass
class Work:
    """What a run of this manifest on this OUT has to do; annotate and the dry run plan it alike."""

    sources: CurrentSources  # every row's audio now
    progress: Progress  # what OUT holds for it
    items: list[Item]  # the items of every row not finished
    todo: list[Item]  # those not committed yet
    failures: list[ItemResult]  # rows that cannot be read, not committed yet
    planned: list  # each row's planned duration (None where unknown)
    chosen: list[Item]  # what this run dispatches: todo within the work budgets
    limited_by: str | None  # the budget that left rows for later runs, if any
    durations: DurationCache  # OUT's duration cache, loaded for this manifest's files
    probed: list[Entry]  # durations this planning read from headers (annotate records them)
    resolved: list  # each row's location, or the Failure that says why it has none

    @property
    def row_ids(self) -> set[str]:
        """Ids this run has work for, within the budgets or not."""
        return {i.id for i in self.todo} | {r.item.id for r in self.failures}


def plan_work(manifest: Manifest, config: Config, sink: OutputDir, discarded: bool = False) -> Work:
    """Read every row's source, what OUT holds for it, and plan what is left within the budgets.
    discarded: plan as if OUT were empty (a dry run with --restart)."""
    resolved = resolve_paths(manifest, config)
    current = CurrentSources(manifest.ids, read_sources(manifest.paths, manifest.durations, resolved,
                                                        config.verify_content), config.verify_content)
    cache = DurationCache(sink.durations)
    if not discarded:
        cache.load({(str(where), current.by_id[i].version) for where, i in zip(resolved, manifest.ids)
                    if not isinstance(where, Failure) and current.by_id[i].version is not None})
    planned = [None if isinstance(where, Failure) else cache.planned(str(where), current.by_id[i].version, d)
               for where, i, d in zip(resolved, manifest.ids, manifest.durations)]
    current.planned.update((i, p) for i, p in zip(manifest.ids, planned) if p is not None)
    progress = Progress.nothing() if discarded else sink.progress(current, retry_errors(config))
    items, failures, planned, probed = intake(manifest, config, progress.done_ids, resolved, planned, current)
    todo = [i for i in items if i.key not in progress.keys]
    max_audio_s = config.max_hours * 3600 if config.max_hours is not None else None
    chosen, limited_by = within_budget(todo, config.max_rows, max_audio_s)
    return Work(current, progress, items, todo, [r for r in failures if r.item.key not in progress.keys],
                planned, chosen, limited_by, cache, probed, resolved)


def retry_errors(config: Config) -> frozenset[str]:
    """The committed error reasons this run tries again (config.retry_errors: codes, or all)."""
    if "all" in config.retry_errors:
        return frozenset(Reason)
    return frozenset(Reason(r) for r in config.retry_errors)


def resolve_paths(manifest: Manifest, config: Config) -> list:
    """Every row's audio as a location, or the Failure that says why it cannot be one."""
    audio_root = storage.location(config.audio_root) if config.audio_root else None
    return [audio.resolve_path(path, base, audio_root) for path, base in zip(manifest.paths, manifest.base_dirs)]


def intake(manifest: Manifest, config: Config, done_ids: set[str], resolved: list, planned: list,
           sources: CurrentSources) -> tuple[list[Item], list[ItemResult], list, list[Entry]]:
    """Find durations for every row not already fully committed (done_ids: a resume reads no header
    twice): planned holds what is known without reading (the manifest's duration_s, OUT's duration
    cache), file headers give the rest. Rows that fail here become error results straight away,
    everything else is planned into items. resolved: resolve_paths(manifest).
    -> (items, error results, each row's planned duration or None, the durations read from headers)."""
    durations = list(planned)
    rows = [r for r, item_id in enumerate(manifest.ids) if item_id not in done_ids]
    # A Parquet cell's duration is never read here (its bytes stay out of the driver): it is planned
    # as one item of unknown length, and a worker that finds it longer than a window has it planned
    # again from the decoded length (planning/replanning.py), as a file longer than its header says.
    to_probe = [r for r in rows if durations[r] is None and not isinstance(resolved[r], (Failure, ParquetCell))]
    probed: list[Entry] = []
    for row, info in zip(to_probe, parallel_map(lambda r: audio.probe(resolved[r]), to_probe, PROBE_THREADS)):
        durations[row] = info if isinstance(info, Failure) else info.duration_s
        version = sources.by_id[manifest.ids[row]].version
        if not isinstance(info, Failure) and version is not None:
            probed.append(Entry(str(resolved[row]), version, info.duration_s, HEADER))
            sources.planned[manifest.ids[row]] = info.duration_s
    good, failed = [], []
    for row in rows:
        path, duration = resolved[row], durations[row]
        problem = path if isinstance(path, Failure) else duration if isinstance(duration, Failure) else None
        if problem is None:
            good.append(row)
            continue
        durations[row] = None
        # planned_s 0: no plan. A later run that can read the file plans it anew, and its results
        # supersede this one (sink: one plan per id), however many segments it finds.
        item = Item(row, manifest.ids[row], str(manifest.paths[row]), 0, 1, 0.0, 0.0, planned_s=0.0)
        failed.append(failure_result(item, problem))
    items = plan_items(good, [manifest.ids[r] for r in good], [str(resolved[r]) for r in good],
                       [durations[r] for r in good], config.segment_search_s)
    return items, failed, durations, probed


def parallel_map(function, values: list, threads: int) -> list:
    """function over values in a thread pool; on any exception (a signal's StopRequested included)
    the calls not started yet are dropped instead of all being waited for."""
    pool = ThreadPoolExecutor(threads)
    try:
        return list(pool.map(function, values))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
