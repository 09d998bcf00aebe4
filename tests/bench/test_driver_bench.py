"""The driver benchmark, reduced to a few thousand rows and the dry run: it writes real files and a
manifest over them, runs the command in its own process and reports the driver's time and memory.
Figures are printed by `make bench-driver`, never asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]


def test_the_driver_bench_reports_time_and_memory_per_size(tmp_path, checkpoint_dir):
    # The dry run reads the checkpoint (what it makes of the job), so the bench needs one.
    out = tmp_path / "driver.json"
    done = subprocess.run([sys.executable, "-m", "pipeline", "bench", "driver", "--rows", "2000,4000", "--files", "300",
                           "--commands", "dry_run", "--model", str(checkpoint_dir("small-instruct")), "--work-dir", str(tmp_path / "work"), "--out", str(out)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [s["rows"] for s in report["sizes"]] == [2000, 4000]
    for size in report["sizes"]:
        assert size["dry_run"]["exit"] == 0 and size["dry_run"]["peak_rss_mb"] > 0 and size["dry_run"]["wall_s"] > 0
    assert set(report["slopes"]["dry_run"]) == {"us_per_row", "bytes_per_row"}
    manifest = pq.read_table(tmp_path / "work" / "manifest-4000.parquet")
    assert manifest.num_rows == 4000 and manifest.column("duration_s").null_count == 400  # a tenth unknown
    assert len(list((tmp_path / "work" / "audio").rglob("*.wav"))) == 300
