"""run.json: what ran (model, prompts, decoding, shapes, versions) and how it went (counts, time,
throughput, padding efficiency, graphs compiled)."""

from __future__ import annotations

import platform
import time
from collections import Counter
from dataclasses import asdict
from importlib import metadata

LIBRARIES = ("mindspore", "transformers", "tokenizers", "huggingface_hub", "ray", "pyarrow", "duckdb", "numpy",
             "soundfile", "soxr")


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _follow_up(plan, task: int) -> dict:
    """A follow-up's place in its conversation, for run.json's task list; {} for a first question."""
    parent = plan.prompts.parent(task)
    if parent is None:
        return {}
    rule = plan.conditions[task] if plan.conditions else None
    return {"follows": plan.task_names[parent], "when": rule.to_dict() if rule is not None else None}


def conversations(stats) -> dict:
    """Follow-up questions in this OUT's committed results: how many ran and were skipped, and the
    prefill work saved against re-running each conversation from the start (as a chat API is used:
    the whole conversation prefilled, the audio encoded, for every question)."""
    return {
        "follow_ups": stats["follow_up_rows"],
        "follow_ups_skipped": stats["follow_ups_skipped"],
        # Each follow-up's conversation before its question (the prompt, every earlier question and
        # answer): what a re-run from the start prefills again, and this run did not.
        "prefill_tokens_saved": stats["prefill_tokens_saved"],
        "encoder_passes_saved": stats["follow_up_rows"],
        # What this run did compute for them: their question ids, fed into their slots by extend calls.
        "question_tokens": stats["follow_up_question_tokens"],
        "prefilled_tokens": stats["prefilled_tokens"],
        "forked_rows": stats["forked_rows"],
    }


def build(*, plan, config, settings, fingerprint, manifest_path, manifest_digest, out, totals, part_stats, report,
          started, audio_s_this_run, items_this_run, timeline=None, manifest_folders=(), milestones=None) -> dict:
    """totals: output/final.Totals, the counts over the final tables. timeline: the invocation's
    output/timeline.Timeline; manifest_folders: where relative audio paths resolve (the report
    links the audio it shows); milestones: output/milestones.Milestones, where the fixed cost went."""
    finished = time.time()
    stats = Counter()
    for part in part_stats:
        stats.update(part)
    wall = finished - started
    return {
        "manifest": {"path": str(manifest_path), "digest": manifest_digest, "folders": list(manifest_folders)},
        "out": str(out),
        "fingerprint": fingerprint,
        "model": {"path": plan.model_dir, "revision": plan.revision, "style": plan.style, "dtype": plan.dtype,
                  "device": plan.device, "dims": asdict(plan.spec)},
        "tasks": [{"name": n, "prompt": p, "max_new_tokens": m, **_follow_up(plan, i)}
                  for i, (n, p, m) in enumerate(zip(plan.task_names, plan.prompts.texts, plan.max_new_tokens))],
        "decoding": plan.decoding.to_dict(),
        "eos_token_ids": list(plan.prompts.eos_ids),
        "shape": {**asdict(plan.shape), "graphs": list(plan.shape.graph_names())},
        "memory_budget_mb": round(plan.memory_budget_bytes / 2**20),
        "settings": settings,
        "config": asdict(config),
        "versions": versions(),
        "counts": {
            "rows": totals.rows,
            "rows_by_status": dict(totals.rows_by_status),
            "rows_by_error": dict(totals.rows_by_error),
            "segments": totals.segments,
            "segments_by_status": dict(totals.segments_by_status),
        },
        "audio_hours_annotated": round(totals.ok_audio_s / 3600, 4),
        "this_run": {
            "items": items_this_run,
            "audio_hours": round(audio_s_this_run / 3600, 4),
            "wall_s": round(wall, 2),
            "throughput_audio_s_per_s": _ratio(audio_s_this_run, wall),
            "workers": report.workers,
            "graphs_compiled": report.graphs_compiled,
            "graphs_declared_per_worker": len(plan.shape.graph_names()),
            "retries": report.retries,
            "splits": report.splits,
            "worker_replacements": report.worker_replacements,
            "transient_retries": report.transient_retries,
            "timeouts": report.timeouts,
            "workers_given_up": report.workers_given_up,
            "timeline": timeline.to_dict(round(wall, 2)) if timeline is not None else None,
            "milestones": milestones.to_dict() if milestones is not None else None,
        },
        "padding_efficiency": {
            "frames": _ratio(stats["valid_frames"], stats["computed_frames"]),
            "tokens": _ratio(stats["valid_tokens"], stats["computed_tokens"]),
            "decode_row_steps": _ratio(stats["useful_row_steps"], stats["row_steps"]),
        },
        "generation": {
            **{k: stats[k] for k in ("generated_tokens", "retried_answers", "decode_steps", "encoder_rows", "prefill_rows",
                                     "inserted_rows", "insert_calls", "clips_encoded", "valid_frames",
                                     "computed_frames", "valid_tokens", "computed_tokens", "row_steps",
                                     "useful_row_steps", "prefilled_tokens", "extend_calls", "fork_calls",
                                     "forked_rows")},
            **{k: round(stats[k], 3) for k in ("encode_s", "prefill_s", "insert_s", "steps_s", "extend_s", "fork_s")},
        },
        "conversations": conversations(stats),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
    }
