"""`annotate --dry-run`: what a run would do, from the manifest(s) and OUT, without loading a model,
starting Ray or a worker, or writing anything (not even a log file in OUT).

It plans exactly as annotate does (planning/work.py's Planner, window by window: each row's audio
now, what OUT holds, durations, the work budgets, batches), keeping counts only, and declares the
engine's shape from the checkpoint's config and tokenizer (model_plan.plan_model, which needs no
MindSpore). Rows of unknown duration: it reads at most ESTIMATE_PROBES headers (distinct files, in
manifest order: what the next run takes first) and counts the others at the mean known duration,
one item each, and says so. A dry run writes nothing, so headers it read would be read again by the
run; on a manifest of millions of rows without durations, reading them all would take it minutes
each time it is asked a question. What only a
cluster knows is taken from here: with device auto, the device of OUT's earlier runs, else this
machine's NPUs; memory for the decode slots from this machine's (where a cluster's workers have
more or less, the run may declare other slots: the shape line says so).
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from pipeline import exit_codes, storage
from pipeline.config import Config, ConfigError
from pipeline.intake.manifest_set import read_manifests
from pipeline.intake.manifest_table import Manifest
from pipeline.model.model_plan import SPLIT_SAMPLE_ITEMS, load_prompts, plan_model, split_seconds, with_slots_split
from pipeline.output import delta
from pipeline.output.console import Console, audio_text, counts_text, duration_text, warn_unreadable
from pipeline.output.lock import OutLock
from pipeline.output.sink import OutputDir
from pipeline.planning.batches import count_batches
from pipeline.planning.job import (annotation_columns, budget_option, check_passthrough, default_workers, describe_sources,
                                   output_folder, run_settings, settings_fingerprint)
from pipeline.intake.durations import DurationCache
from pipeline.output.committed import CommittedIndex
from pipeline.planning.work import ESTIMATE_PROBES, Planner, retry_errors
from pipeline.tasks.catalog import resolve_tasks

# What Ray's memory resource is of a machine's memory (the rest is its object store, 30% by default).
RAY_MEMORY_SHARE = 0.7


def dry_run(manifest_path, config: Config, out=None, workers: int | None = None, restart: bool = False,
            console: Console | None = None) -> int:
    console = console or Console(progress=False)
    storage.configure(storage.Settings.from_config(config))
    manifest = read_manifests(manifest_path, id_column=config.id_column)
    tasks = resolve_tasks(config)
    columns = annotation_columns(tasks)
    check_passthrough(manifest, columns)
    out = output_folder(manifest_path, out)
    sink = OutputDir(out)
    device, device_source = planned_device(config, sink)
    npus = local_npus()
    worker_count = npus if device == "ascend" and npus else default_workers(config, workers)
    # A hub checkpoint that is not local is fetched without its weights: a dry run reads only its
    # config and tokenizer, and the weights' sizes (part of the settings) are known once they are there.
    try:  # what the checkpoint makes of the job (its prompt style, its decoding) is the job's error too
        checkpoint = load_prompts(config, tasks, weights=False)
        memory = local_worker_memory(worker_count, device == "ascend", config.npu_memory_gb)
        plan = plan_model(config, tasks, device, memory, checkpoint)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = run_settings(plan, config, tasks)
    fingerprint = settings_fingerprint(settings)
    discarded = restart and checkpoint.has_weights and sink.settings_conflict(fingerprint, settings) is not None
    if not restart and checkpoint.has_weights:
        sink.refuse_other_settings(fingerprint, settings)  # what the run would stop with (exit 2)
    plan_figures = DryPlan.of(manifest, config, sink, discarded)
    if config.short_slots:  # as the run splits its decode slots
        plan = with_slots_split(plan, plan_figures.split_sample)
    warn_unreadable(console, plan_figures.first_failures, plan_figures.failure_reasons)
    complete = (not plan_figures.rows_todo and not discarded
                and sink.completed_for(manifest.digest, fingerprint))

    lines = ["dry run: nothing is written, no model is loaded",
             manifest_line(manifest, manifest_path),
             out_line(out, plan_figures, discarded),
             f"decoding: {plan.decoding.describe()}"]
    if not checkpoint.has_weights:
        lines.append(f"model: {config.model}: the weights are not here (only its configuration and tokenizer, "
                     + ("fetched now); the run downloads them first, and only then knows whether OUT's committed "
                        "work is from these settings" if checkpoint.hub_id else
                        f"in {checkpoint.model_dir}); the run would fail to load them"))
    owner = OutLock(out, "").read()
    if owner is not None:
        lines.append(f"in use: another run holds {out} ({owner.describe(time.time())}); a run now would exit 2 "
                     "unless that one is gone")
    if complete:
        lines.append("to do: nothing; the run would find OUT complete for this manifest and these settings")
    else:
        lines += work_lines(plan_figures, config)
        where = (f"{worker_count} worker{'s' * (worker_count != 1)}" if device == "cpu" or npus
                 else "one worker per NPU of the cluster")
        automatic = not config.decode_slots and not config.memory_budget_gb
        lines.append(f"engine: {where} on {'Ascend NPUs' if device == 'ascend' else 'CPU'}, {plan.dtype} "
                     f"(device: {device_source}); {slots_text(plan.shape)}"
                     + (" (sized for this machine's memory: a cluster's workers may get others)" if automatic else ""))
        lines.append(f"graphs: {', '.join(plan.shape.graph_names())}")
        lines.append(estimate_line(sink, plan_figures.taken_s, config, plan_figures.unknown_taken))
    console.summary(lines)
    return exit_codes.DONE


def slots_text(shape) -> str:
    """'32 decode slots', or when the job splits them (short_slots): '32 decode slots (16 of 1102
    positions, 16 short ones of 448, for this manifest's first clips)'."""
    if not shape.short_slots:
        return f"{shape.slots} decode slots"
    return (f"{shape.slots} decode slots ({shape.long_slots} of {shape.span} positions, {shape.short_slots} short ones "
            f"of {shape.short_span}, for this manifest's first clips)")


@dataclass
class DryPlan:
    """A run's plan, counted window by window as the run would plan it (planning/work.py), keeping
    no row: the dry run's figures. Durations no header gave are estimated past ESTIMATE_PROBES reads."""

    rows_todo: int = 0  # rows with work (items or error rows), taken or not
    rows_changed: int = 0
    rows_retried: int = 0
    items_todo: int = 0
    audio_todo_s: float = 0.0
    rows_taken: int = 0
    items_taken: int = 0
    taken_s: float = 0.0
    batches: int = 0
    failures: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    first_failures: list = field(default_factory=list)
    finished: Counter = field(default_factory=Counter)  # rows OUT holds finished, by status
    finished_transient: int = 0
    estimated_rows: int = 0
    estimated_s: float = 0.0
    unknown_rows: int = 0  # rows with work whose length is known only once decoded
    unknown_taken: int = 0
    limited_by: str | None = None
    # What the run sizes its short decode slots from (model_plan.split_seconds): the first items of
    # its head (planning/stream.WorkStream.head: the windows with work until one ends past the first
    # WINDOW_ROWS rows, after rows OUT holds done); none where those hold only rows that fail.
    split_sample: list = field(default_factory=list)

    @classmethod
    def of(cls, manifest, config: Config, sink: OutputDir, discarded: bool) -> DryPlan:
        committed = CommittedIndex() if discarded else CommittedIndex.read(sink, retry_errors(config))
        durations = DurationCache(sink.durations)
        if not discarded:
            durations.load()
        planner = Planner(manifest, config, committed, durations, count_all=True, estimate=True, keep_facts=False)
        found = cls()
        in_head = True
        for window in planner.windows():
            found.add(window, config)
            if window.has_work and in_head:  # the head holds it (WorkStream.head)
                found.sample_split(window)
                in_head = not planner.head_planned
        found.limited_by = planner.limited_by
        return found

    def sample_split(self, window) -> None:
        room = SPLIT_SAMPLE_ITEMS - len(self.split_sample)
        segments = set(window.segment_positions)
        self.split_sample += [split_seconds(seconds, at in segments)
                              for at, seconds in enumerate(window.taken_seconds[:room])]

    def add(self, window, config: Config) -> None:
        self.rows_todo += window.rows_todo
        self.rows_changed += window.rows_changed
        self.rows_retried += window.rows_retried
        self.items_todo += window.items_todo
        self.audio_todo_s += window.audio_todo_s
        self.rows_taken += window.rows_taken
        self.items_taken += len(window.taken_seconds)
        self.taken_s += sum(window.taken_seconds)
        self.batches += count_batches(window.taken_seconds, config.batch_audio_s, config.batch_items)
        self.failures += len(window.failures)
        self.failure_reasons.update(r.error for r in window.failures)
        if not self.first_failures:
            self.first_failures = window.failures[:1]
        self.finished.update(window.finished)
        self.finished_transient += window.finished_transient
        self.estimated_rows += window.estimated_rows
        self.estimated_s += window.estimated_s
        self.unknown_rows += window.unknown_rows
        self.unknown_taken += window.unknown_taken


def manifest_line(manifest: Manifest, manifest_path) -> str:
    files = f" in {len(manifest.files)} files" if len(manifest.files) > 1 else ""
    return f"manifest: {describe_sources(manifest_path)}: {manifest.num_rows} rows{files}"


def out_line(out, found: DryPlan, discarded: bool) -> str:
    """Rows of this manifest that OUT holds finished, by status; failed ones, and the retryable."""
    if discarded:
        return f"output: {out}: --restart discards its committed work (other settings)"
    rows = sum(found.finished.values())
    if not rows:
        return f"output: {out}: nothing committed yet"
    failed = found.finished["error"] + found.finished["partial"]
    return (f"output: {out}: {rows} rows done ({counts_text(found.finished)}); {failed} failed, "
            f"{found.finished_transient} of them retryable (storage_unavailable, read_error: retried by this run)")


def work_lines(found: DryPlan, config: Config) -> list[str]:
    notes = [f"{found.rows_changed} changed since labelled"] if found.rows_changed else []
    notes += [f"{found.rows_retried} retried"] if found.rows_retried else []
    notes += [f"{found.failures} cannot be read: error rows"] if found.failures else []
    lines = [f"to do: {found.rows_todo} rows{' (' + ', '.join(notes) + ')' if notes else ''}, {found.items_todo} items "
             f"(clips and segments of long files), {audio_text(found.audio_todo_s, found.unknown_rows)}"]
    if found.estimated_rows:
        lines.append(f"estimated: {found.estimated_rows} rows have no duration_s and no duration in OUT; past "
                     f"{ESTIMATE_PROBES} header reads each is counted at the mean known duration "
                     f"({duration_text(found.estimated_s)} in all, one item each): a run reads their headers when it "
                     "reaches them")
    budget = ""
    if found.limited_by:
        later = found.rows_todo - found.rows_taken - found.failures
        budget = f"; {budget_option(found.limited_by, config)} leaves {later} rows for the next runs"
    batches = found.batches
    if found.unknown_rows:
        lines.append(f"unknown lengths: {found.unknown_rows} rows of Parquet files that hold audio have no duration_s; "
                     "a run reads each length when it decodes the row (a row over 30 s is then cut into segments)")
    lines.append(f"this run: {found.rows_taken} rows to the model ({found.items_taken} items, "
                 f"{audio_text(found.taken_s, found.unknown_taken)}) in {batches} batch{'es' * (batches != 1)} of about "
                 f"{config.batch_audio_s:g} s (at most {config.batch_items} items){budget}")
    return lines


def estimate_line(sink: OutputDir, audio_s: float, config: Config, unknown_rows: int = 0) -> str:
    """Wall time from the latest run's throughput (its runs/ file, else run.json), against --max-wall.
    unknown_rows: rows taken whose length is known only once decoded, which it cannot count."""
    wall = f"; --max-wall {config.max_wall_minutes:g} min" if config.max_wall_minutes else ""
    unknown = f"{unknown_rows} rows of a length known once decoded" if unknown_rows else ""
    if audio_s == 0:
        return f"estimate: none ({unknown}){wall}" if unknown else "estimate: no model work"
    not_counted = f" (not counting {unknown})" if unknown else ""
    last = delta.last_run(sink) or last_finished_run(sink)
    if last is None:
        return f"estimate: none (no earlier run in this OUT annotated audio){not_counted}{wall}"
    rate = last["audio_s"] / last["wall_s"]
    seconds = audio_s / rate
    if wall:
        over = seconds > config.max_wall_minutes * 60
        wall += " stops dispatch before then (exit 75; the next run continues)" if over else " leaves room"
    return (f"estimate: about {duration_text(seconds)} at {rate:.2f} audio-s/s, the throughput of the run "
            f"started {last['started']}{not_counted}{wall}")


def last_finished_run(sink: OutputDir) -> dict | None:
    """run.json's figures, for an OUT whose runs finished before runs/ files existed."""
    try:
        info = json.loads(storage.read_bytes(sink.path / "run.json"))
    except (FileNotFoundError, ValueError):
        return None
    this_run = info.get("this_run", {})
    audio_s, wall_s = this_run.get("audio_hours", 0) * 3600, this_run.get("wall_s")
    return {"audio_s": audio_s, "wall_s": wall_s, "started": info.get("started")} if audio_s and wall_s else None


def planned_device(config: Config, sink: OutputDir) -> tuple[str, str]:
    """The device the run would use, and why: configured, as in OUT's earlier runs, or this machine's."""
    if config.device != "auto":
        return config.device, "configured"
    earlier = (sink.earlier_settings() or {}).get("device")
    if earlier in ("ascend", "cpu"):
        return earlier, "as OUT's earlier runs"
    return ("ascend", "this machine's NPUs") if local_npus() else ("cpu", "no NPU on this machine")


def local_npus() -> int:
    """Ascend NPUs on this machine, counted as Ray counts them without the driver: their device files."""
    return len(glob.glob("/dev/davinci[0-9]*"))


def local_worker_memory(workers: int, use_npu: bool, npu_memory_gb: float) -> int:
    """cluster.worker_memory_bytes, estimated without Ray from this machine's memory."""
    from pipeline.run.cluster import CPU_MEMORY_SHARE, NPU_MEMORY_SHARE

    if use_npu:
        return int(npu_memory_gb * 2**30 * NPU_MEMORY_SHARE)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * RAY_MEMORY_SHARE * CPU_MEMORY_SHARE / max(1, workers))
