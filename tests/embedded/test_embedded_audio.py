"""Audio kept inside other files, read on the workers: a Parquet cell's bytes and a tar member read
in place decode exactly as the same recording as a file; bad bytes get the reasons files get."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.intake import audio
from pipeline.intake.embedded import refs
from pipeline.intake.embedded.files import AudioBytes
from pipeline.intake.embedded.parquet_cells import read_cells
from pipeline.intake.embedded.refs import ParquetCell, TarMember
from pipeline.intake.embedded.tar_index import NotATar, read_samples, split_key
from pipeline.items import Batch, Item
from pipeline.reasons import Failure, Reason
from pipeline.run.worker import BatchPreparer, ReadyClip
from pipeline.testing.shards import EXAMPLE_AUDIO, recordings, webdataset_members, write_hf_parquet, write_tar

CLIPS = recordings()
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def failed(result, reason: Reason) -> Failure:
    assert isinstance(result, Failure), result
    assert result.reason == reason, result
    return result


def as_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "files" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(CLIPS[name])
    return path


@pytest.mark.parametrize("name", [n for n in CLIPS if not n.endswith(".m4a")] + [
    pytest.param("speech_greeting_aac.m4a", marks=needs_ffmpeg)])
@pytest.mark.parametrize("hinted", [True, False])
def test_bytes_decode_exactly_as_the_file(tmp_path, name, hinted):
    if name not in CLIPS:
        pytest.skip("no m4a without ffmpeg")
    file = as_file(tmp_path, name)
    blob = AudioBytes("shard.parquet#3", CLIPS[name], name if hinted else "")
    expected, got = audio.decode(file), audio.decode(blob)
    assert not isinstance(got, Failure), got
    np.testing.assert_array_equal(got.samples, expected.samples)
    assert audio.probe(blob).duration_s == pytest.approx(audio.probe(file).duration_s)
    region = audio.decode(blob, 1.0, 2.5)
    np.testing.assert_array_equal(region.samples, audio.decode(file, 1.0, 2.5).samples)


def test_bad_bytes_get_the_reasons_files_get():
    garbage = bytes(range(256)) * 16
    assert "shard.parquet#4" in failed(audio.decode(AudioBytes("shard.parquet#4", garbage, "x.wav")),
                                       Reason.CORRUPT_AUDIO).detail
    failed(audio.probe(AudioBytes("shard.parquet#5", b"", "x.flac")), Reason.EMPTY_AUDIO)
    failed(audio.decode(AudioBytes("shard.parquet#5", b"")), Reason.EMPTY_AUDIO)
    cut = CLIPS["speech_greeting.wav"][: len(CLIPS["speech_greeting.wav"]) // 2]
    failed(audio.decode(AudioBytes("shard.parquet#6", cut, "a.wav")), Reason.TRUNCATED_AUDIO)
    unknown = audio.decode(AudioBytes("shard.parquet#7", garbage))  # no name, no known container
    assert unknown.reason in (Reason.UNSUPPORTED_CODEC, Reason.CORRUPT_AUDIO)
    if shutil.which("ffmpeg"):  # ffmpeg's messages name the row, never a temporary file
        assert "pipeline-embedded" not in unknown.detail and "shard.parquet#7" in unknown.detail


# --- Parquet cells ------------------------------------------------------------------------------------

def hf_shard(tmp_path: Path, names: list[str], row_group_size: int = 3) -> Path:
    values = [{"bytes": CLIPS[n], "path": n} for n in names]
    return write_hf_parquet(tmp_path / "train-00000-of-00001.parquet", values,
                            {"id": [f"r{i}" for i in range(len(names))]}, row_group_size=row_group_size)


def test_cells_read_by_row_group_decode_as_the_files(tmp_path):
    names = list(CLIPS)
    shard = hf_shard(tmp_path, names)
    cells = [ParquetCell(shard, row) for row in range(len(names))]
    found = read_cells(reversed(cells))
    for cell, name in zip(cells, names):
        blob = found[cell]
        assert isinstance(blob, AudioBytes) and blob.data == CLIPS[name] and blob.suffix == Path(name).suffix
        assert blob.name == f"{shard.name}#{cell.row}"


def test_binary_column_and_struct_edge_cases(tmp_path):
    wav = CLIPS["speech_greeting.wav"]
    binary = write_hf_parquet(tmp_path / "binary.parquet", [wav, None, b""], binary=True)
    got = read_cells([ParquetCell(binary, r) for r in range(3)])
    assert got[ParquetCell(binary, 0)].data == wav
    failed(got[ParquetCell(binary, 1)], Reason.NO_AUDIO)
    failed(audio.decode(got[ParquetCell(binary, 2)]), Reason.EMPTY_AUDIO)

    file = as_file(tmp_path, "dog_barks.flac")
    struct = write_hf_parquet(tmp_path / "struct.parquet", [
        None, {"bytes": None, "path": "dog_barks.flac"}, {"bytes": None, "path": None},
        {"bytes": None, "path": "elsewhere.wav"}])
    got = read_cells([ParquetCell(struct, 0), ParquetCell(struct, 1, fallback=str(file)), ParquetCell(struct, 2),
                      ParquetCell(struct, 3), ParquetCell(struct, 9)])
    assert "null" in failed(got[ParquetCell(struct, 0)], Reason.NO_AUDIO).detail
    assert got[ParquetCell(struct, 1, fallback=str(file))] == file  # bytes null: the path, resolved by planning
    failed(got[ParquetCell(struct, 2)], Reason.NO_AUDIO)
    assert "elsewhere.wav" in failed(got[ParquetCell(struct, 3)], Reason.NO_AUDIO).detail
    failed(got[ParquetCell(struct, 9)], Reason.MISSING_FILE)  # the shard has fewer rows now
    outside = ParquetCell(struct, 1, fallback="!outside_audio_root:/x.wav resolves outside the audio root")
    failed(read_cells([outside])[outside], Reason.OUTSIDE_AUDIO_ROOT)  # planning's reason, reported by the worker


def test_an_unreadable_row_group_fails_its_rows_only(tmp_path):
    names = list(CLIPS)[:6]
    shard = hf_shard(tmp_path, names, row_group_size=3)
    meta = pq.ParquetFile(shard).metadata
    chunk = meta.row_group(1).column(1)  # audio.bytes of the second row group
    data = bytearray(shard.read_bytes())
    start = chunk.data_page_offset
    data[start: start + 64] = b"\xff" * 64  # its page header is garbage now
    shard.write_bytes(bytes(data))
    got = read_cells([ParquetCell(shard, r) for r in range(6)])
    for row in (0, 1, 2):
        assert got[ParquetCell(shard, row)].data == CLIPS[names[row]]
    for row in (3, 4, 5):
        assert "row group 1" in failed(got[ParquetCell(shard, row)], Reason.CORRUPT_SHARD).detail


def test_missing_damaged_and_unsuitable_shards(tmp_path):
    failed(read_cells([ParquetCell(tmp_path / "gone.parquet", 0)])[ParquetCell(tmp_path / "gone.parquet", 0)],
           Reason.MISSING_FILE)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1" + b"\0" * 100)
    failed(read_cells([ParquetCell(junk, 0)])[ParquetCell(junk, 0)], Reason.CORRUPT_SHARD)
    paths = tmp_path / "paths.parquet"
    pq.write_table(__import__("pyarrow").table({"audio": ["a.wav"]}), paths)
    failed(read_cells([ParquetCell(paths, 0)])[ParquetCell(paths, 0)], Reason.CORRUPT_SHARD)


# --- tar members --------------------------------------------------------------------------------------

def test_webdataset_keys_follow_the_first_dot_of_the_base_name():
    assert split_key("a/b/x7.seg1.flac") == ("a/b/x7", "seg1.flac")
    assert split_key("x7.json") == ("x7", "json")
    assert split_key("d.1/x") == ("d.1/x", "")


def test_tar_samples_and_members_read_in_place(tmp_path):
    shard = write_tar(tmp_path / "shard-000000.tar", webdataset_members(CLIPS, prefix="set/") + [
        ("set/no_audio.json", b"{}"), ("set/two.wav", CLIPS["speech_greeting.wav"]),
        ("set/two.flac", CLIPS["dog_barks.flac"]), ("set/bad_meta.json", b"{not json"),
        ("set/bad_meta.flac", CLIPS["dog_barks.flac"])])
    samples = {s.key: s for s in read_samples(shard)}
    for name, data in CLIPS.items():
        sample = samples["set/" + name.rsplit(".", 1)[0]]
        [member] = sample.audio
        assert sample.metadata == {"source": name, "format": name.rsplit(".", 1)[1]} and sample.text.startswith("the ")
        file = as_file(tmp_path, name)
        np.testing.assert_array_equal(audio.decode(member).samples, audio.decode(file).samples)
        assert refs.parse(str(member)) == member
    assert samples["set/no_audio"].audio == [] and len(samples["set/two"].audio) == 2
    assert "bad_meta.json" in samples["set/bad_meta"].problem


def test_cut_and_broken_tars(tmp_path):
    data = write_tar(tmp_path / "whole.tar", webdataset_members(CLIPS, metadata=False)).read_bytes()
    members = read_samples(tmp_path / "whole.tar")
    last = members[-1].audio[0]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: last.offset + last.size // 2])
    samples = read_samples(cut)
    assert samples[-1].truncated and not samples[0].truncated
    failed(audio.decode(TarMember(cut, last.member, last.offset, last.size)), Reason.TRUNCATED_AUDIO)
    not_tar = tmp_path / "not.tar"
    not_tar.write_bytes(CLIPS["dog_barks.flac"])
    with pytest.raises(NotATar, match="not.tar"):
        read_samples(not_tar)
    damaged = bytearray(data)
    second = members[1].audio[0].offset - 512  # the second member's header
    damaged[second: second + 100] = b"x" * 100
    (tmp_path / "damaged.tar").write_bytes(bytes(damaged))
    with pytest.raises(NotATar, match="damaged"):
        read_samples(tmp_path / "damaged.tar")


def test_references_round_trip_and_never_look_like_paths(tmp_path):
    cell = ParquetCell(tmp_path / "we:ird#.parquet", 12, 1, "s3://b/x y:z.wav")
    member = TarMember(refs.parse("s3://b/shards/s:1.tar"), "a:b/c d.flac", 1536, 99)
    assert refs.parse(str(cell)) == cell and refs.parse(str(member)) == member
    assert refs.is_embedded(str(cell)) and not refs.is_embedded(str(tmp_path / "a.wav"))
    assert refs.parse(str(tmp_path / "a.wav")) == tmp_path / "a.wav"
    bad = refs.NoAudio("s.tar#k:1", Failure(Reason.AMBIGUOUS_AUDIO, "two: k.wav, k.flac"))
    assert refs.parse(str(bad)) == bad
    assert refs.display(str(cell)) == f"{tmp_path}/we:ird#.parquet#12"
    assert refs.display(str(member)) == "s3://b/shards/s:1.tar#a:b/c d" and refs.display("a.wav") == "a.wav"


# --- a worker's batch ------------------------------------------------------------------------------------

class _Extractor:
    """Whisper-shaped features without transformers: the preparer's decoding is what is tested."""

    def __call__(self, samples, max_length, **_):
        frames = max_length // 160
        return {"input_features": np.zeros((1, 128, frames), np.float32),
                "attention_mask": np.ones((1, frames), np.int64)}


def test_a_batch_mixes_files_cells_and_members(tmp_path):
    names = ["speech_greeting.wav", "music_melody.flac", "speech_directions.mp3"]
    shard = hf_shard(tmp_path, names + ["dog_barks.flac"], row_group_size=2)
    tar = write_tar(tmp_path / "s.tar", webdataset_members({"rain.opus": CLIPS["rain.opus"]}))
    [sample] = read_samples(tar)
    garbage = write_hf_parquet(tmp_path / "garbage.parquet", [{"bytes": b"\x01" * 500, "path": "x.mp3"}])
    paths = [str(EXAMPLE_AUDIO / "room_tone.flac"), *(str(ParquetCell(shard, r, r // 2)) for r in range(3)),
             str(sample.audio[0]), str(ParquetCell(garbage, 0))]
    items = tuple(Item(i, f"id{i}", p, 0, 1, 0.0, 0.0, 0.0) for i, p in enumerate(paths))
    prepared = BatchPreparer(_Extractor(), -60.0, 1.0).prepare(Batch(items))
    ready = {c.item.id: c for c in prepared.ready}
    assert all(isinstance(c, ReadyClip) for c in ready.values()) and len(ready) == 5
    assert ready["id1"].end_s == pytest.approx(audio.probe(EXAMPLE_AUDIO / names[0]).duration_s, abs=0.01)
    assert ready["id4"].end_s == pytest.approx(8.0, abs=0.01)
    [bad] = prepared.failed
    assert bad.item.id == "id5" and bad.error == Reason.CORRUPT_AUDIO and "garbage.parquet#0" in bad.error_detail
