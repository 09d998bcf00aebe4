"""`make bench`: the pipeline against transformers on a realistic workload, side by side in one run.

1. Write a podcast-like mix (bench.workload) and a random checkpoint with the real model's
   proportions (bench.checkpoint).
2. Run `python -m pipeline annotate` on it twice, exactly as `make annotate` does with default
   settings: once with an empty compile cache (cold start), once into a new output folder with the
   cache the first run left (warm start). Wall time is the whole command, start-up included.
3. Run the reference, a plain transformers script (bench/transformers_script.py) as its own
   process, timed whole like the pipeline's command, on the same audio: every clip, and every
   segment of the long files cut where the pipeline cut them.
4. Check that every (row, task) text is identical, and write the figures: a printed table and a
   JSON file (BENCH_OUT, default outputs/bench/bench.json): the end-to-end ratio against the
   script's process beside the ratio against its generate() calls alone, the model phases against
   generate(), where the pipeline's fixed cost goes (bench/fixed_cost.py), and each graph's achieved
   FLOP/s against the machine's matmul peak measured in the same run (bench/roofline.py).

Speed is measured here, never asserted in tests; CI runs a reduced workload only for its keys and
its identical outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from pipeline import shapes
from pipeline.bench.chained import measure_chained, print_chained
from pipeline.bench.checkpoint import parameter_count, write_bench_checkpoint
from pipeline.bench.fixed_cost import fixed_cost
from pipeline.bench.graphs import profile_graphs
from pipeline.bench.projection import project
from pipeline.bench.reference import run_reference
from pipeline.bench.roofline import matmul_peak, roofline
from pipeline.bench.workload import Mix, write_workload
from pipeline.config import Config
from pipeline.model.graph_shapes import EngineShape, graph_flops
from pipeline.model.spec import ModelSpec
from pipeline.intake import audio
from pipeline.tasks.catalog import resolve_tasks

TASKS = ("caption", "events", "transcript")
BUDGETS = {"caption": 32, "events": 16, "transcript": 64}
QUICK = Mix(short=3, medium=1, long=1, long_minutes=(0.6, 0.7))
CHAINED_CLIPS, QUICK_CHAINED_CLIPS = 80, 3


def _annotate(manifest: Path, model_dir: Path, job: Path, out: Path) -> dict:
    """The `make annotate` command, timed whole; -> its run.json with the wall time added."""
    command = [sys.executable, "-m", "pipeline", "annotate", str(manifest), "--model", str(model_dir),
               "--out", str(out), "--job", str(job), "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"annotate failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    info = json.loads((out / "run.json").read_text())
    info["command_wall_s"] = wall
    return info


def _segments(out: Path, data: Path) -> tuple[list, list[dict]]:
    """The audio the pipeline annotated, as the reference gets it: each segment decoded between the
    pipeline's own cut points. -> (clips, segment rows)."""
    rows = pq.read_table(out / "segments.parquet").to_pylist()
    manifest = {r["id"]: r["audio"] for r in pq.read_table(data / "manifest.parquet").to_pylist()}
    clips = []
    for row in rows:
        decoded = audio.decode(data / manifest[row["id"]], row["start_s"], row["end_s"] if row["n_segments"] > 1 else None)
        if isinstance(decoded, audio.Failure):
            raise RuntimeError(f"{row['id']}: {decoded}")
        clips.append(decoded.samples)
    return clips, rows


def _ratio(numerator, denominator):
    return round(numerator / denominator, 4) if denominator else None


def measure(work: Path, mix: Mix, dims: str, threads: int, out: Path, chained_clips: int = CHAINED_CLIPS) -> dict:
    model_dir = write_bench_checkpoint(work / "checkpoint", dims=dims, flavour="base")
    data = work / "data"
    manifest = write_workload(data, mix)
    job = work / "job.yaml"
    job.write_text(yaml.safe_dump({"tasks": list(TASKS), "max_new_tokens": BUDGETS,
                                   "compile_cache_dir": str(work / "compile-cache")}))
    print(f"pipeline, cold compile cache ({mix.label}) ...", flush=True)
    cold = _annotate(manifest, model_dir, job, work / "out-cold")
    print("pipeline, warm compile cache ...", flush=True)
    warm = _annotate(manifest, model_dir, job, work / "out-warm")
    clips, rows = _segments(work / "out-warm", data)
    prompts = [t["prompt"] for t in warm["tasks"]]
    print(f"reference: a transformers script on the same {len(clips)} clips and segments ...", flush=True)
    reference = run_reference(model_dir, clips, prompts, [BUDGETS[t] for t in TASKS], warm["eos_token_ids"], work,
                              threads=threads)

    pairs = [(row["raw"] or {}, texts) for row, texts in zip(rows, reference["texts"])]
    matches = sum(dict(raw).get(task) == text for raw, texts in pairs for task, text in zip(TASKS, texts))
    generation, efficiency = warm["generation"], warm["padding_efficiency"]
    model_s = sum(generation[k] for k in ("encode_s", "prefill_s", "insert_s", "steps_s"))
    valid_frames = sum(shapes.frames_for_samples(len(c)) for c in clips)
    workers = warm["this_run"]["workers"]
    busy = sum(w.get("busy_s", 0.0) for w in workers)
    active = sum(w.get("active_s", 0.0) for w in workers)
    audio_s = sum(len(c) for c in clips) / shapes.SAMPLE_RATE
    statuses = warm["counts"]["rows_by_status"]
    # The reference's padded prompt: 30 s of audio tokens and the prompt text around them.
    prompt_len = shapes.audio_tokens(shapes.WINDOW_FRAMES) + 16
    result = {
        "workload": {"mix": asdict(mix), "label": mix.label, "manifest_rows": warm["counts"]["rows"],
                     "clips_and_segments": len(clips), "tasks": list(TASKS), "max_new_tokens": BUDGETS,
                     "prompt_style": warm["model"]["style"]},
        "checkpoint": {"dims": dims, "spec": warm["model"]["dims"], "parameters": parameter_count(model_dir)},
        "audio_seconds": round(audio_s, 2),
        "pipeline_wall_s": round(warm["command_wall_s"], 2),
        "pipeline_wall_cold_s": round(cold["command_wall_s"], 2),
        "pipeline_model_s": round(model_s, 2),
        # The script's process, start to exit, as a user times it beside `make annotate`.
        "reference_wall_s": round(reference["wall_s"], 2),
        "reference_model_s": round(reference["generate_s"], 2),
        "reference_script_s": {k: round(reference[k], 2) for k in ("imports_s", "load_s", "read_s", "generate_s")},
        "speedup_vs_reference": _ratio(reference["wall_s"], warm["command_wall_s"]),
        # The script's generate() calls alone against the pipeline's whole command.
        "speedup_vs_generate": _ratio(reference["generate_s"], warm["command_wall_s"]),
        "model_speedup_vs_reference": _ratio(reference["generate_s"], model_s),
        "fixed_cost": fixed_cost(warm, warm["command_wall_s"]),
        "fixed_cost_cold": fixed_cost(cold, cold["command_wall_s"]),
        "outputs_match_fraction": _ratio(matches, len(pairs) * len(TASKS)),
        "rows_ok_fraction": _ratio(statuses.get("ok", 0), warm["counts"]["rows"]),
        "encoder_frames_computed_per_valid": {
            "pipeline": _ratio(1, efficiency["frames"]),
            "reference": _ratio(reference["encoder_frames_computed"], valid_frames),
        },
        "llm_tokens_computed_per_valid": {
            "pipeline": _ratio(1, efficiency["tokens"]),
            # The same useful work as the pipeline's (identical outputs), over what the reference computed.
            "reference": _ratio(reference["llm_tokens_computed"], generation["valid_tokens"]),
        },
        "decode_row_steps_useful_fraction": efficiency["decode_row_steps"],
        "encoder_passes_per_clip": {"pipeline": _ratio(generation["clips_encoded"], len(clips)),
                                    "reference": _ratio(reference["rows"], len(clips))},
        "graphs_compiled": warm["this_run"]["graphs_compiled"],
        "declared_shapes": warm["shape"]["graphs"],
        "model_busy_fraction": _ratio(busy, active),
        "peak_rss_mb_per_worker": [w.get("peak_rss_mb") for w in workers],
        "memory_budget_mb": warm["memory_budget_mb"],
        "cold_start_s": max(w.get("load_s", 0.0) for w in cold["this_run"]["workers"]),
        "warm_cache_start_s": max(w.get("load_s", 0.0) for w in workers),
        "workers": len(workers),
        "phases_s": {k: generation[k] for k in ("encode_s", "prefill_s", "insert_s", "steps_s")},
        "counts": {k: generation[k] for k in ("encoder_rows", "prefill_rows", "insert_calls", "decode_steps",
                                               "generated_tokens")},
        "reference_counts": {k: reference[k] for k in ("generate_calls", "rows", "decode_steps", "generated_tokens")},
    }
    counts = {**generation}
    reference_counts = {**reference, "mean_budget": sum(BUDGETS.values()) / len(BUDGETS)}
    result["projection_7b_910b"] = project(audio_s, warm["shape"], counts, reference_counts, prompt_len)
    save(result, out)  # before the per-graph profile: the headline figures are never lost
    result["chained"] = measure_chained(work, data, chained_clips, dims, threads, _annotate)
    save(result, out)
    print("each graph against torch doing the same work ...", flush=True)
    config = Config(tasks=TASKS, max_new_tokens=BUDGETS)
    questions = [task.prompt(warm["model"]["style"]) for task in resolve_tasks(config)]
    result["per_graph"] = profile_graphs(model_dir, questions, [BUDGETS[t] for t in TASKS], warm["shape"]["slots"],
                                         threads)
    peak = matmul_peak()  # MindSpore as profile_graphs configured it in this process: every core
    g = result["per_graph"]
    alone = {"encode": g["encode"]["ours_ms_per_row"], "prefill": g["prefill"]["ours_ms_per_row"],
             "insert": g["insert"]["ours_ms"], "step": g["step"]["ours_ms"]}
    shape, spec = EngineShape.from_record(warm["shape"]), ModelSpec.from_checkpoint(model_dir)
    # profile_graphs times the step over whole slots, as torch runs it, whatever split the run chose.
    whole = replace(shape, short_slots=0, short_span=0)
    result["roofline"] = {**roofline(graph_flops(spec, shape), generation, peak["mindspore_gflops"], alone,
                                     graph_flops(spec, whole)), "peak": peak}
    return result


def print_table(r: dict) -> None:
    p, g = r["projection_7b_910b"], r["per_graph"]
    lines = [
        f"workload: {r['workload']['label']} = {r['workload']['clips_and_segments']} clips and segments, "
        f"{r['audio_seconds']:.0f} s of audio; tasks {', '.join(r['workload']['tasks'])}",
        f"checkpoint: {r['checkpoint']['dims']} ({r['checkpoint']['parameters']['audio'] / 1e6:.1f}M audio, "
        f"{r['checkpoint']['parameters']['text'] / 1e6:.1f}M text parameters)",
        "",
        f"{'figure':<38}{'pipeline':>14}{'reference':>14}",
        f"{'wall s (process, warm cache / script)':<38}{r['pipeline_wall_s']:>14}{r['reference_wall_s']:>14}",
        f"{'model s (phases / generate calls)':<38}{r['pipeline_model_s']:>14}{r['reference_model_s']:>14}",
        f"{'encoder frames computed / valid':<38}{r['encoder_frames_computed_per_valid']['pipeline']:>14}"
        f"{r['encoder_frames_computed_per_valid']['reference']:>14}",
        f"{'llm tokens computed / valid':<38}{r['llm_tokens_computed_per_valid']['pipeline']:>14}"
        f"{r['llm_tokens_computed_per_valid']['reference']:>14}",
        f"{'encoder passes per clip':<38}{r['encoder_passes_per_clip']['pipeline']:>14}"
        f"{r['encoder_passes_per_clip']['reference']:>14}",
        f"{'7B on 910B bound, audio-s per s':<38}{p['this_plan']['audio_s_per_s_bound']:>14.0f}"
        f"{p['padded_30s']['audio_s_per_s_bound']:>14.0f}",
        "",
        f"speedup_vs_reference (end to end, against the script's process) {r['speedup_vs_reference']}   "
        f"speedup_vs_generate {r['speedup_vs_generate']}   model_speedup_vs_reference {r['model_speedup_vs_reference']}",
        f"reference script s {r['reference_script_s']}",
        f"outputs_match_fraction {r['outputs_match_fraction']}   rows_ok_fraction {r['rows_ok_fraction']}",
        f"decode_row_steps_useful_fraction {r['decode_row_steps_useful_fraction']}   "
        f"model_busy_fraction {r['model_busy_fraction']}",
        f"graphs_compiled {r['graphs_compiled']} ({r['workers']} worker(s)); declared {', '.join(r['declared_shapes'])}",
        f"peak_rss_mb_per_worker {r['peak_rss_mb_per_worker']} (budget {r['memory_budget_mb']} MB besides weights)",
        f"cold_start_s {r['cold_start_s']:.1f}   warm_cache_start_s {r['warm_cache_start_s']:.1f}   "
        f"cold run wall {r['pipeline_wall_cold_s']} s",
        f"phases s {r['phases_s']}",
        "",
        "each graph against torch on the same work (ms):",
        f"  encoder per 1000 frames   ours {g['encode']['ours_ms_per_1000_frames']:8.1f}   "
        f"torch {g['encode']['reference_ms_per_1000_frames']:8.1f}",
        f"  prefill per token         ours {g['prefill']['ours_ms_per_token']:8.3f}   "
        f"torch {g['prefill']['reference_ms_per_token']:8.3f}",
        f"  decode step, {g['step']['rows']} rows x {g['step']['span']}   ours {g['step']['ours_ms']:8.1f}   "
        f"torch {g['step']['reference_ms']:8.1f}",
        f"  insert {g['insert']['rows']} rows            ours {g['insert']['ours_ms']:8.1f}",
        "",
        *fixed_cost_lines(r["fixed_cost"]),
        "",
        *roofline_lines(r["roofline"]),
    ]
    print("\n".join(lines))


def fixed_cost_lines(f: dict) -> list[str]:
    p = f["pieces"]
    lines = [f"fixed cost (warm cache): start to first model call {f['start_to_first_model_call_s']} s, "
             f"work done to exit {f['work_done_to_exit_s']} s, together {f['total_s']} s"]
    lines += [f"  {name:<34}{value}" for name, value in p.items() if name != "worker_load_phases_s"]
    lines.append(f"  {'worker load phases':<34}{p['worker_load_phases_s']}")
    return lines


def roofline_lines(r: dict) -> list[str]:
    peak = r["peak"]
    lines = [f"roofline: fp32 GEMM {peak['gemm']}^3 on every core: MindSpore {peak['mindspore_gflops']} GFLOP/s, "
             f"numpy {peak['numpy_gflops']} GFLOP/s (the peak below is MindSpore's)",
             f"  {'graph':<8}{'calls':>7}{'GFLOP/call':>12}{'s':>8}{'GFLOP/s':>9}{'of peak':>9}{'alone':>8}"]
    for name, g in r["graphs"].items():
        achieved = "-" if g["achieved_gflops"] is None else g["achieved_gflops"]
        fraction = "-" if g["fraction_of_peak"] is None else f"{g['fraction_of_peak']:.0%}"
        lines.append(f"  {name:<8}{g['calls']:>7}{g['gflop_per_call']:>12}{g['seconds']:>8}{achieved:>9}{fraction:>9}"
                     f"{g.get('alone_gflops', '-'):>8}")
    lines.append(f"  model: {r['model_gflop']} GFLOP at {r['overall_gflops']} GFLOP/s, "
                 f"utilisation {r['overall_utilisation']:.0%} of the peak")
    return lines


def run_benchmark(args) -> int:
    mix = QUICK if args.quick else Mix(short=args.short, medium=args.medium, long=args.long, seed=args.seed)
    dims = "tiny" if args.quick else args.dims
    threads = os.cpu_count() or 1
    out = Path(args.out or os.environ.get("BENCH_OUT") or "outputs/bench/bench.json")
    with tempfile.TemporaryDirectory(prefix="qwen2-audio-bench-") as tmp:
        result = measure(Path(tmp), mix, dims, threads, out, QUICK_CHAINED_CLIPS if args.quick else CHAINED_CLIPS)
    print_table(result)
    print_chained(result["chained"])
    save(result, out)
    print(f"saved {out}")
    return 0


def run_chained_benchmark(args) -> int:
    """The chained workload alone (`python -m pipeline bench chained`): its figures to --out."""
    # The realistic mix's proportions of short and medium clips, as many as asked for.
    mix = QUICK if args.quick else Mix(short=args.clips - args.clips // 4, medium=args.clips // 4, long=0, seed=args.seed)
    out = Path(args.out or "outputs/bench/chained.json")
    with tempfile.TemporaryDirectory(prefix="qwen2-audio-bench-") as tmp:
        data = Path(tmp) / "data"
        write_workload(data, mix)
        result = measure_chained(Path(tmp), data, QUICK_CHAINED_CLIPS if args.quick else args.clips,
                                 "tiny" if args.quick else args.dims, os.cpu_count() or 1, _annotate)
    print_chained(result)
    save(result, out)
    print(f"saved {out}")
    return 0


def save(result: dict, out: Path) -> None:
    result["environment"] = {"cpus": os.cpu_count(), "load_average_1_5_15min": os.getloadavg(),
                             "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_out, out)  # a reader never sees half a file
