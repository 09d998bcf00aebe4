"""Shards as manifests, without running anything: ids, rows, the audio values planning receives,
brace ranges and what stops a run before any work."""

from __future__ import annotations

import json

import pytest

from pipeline.intake.embedded import refs
from pipeline.intake.embedded.webdataset import expand_braces
from pipeline.intake.manifest_set import default_out_name, read_manifests
from pipeline.intake.manifest_table import ManifestError
from pipeline.reasons import Reason
from pipeline.testing.shards import recordings, webdataset_members, write_hf_parquet, write_tar

CLIPS = recordings(with_m4a=False)
WAV, FLAC = CLIPS["speech_greeting.wav"], CLIPS["dog_barks.flac"]


def test_brace_ranges_keep_their_padding():
    assert expand_braces("s/shard-{000008..000011}.tar") == [f"s/shard-{n:06d}.tar" for n in range(8, 12)]
    assert expand_braces("{a,b}/x-{1..2}.tar") == ["a/x-1.tar", "a/x-2.tar", "b/x-1.tar", "b/x-2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"] and expand_braces("odd{x}.tar") == ["odd{x}.tar"]


def test_parquet_ids_and_audio_values(tmp_path):
    values = [{"bytes": WAV, "path": "a.wav"}, {"bytes": FLAC, "path": "b.flac"}]
    plain = read_manifests(write_hf_parquet(tmp_path / "p" / "train-0.parquet", values, {"speaker": ["x", "y"]}))
    assert plain.ids == ["train-0.parquet/0", "train-0.parquet/1"]
    cell = refs.parse(plain.paths[1])
    assert isinstance(cell, refs.ParquetCell) and cell.row == 1 and cell.shard.is_absolute() and not cell.fallback
    assert plain.passthrough_columns == ["speaker"] and plain.durations == [None, None]

    named = read_manifests(write_hf_parquet(tmp_path / "n" / "t.parquet", values, {"utt": [7, 8]}), id_column="utt")
    assert named.ids == ["7", "8"]
    with pytest.raises(ManifestError, match="id_column 'nope'"):
        read_manifests(tmp_path / "n" / "t.parquet", id_column="nope")
    own = read_manifests(write_hf_parquet(tmp_path / "o" / "t.parquet", values, {"id": ["u1", "u2"]}))
    assert own.ids == ["u1", "u2"]


def test_row_groups_without_bytes_are_paths_and_mixed_ones_carry_their_path(tmp_path):
    values = [{"bytes": None, "path": "x/a.wav"}, None, {"bytes": WAV, "path": "b.wav"}, {"bytes": None, "path": "c.wav"}]
    manifest = read_manifests(write_hf_parquet(tmp_path / "t.parquet", values, row_group_size=2))
    first, null_struct, *mixed = manifest.paths
    assert first == "x/a.wav"  # a group with no bytes at all: rows are paths, resolved as manifest paths are
    assert refs.parse(null_struct).failure.reason == Reason.NO_AUDIO
    assert [refs.parse(v).fallback for v in mixed] == ["b.wav", "c.wav"]  # the worker reads the path if bytes are null


def test_webdataset_rows(tmp_path):
    members = webdataset_members({"a.wav": WAV, "b.flac": FLAC}) + [
        ("c.json", json.dumps({"id": "cid", "audio": "elsewhere", "duration_s": 2.5}).encode()), ("c.wav", WAV),
        ("d.json", b"[1, 2]"), ("d.wav", WAV)]
    shard = write_tar(tmp_path / "s" / "shard-000003.tar", members)
    with pytest.raises(ManifestError, match="null id"):  # an id field in one sample's JSON: every sample needs one
        read_manifests(str(tmp_path / "s" / "shard-{000003..000003}.tar"))
    members = [m for m in members if not m[0].startswith("c.")]
    shard = write_tar(shard, members)
    manifest = read_manifests(str(tmp_path / "s" / "shard-{000003..000003}.tar"))
    assert manifest.ids == ["a", "b", "d"]
    assert [refs.display(v) for v in manifest.paths] == [f"{shard}#{k}" for k in ("a", "b", "d")]
    assert refs.parse(manifest.paths[2]).failure.reason == Reason.CORRUPT_SHARD  # its JSON is not an object
    assert manifest.table.column("text").to_pylist()[:2] == ["the a clip", "the b clip"]
    assert default_out_name(str(tmp_path / "s" / "shard-{000003..000004}.tar")) == "s"


def test_what_stops_a_run_before_any_work(tmp_path):
    (tmp_path / "x.tar").write_bytes(WAV)
    with pytest.raises(ManifestError, match="x.tar is not a tar file"):
        read_manifests(tmp_path / "x.tar")
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifests(str(tmp_path / "shard-{0..1}.tar"))
