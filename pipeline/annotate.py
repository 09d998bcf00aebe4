"""`annotate`: manifest -> plan -> (Ray workers: decode -> features -> model -> parse) -> sink.

A rerun of the same command resumes: committed keys are skipped, rows whose audio changed since
they were labelled are labelled again (intake/sources.py), and a finished run (its marker matching
this manifest and these settings, nothing changed) does no model work at all. Work budgets
(max_rows, max_hours, max_wall_minutes) stop a run early with everything finished committed: exit
75, and the next run continues. Each invocation's committed rows also go to OUT/runs/ (output/delta.py).

One run at a time per OUT (output/lock.py: a second one exits 2). SIGTERM and SIGINT stop
dispatch and commit what finished within 30 s (run/signals.py: exit 75 and 130). The error gate
(output/error_gate.py) makes a run whose rows mostly failed exit 3 without _SUCCESS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import exit_codes, storage
from pipeline.intake import audio
from pipeline.output.tables import annotations_output, current_segments, output_column_names
from pipeline.config import Config, ConfigError, CustomTask, load
from pipeline.errors import UserError
from pipeline.items import Item, ItemResult
from pipeline.intake.durations import DECODED, HEADER, DurationCache, Entry
from pipeline.intake.manifest import Manifest
from pipeline.intake.manifests import default_out_name, read_manifests
from pipeline.intake.sources import CurrentSources, read_sources
from pipeline.plan import plan_batches, plan_items, within_budget
from pipeline.reasons import Failure
from pipeline.output import delta, error_gate, final
from pipeline.output.console import (TOP_REASONS, Console, budget_line, counts_text, start_line, stopped_lines,
                                     summary_lines)
from pipeline.output.lock import OutLock
from pipeline.output.sink import OutputDir, Progress, Provenance
from pipeline.reasons import Reason
from pipeline.tasks.catalog import OUTPUT_COLUMNS, output_columns, resolve_tasks
from pipeline.run.signals import StopRequested, StopSignals
from pipeline.run.worker import failure_result

PROBE_THREADS = 16  # header reads are I/O-bound
# A CPU worker's kernels run on several threads; more workers than cores / this only contend (on
# 2 cores one worker with 2 threads is faster than two with one each).
CORES_PER_CPU_WORKER = 8


@dataclass
class RunSummary:
    out: storage.Location
    already_complete: bool = False
    run_info: dict = field(default_factory=dict)
    stopped_early: bool = False  # dispatch stopped before the end; rerun to continue (no final tables)
    stop_reason: str | None = None  # what stopped it, for the screen: "--max-rows 100", ...
    rows_committed: int = 0  # rows this invocation completed
    rows_left: int = 0  # rows still to do after it
    delta: storage.Location | None = None  # its runs/ file, when it completed any row
    gate: error_gate.GateResult | None = None  # the error gate's verdict on this invocation's rows

    @property
    def exit_code(self) -> int:
        if self.gate is not None and not self.gate.passed:
            return exit_codes.OVER_ERROR_THRESHOLD
        return exit_codes.STOPPED_EARLY if self.stopped_early else exit_codes.DONE

    @property
    def counts(self) -> dict:
        return self.run_info.get("counts", {})


def annotation_columns(tasks) -> dict[str, str]:
    """Every built-in column always (null when its task did not run, so schemas stay stable across
    jobs), plus one column per custom task."""
    return {**OUTPUT_COLUMNS, **output_columns(tasks)}


def check_passthrough(manifest: Manifest, columns: dict[str, str]) -> None:
    clashes = sorted(set(manifest.passthrough_columns) & output_column_names(columns))
    if clashes:
        raise UserError(f"manifest column(s) {clashes} would be overwritten by output columns; rename them")


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
    to_probe = [r for r in rows if durations[r] is None and not isinstance(resolved[r], Failure)]
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


class Replanner:
    """Rows whose file decodes longer than planned (a wrong duration_s, a header that
    underestimates) are planned again from the decoded length within the run, and annotated whole:
    nothing is silently cut. The decoded length goes to OUT's duration cache before any result of
    the new plan, so a resumed run plans the row the same way; results of the old plan stop
    counting (sink: one plan per row). A row planned again whose file is still longer (it changes
    while it is read) keeps its duration_mismatch error."""

    def __init__(self, work: Work, sink: OutputDir, manifest: Manifest, config: Config):
        self.work, self.sink, self.config = work, sink, config
        self.rows = {item_id: row for row, item_id in enumerate(manifest.ids)}
        self.replanned: dict[str, float] = {}  # id -> the duration it was planned again from

    def stale(self, result: ItemResult) -> bool:
        """A result of an older plan of a row planned again in this run (still in flight then)."""
        plan = self.replanned.get(result.item.id)
        return plan is not None and result.item.planned_s != plan

    def replan(self, result: ItemResult) -> list[Item] | None:
        item = result.item
        if result.measured_s is None or item.id in self.replanned:
            return None
        row, seconds = self.rows[item.id], result.measured_s
        version = self.work.sources.by_id[item.id].version
        self.work.durations.add([Entry(item.path, version, seconds, DECODED)])
        self.replanned[item.id] = seconds
        self.work.sources.planned[item.id] = seconds
        self.work.planned[row] = seconds
        self.sink.forget(item.id)
        return plan_items([row], [item.id], [item.path], [seconds], self.config.segment_search_s)


class Committer:
    """Buffers results and commits them as parts; also drives the progress bar. Returns, for the
    runner to dispatch, the batches of rows planned again (Replanner).

    The bar counts audio in whole milliseconds, each item rounded once: its total is then exactly
    the sum of its updates, so it never passes 100% (float sums taken in another order did, which
    made tqdm clamp the bar and print a negative ETA).
    """

    def __init__(self, sink: OutputDir, columns, items: list[Item], console: Console, commit_items: int,
                 commit_seconds: float, replanner: Replanner | None = None, batching: tuple[float, int] = (120.0, 64)):
        self.sink, self.columns = sink, columns
        self.replanner, self.batching = replanner, batching
        self.bar = console.progress_bar(sum(audio_ms(i) for i in items))
        # Until the first results: loading the model and compiling can take minutes.
        self.bar.set_postfix_str("starting workers")
        self.commit_items, self.commit_seconds = commit_items, commit_seconds
        self.buffer: list[ItemResult] = []
        self.stats: dict | None = None
        self.last_flush = time.monotonic()
        self.items_left = Counter(i.id for i in items)  # per row: its items still to come in this run
        self.total_rows = len(self.items_left)
        self.rows_done = 0
        self.rows_with_errors: set[str] = set()
        self.audio_ms_done = 0  # this invocation's audio with a result (its throughput)

    def __call__(self, results: list[ItemResult], stats: dict | None) -> list | None:
        results, again = self._replanned(results)
        self.buffer.extend(results)
        if stats is not None:
            self.stats = stats if self.stats is None else {k: self.stats[k] + stats[k] for k in stats}
        for r in results:
            self.items_left[r.item.id] -= 1
            self.rows_done += self.items_left[r.item.id] == 0
            if r.status != "ok":
                self.rows_with_errors.add(r.item.id)
        # The text first: update() redraws the bar, and it should show this batch's counts.
        self.bar.set_postfix_str(f"rows {self.rows_done}/{self.total_rows}, errors {len(self.rows_with_errors)}",
                                 refresh=False)
        done_ms = sum(audio_ms(r.item) for r in results)
        self.audio_ms_done += done_ms
        self.bar.update(done_ms)
        if len(self.buffer) >= self.commit_items or time.monotonic() - self.last_flush > self.commit_seconds:
            self.flush()
        return plan_batches(again, *self.batching) if again else None

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


def audio_ms(item: Item) -> int:
    return round((item.end_s - item.start_s) * 1000)


def retry_errors(config: Config) -> frozenset[str]:
    """The committed error reasons this run tries again (config.retry_errors: codes, or all)."""
    if "all" in config.retry_errors:
        return frozenset(Reason)
    return frozenset(Reason(r) for r in config.retry_errors)


def default_workers(config: Config, requested: int | None) -> int:
    count = requested if requested else config.cpu_workers
    return count if count > 0 else max(1, (os.cpu_count() or 1) // CORES_PER_CPU_WORKER)


def run_settings(plan, config: Config, tasks) -> dict:
    return {
        "model": plan.model_dir, "revision": plan.revision, "prompt_style": plan.style,
        "prompts": dict(zip(plan.task_names, plan.prompts.texts)),
        "parsers": {t.name: t.parser for t in tasks},
        "max_new_tokens": dict(zip(plan.task_names, plan.max_new_tokens)),
        "decoding": asdict(plan.sampling), "dtype": plan.dtype, "device": plan.device,
        "segment_search_s": config.segment_search_s, "silence_dbfs": config.silence_dbfs,
        "audio_root": config.audio_root, "moderation_labels": list(config.moderation_labels),
        # The weights, by file names and sizes (and hub revision): new files mean a new run.
        "checkpoint": plan.checkpoint_identity(), "dims": asdict(plan.spec),
    }


def output_folder(manifest_path, out):
    """OUT as given (a folder or an s3:// prefix), else outputs/<manifest name>/ here."""
    return storage.location(out) if out else Path("outputs") / default_out_name(manifest_path)


def describe_sources(manifest_path) -> str:
    return manifest_path if isinstance(manifest_path, (str, Path)) else " ".join(map(str, manifest_path))


def annotate(manifest_path, config: Config, out: str | Path | None = None, workers: int | None = None,
             restart: bool = False, progress: bool = True, model_factory=None,
             console: Console | None = None, read_faults=None) -> RunSummary:
    """manifest_path: a manifest file, a folder of them, a glob, or a list of those (intake/manifests.py).
    read_faults: tests inject storage faults into the workers' reads here (testing/faults.py).

    Raises KeyboardInterrupt after Ctrl-C (everything finished committed first), OutLocked (a
    UserError) when another run holds OUT."""
    started = time.time()
    console = console or Console(progress=progress)
    storage.configure(storage.Settings.from_config(config))
    manifest = read_manifests(manifest_path)
    tasks = resolve_tasks(config)
    check_passthrough(manifest, columns=annotation_columns(tasks))
    out = output_folder(manifest_path, out)
    # Before anything touches OUT (and before Ray starts): a second driver is refused in seconds.
    with OutLock(out, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))) as lock, StopSignals() as signals:
        if lock.taken_over is not None:
            console.warning(f"took over the lock of a run that is gone ({lock.taken_over.describe(time.time())})")
        try:
            return _annotate(manifest_path, manifest, config, out, tasks, workers, restart, model_factory, console,
                             started, lock, read_faults, signals)
        except StopRequested as stop:  # before any work (Ray starting): nothing to commit
            if stop.signum == signal.SIGINT:
                raise KeyboardInterrupt from None
            return RunSummary(out=out, stopped_early=True, stop_reason=signal.Signals(stop.signum).name)


def _annotate(manifest_path, manifest: Manifest, config: Config, out, tasks, workers, restart, model_factory,
              console: Console, started: float, lock: OutLock, read_faults, signals: StopSignals) -> RunSummary:
    from pipeline.model.model_plan import load_prompts, plan_model
    from pipeline.output import run_info
    from pipeline.run import runner

    # --max-wall counts from the start: loading and compiling are part of a scheduled window.
    deadline = time.monotonic() + config.max_wall_minutes * 60 if config.max_wall_minutes else None
    store = storage.current_settings()
    columns = annotation_columns(tasks)
    digest = manifest.digest
    worker_count = default_workers(config, workers)

    # Tokenising the prompts needs no cluster: it runs while Ray starts (seconds each).
    with ThreadPoolExecutor(1) as background, runner.ray_session(worker_count):
        signals.install()  # again: Ray's start put its own SIGTERM handler (exit at once) in place
        checkpoint = background.submit(load_prompts, config, tasks)
        npus = runner.cluster_npus()
        device = config.device if config.device != "auto" else ("ascend" if npus else "cpu")
        if device == "ascend" and not npus:
            raise UserError("device is ascend but the Ray cluster has no NPU resources")
        try:
            plan = plan_model(config, tasks, device,
                              runner.worker_memory_bytes(npus if device == "ascend" else worker_count, device == "ascend"),
                              checkpoint.result())
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        settings = run_settings(plan, config, tasks)
        fingerprint = settings_fingerprint(settings)
        sink = OutputDir(out, guard=lock.check)
        committer: Committer | None = None
        work: Work | None = None
        stamp = None

        def write_delta(outcome: str, after: Progress | None = None) -> DeltaWritten:
            return write_run_delta(sink, manifest, work, columns, list(plan.task_names), stamp, {
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "outcome": outcome,
                "wall_s": round(time.time() - started, 2),
                "audio_s": committer.audio_ms_done / 1000 if committer else 0.0}, after)

        try:
            sink.open(fingerprint, settings, restart)
            work = plan_work(manifest, config, sink)
            todo, new_failures = work.chosen, work.failures
            if not work.todo and not new_failures and sink.completed_for(digest, fingerprint):
                console.summary([f"{out} is already complete for this manifest and settings; nothing to do."])
                return RunSummary(out=out, already_complete=True)

            work.durations.add(work.probed)  # read once: later runs plan these rows without reading again
            stamp = delta.run_stamp(started, delta.written_stamps(sink) | set(work.progress.rows.column("run").to_pylist()))
            sink.record_provenance(Provenance(stamp, work.sources.by_id))
            todo_audio_s = sum(i.end_s - i.start_s for i in todo)
            if work.todo or new_failures:
                sink.invalidate_final()
            batches = plan_batches(todo, config.batch_audio_s, config.batch_items)
            use_npu = device == "ascend"
            warn_unreadable(console, new_failures)
            rows_now = {i.id for i in todo} | {r.item.id for r in new_failures}
            console.info(start_line(len(rows_now), manifest.num_rows, todo_audio_s, npus if use_npu else worker_count,
                                    use_npu, plan.dtype))
            changed = work.progress.changed_ids & work.row_ids
            if changed:
                console.info(f"{len(changed)} of these rows are labelled again: their audio or its manifest values "
                             "changed since they were labelled")
            if work.limited_by:
                console.info(budget_line(work.limited_by, config, len(work.row_ids) - len(rows_now)))
            report = runner.ExecutionReport()

            def past_deadline() -> bool:
                return deadline is not None and time.monotonic() >= deadline

            with signals.graceful():  # a signal here stops dispatch; what finished is committed below
                committer = Committer(sink, columns, todo + [r.item for r in new_failures], console,
                                      config.commit_items, config.commit_seconds,
                                      Replanner(work, sink, manifest, config), (config.batch_audio_s, config.batch_items))
                if new_failures:
                    committer(new_failures, None)
                if batches and past_deadline():  # intake alone used the window: no workers at all
                    report.stopped = True
                elif batches and not signals.stop_requested():
                    runner.check_room_for_decoding(npus if use_npu else worker_count)
                    spec = runner.WorkerSpec(
                        plan=plan, tasks=tasks, moderation_labels=tuple(config.moderation_labels),
                        silence_dbfs=config.silence_dbfs, search_s=config.segment_search_s,
                        # Absolute: Ray workers need not share the driver's working directory.
                        compile_cache_root=str(Path(config.compile_cache_dir).resolve()) if config.compile_cache_dir else None,
                        cpu_threads=config.cpu_threads_per_worker or max(1, (os.cpu_count() or 1) // worker_count),
                        model_factory=model_factory, storage_settings=store, read_faults=read_faults,
                    )
                    report = runner.execute(
                        batches, spec, npus if use_npu else worker_count, use_npu, config.prefetch_batches,
                        config.max_attempts, committer,
                        stop=lambda: past_deadline() or signals.stop_requested(),
                        abandon=signals.abandon_in_flight, policy=runner.RunPolicy.from_config(config))
                committer.close()
            signals.raise_if_requested()

            after = sink.progress(work.sources)
            rows_done = len(work.row_ids & after.done_ids)
            if report.stopped or work.limited_by:  # the tables describe a finished run only
                reason = (f"--max-wall {config.max_wall_minutes:g} min" if report.stopped and past_deadline()
                          else budget_option(work.limited_by, config) if work.limited_by else "a stop request")
                written = write_delta("stopped", after)
                return RunSummary(out=out, stopped_early=True, stop_reason=reason, rows_committed=rows_done,
                                  rows_left=len(work.row_ids) - rows_done, delta=written.location,
                                  gate=error_gate.judge(written.statuses, config.max_error_rate))
            written = write_delta("finished", after)
            gate = error_gate.judge(written.statuses, config.max_error_rate)

            totals = final.write_tables(sink, manifest, work.sources, work.planned, columns, list(plan.task_names))
            info = run_info.build(
                plan=plan, config=config, settings=settings, fingerprint=fingerprint,
                manifest_path=describe_sources(manifest_path), manifest_digest=digest, out=out, totals=totals,
                part_stats=list(sink.part_stats()), report=report, started=started,
                audio_s_this_run=todo_audio_s, items_this_run=len(todo) + len(new_failures),
            )
            info["error_gate"] = gate.to_dict()
            sink.write_summary(info, {"manifest_digest": digest, "fingerprint": fingerprint,
                                      "finished": info["finished"]}, totals.transient_segments, success=gate.passed)
            return RunSummary(out=out, run_info=info, rows_committed=rows_done, delta=written.location, gate=gate)
        except (StopRequested, KeyboardInterrupt) as stop:
            return _stopped_by_signal(stop, signals, committer, work, write_delta, console, out)


# A run stopped by a signal writes its runs/ file only while it is this young, so that it exits
# within the 30 s a scheduler gives (the next run's file lists these rows otherwise).
DELTA_WITHIN_S = 20.0


def _stopped_by_signal(stop: BaseException, signals: StopSignals, committer, work, write_delta, console: Console,
                       out) -> RunSummary:
    """SIGTERM or Ctrl-C: commit what is buffered, write this run's runs/ file when there is time,
    and say what is left. SIGTERM returns a stopped summary (exit 75); Ctrl-C re-raises
    KeyboardInterrupt (exit 130), as callers of annotate() have always seen it."""
    interrupted = isinstance(stop, KeyboardInterrupt) or getattr(stop, "signum", None) == signal.SIGINT
    written = DeltaWritten(None, [])
    if committer is not None:
        with signals.graceful():
            committer.close()
            if signals.seconds_since() < DELTA_WITHIN_S:
                try:  # best effort: the next run's runs/ file lists these rows if this one cannot
                    written = write_delta("interrupted" if interrupted else "stopped")
                except Exception:
                    pass
    done, total = (committer.rows_done, committer.total_rows) if committer is not None else (0, 0)
    if interrupted:
        console.error(f"interrupted: {done} of {total} rows of this run are committed; "
                      "rerun the same command to resume.")
        raise KeyboardInterrupt
    left = len(work.row_ids) - done if work is not None else 0
    return RunSummary(out=out, stopped_early=True, stop_reason=signals.name or str(stop), rows_committed=done,
                      rows_left=left, delta=written.location)


def settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def budget_option(limited_by: str, config: Config) -> str:
    """The option that names a budget, as a person typed it."""
    return f"--max-rows {config.max_rows}" if limited_by == "max_rows" else f"--max-hours {config.max_hours:g}"


@dataclass(frozen=True)
class DeltaWritten:
    location: storage.Location | None  # None: no row completed since the last runs/ file
    statuses: list[str]  # each of its rows' status, for the error gate


def write_run_delta(sink: OutputDir, manifest: Manifest, work: Work, columns: dict[str, str], tasks: list[str],
                    stamp: str, run: dict, after: Progress | None = None) -> DeltaWritten:
    """OUT/runs/<stamp>.parquet: every row completed since the last runs/ file, with its
    annotations (output/delta.py). after: OUT's progress now, if read."""
    after = after or sink.progress(work.sources)
    ids = delta.delta_ids(after.rows, delta.written_stamps(sink))
    rows = [r for r, item_id in enumerate(manifest.ids) if item_id in ids]
    if not rows:
        return DeltaWritten(None, [])
    subset = manifest.subset(rows)
    segments = current_segments(sink.segments(columns, work.sources, ids=subset.ids), subset)
    table = annotations_output(segments, subset, [work.planned[r] for r in rows], columns, tasks)
    where = delta.write(sink, stamp, table, {**run, "stamp": stamp, "rows": len(rows)})
    return DeltaWritten(where, table.column("status").to_pylist())


def parse_custom_task(text: str) -> CustomTask:
    parts = text.split("|", 3)
    if len(parts) != 4 or not parts[2].strip().isdigit():
        raise ConfigError(f"--custom-task {text!r}: expected NAME|PARSER|MAX_TOKENS|PROMPT, e.g. "
                          "'speakers|text|16|How many people speak?'")
    name, parser, max_tokens, prompt = (p.strip() for p in parts)
    return CustomTask(name=name, prompt=prompt, max_new_tokens=int(max_tokens), parser=parser)


def warn_unreadable(console: Console, failures: list[ItemResult]) -> None:
    """Rows that fail before any model work (bad paths, unreadable headers), said at the start: a
    wrong audio root shows in seconds, not in the summary hours later."""
    if failures:
        first = failures[0]
        console.warning(f"{len(failures)} rows cannot be read and become error rows "
                        f"({counts_text(Counter(r.error for r in failures), TOP_REASONS)}); "
                        f"first: {first.item.id}: {first.error_detail}")


def annotate_from_args(args) -> int:
    from pipeline.output.library_log import LibraryLog

    config = load(args.job)
    overrides = {
        "model": args.model, "audio_root": args.audio_root, "device": args.device, "dtype": args.dtype,
        "tasks": [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
        "max_rows": args.max_rows, "max_hours": args.max_hours, "max_wall_minutes": args.max_wall,
        "verify_content": True if args.verify_content else None,
        "max_error_rate": args.max_error_rate,
        "retry_errors": [r.strip() for r in args.retry_errors.split(",") if r.strip()] if args.retry_errors else None,
    }
    if args.custom_task:
        overrides["custom_tasks"] = [asdict(t) for t in config.custom_tasks] + \
                                    [asdict(parse_custom_task(t)) for t in args.custom_task]
    config = config.with_overrides(**overrides)
    out = output_folder(args.manifest, args.out)
    if args.dry_run:  # writes nothing, so no log file in OUT either: the libraries print where they are
        from pipeline.dry_run import dry_run

        return dry_run(args.manifest, config, out=out, workers=args.workers, restart=args.restart,
                       console=Console(quiet=args.quiet, progress=False))
    with ExitStack() as stack:
        try:
            log = stack.enter_context(LibraryLog(out / "logs", echo=args.verbose))
        except OSError as exc:  # a read-only or full OUT: say so, not a traceback
            raise UserError(f"cannot write the run's log in {out / 'logs'}: {exc.strerror or exc}") from None
        console = Console(log.terminal_out, log.terminal_err, quiet=args.quiet, progress=not args.no_progress,
                          log=log.write_line)
        with console_logging(console):
            try:
                summary = annotate(args.manifest, config, out=out, workers=args.workers, restart=args.restart,
                                   console=console)
            except KeyboardInterrupt:
                return exit_codes.INTERRUPTED
            except StopRequested as stop:  # a second signal while stopping: committed work is safe
                console.error(f"stopped by a second {signal.Signals(stop.signum).name}; committed work is kept, "
                              "rerun the same command to resume.")
                return exit_codes.INTERRUPTED if stop.signum == signal.SIGINT else exit_codes.STOPPED_EARLY
            except storage.StorageError as exc:  # OUT (or the manifest) cannot be written or read
                raise type(exc)(f"{exc}. Committed work is kept: fix this and rerun the same command to resume.") from None
            except UserError:
                raise
            except Exception:
                console.error(f"the run failed; the libraries' output is in {log.destination}")
                raise
        if summary.stopped_early:
            console.summary(stopped_lines(summary.stop_reason, summary.rows_committed, summary.rows_left,
                                          summary.delta, summary.out, log.destination))
        elif not summary.already_complete:
            console.summary(summary_lines(summary.run_info, summary.out, log.destination, summary.delta))
        if summary.gate is not None and not summary.gate.passed:
            console.error(f"error gate: {summary.gate.describe()}; no _SUCCESS written, exit "
                          f"{exit_codes.OVER_ERROR_THRESHOLD}. Look at the errors by reason; rows that failed "
                          "transiently are retried by the next run, others with --retry-errors.")
    return summary.exit_code


@contextmanager
def console_logging(console: Console):
    """This package's log records in the driver go to the console (warnings on screen); the other
    libraries' go to stderr, which is the log file."""
    ours = logging.getLogger("pipeline")
    handler = console.logging_handler()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.propagate = True
