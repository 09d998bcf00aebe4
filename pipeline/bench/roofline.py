"""How close each graph runs to the machine: achieved FLOP/s against the measured matmul peak.

The peak is measured in the same run as the graphs (a shared machine's speed changes by the
minute): a large fp32 GEMM in MindSpore's graph mode on every core, the kernel the graphs' own
products use, and numpy's beside it. FLOPs per call come from model.graph_shapes.graph_flops (what
each compiled graph computes, padding and masked-out scores included); the time per graph is the
run's own (run.json `generation`), so a graph's figure is what it achieved in the run, launches,
elementwise kernels and host work included. The overall utilisation is the run's model FLOPs over
its model time, against the peak.
"""

from __future__ import annotations

import time

import numpy as np

GEMM = 1024  # square fp32 GEMM: large enough to run at the kernel's peak on a few cores
REPEATS = 30

# Which run.json `generation` counts and seconds belong to which graph.
PHASES = {"encode": ("encoder_rows", "encode_s"), "prefill": ("prefill_rows", "prefill_s"),
          "insert": ("insert_calls", "insert_s"), "step": ("decode_steps", "steps_s")}


def _best_gflops(run, flops: float) -> float:
    run()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(REPEATS):
            run()
        best = min(best, (time.perf_counter() - start) / REPEATS)
    return flops / best / 1e9


def matmul_peak() -> dict:
    """GFLOP/s of a GEMM x GEMM x GEMM fp32 product on every core: MindSpore graph mode (the
    process's MindSpore must be configured already: runtime.configure) and numpy."""
    import mindspore as ms
    from mindspore import nn, ops

    class Product(nn.Cell):
        def construct(self, a, b):
            return ops.matmul(a, b)

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((GEMM, GEMM)).astype(np.float32) for _ in range(2))
    product, ta, tb = Product(), ms.Tensor(a), ms.Tensor(b)
    flops = 2.0 * GEMM**3
    return {"gemm": GEMM, "mindspore_gflops": round(_best_gflops(lambda: product(ta, tb).asnumpy(), flops), 1),
            "numpy_gflops": round(_best_gflops(lambda: a @ b, flops), 1)}


def roofline(flops_per_call: dict[str, float], generation: dict, peak_gflops: float,
             isolated_ms: dict[str, float] | None = None, isolated_flops: dict[str, float] | None = None) -> dict:
    """flops_per_call: graph_flops; generation: run.json's counts and seconds; isolated_ms: each
    graph's median time per call timed alone (bench.graphs), where measured; isolated_flops: the
    FLOPs of the graphs timed alone, where their shape differs from the run's (a step timed over
    whole slots when the run split them)."""
    graphs, total_flops, total_s = {}, 0.0, 0.0
    for name, (count_key, seconds_key) in PHASES.items():
        calls, seconds = generation.get(count_key, 0), generation.get(seconds_key, 0.0)
        flops = flops_per_call[name] * calls
        total_flops, total_s = total_flops + flops, total_s + seconds
        achieved = flops / seconds / 1e9 if seconds and flops else None
        entry = {"calls": calls, "gflop_per_call": round(flops_per_call[name] / 1e9, 3), "seconds": round(seconds, 3),
                 "achieved_gflops": round(achieved, 1) if achieved else None,
                 "fraction_of_peak": round(achieved / peak_gflops, 3) if achieved else None}
        alone = (isolated_ms or {}).get(name)
        alone_flops = (isolated_flops or flops_per_call)[name]
        if alone and alone_flops:
            entry["alone_gflops"] = round(alone_flops / alone / 1e6, 1)
        graphs[name] = entry
    overall = total_flops / total_s / 1e9 if total_s else None
    return {"peak_gflops": peak_gflops, "graphs": graphs,
            "model_gflop": round(total_flops / 1e9, 1),
            "overall_gflops": round(overall, 1) if overall else None,
            "overall_utilisation": round(overall / peak_gflops, 3) if overall else None}
