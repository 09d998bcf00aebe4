"""Embedded audio on object storage: Parquet cells and tar members read with ranged requests, only
the parts of the shard that hold the wanted audio."""

from __future__ import annotations

import io

import numpy as np
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
