"""Audio where datasets keep it, through the whole pipeline (Ray, the fake model): a Hugging Face
layout Parquet file and WebDataset tar shards of real recordings are annotated row by row, bad
rows become error rows with their reasons, the output says where each row's audio came from and
never holds its bytes, and the driver never reads the audio bytes itself."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.annotate import annotate
from pipeline.intake import audio
from pipeline.intake.embedded.files import AudioBytes
from pipeline.testing.fake_model import FakeModelFactory
from pipeline.testing.shards import recordings, webdataset_members, write_hf_parquet, write_tar
from tests.pipeline.conftest import fast_config

CLIPS = recordings()


@pytest.fixture
def model_dir(checkpoint_dir):
    return checkpoint_dir("small-instruct")


def run(manifest, out, model_dir, **overrides):
    anchor = Path(manifest if isinstance(manifest, (str, Path)) else manifest[0])
    config = fast_config(model_dir, anchor, audio_root=None, batch_items=4, **overrides)
    return annotate(manifest, config, out=out, workers=1, progress=False, model_factory=FakeModelFactory())


def duration(data: bytes) -> float:
    return audio.probe(AudioBytes("x", data)).duration_s


def hub_parquet(folder: Path) -> tuple[Path, dict]:
    """Real recordings as bytes, a row with only a path, garbage, empty bytes, a null struct."""
    shutil.copy(Path(__file__).resolve().parents[2] / "manifests" / "audio" / "dog_barks.flac", folder / "dog.flac")
    names = [n for n in CLIPS if n != "long_story.opus"]
    values = [{"bytes": CLIPS[n], "path": n} for n in names]
    expected = {n: ("ok", None, duration(CLIPS[n])) for n in names}
    values += [{"bytes": None, "path": "dog.flac"}, {"bytes": b"\x13\x37" * 400, "path": "noise.wav"},
               {"bytes": b"", "path": "empty.mp3"}, None, {"bytes": CLIPS["long_story.opus"], "path": "story.opus"}]
    expected.update({"dog.flac": ("ok", None, 4.0), "noise.wav": ("error", "corrupt_audio", None),
                     "empty.mp3": ("error", "empty_audio", None), None: ("error", "no_audio", None),
                     "story.opus": ("ok", None, duration(CLIPS["long_story.opus"]))})
    labels = [v["path"] if v else None for v in values]
    path = write_hf_parquet(folder / "train-00000-of-00001.parquet", values, {"speaker": labels}, row_group_size=4)
    return path, {f"{path.name}/{row}": (label, *expected[label]) for row, label in enumerate(labels)}


class _Recording(io.RawIOBase):
    """A file that notes each byte range read from it."""

    def __init__(self, inner, ranges):
        self.inner, self.ranges = inner, ranges

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.inner.seek(offset, whence)

    def tell(self):
        return self.inner.tell()

    def readinto(self, buffer):
        start = self.inner.tell()
        got = self.inner.readinto(buffer)
        self.ranges.append((start, start + (got or 0)))
        return got

    def close(self):
        self.inner.close()
        super().close()


def test_a_hub_parquet_file_row_by_row(ray_cluster, model_dir, tmp_path, monkeypatch):
    shard, expected = hub_parquet(tmp_path)
    ranges: list[tuple[int, int]] = []
    real_open = storage.open_input

    def recording(where, quiet=False):  # the driver's reads only: workers are other processes
        opened = real_open(where, quiet)
        return _Recording(opened, ranges) if Path(str(where)).name == shard.name else opened

    monkeypatch.setattr(storage, "open_input", recording)
    summary = run(shard, tmp_path / "out", model_dir)
    rows = pq.read_table(tmp_path / "out" / "annotations.parquet").to_pylist()
    assert [r["id"] for r in rows] == list(expected)
    for row in rows:
        label, status, reason, seconds = expected[row["id"]]
        assert (row["status"], row["error"], row["speaker"]) == (status, reason, label), row
        assert row["audio"] == f"{shard}#{row['id'].rsplit('/', 1)[1]}"
        if seconds is None:
            assert row["duration_s"] is None
        else:
            assert row["duration_s"] == pytest.approx(seconds, abs=0.05)
    story = [r for r in rows if r["speaker"] == "story.opus"][0]
    assert story["n_segments"] > 1  # longer than a window: planned again from its decoded length
    assert summary.counts["rows_by_status"] == {"ok": len(expected) - 3, "error": 3}
    # The driver read the shard's footer and other columns, never a byte of the audio's column chunks.
    metadata = pq.ParquetFile(shard).metadata
    audio_chunks = []
    for group in range(metadata.num_row_groups):
        chunk = metadata.row_group(group).column(1)
        assert chunk.path_in_schema == "audio.bytes"
        start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o is not None)
        audio_chunks.append((start, start + chunk.total_compressed_size))
    assert ranges, "the driver read the shard's footer and columns through storage"
    for lo, hi in ranges:
        assert not any(lo < end and start < hi for start, end in audio_chunks), (lo, hi, audio_chunks)
    assert_no_audio_bytes(tmp_path / "out")


def assert_no_audio_bytes(out: Path) -> None:
    for name in ("annotations.parquet", "segments.parquet"):
        table = pq.read_table(out / name)
        assert not [f for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    assert (out / "annotations.parquet").stat().st_size < 100_000


def test_webdataset_shards_by_glob_and_by_brace_range(ray_cluster, model_dir, tmp_path):
    names = list(CLIPS)
    first = write_tar(tmp_path / "shards" / "shard-000000.tar", webdataset_members(
        {n: CLIPS[n] for n in names[:4]}, prefix="a/") + [("a/notes.json", b'{"source": "notes"}')])
    write_tar(tmp_path / "shards" / "shard-000001.tar", webdataset_members({n: CLIPS[n] for n in names[4:]}) + [
        ("two.wav", CLIPS["speech_greeting.wav"]), ("two.flac", CLIPS["dog_barks.flac"]),
        ("cover.jpg", b"\xff\xd8\xff not audio")])
    out = tmp_path / "out"
    run(str(tmp_path / "shards" / "*.tar"), out, model_dir)
    rows = {r["id"]: r for r in pq.read_table(out / "annotations.parquet").to_pylist()}
    expected_keys = [f"a/{n.rsplit('.', 1)[0]}" for n in names[:4]] + ["a/notes"] + \
                    [n.rsplit(".", 1)[0] for n in names[4:]] + ["two", "cover"]
    assert sorted(rows) == sorted(expected_keys)
    for name in names:
        key = ("a/" if name in names[:4] else "") + name.rsplit(".", 1)[0]
        row = rows[key]
        assert (row["status"], row["source"], row["format"]) == ("ok", name, name.rsplit(".", 1)[1])
        assert row["text"] == f"the {name.rsplit('.', 1)[0].replace('_', ' ')} clip"
        assert row["duration_s"] == pytest.approx(duration(CLIPS[name]), abs=0.05)
        shard = first if name in names[:4] else tmp_path / "shards" / "shard-000001.tar"
        assert row["audio"] == f"{shard}#{key}"
    assert (rows["a/notes"]["error"], rows["a/notes"]["source"]) == ("no_audio", "notes")
    assert rows["two"]["error"] == "ambiguous_audio" and "two.wav, two.flac" in rows["two"]["error_detail"]
    assert rows["cover"]["error"] == "no_audio"
    assert_no_audio_bytes(out)

    again = tmp_path / "again"  # the same shards named by a brace range: the same rows
    summary = run([str(tmp_path / "shards" / "shard-{000000..000001}.tar")], again, model_dir)
    assert {r["id"]: r["status"] for r in pq.read_table(again / "annotations.parquet").to_pylist()} == \
           {k: r["status"] for k, r in rows.items()}
    assert summary.counts["rows_by_status"]["error"] == 3


def test_a_tar_that_is_not_a_tar_stops_the_run_naming_it(model_dir, tmp_path):
    bad = tmp_path / "shard-000000.tar"
    bad.write_bytes(CLIPS["dog_barks.flac"])
    from pipeline.intake.manifest_table import ManifestError

    with pytest.raises(ManifestError, match="shard-000000.tar is not a tar file"):
        run(bad, tmp_path / "out", model_dir)


def test_resume_budgets_and_changed_shards(ray_cluster, model_dir, tmp_path):
    names = list(CLIPS)[:6]
    shards = tmp_path / "shards"
    for i, part in enumerate((names[:3], names[3:])):
        write_tar(shards / f"shard-00000{i}.tar", webdataset_members({n: CLIPS[n] for n in part}))
    out = tmp_path / "out"
    first = run(str(shards), out, model_dir, max_rows=2)
    assert first.stopped_early and first.rows_committed == 2
    finished = run(str(shards), out, model_dir)
    assert finished.run_info["this_run"]["items"] == 4  # the rest, not the first two again
    assert run(str(shards), out, model_dir).already_complete
    # A shard written anew (new content, new version): its samples are labelled again, the others kept.
    write_tar(shards / "shard-000001.tar", webdataset_members({n: CLIPS[n] for n in names[3:]}, prefix=""))
    (shards / "shard-000001.tar").touch()
    again = run(str(shards), out, model_dir)
    assert again.run_info["this_run"]["items"] == 3


def test_manifest_validate_reports_the_shards_checks(tmp_path, capsys):
    from pipeline import cli

    shard, expected = hub_parquet(tmp_path)
    assert cli.main(["manifest", "validate", str(shard)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(expected)} rows" in printed and "pass-through columns: speaker" in printed
    assert f"{len(expected)} embedded in Parquet" in printed  # one row group holds nulls: every row a cell
    write_tar(tmp_path / "s" / "shard-000000.tar", webdataset_members({"a.wav": CLIPS["speech_greeting.wav"]}) + [
        ("b.json", b"{}"), ("c.wav", CLIPS["speech_greeting.wav"]), ("c.flac", CLIPS["dog_barks.flac"])])
    assert cli.main(["manifest", "validate", str(tmp_path / "s" / "shard-{000000..000000}.tar")]) == 0
    printed = capsys.readouterr().out
    assert "3 rows" in printed and "1 tar members, 1 no_audio, 1 ambiguous_audio" in printed
