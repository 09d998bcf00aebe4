"""Peak memory of one batch per bucket, measured in a fresh process, against the estimate
(graph_shapes.clip_bytes) that sizes batches. Part of `python -m pipeline bench`."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

BUCKETS = (5.0, 30.0)
BATCH = 8
TASKS = ("caption", "events", "transcript", "moderation")
NEW_TOKENS = 8


def probe(model_dir: str, bucket_s: float) -> None:
    """In a fresh process: peak RSS of compiling and running one full batch of one bucket."""
    import numpy as np

    from pipeline.config import Config
    from pipeline.model import runtime
    from pipeline.model.engine import MindSporeModel
    from pipeline.model.graph_shapes import clip_bytes
    from pipeline.model.model_plan import plan_model
    from pipeline.tasks import resolve_tasks

    config = Config(model=model_dir, device="cpu", buckets_s=(bucket_s,) if bucket_s == 30 else (bucket_s, 30.0),
                    max_batch=BATCH, memory_budget_gb=1000.0, tasks=TASKS,
                    max_new_tokens={t: NEW_TOKENS for t in TASKS}, compile_cache_dir=None)
    tasks = resolve_tasks(config)
    plan = plan_model(config, tasks, "cpu", lambda buckets, _cost, _budget, cap: {b: cap for b in buckets})
    shape = plan.declared[bucket_s]
    runtime.configure("cpu", None, 0)
    model = MindSporeModel(plan)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    frames = [shape.frames - 8] * BATCH
    model.generate(bucket_s, np.zeros((BATCH, plan.spec.n_mels, shape.frames), np.float32), frames,
                   [str(i) for i in range(BATCH)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    text_len = len(plan.prompts.head) + len(plan.prompts.tail) + plan.prompts.suffix_len + NEW_TOKENS
    estimate = clip_bytes(plan.spec, bucket_s, len(tasks), text_len, plan.dtype)
    print("RESULT" + json.dumps({
        "bucket_s": bucket_s, "batch": BATCH, "tasks": len(tasks), "loaded_mb": round(loaded / 1024),
        "peak_mb": round(peak / 1024), "measured_per_clip_mb": round((peak - loaded) / 1024 / BATCH, 1),
        "estimated_per_clip_mb": round(estimate / 2**20, 1),
    }))


def measure_memory(model_dir: Path) -> list[dict]:
    figures = []
    for bucket_s in BUCKETS:
        done = subprocess.run([sys.executable, "-m", "pipeline.bench_memory", str(model_dir), str(bucket_s)],
                              capture_output=True, text=True, check=True)
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
        figures.append(json.loads(line[len("RESULT"):]))
    return figures


def print_memory(figures: list[dict]) -> None:
    print(f"peak memory, one batch of {BATCH} clips x {len(TASKS)} tasks (fresh process, includes compiling)")
    print(f"  {'bucket':<8}{'loaded MB':>10}{'peak MB':>9}{'per clip MB':>13}{'estimate MB':>13}")
    for f in figures:
        print(f"  {f['bucket_s']:<8g}{f['loaded_mb']:>10}{f['peak_mb']:>9}{f['measured_per_clip_mb']:>13}"
              f"{f['estimated_per_clip_mb']:>13}")
    print()


if __name__ == "__main__":
    probe(sys.argv[1], float(sys.argv[2]))
