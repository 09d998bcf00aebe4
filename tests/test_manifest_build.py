"""`manifest build`: one row per audio file, stable ids, header durations, unreadable files kept
and reported, relocatable paths, atomic writes."""

import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.storage import writing
from pipeline.intake.manifest_checks import read_manifest
from pipeline.intake.manifest_table import ManifestError
from pipeline.intake.manifest_build import build_manifest
from pipeline.reasons import Reason


@pytest.fixture
def folder(tmp_path, write_tone):
    """Good clips in several formats and folders, a corrupt one, a truncated one, and non-audio files."""
    write_tone("data/speech/one.wav", seconds=1.5)
    write_tone("data/speech/two.flac", seconds=2.5, rate=44_100, channels=2)
    write_tone("data/music/song.ogg", seconds=3.0, rate=48_000, format="OGG", subtype="VORBIS")
    write_tone("data/music/voice.opus", seconds=2.0, format="OGG", subtype="OPUS")
    write_tone("data/music/track.MP3", seconds=4.0, format="MP3")  # extensions match in any case
    write_tone("data/same.wav", seconds=1.0)
    write_tone("data/same.flac", seconds=2.0)  # same name, other extension: both must survive
    data = tmp_path / "data"
    (data / "broken.wav").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    cut = write_tone("data/cut.wav", seconds=4.0)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    (data / "notes.txt").write_text("not audio")
    (data / "speech" / "labels.json").write_text("{}")
    return data


EXPECTED = {  # id: (audio relative to data/, duration)
    "speech/one": ("speech/one.wav", 1.5),
    "speech/two": ("speech/two.flac", 2.5),
    "music/song": ("music/song.ogg", 3.0),
    "music/voice": ("music/voice.opus", 2.0),
    "music/track": ("music/track.MP3", 4.0),
    "same.wav": ("same.wav", 1.0),
    "same.flac": ("same.flac", 2.0),
    "broken": ("broken.wav", None),
    "cut": ("cut.wav", None),
}


def rows(path):
    table = pq.read_table(path)
    return {r["id"]: (r["audio"], r["duration_s"]) for r in table.to_pylist()}


def test_builds_one_row_per_audio_file(folder):
    report = build_manifest(folder, folder / "manifest.parquet")
    got = rows(folder / "manifest.parquet")
    assert set(got) == set(EXPECTED)
    for id_, (audio, duration) in EXPECTED.items():
        assert got[id_][0] == audio
        assert got[id_][1] == (None if duration is None else pytest.approx(duration, abs=0.03)), id_
    assert report.rows == len(EXPECTED) and report.ignored == 2
    assert report.total_duration_s == pytest.approx(16.0, abs=0.1)
    manifest = read_manifest(folder / "manifest.parquet")  # what it writes, validation accepts
    assert manifest.ids == sorted(EXPECTED)


def test_unreadable_files_are_kept_and_reported(folder):
    report = build_manifest(folder, folder / "manifest.parquet")
    reasons = {u.id: u.failure.reason for u in report.unprobed}
    assert reasons == {"broken": Reason.CORRUPT_AUDIO, "cut": Reason.TRUNCATED_AUDIO}
    summary = report.summary()
    assert "2 file(s) could not be read" in summary
    assert "broken.wav: corrupt_audio" in summary and "cut.wav: truncated_audio" in summary
    assert "ignored 2 file(s)" in summary


def test_ids_are_stable_across_runs_and_ways_of_naming_the_files(folder, tmp_path):
    build_manifest(folder, tmp_path / "first.parquet")
    build_manifest(folder, tmp_path / "second.parquet")
    first = pq.read_table(tmp_path / "first.parquet")
    assert first.equals(pq.read_table(tmp_path / "second.parquet"))
    assert first.column("id").to_pylist() == sorted(first.column("id").to_pylist())
    build_manifest(f"{folder}/**/*.wav", tmp_path / "glob.parquet")
    glob_ids = pq.read_table(tmp_path / "glob.parquet").column("id").to_pylist()
    assert glob_ids == ["broken", "cut", "same", "speech/one"]  # same.flac is not in this set


def test_paths_are_relative_when_the_manifest_sits_above_its_audio(folder, tmp_path):
    build_manifest(folder, folder / "manifest.parquet")
    moved = tmp_path / "moved"
    shutil.move(folder, moved)  # the manifest travels with its audio
    manifest = read_manifest(moved / "manifest.parquet")
    for path in manifest.paths:
        assert (manifest.base_dir / path).is_file()
    build_manifest(moved, tmp_path / "elsewhere" / "manifest.parquet")
    paths = pq.read_table(tmp_path / "elsewhere" / "manifest.parquet").column("audio").to_pylist()
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in paths)


def test_a_failed_write_leaves_the_old_manifest(folder, monkeypatch):
    out = folder / "manifest.parquet"
    build_manifest(folder, out)
    before = out.read_bytes()

    def crash(table, where, **kwargs):
        with open(where, "wb") as fh:
            fh.write(b"half a parquet file")
        raise OSError("disk full")

    monkeypatch.setattr(writing.pq, "write_table", crash)  # storage writes every file
    with pytest.raises(OSError):
        build_manifest(folder, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) == []


def test_nothing_to_build(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(ManifestError, match="no audio files"):
        build_manifest(tmp_path / "empty", tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="neither a folder"):
        build_manifest(tmp_path / "nowhere", tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="no audio files"):
        build_manifest(f"{tmp_path}/nowhere/*.wav", tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_cli_build(folder, capsys):
    assert cli.main(["manifest", "build", str(folder), "-o", str(folder / "m.parquet")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(EXPECTED)} rows" in out and "broken.wav: corrupt_audio" in out
    assert cli.main(["manifest", "validate", str(folder / "m.parquet")]) == 0
