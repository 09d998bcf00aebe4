"""`make bench`, chained workload: three questions per clip in one conversation, each seeing the
earlier answers (the AudioSetCaps-style chain of jobs/audio-captions-chain.yaml), the pipeline
against a chat-API user who re-sends each conversation from the start (bench.chat_reference).

The pipeline asks each follow-up from the earlier turn's cache: one encoder pass per clip, the
first question prefilled once, each later question fed into its decode slot at once (extend). The reference encodes
the audio and prefills the whole conversation for every question. Both run on the same clips (the
realistic workload's first ones, or the quick one's), from an instruct checkpoint of the same
proportions; every turn's text must be identical, and so must the questions a rule skipped.

The random checkpoint's answers mean nothing, so the rules here are chosen to hold for about half
of them (the AudioSetCaps job asks about speech and music words); what is measured is the work.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline import shapes
from pipeline.bench.chat_reference import run_chat_reference
from pipeline.bench.checkpoint import write_bench_checkpoint
from pipeline.intake import audio

CAPS = {"caption": 32, "speech": 16, "music": 16}
# caption -> speech -> music, as in jobs/audio-captions-chain.yaml; the speech question is asked
# when the caption holds a doubled vowel (about half of the random checkpoint's answers), the music
# one whatever the speech answer (after it when it was asked, after the caption when not).
CHAIN = {
    "tasks": ["caption"],
    "prompts": {"caption": "Describe the sounds in this audio in detail, in English."},
    "custom_tasks": [
        {"name": "speech", "prompt": "Now about the speech: what language is spoken, what emotion does the speaker "
                                     "convey, and who is speaking?", "follows": "caption",
         "when": {"matches": "[aeiou]{2}"}, "max_new_tokens": CAPS["speech"]},
        {"name": "music", "prompt": "Now about the music: what is its genre, and which instruments do you hear?",
         "follows": "speech", "max_new_tokens": CAPS["music"]},
    ],
    "max_new_tokens": {"caption": CAPS["caption"]},
}


def _ratio(numerator, denominator):
    return round(numerator / denominator, 4) if denominator else None


def _subset(data: Path, target: Path, rows: int) -> Path:
    """The workload's first `rows` clips of at most 30 s (follow-ups on whole clips), as a manifest."""
    table = pq.read_table(data / "manifest.parquet")
    keep = [i for i, d in enumerate(table.column("duration_s").to_pylist()) if d <= shapes.WINDOW_S][:rows]
    target.mkdir(parents=True, exist_ok=True)
    subset = table.take(pa.array(keep))
    for path in subset.column("audio").to_pylist():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / path, target / path)
    pq.write_table(subset, target / "manifest.parquet")
    return target / "manifest.parquet"


def measure_chained(work: Path, data: Path, rows: int, dims: str, threads: int, annotate) -> dict:
    """annotate(manifest, model_dir, job, out) -> run.json with the command's wall time (realistic._annotate)."""
    model_dir = write_bench_checkpoint(work / "checkpoint-instruct", dims=dims, flavour="instruct")
    manifest = _subset(data, work / "chained-data", rows)
    job = work / "chained-job.yaml"
    job.write_text(yaml.safe_dump({**CHAIN, "compile_cache_dir": str(work / "chained-compile-cache")}))
    print(f"chained: pipeline, cold then warm compile cache ({rows} clips, 3 questions each) ...", flush=True)
    cold = annotate(manifest, model_dir, job, work / "chained-out-cold")
    warm = annotate(manifest, model_dir, job, work / "chained-out-warm")
    segments = pq.read_table(work / "chained-out-warm" / "segments.parquet").to_pylist()
    table = {r["id"]: r["audio"] for r in pq.read_table(manifest).to_pylist()}
    clips = [audio.decode(manifest.parent / table[s["id"]]).samples for s in segments]
    print(f"chained: reference, a chat-API user re-running each conversation ({len(clips)} clips) ...", flush=True)
    reference = run_chat_reference(model_dir, clips, warm["tasks"], warm["eos_token_ids"], threads=threads)

    names = [t["name"] for t in warm["tasks"]]
    turns = same = 0
    for segment, texts, skipped in zip(segments, reference["texts"], reference["skipped"]):
        raw, ours_skipped = dict(segment["raw"] or []), dict(segment["skipped"] or [])
        for name in names:
            turns += 1
            same += raw.get(name) == texts[name] and ours_skipped.get(name) == skipped.get(name)
    generation, conversations = warm["generation"], warm["conversations"]
    model_s = sum(generation[k] for k in ("encode_s", "prefill_s", "insert_s", "steps_s", "extend_s", "fork_s"))
    asked = turns - sum(len(s) for s in reference["skipped"])
    return {
        "workload": {"clips": len(clips), "questions": names, "max_new_tokens": CAPS, "chain": CHAIN,
                     "turns": turns, "turns_asked": asked},
        "pipeline_wall_s": round(warm["command_wall_s"], 2),
        "pipeline_wall_cold_s": round(cold["command_wall_s"], 2),
        "pipeline_model_s": round(model_s, 2),
        "reference_wall_s": round(reference["wall_s"], 2),
        "reference_model_s": round(reference["generate_s"], 2),
        "speedup_vs_reference": _ratio(reference["wall_s"], warm["command_wall_s"]),
        "model_speedup_vs_reference": _ratio(reference["generate_s"], model_s),
        "outputs_match_fraction": _ratio(same, turns),
        "encoder_passes_per_clip": {"pipeline": _ratio(generation["clips_encoded"], len(clips)),
                                    "reference": _ratio(reference["rows"], len(clips))},
        # Prompt tokens computed: the pipeline prefills first questions and feeds follow-up
        # questions into their slots; the reference prefills every conversation whole, per question.
        "prompt_tokens_computed": {
            "pipeline": generation["prefilled_tokens"] + conversations["question_tokens"],
            "reference_padded": reference["prompt_tokens_computed"],
        },
        "conversations": conversations,
        "phases_s": {k: generation[k] for k in ("encode_s", "prefill_s", "insert_s", "steps_s", "extend_s", "fork_s")},
        "graphs_compiled": warm["this_run"]["graphs_compiled"],
        "declared_shapes": warm["shape"]["graphs"],
        "reference_counts": {k: reference[k] for k in ("generate_calls", "rows", "decode_steps", "generated_tokens",
                                                       "prompt_tokens_computed", "llm_tokens_computed",
                                                       "encoder_frames_computed")},
    }


def print_chained(r: dict) -> None:
    c = r["conversations"]
    lines = [
        "",
        f"chained workload: {r['workload']['clips']} clips x {len(r['workload']['questions'])} questions in one "
        f"conversation ({r['workload']['turns_asked']} of {r['workload']['turns']} asked; the rest skipped by rules)",
        f"{'figure':<38}{'pipeline':>14}{'chat re-run':>14}",
        f"{'wall s (end to end, warm cache)':<38}{r['pipeline_wall_s']:>14}{r['reference_wall_s']:>14}",
        f"{'model s':<38}{r['pipeline_model_s']:>14}{r['reference_model_s']:>14}",
        f"{'encoder passes per clip':<38}{r['encoder_passes_per_clip']['pipeline']:>14}"
        f"{r['encoder_passes_per_clip']['reference']:>14}",
        f"{'prompt tokens computed':<38}{r['prompt_tokens_computed']['pipeline']:>14}"
        f"{r['prompt_tokens_computed']['reference_padded']:>14}",
        f"speedup_vs_reference {r['speedup_vs_reference']}   model_speedup_vs_reference "
        f"{r['model_speedup_vs_reference']}   outputs_match_fraction {r['outputs_match_fraction']}",
        f"prefill_tokens_saved {c['prefill_tokens_saved']} (follow-ups {c['follow_ups']}, skipped "
        f"{c['follow_ups_skipped']}, question tokens {c['question_tokens']})",
        f"graphs_compiled {r['graphs_compiled']}; declared {', '.join(r['declared_shapes'])}",
        f"phases s {r['phases_s']}",
    ]
    print("\n".join(lines))
