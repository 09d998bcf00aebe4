"""Embedded audio on object storage: Parquet cells and tar members read with ranged requests, only
the parts of the shard that hold the wanted audio."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import pytest

from pipeline.intake import audio
from pipeline.intake.embedded.files import AudioBytes
from pipeline.intake.embedded.parquet_cells import read_cells
from pipeline.intake.embedded.refs import ParquetCell
from pipeline.intake.embedded.tar_index import read_samples
from pipeline.reasons import Failure, Reason
from pipeline.testing.shards import recordings, webdataset_members, write_hf_parquet, write_tar

CLIPS = recordings()


def served(s3, name: str) -> int:
    return sum(e.size for e in s3.proxy.log if e.method == "GET" and name in e.path)


def test_cells_of_one_row_group_read_little_more_than_that_row_group(s3, tmp_path):
    names = list(CLIPS)
    values = [{"bytes": CLIPS[names[i % len(names)]], "path": names[i % len(names)]} for i in range(40)]
    local = write_hf_parquet(tmp_path / "train.parquet", values, row_group_size=10)
    shard = s3.put(s3.root / "train.parquet", local.read_bytes())
    s3.proxy.clear()
    got = read_cells([ParquetCell(shard, 21), ParquetCell(shard, 23)])
    for row in (21, 23):
        assert isinstance(got[ParquetCell(shard, row)], AudioBytes)
        assert got[ParquetCell(shard, row)].data == values[row]["bytes"]
    group = sum(len(v["bytes"]) for v in values[20:30])
    assert group <= served(s3, "train.parquet") < group + 256 * 1024  # one row group (and the footer)
    decoded = audio.decode(got[ParquetCell(shard, 21)])
    assert not isinstance(decoded, Failure)


def test_tar_members_are_indexed_and_read_by_range(s3, tmp_path):
    story = audio.decode(AudioBytes("story", CLIPS["long_story.opus"]))
    pcm = io.BytesIO()
    sf.write(pcm, story.samples, 16_000, format="WAV", subtype="PCM_16")  # 1.7 MB of real speech
    clips = {**CLIPS, "story_pcm.wav": pcm.getvalue(), "story_pcm_copy.wav": pcm.getvalue()}
    local = write_tar(tmp_path / "shard-000000.tar", webdataset_members(clips))
    shard = s3.put(s3.root / "shard-000000.tar", local.read_bytes())
    s3.proxy.clear()
    samples = read_samples(shard)
    assert len(samples) == len(clips) and all(s.metadata and s.text for s in samples)
    assert served(s3, "shard-000000.tar") < local.stat().st_size / 2  # audio data is skipped, not read
    s3.proxy.clear()
    member = next(s.audio[0] for s in samples if s.key == "speech_greeting")
    from_s3 = audio.decode(member)
    np.testing.assert_array_equal(from_s3.samples, audio.decode(AudioBytes("x", CLIPS["speech_greeting.wav"])).samples)
    assert served(s3, "shard-000000.tar") < 3 * member.size


def test_a_failing_store_is_transient_for_cells_and_members(s3, tmp_path):
    local = write_hf_parquet(tmp_path / "t.parquet", [{"bytes": CLIPS["dog_barks.flac"], "path": "a.flac"}])
    shard = s3.put(s3.root / "t.parquet", local.read_bytes())
    tar = s3.put(s3.root / "t.tar", write_tar(tmp_path / "t.tar", webdataset_members(CLIPS)).read_bytes())
    [sample, *_] = read_samples(tar)
    s3.proxy.fail("GET", "t.parquet", 503, "SlowDown")
    s3.proxy.fail("GET", "t.tar", 503, "SlowDown")
    s3.proxy.fail("HEAD", "t.tar", 503, "SlowDown")
    got = read_cells([ParquetCell(shard, 0)])[ParquetCell(shard, 0)]
    assert isinstance(got, Failure) and got.reason == Reason.STORAGE_UNAVAILABLE
    result = audio.decode(sample.audio[0])
    assert isinstance(result, Failure) and result.reason == Reason.STORAGE_UNAVAILABLE


# --- the whole pipeline on object storage ------------------------------------------------------------

def test_hub_parquet_and_webdataset_shards_annotated_on_object_storage(ray_cluster, s3, checkpoint_dir, tmp_path):
    from pipeline.annotate import annotate
    from pipeline.testing.fake_model import FakeModelFactory
    from tests.storage.test_annotate_s3 import read_table, s3_config

    names = [n for n in CLIPS if n != "long_story.opus"]
    values = [{"bytes": CLIPS[n], "path": n} for n in names] + [{"bytes": b"\x00\x01" * 300, "path": "x.flac"}]
    parquet = s3.put(s3.root / "hub" / "data" / "train-00000-of-00001.parquet", write_hf_parquet(
        tmp_path / "hub.parquet", values, {"label": names + ["junk"]}, row_group_size=3).read_bytes())
    for i, part in enumerate((names[:3], names[3:])):
        s3.put(s3.root / "wds" / f"shard-00000{i}.tar", write_tar(
            tmp_path / f"{i}.tar", webdataset_members({n: CLIPS[n] for n in part})).read_bytes())
    model_dir = checkpoint_dir("small-instruct")

    out = s3.root / "out-hub"
    config = s3_config(model_dir, parquet, s3.endpoint, audio_root=None, batch_items=4)
    annotate(f"{s3.root}/hub/data/", config, out=str(out), workers=1, progress=False, model_factory=FakeModelFactory())
    rows = read_table(s3, out / "annotations.parquet")
    assert [r["label"] for r in rows] == names + ["junk"]
    assert [r["status"] for r in rows] == ["ok"] * len(names) + ["error"]
    assert rows[-1]["error"] in ("corrupt_audio", "unsupported_codec")
    assert rows[0]["audio"] == f"{parquet}#0" and rows[0]["id"] == f"{parquet.name}/0"
    for row, name in zip(rows, names):
        assert row["duration_s"] == pytest.approx(audio.probe(AudioBytes("x", CLIPS[name])).duration_s, abs=0.05)

    out = s3.root / "out-wds"
    config = s3_config(model_dir, parquet, s3.endpoint, audio_root=None, batch_items=4)
    annotate(f"{s3.root}/wds/shard-*.tar", config, out=str(out), workers=1, progress=False,
             model_factory=FakeModelFactory())
    rows = {r["id"]: r for r in read_table(s3, out / "annotations.parquet")}
    assert sorted(rows) == sorted(n.rsplit(".", 1)[0] for n in names)
    assert all(r["status"] == "ok" and r["source"] and r["text"] for r in rows.values())
    first = names[0].rsplit(".", 1)[0]
    assert rows[first]["audio"] == f"{s3.root}/wds/shard-000000.tar#{first}"


KILLABLE_SHARD_RUN = """
import sys
from pipeline import storage
from pipeline.annotate import annotate
from pipeline.testing.fake_model import FakeModelFactory
from tests.storage.test_annotate_s3 import s3_config
manifest, out, model, endpoint = sys.argv[1:]
config = s3_config(model, storage.location(manifest), endpoint, audio_root=None, commit_items=1, batch_items=1)
annotate(manifest, config, out=out, workers=1, progress=False, model_factory=FakeModelFactory(delay_s=1.0))
"""


def test_a_run_killed_mid_shard_resumes_with_every_sample_committed_once(ray_cluster, s3, checkpoint_dir, tmp_path):
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from pipeline.annotate import annotate
    from pipeline.output.sink import OutputDir
    from pipeline.testing.fake_model import FakeModelFactory
    from tests.storage.test_annotate_s3 import _end_session, read_table, s3_config

    clips = {f"c{i}_{n}": data for i, (n, data) in enumerate(list(CLIPS.items())[:8])}
    shard = s3.put(s3.root / "shard-000000.tar", write_tar(tmp_path / "s.tar", webdataset_members(clips)).read_bytes())
    out, model_dir = s3.root / "out", checkpoint_dir("small-instruct")
    sink = OutputDir(out)
    repo = Path(__file__).resolve().parents[2]
    job = subprocess.Popen([sys.executable, "-c", KILLABLE_SHARD_RUN, str(shard), str(out), str(model_dir), s3.endpoint],
                           cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(sink.committed_parts()) < 3 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.poll() is None, job.stdout.read().decode()[-3000:]
    finally:
        _end_session(job)
    committed_before = len(sink.committed()[0])
    assert 3 <= committed_before < len(clips)

    config = s3_config(model_dir, shard, s3.endpoint, audio_root=None, commit_items=1, batch_items=1)
    summary = annotate(str(shard), config, out=str(out), workers=1, progress=False, model_factory=FakeModelFactory())
    keys = sorted(n.rsplit(".", 1)[0] for n in clips)
    rows = read_table(s3, out / "annotations.parquet")
    assert sorted(r["id"] for r in rows) == keys and all(r["status"] == "ok" for r in rows)
    committed = [k for part in sink.committed_parts()
                 for k in pq.read_table(pa.BufferReader(s3.get(part)), columns=["key"]).column("key").to_pylist()]
    expected = sorted(f"{r['id']}#{segment}" for r in rows for segment in range(r["n_segments"]))
    assert sorted(committed) == expected  # every sample (each segment of the long one) committed exactly once
    assert summary.run_info["this_run"]["items"] == len(expected) - committed_before  # nothing done twice
