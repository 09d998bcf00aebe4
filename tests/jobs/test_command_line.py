"""Exit codes through the real command line (`python -m pipeline annotate`), with the tiny random
model: 2 invalid input, 0 a dry run (no model, no Ray, nothing in OUT), 75 stopped by a budget, 0
when the next invocation finishes. The other codes: 130 in tests/pipeline (Ctrl-C); 3 belongs to
the error gate, which does not exist yet."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from tests.jobs.conftest import write_clip, write_day, write_manifest

REPO = Path(__file__).resolve().parents[2]


def command(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "annotate", *map(str, args)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=timeout)


def job_file(tmp_path, model_dir) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "model": str(model_dir), "device": "cpu", "decode_slots": 4, "cpu_threads_per_worker": 1,
        "compile_cache_dir": str(tmp_path / "compile-cache"),  # the second run compiles from the cache
        "max_new_tokens": {"caption": 4, "events": 4, "transcript": 4, "moderation": 4},
    }))
    return job


def test_invalid_input_exits_2(tmp_path):
    incoming = tmp_path / "incoming"
    write_day(incoming, "2026-01-01", {"a": 1.0})
    write_day(incoming, "2026-01-02", {"a": 1.0})  # the same id in two partitions
    result = command(f"{incoming}/date=*/", "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: 1 id(s) appear in more than one manifest" in result.stderr
    result = command(tmp_path / "nothing.parquet", "--max-rows", "0", "--out", tmp_path / "out")
    assert result.returncode == 2 and "'max_rows' must be at least 1" in result.stderr


DRY_RUN = """
import sys
import ray
from pipeline.cli import main
status = main(sys.argv[1:])
assert "mindspore" not in sys.modules, "the dry run imported MindSpore"
assert not ray.is_initialized(), "the dry run started Ray"
sys.exit(status)
"""


def test_a_dry_run_then_a_budget_stop_then_the_rest(checkpoint_dir, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for name, seconds in {"a": 1.0, "b": 2.0}.items():
        write_clip(data / f"{name}.wav", seconds)
    manifest = write_manifest(data / "m.parquet", {"a": "a.wav", "b": "b.wav"})
    job = job_file(tmp_path, checkpoint_dir("small-instruct"))
    options = ["--job", job, "--out", out, "--workers", "1", "--max-rows", "1", "--quiet"]

    decoding = ["--greedy", "--repetition-penalty", "1.05"]
    dry = subprocess.run([sys.executable, "-c", DRY_RUN, "annotate", str(manifest), "--dry-run", *map(str, options),
                          *decoding],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "this run: 1 rows to the model" in dry.stdout and "--max-rows 1 leaves 1 rows" in dry.stdout
    assert "decoding: greedy (option), repetition_penalty 1.05 (option)" in dry.stdout
    assert not out.exists()  # not even a log file

    first = command(manifest, *options)
    assert first.returncode == 75, first.stderr[-3000:]
    assert "stopped early (--max-rows 1): 1 rows committed, 1 left" in first.stdout
    assert not (out / "_SUCCESS").exists() and len(list((out / "runs").glob("*.parquet"))) == 1

    second = command(manifest, *options)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "done: 2 rows (ok 2)" in second.stdout
    rows = pq.read_table(out / "annotations.parquet").to_pylist()
    assert [(r["id"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok")]
    deltas = sorted((out / "runs").glob("*.parquet"))
    assert [pq.read_table(p).column("id").to_pylist() for p in deltas] == [["a"], ["b"]]
    assert len(list((out / "logs").glob("annotate-*.log"))) == 2
