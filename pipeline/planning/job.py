"""The job as this invocation runs it, decided before any work: where its output goes (OUT), how
many CPU workers it starts, its output columns, and the settings that identify its results (their
fingerprint names every part it commits). annotate and the dry run decide them alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from pipeline import storage
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.intake.manifest_set import default_out_name
from pipeline.intake.manifest_table import Manifest
from pipeline.output.tables import output_column_names
from pipeline.tasks.catalog import OUTPUT_COLUMNS, follow_up_settings, output_columns

# A CPU worker's kernels run on several threads; more workers than cores / this only contend (on
# 2 cores one worker with 2 threads is faster than two with one each).
CORES_PER_CPU_WORKER = 8


def output_folder(manifest_path, out):
    """OUT as given (a folder or an s3:// prefix), else outputs/<manifest name>/ here."""
    return storage.location(out) if out else Path("outputs") / default_out_name(manifest_path)


def describe_sources(manifest_path) -> str:
    return manifest_path if isinstance(manifest_path, (str, Path)) else " ".join(map(str, manifest_path))


def default_workers(config: Config, requested: int | None) -> int:
    count = requested if requested else config.cpu_workers
    return count if count > 0 else max(1, (os.cpu_count() or 1) // CORES_PER_CPU_WORKER)


def annotation_columns(tasks) -> dict[str, str]:
    """Every built-in column always (null when its task did not run, so schemas stay stable across
    jobs), plus one column per custom task."""
    return {**OUTPUT_COLUMNS, **output_columns(tasks)}


def check_passthrough(manifest: Manifest, columns: dict[str, str]) -> None:
    clashes = sorted(set(manifest.passthrough_columns) & output_column_names(columns))
    if clashes:
        raise UserError(f"manifest column(s) {clashes} would be overwritten by output columns; rename them")


def run_settings(plan, config: Config, tasks) -> dict:
    # Conversations only where there are some: every other run's fingerprint stays what it was.
    follow_ups = follow_up_settings(tasks)
    # Scored moderation only where it runs, likewise: its thresholds decide the moderation column.
    scoring = {"moderation_scoring": {
        "mode": "scored", "thresholds": {t.label: t.threshold for t in tasks if t.label is not None},
        "segments": "each label's highest score over a file's segments", **plan.yes_no.settings(),
    }} if plan.yes_no is not None else {}
    return ({"follow_ups": follow_ups} if follow_ups else {}) | scoring | {
        "model": plan.model_dir, "revision": plan.revision, "prompt_style": plan.style,
        "prompts": dict(zip(plan.task_names, plan.prompts.texts)),
        "parsers": {t.name: t.parser for t in tasks},
        "max_new_tokens": dict(zip(plan.task_names, plan.max_new_tokens)),
        "decoding": plan.decoding.settings(), "dtype": plan.dtype, "device": plan.device,
        "segment_search_s": config.segment_search_s, "silence_dbfs": config.silence_dbfs,
        "audio_root": config.audio_root, "moderation_labels": list(config.moderation_labels),
        # The weights, by file names and sizes (and hub revision): new files mean a new run.
        "checkpoint": plan.checkpoint_identity(), "dims": asdict(plan.spec),
    }


def settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def budget_option(limited_by: str, config: Config) -> str:
    """The option that names a budget, as a person typed it."""
    return f"--max-rows {config.max_rows}" if limited_by == "max_rows" else f"--max-hours {config.max_hours:g}"
