"""The error gate: a run whose rows mostly failed writes its tables and run.json but no _SUCCESS,
and exits 3; so does a run stopped by a budget; the next run judges only its own rows."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import exit_codes
from tests.pipeline.conftest import mixed_manifest  # noqa: F401  (a fixture: 5 good rows, 7 bad)
from tests.reliability.conftest import REPO, rows, run, subprocess_env


def test_over_the_gate_the_run_writes_its_tables_but_no_success_and_exits_3(ray_cluster, mixed_manifest,  # noqa: F811
                                                                            model_dir, tmp_path):
    out = tmp_path / "out"
    root = str(mixed_manifest.parent / "audio")
    summary = run(mixed_manifest, out, model_dir, audio_root=root, max_error_rate=0.5)
    assert summary.exit_code == exit_codes.OVER_ERROR_THRESHOLD == 3
    assert (summary.gate.rows, summary.gate.failed) == (12, 7)
    assert len(rows(out)) == 12 and len(rows(out, "segments.parquet")) >= 12
    info = json.loads((out / "run.json").read_text())
    assert info["error_gate"] == {"rows": 12, "failed": 7, "rate": 0.5833, "max_error_rate": 0.5, "passed": False}
    assert not (out / "_SUCCESS").exists() and len(list((out / "runs").glob("*.parquet"))) == 1
    # Under the gate the same rows pass; and a rerun judges only what it completes itself (nothing).
    assert run(mixed_manifest, tmp_path / "lenient", model_dir, audio_root=root, max_error_rate=0.6).exit_code == 0
    again = run(mixed_manifest, out, model_dir, audio_root=root, max_error_rate=0.5)
    assert again.exit_code == 0 and again.gate.rows == 0 and (out / "_SUCCESS").exists()


def test_a_run_stopped_by_a_budget_is_judged_too(ray_cluster, mixed_manifest, model_dir, tmp_path):  # noqa: F811
    # The bad files first: the rows the run reaches before its budget stops it.
    table = pq.read_table(mixed_manifest)
    ids = table.column("id").to_pylist()
    order = ["missing", "corrupt", "empty", "outside", "folder", "truncated", "nonfinite", "short", "medium",
             "stereo44k", "silent", "long"]
    pq.write_table(table.take([ids.index(i) for i in order]), mixed_manifest)
    summary = run(mixed_manifest, tmp_path / "out", model_dir, audio_root=str(mixed_manifest.parent / "audio"),
                  max_error_rate=0.5, max_rows=1)
    # Rows that cannot be read become error rows beside the one row the budget allows (which fails
    # at decoding): the run is judged on those seven.
    assert summary.stopped_early and (summary.gate.rows, summary.gate.failed) == (7, 7)
    assert summary.exit_code == 3


def test_a_command_whose_every_row_fails_exits_3(model_dir, tmp_path):
    """The default gate (max_error_rate 0.5) through the command line: three rows, three missing files."""
    data = tmp_path / "data"
    data.mkdir()
    manifest = data / "gone.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "audio": ["a.wav", "b.wav", "c.wav"]}), manifest)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "pipeline", "annotate", str(manifest), "--out", str(out),
                           "--model", str(model_dir), "--device", "cpu", "--workers", "1", "--quiet"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "error gate: 3 of this run's 3 rows failed (100.0%), over max_error_rate 50.0%" in done.stderr
    assert "done: 3 rows (error 3)" in done.stdout
    assert (out / "annotations.parquet").exists() and not (out / "_SUCCESS").exists()
