"""The realistic benchmark, reduced to a few clips on the tiny checkpoint: it runs end to end, the
pipeline's texts equal the reference's for every row and task, and the JSON holds every figure the
benchmark promises. Speeds are printed by `make bench`, never asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEYS = (
    "audio_seconds", "pipeline_wall_s", "pipeline_model_s", "reference_wall_s", "speedup_vs_reference",
    "model_speedup_vs_reference", "outputs_match_fraction", "rows_ok_fraction",
    "encoder_frames_computed_per_valid", "llm_tokens_computed_per_valid", "decode_row_steps_useful_fraction",
    "encoder_passes_per_clip", "graphs_compiled", "declared_shapes", "model_busy_fraction",
    "peak_rss_mb_per_worker", "memory_budget_mb", "cold_start_s", "warm_cache_start_s", "projection_7b_910b",
    "per_graph", "speedup_vs_generate", "fixed_cost", "roofline", "reference_script_s",
)


def test_quick_bench_matches_the_reference_and_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "pipeline", "bench", "--quick", "--out", str(out)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [k for k in KEYS if k not in result] == []
    assert result["outputs_match_fraction"] == 1.0 and result["rows_ok_fraction"] == 1.0
    assert result["workload"]["clips_and_segments"] > result["workload"]["manifest_rows"]  # a long file was cut
    for side in ("pipeline", "reference"):
        assert result["encoder_frames_computed_per_valid"][side] >= 1.0
        assert result["llm_tokens_computed_per_valid"][side] >= 1.0
    assert result["encoder_passes_per_clip"] == {"pipeline": 1.0, "reference": 3.0}
    assert result["graphs_compiled"] == len(result["declared_shapes"]) == 4  # slots whole: short_slots is opt-in
    for plan in ("this_plan", "padded_30s"):
        assert result["projection_7b_910b"][plan]["audio_s_per_s_bound"] > 0
    fixed = result["fixed_cost"]
    assert 0 < fixed["start_to_first_model_call_s"] < result["pipeline_wall_s"]
    assert 0 < fixed["work_done_to_exit_s"] < result["pipeline_wall_s"]
    assert set(fixed["pieces"]["worker_load_phases_s"]) >= {"import_s", "weights_s", "graphs_s", "first_runs_s"}
    # The reference is a script's whole process: its own phases fit inside the wall time measured around it.
    assert sum(result["reference_script_s"].values()) < result["reference_wall_s"]
    roof = result["roofline"]
    assert roof["peak"]["mindspore_gflops"] > 0 and roof["peak"]["numpy_gflops"] > 0
    assert set(roof["graphs"]) == {"encode", "prefill", "insert", "step"}
    assert 0 < roof["overall_utilisation"] < 1.5  # a loaded machine may run the GEMM below the graphs' rate
    assert "saved" in done.stdout
    # The chained workload: three questions per clip in one conversation, against a chat-API user
    # re-running each conversation: identical turns (and skips), one encoder pass per clip.
    chained = result["chained"]
    assert chained["outputs_match_fraction"] == 1.0
    assert chained["encoder_passes_per_clip"]["pipeline"] == 1.0 < chained["encoder_passes_per_clip"]["reference"]
    assert chained["conversations"]["follow_ups"] > 0 and chained["conversations"]["prefill_tokens_saved"] > 0
    assert chained["prompt_tokens_computed"]["pipeline"] < chained["prompt_tokens_computed"]["reference_padded"]
    assert chained["graphs_compiled"] == len(chained["declared_shapes"])
