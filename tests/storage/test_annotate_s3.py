"""The whole pipeline through Ray with the manifest, the audio and OUT on a local S3 server (fake
model): rows and reason codes, reads retried, a transient failure retried by the next run, the
rerun of a finished run doing nothing, a run killed midway and resumed, and `manifest build` of a
prefix."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline import cli, storage
from pipeline.annotate import annotate
from pipeline.intake.manifest_checks import read_manifest
from pipeline.output.sink import OutputDir
from pipeline.storage import ObjectPath
from pipeline.testing.fake_model import FakeModelFactory
from tests.pipeline.conftest import EXPECTED, fast_config, tone, write_mixed_manifest
from tests.storage.conftest import BUCKET, REGION

REPO = Path(__file__).resolve().parents[2]
# Rows only object storage has: a read the store denies, one it throttles once, one it fails
# throughout the first run.
ON_S3 = {"denied": ("error", "permission_denied"), "flaky": ("ok", None),
         "unavailable": ("error", "storage_unavailable")}


def read_table(s3, where: ObjectPath) -> list[dict]:
    return pq.read_table(pa.BufferReader(s3.get(where))).to_pylist()


def s3_config(model_dir, manifest: ObjectPath, endpoint: str, **overrides):
    return fast_config(model_dir, manifest, s3_endpoint_url=endpoint, s3_region=REGION, s3_max_attempts=2,
                       **overrides)


@pytest.fixture(scope="module")
def s3_runs(ray_cluster, s3_server, checkpoint_dir, tmp_path_factory):
    """Three runs of one manifest on S3: the first with a store failing some reads, the second
    after the failures stopped, the third on the finished OUT with a model that fails everything."""
    s3 = s3_server
    s3.proxy.clear()
    root = ObjectPath(BUCKET, f"e2e-{uuid.uuid4().hex[:8]}")
    data = tmp_path_factory.mktemp("s3") / "data"
    local_manifest = write_mixed_manifest(data)
    for name in ON_S3:
        sf.write(data / "audio" / f"{name}.wav", tone(1.5, 600), 16_000)
    table = pq.read_table(local_manifest)
    extra = pa.table({"id": list(ON_S3), "audio": [f"{n}.wav" for n in ON_S3], "language": [None] * len(ON_S3),
                      "source": [f"s3-{n}" for n in ON_S3]}, schema=table.schema)
    pq.write_table(pa.concat_tables([table, extra]), local_manifest)
    s3.upload(data, root)
    manifest, out = root / local_manifest.name, root / "out"
    model_dir = checkpoint_dir("small-instruct")
    config = s3_config(model_dir, manifest, s3.endpoint)

    def run(factory=FakeModelFactory()):
        return annotate(str(manifest), config, out=str(out), workers=2, progress=False, model_factory=factory)

    for method in ("HEAD", "GET"):
        s3.proxy.fail(method, "/audio/denied.wav", 403, "AccessDenied")
    flaky = s3.proxy.fail("GET", "/audio/flaky.wav", 503, "SlowDown", times=1)
    unavailable = [s3.proxy.fail(method, "/audio/unavailable.wav", 503, "SlowDown") for method in ("HEAD", "GET")]
    try:
        first = run()
        result = {"s3": s3, "out": out, "manifest": manifest, "first": first, "flaky_hits": flaky.hits,
                  "first_rows": read_table(s3, out / "annotations.parquet"),
                  "first_success": json.loads(s3.get(out / "_SUCCESS"))}
        for fault in unavailable:
            s3.proxy.remove(fault)  # the store recovered
        result["second"] = run()
        result["second_rows"] = read_table(s3, out / "annotations.parquet")
        result["second_success"] = json.loads(s3.get(out / "_SUCCESS"))
        s3.proxy.log.clear()
        # A factory that fails on every key: any model work would turn rows into errors.
        result["third"] = run(FakeModelFactory(fail_keys=tuple(f"{k}#0" for k in [*EXPECTED, *ON_S3])))
        result["third_writes"] = s3.writes()
        result["third_rows"] = read_table(s3, out / "annotations.parquet")
        yield result
    finally:
        s3.proxy.clear()
        storage.configure(None)


def test_end_to_end_with_manifest_audio_and_out_on_the_server(s3_runs):
    rows = s3_runs["first_rows"]
    assert [r["id"] for r in rows] == [*EXPECTED, *ON_S3]
    for row in rows:
        assert (row["status"], row["error"]) == {**EXPECTED, **ON_S3}[row["id"]], row
        if row["status"] == "ok":
            assert row["caption"] == f"A sound recorded for {row['id']}#0." or row["id"] == "long"
    by_id = {r["id"]: r for r in rows}
    assert "denied" in by_id["denied"]["error_detail"] and "does not exist" in by_id["missing"]["error_detail"]
    assert by_id["outside"]["error"] == "outside_audio_root" and by_id["folder"]["error"] == "not_a_file"
    assert [r["source"] for r in rows][-3:] == ["s3-denied", "s3-flaky", "s3-unavailable"]  # pass-through
    assert s3_runs["flaky_hits"] == 1  # its read failed once and was retried
    summary = s3_runs["first"]
    assert summary.counts["rows_by_error"]["storage_unavailable"] == 1
    assert summary.run_info["manifest"]["path"] == str(s3_runs["manifest"])
    assert s3_runs["first_success"]["transient_failures"] == 1
    # The layout on the store: every part has its commit record, nothing else is left behind.
    s3, out = s3_runs["s3"], s3_runs["out"]
    keys = s3.keys(out)
    parts = [k for k in keys if k.startswith("parts/")]
    assert parts and sorted(f"commits/{p[len('parts/'):]}.json" for p in parts) == [k for k in keys if k.startswith("commits/")]
    assert {"annotations.parquet", "segments.parquet", "run.json", "_SUCCESS", "state.json", "report.html"} <= set(keys)
    # The report on the store: its rows, and the audio by path only (no player, no presigned URL).
    page = s3.get(out / "report.html").decode()
    assert summary.report == out / "report.html" and f'data-figure="rows">{len(rows)}<' in page
    assert "<audio" not in page and 'class="path">' in page


def test_a_transient_failure_is_retried_by_the_next_run_and_only_it(s3_runs):
    second = s3_runs["second"]
    assert not second.already_complete and second.run_info["this_run"]["items"] == 1
    rows = {r["id"]: r for r in s3_runs["second_rows"]}
    assert (rows["unavailable"]["status"], rows["unavailable"]["caption"]) == ("ok", "A sound recorded for unavailable#0.")
    first = {r["id"]: r for r in s3_runs["first_rows"]}
    assert all(rows[i] == first[i] for i in first if i != "unavailable")
    assert s3_runs["second_success"]["transient_failures"] == 0


def test_the_rerun_of_a_finished_run_does_no_work(s3_runs):
    assert s3_runs["third"].already_complete
    # Not one object written or deleted, but the run's lock on OUT (output/lock.py): taken and released.
    # (The proxy may log the release's upload just after the run returned: one or two of them.)
    assert {(w.method, w.path.rsplit("/", 1)[-1]) for w in s3_runs["third_writes"]} == {("PUT", "_LOCK")}
    assert s3_runs["third_rows"] == s3_runs["second_rows"]


KILLABLE_RUN = """
import sys
from pipeline import storage
from pipeline.annotate import annotate
from pipeline.testing.fake_model import FakeModelFactory
from tests.storage.test_annotate_s3 import s3_config
manifest, out, model, endpoint = sys.argv[1:]
config = s3_config(model, storage.location(manifest), endpoint, commit_items=1, batch_items=1)
annotate(manifest, config, out=out, workers=1, progress=False, model_factory=FakeModelFactory(delay_s=1.0))
"""


def _end_session(leader: subprocess.Popen) -> None:
    """SIGKILL the run and everything it started (its own Ray), leaving no process behind."""
    os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()
    for _ in range(50):
        left = [p for p in psutil.process_iter(["pid"]) if _session(p) == leader.pid]
        if not left:
            return
        for process in left:
            process.kill()
        time.sleep(0.1)
    raise AssertionError(f"processes of the killed run are still alive: {left}")


def _session(process: psutil.Process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:
        return None


def test_a_run_killed_midway_resumes_on_object_storage_with_every_row_committed_once(
        ray_cluster, s3, checkpoint_dir, tmp_path):
    ids = [f"clip{i}" for i in range(8)]
    for i, clip in enumerate(ids):
        buffer = io.BytesIO()
        sf.write(buffer, tone(1.0 + 0.1 * i, 300 + 40 * i), 16_000, format="WAV")
        s3.put(s3.root / "audio" / f"{clip}.wav", buffer.getvalue())
    table = pa.table({"id": ids, "audio": [f"{c}.wav" for c in ids], "duration_s": [1.0 + 0.1 * i for i in range(8)]})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    manifest, out = s3.put(s3.root / "clips.parquet", buffer.getvalue().to_pybytes()), s3.root / "out"
    model_dir = checkpoint_dir("small-instruct")
    sink = OutputDir(out)

    job = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, str(manifest), str(out), str(model_dir), s3.endpoint],
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(sink.committed_parts()) < 3 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.poll() is None, job.stdout.read().decode()[-3000:]
    finally:
        _end_session(job)
    assert "_SUCCESS" not in s3.keys(out)
    committed_before = len(sink.committed()[0])
    assert 3 <= committed_before < len(ids)
    # Also what a kill between a part and its commit record leaves: a part no record names, here
    # holding keys that are committed already. Readers must ignore it.
    first = sink.committed_parts()[0]
    orphan = s3.put(out / "parts" / "part-0123456789abcdef0123-0badc0ffee00.parquet", s3.get(first))

    config = s3_config(model_dir, manifest, s3.endpoint, commit_items=1, batch_items=1)
    summary = annotate(str(manifest), config, out=str(out), workers=2, progress=False, model_factory=FakeModelFactory())
    assert summary.run_info["this_run"]["items"] == len(ids) - committed_before
    rows = read_table(s3, out / "annotations.parquet")
    assert [(r["id"], r["status"], r["caption"]) for r in rows] == [
        (clip, "ok", f"A sound recorded for {clip}#0.") for clip in ids]
    keys = [k for part in sink.committed_parts()
            for k in pq.read_table(pa.BufferReader(s3.get(part)), columns=["key"]).column("key").to_pylist()]
    assert sorted(keys) == sorted(f"{clip}#0" for clip in ids)  # every row committed exactly once
    assert orphan.name not in s3.keys(out / "parts")  # swept by the resumed run


def test_manifest_build_lists_and_probes_a_prefix(s3, monkeypatch, capsys):
    for name, seconds in (("speech/a.wav", 1.5), ("speech/b.flac", 2.5), ("music/c.ogg", 3.0)):
        buffer = io.BytesIO()
        sf.write(buffer, tone(seconds, 440), 16_000, format=Path(name).suffix[1:].upper())
        s3.put(s3.root / "set" / name, buffer.getvalue())
    s3.put(s3.root / "set/broken.wav", np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    s3.put(s3.root / "set/notes.txt", b"not audio")
    # From the standard environment variables alone, as the command line runs it.
    storage.configure(None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_REGION", REGION)
    output = s3.root / "set" / "manifest.parquet"
    assert cli.main(["manifest", "build", f"{s3.root}/set/", "-o", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 4 rows to {output}" in printed and "broken.wav: corrupt_audio" in printed
    manifest = read_manifest(str(output))
    assert manifest.ids == ["broken", "music/c", "speech/a", "speech/b"]
    assert manifest.paths == ["broken.wav", "music/c.ogg", "speech/a.wav", "speech/b.flac"]  # relative: they move together
    assert manifest.durations == [None, pytest.approx(3.0), pytest.approx(1.5), pytest.approx(2.5)]
    assert cli.main(["manifest", "validate", str(output)]) == 0
