"""Memory per clip in a batch, measured, against the estimate (graph_shapes.clip_bytes) that sizes
batches. Part of `python -m pipeline bench`.

Each measurement is the peak RSS of a fresh process that compiles and runs one batch of one bucket;
the per-clip figure is the slope between two batch sizes, so that weights and compiling (paid once
per worker, not per clip) cancel out."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

BUCKETS = (5.0, 30.0)
BATCHES = (2, 8)
TASKS = ("caption", "events", "transcript", "moderation")
NEW_TOKENS = 8


def probe(model_dir: str, bucket_s: float, batch: int) -> None:
    """In a fresh process: peak RSS of compiling and running one full batch of one bucket."""
    import numpy as np

    from pipeline.config import Config
    from pipeline.model import runtime
    from pipeline.model.engine import MindSporeModel
    from pipeline.model.graph_shapes import clip_bytes
    from pipeline.model.model_plan import plan_model
    from pipeline.tasks.catalog import resolve_tasks

    config = Config(model=model_dir, device="cpu", buckets_s=(bucket_s,) if bucket_s == 30 else (bucket_s, 30.0),
                    max_batch=batch, memory_budget_gb=1000.0, tasks=TASKS,
                    max_new_tokens={t: NEW_TOKENS for t in TASKS}, compile_cache_dir=None)
    tasks = resolve_tasks(config)
    plan = plan_model(config, tasks, "cpu", lambda buckets, _cost, _budget, cap: {b: cap for b in buckets})
    shape = plan.declared[bucket_s]
    runtime.configure("cpu", None, 0)
    model = MindSporeModel(plan)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    frames = [shape.frames - 8] * batch
    model.generate(bucket_s, np.zeros((batch, plan.spec.n_mels, shape.frames), np.float32), frames,
                   [str(i) for i in range(batch)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    estimate = clip_bytes(plan.spec, shape, plan.dtype, reuses_layer_memory=False)
    print("RESULT" + json.dumps({"loaded_mb": loaded / 1024, "peak_mb": peak / 1024,
                                 "estimated_per_clip_mb": estimate / 2**20}))


def _probe_in_fresh_process(model_dir: Path, bucket_s: float, batch: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "pipeline.bench.memory", str(model_dir), str(bucket_s), str(batch)],
                          capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def measure_memory(model_dir: Path) -> list[dict]:
    figures = []
    for bucket_s in BUCKETS:
        small, large = (_probe_in_fresh_process(model_dir, bucket_s, b) for b in BATCHES)
        figures.append({
            "bucket_s": bucket_s, "batches": list(BATCHES), "tasks": len(TASKS),
            "peak_mb": [round(small["peak_mb"]), round(large["peak_mb"])],
            "measured_per_clip_mb": round((large["peak_mb"] - small["peak_mb"]) / (BATCHES[1] - BATCHES[0]), 1),
            "estimated_per_clip_mb": round(large["estimated_per_clip_mb"], 1),
        })
    return figures


def print_memory(figures: list[dict]) -> None:
    print(f"memory per clip x {len(TASKS)} tasks: slope of peak RSS between batches of {BATCHES[0]} and "
          f"{BATCHES[1]} (fresh processes)")
    print(f"  {'bucket':<8}{'peak MB':>16}{'per clip MB':>13}{'estimate MB':>13}")
    for f in figures:
        peaks = f"{f['peak_mb'][0]} / {f['peak_mb'][1]}"
        print(f"  {f['bucket_s']:<8g}{peaks:>16}{f['measured_per_clip_mb']:>13}{f['estimated_per_clip_mb']:>13}")
    print()


if __name__ == "__main__":
    probe(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
