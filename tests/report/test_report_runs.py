"""annotate writes OUT/report.html at the end of every run, finished or stopped at a budget, and
quality.json with the job's references; `report OUT --reference` compares afterwards."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.annotate import annotate
from pipeline.config import ConfigError
from pipeline.testing.fake_model import FakeModelFactory
from tests.pipeline.conftest import EXPECTED, fast_config, write_mixed_manifest


@pytest.fixture
def model_dir(checkpoint_dir):
    return checkpoint_dir("small-instruct")


@pytest.fixture
def manifest(tmp_path):
    """The mixed manifest with reference columns: the fake model's transcripts are 'words of ID#0'."""
    path = write_mixed_manifest(tmp_path / "data")
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    refs = [f"Words of {i}#0!" if i != "medium" else "something else entirely" for i in ids]
    refs[ids.index("silent")] = None
    tags = [["speech", f"{i}#0"] if i != "short" else ["music"] for i in ids]
    table = table.append_column("ref_text", pa.array(refs)).append_column("ref_events", pa.array(tags))
    pq.write_table(table, path)
    return path


def run(manifest, out, model_dir, **overrides):
    config = fast_config(model_dir, manifest, **overrides)
    return annotate(manifest, config, out=out, workers=2, progress=False, model_factory=FakeModelFactory())


def test_a_finished_run_writes_its_report_and_quality(ray_cluster, manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    summary = run(manifest, out, model_dir, references={"transcript": "ref_text", "events": "ref_events"})
    assert summary.report == out / "report.html"
    page = (out / "report.html").read_text()
    run_info = json.loads((out / "run.json").read_text())
    assert f'data-figure="rows">{len(EXPECTED)}<' in page and 'data-figure="reason:missing_file">1<' in page
    # The timeline: the workers' returns over the run, and its phases.
    timeline = run_info["this_run"]["timeline"]
    assert timeline["audio_s"] and sum(map(sum, timeline["audio_s"].values())) == pytest.approx(
        run_info["this_run"]["audio_hours"] * 3600, rel=0.01)
    assert set(timeline["phases"]) == {"startup_s", "annotating_s", "finishing_s"}
    assert "audio seconds per second, per worker" in page
    quality = json.loads((out / "quality.json").read_text())
    # ok rows with a reference: short, medium, stereo44k, long (silent's is null); long's transcript
    # is its segments' joined, so only short and stereo44k match their reference exactly.
    assert quality["transcript"]["rows"] == 4 and quality["transcript"]["wer"] > 0
    assert quality["events"]["rows"] == 5
    assert 'data-figure="quality:transcript:wer">' in page
    # Local audio plays from the page: a link relative to OUT.
    assert '<audio controls preload="none" src="../data/audio/' in page


def test_a_stopped_run_reports_what_it_committed(ray_cluster, manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    summary = run(manifest, out, model_dir, max_rows=2)
    assert summary.stopped_early and summary.report == out / "report.html"
    assert not (out / "annotations.parquet").exists()
    page = (out / "report.html").read_text()
    committed = sum(pq.read_metadata(f).num_rows for f in (out / "runs").glob("*.parquet"))
    assert f'data-figure="rows">{committed}<' in page and "ended stopped" in page


def test_a_reference_column_the_manifest_lacks_is_refused_before_any_work(manifest, model_dir, tmp_path):
    with pytest.raises(ConfigError, match="ref_missing"):
        run(manifest, tmp_path / "out", model_dir, references={"transcript": "ref_missing"})
    assert not (tmp_path / "out" / "parts").exists()


def test_report_command_on_a_finished_out(ray_cluster, manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    run(manifest, out, model_dir)
    assert not (out / "quality.json").exists()
    done = subprocess.run([sys.executable, "-m", "pipeline", "report", str(out), "--reference", "transcript=ref_text",
                           "--reference", "events=ref_events"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "report.html" in done.stdout and json.loads((out / "quality.json").read_text())["transcript"]["rows"] == 4
