"""`annotate`: manifest -> plan -> (Ray workers: decode -> features -> model -> parse) -> sink.

A rerun of the same command resumes: committed keys are skipped, and a finished run (its marker
matching this manifest and these settings) does no model work at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import storage
from pipeline.intake import audio
from pipeline.output.tables import annotations_output, current_segments, output_column_names, segments_output
from pipeline.config import Config, ConfigError, CustomTask, load
from pipeline.errors import UserError
from pipeline.items import Item, ItemResult
from pipeline.intake.manifest import Manifest, read_manifest
from pipeline.plan import batch_sizes_for_budget, plan_batches, plan_items
from pipeline.reasons import Failure
from pipeline.output.sink import OutputDir
from pipeline.tasks.catalog import OUTPUT_COLUMNS, output_columns, resolve_tasks
from pipeline.run.worker import failure_result

PROBE_THREADS = 16  # header reads are I/O-bound


@dataclass
class RunSummary:
    out: storage.Location
    already_complete: bool = False
    run_info: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict:
        return self.run_info.get("counts", {})


def file_digest(path: storage.Location) -> str:
    digest = hashlib.sha256()
    with storage.open_input(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


def annotation_columns(tasks) -> dict[str, str]:
    """Every built-in column always (null when its task did not run, so schemas stay stable across
    jobs), plus one column per custom task."""
    return {**OUTPUT_COLUMNS, **output_columns(tasks)}


def check_passthrough(manifest: Manifest, columns: dict[str, str]) -> None:
    clashes = sorted(set(manifest.passthrough_columns) & output_column_names(columns))
    if clashes:
        raise UserError(f"manifest column(s) {clashes} would be overwritten by output columns; rename them")


def intake(manifest: Manifest, config: Config, smallest_bucket: float,
           done_ids: set[str]) -> tuple[list[Item], list[ItemResult], list]:
    """Resolve paths and find durations (manifest first, else file headers) for every row not
    already fully committed (done_ids: a resume reads no header twice); rows that fail here become
    error results straight away, everything else is planned into items.
    -> (items, error results, each row's planned duration or None)."""
    audio_root = storage.location(config.audio_root) if config.audio_root else None
    durations = list(manifest.durations)
    rows = [r for r, item_id in enumerate(manifest.ids) if item_id not in done_ids]
    resolved = {r: audio.resolve_path(manifest.paths[r], manifest.base_dir, audio_root) for r in rows}
    to_probe = [r for r in rows if durations[r] is None and not isinstance(resolved[r], Failure)]
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        for row, info in zip(to_probe, pool.map(lambda r: audio.probe(resolved[r]), to_probe)):
            durations[row] = info if isinstance(info, Failure) else info.duration_s
    good, failed = [], []
    for row in rows:
        path, duration = resolved[row], durations[row]
        problem = path if isinstance(path, Failure) else duration if isinstance(duration, Failure) else None
        if problem is None:
            good.append(row)
            continue
        durations[row] = None
        item = Item(row, manifest.ids[row], str(manifest.paths[row]), 0, 1, 0.0, 0.0, smallest_bucket)
        failed.append(failure_result(item, problem))
    items = plan_items(good, [manifest.ids[r] for r in good], [str(resolved[r]) for r in good],
                       [durations[r] for r in good], config.buckets_s, config.segment_search_s)
    return items, failed, durations


class Committer:
    """Buffers results and commits them as parts; also drives the progress bar."""

    def __init__(self, sink: OutputDir, columns, total_items: int, total_audio_s: float, show: bool,
                 commit_items: int, commit_seconds: float):
        from tqdm import tqdm

        self.sink, self.columns = sink, columns
        self.commit_items, self.commit_seconds = commit_items, commit_seconds
        self.buffer: list[ItemResult] = []
        self.stats: dict | None = None
        self.last_flush = time.monotonic()
        self.items_done = self.errors = 0
        self.total_items = total_items
        self.bar = tqdm(total=total_audio_s, unit="audio-s", disable=not show, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}, {rate_fmt}]{postfix}")

    def __call__(self, results: list[ItemResult], stats: dict | None) -> None:
        self.buffer.extend(results)
        if stats is not None:
            self.stats = stats if self.stats is None else {k: self.stats[k] + stats[k] for k in stats}
        self.items_done += len(results)
        self.errors += sum(r.status != "ok" for r in results)
        self.bar.update(sum(r.item.end_s - r.item.start_s for r in results))
        self.bar.set_postfix_str(f"items {self.items_done}/{self.total_items}, errors {self.errors}, "
                                 f"audio {self.bar.n / 3600:.2f} h", refresh=False)
        if len(self.buffer) >= self.commit_items or time.monotonic() - self.last_flush > self.commit_seconds:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.sink.commit(self.buffer, self.columns, self.stats)
        self.buffer, self.stats = [], None
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        self.bar.close()


def default_workers(config: Config, requested: int | None) -> int:
    count = requested if requested else config.cpu_workers
    return count if count > 0 else max(2, min(8, (os.cpu_count() or 2) // 4))


def run_settings(plan, config: Config, tasks) -> dict:
    return {
        "model": plan.model_dir, "revision": plan.revision, "prompt_style": plan.style,
        "prompts": dict(zip(plan.task_names, plan.prompts.texts)),
        "parsers": {t.name: t.parser for t in tasks},
        "max_new_tokens": dict(zip(plan.task_names, plan.max_new_tokens)),
        "decoding": asdict(plan.sampling), "dtype": plan.dtype, "device": plan.device,
        "buckets_s": list(config.buckets_s), "batch_sizes": {str(k): v for k, v in plan.batch_sizes.items()},
        "segment_search_s": config.segment_search_s, "silence_dbfs": config.silence_dbfs,
        "audio_root": config.audio_root, "moderation_labels": list(config.moderation_labels),
        # The weights, by file names and sizes (and hub revision): new files mean a new run.
        "checkpoint": plan.checkpoint_identity(), "dims": asdict(plan.spec),
    }


def annotate(manifest_path: str | Path, config: Config, out: str | Path | None = None, workers: int | None = None,
             restart: bool = False, progress: bool = True, model_factory=None) -> RunSummary:
    from pipeline.output import run_info
    from pipeline.run import runner
    from pipeline.model.model_plan import plan_model

    started = time.time()
    store = storage.Settings.from_config(config)
    storage.configure(store)
    manifest_path = storage.location(manifest_path)
    manifest = read_manifest(manifest_path)
    tasks = resolve_tasks(config)
    columns = annotation_columns(tasks)
    check_passthrough(manifest, columns)
    out = storage.location(out) if out else Path("outputs") / manifest_path.stem
    digest = file_digest(manifest_path)
    worker_count = default_workers(config, workers)

    with runner.ray_session(num_cpus=max(os.cpu_count() or 1, worker_count)):
        npus = runner.cluster_npus()
        device = config.device if config.device != "auto" else ("ascend" if npus else "cpu")
        if device == "ascend" and not npus:
            raise UserError("device is ascend but the Ray cluster has no NPU resources")
        try:
            plan = plan_model(config, tasks, device, batch_sizes_for_budget)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        settings = run_settings(plan, config, tasks)
        fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        sink = OutputDir(out)
        sink.open(fingerprint, settings, restart)
        if sink.completed_for(digest, fingerprint):
            print(f"{out} is already complete for this manifest and settings; nothing to do.")
            return RunSummary(out=out, already_complete=True)

        committed, done_ids = sink.committed()
        items, intake_failures, planned = intake(manifest, config, min(config.buckets_s), done_ids)
        todo = [i for i in items if i.key not in committed]
        new_failures = [r for r in intake_failures if r.item.key not in committed]
        todo_audio_s = sum(i.end_s - i.start_s for i in todo)
        if todo or new_failures:
            sink.invalidate_final()
        batches = plan_batches(todo, plan.batch_sizes)
        committer = Committer(sink, columns, len(todo) + len(new_failures), todo_audio_s,
                              progress, config.commit_items, config.commit_seconds)
        report = runner.ExecutionReport()
        use_npu = device == "ascend"
        if new_failures:
            committer(new_failures, None)
        try:
            if batches:
                spec = runner.WorkerSpec(
                    plan=plan, tasks=tasks, moderation_labels=tuple(config.moderation_labels),
                    silence_dbfs=config.silence_dbfs, search_s=config.segment_search_s,
                    compile_cache_root=config.compile_cache_dir,
                    cpu_threads=config.cpu_threads_per_worker or max(1, (os.cpu_count() or 1) // worker_count),
                    model_factory=model_factory, storage_settings=store,
                )
                report = runner.execute(batches, spec, npus if use_npu else worker_count, use_npu,
                                        config.prefetch_batches, config.max_attempts, committer)
        except KeyboardInterrupt:
            committer.close()
            print(f"\ninterrupted: {committer.items_done} of {committer.total_items} items committed in this run; "
                  "rerun the same command to resume.", file=sys.stderr)
            raise
        committer.close()

        segments = current_segments(sink.segments(columns), manifest)
        annotations = annotations_output(segments, manifest, planned, columns, list(plan.task_names))
        info = run_info.build(
            plan=plan, config=config, settings=settings, fingerprint=fingerprint, manifest_path=manifest_path,
            manifest_digest=digest, out=out, annotations=annotations, segments=segments,
            part_stats=list(sink.part_stats()), report=report, started=started,
            audio_s_this_run=todo_audio_s, items_this_run=len(todo) + len(new_failures),
        )
        sink.write_final(annotations, segments_output(segments), info,
                         {"manifest_digest": digest, "fingerprint": fingerprint, "finished": info["finished"]})
    return RunSummary(out=out, run_info=info)


def parse_custom_task(text: str) -> CustomTask:
    parts = text.split("|", 3)
    if len(parts) != 4 or not parts[2].strip().isdigit():
        raise ConfigError(f"--custom-task {text!r}: expected NAME|PARSER|MAX_TOKENS|PROMPT, e.g. "
                          "'speakers|text|16|How many people speak?'")
    name, parser, max_tokens, prompt = (p.strip() for p in parts)
    return CustomTask(name=name, prompt=prompt, max_new_tokens=int(max_tokens), parser=parser)


def annotate_from_args(args) -> int:
    config = load(args.job)
    overrides = {
        "model": args.model, "audio_root": args.audio_root, "device": args.device, "dtype": args.dtype,
        "tasks": [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
    }
    if args.custom_task:
        overrides["custom_tasks"] = [asdict(t) for t in config.custom_tasks] + \
                                    [asdict(parse_custom_task(t)) for t in args.custom_task]
    config = config.with_overrides(**overrides)
    try:
        summary = annotate(args.manifest, config, out=args.out, workers=args.workers, restart=args.restart,
                           progress=not args.no_progress)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    if not summary.already_complete:
        counts = summary.counts
        print(f"wrote {summary.out}/annotations.parquet: {counts['rows']} rows "
              f"({', '.join(f'{k} {v}' for k, v in sorted(counts['rows_by_status'].items()))}); "
              f"errors by reason: {counts['rows_by_error'] or 'none'}")
    return 0

