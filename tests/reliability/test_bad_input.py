"""Every kind of bad file gets its own reason without costing a worker, and hostile paths open
nothing outside the audio root and run nothing."""

import errno
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from pipeline import storage
from pipeline.intake.manifest_build import build_manifest
from pipeline.testing.faults import ReadFaults
from tests.reliability.conftest import rows, run

HAS_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
RATE = 16_000


def tone(seconds: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def wav_bytes(tag: int, channels: int, rate: int, data: bytes = b"\x00\x01" * 800) -> bytes:
    """A WAV file's bytes with any header values, including impossible ones."""
    block = max(channels, 1) * 2
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_bad_files(audio: Path) -> dict[str, tuple[str, str | None]]:
    """Each file under audio, and what it must come out as: id -> (audio value, expected error)."""
    audio.mkdir(parents=True)
    sf.write(audio / "good.wav", tone(1.0), RATE)
    (audio / "zero_bytes.wav").write_bytes(b"")
    (audio / "header_only.wav").write_bytes(wav_bytes(1, 1, RATE, data=b""))
    sf.write(audio / "whole.wav", tone(4.0), RATE, subtype="PCM_16")
    (audio / "truncated.wav").write_bytes((audio / "whole.wav").read_bytes()[:30_000])
    (audio / "whole.wav").unlink()
    (audio / "random.wav").write_bytes(np.random.default_rng(1).bytes(5000))
    sf.write(audio / "wav_named.flac", tone(1.0), RATE)  # the content decides, not the name
    (audio / "text.flac").write_text("not audio at all\n" * 50)
    (audio / "unknown.xyz").write_bytes(np.random.default_rng(2).bytes(3000))
    (audio / "odd_codec.wav").write_bytes(wav_bytes(0x2222, 1, RATE))
    (audio / "zero_channels.wav").write_bytes(wav_bytes(1, 0, RATE))
    (audio / "zero_rate.wav").write_bytes(wav_bytes(1, 1, 0))
    bad = tone(1.0)
    bad[100:200] = np.nan
    sf.write(audio / "nan.wav", bad, RATE, subtype="FLOAT")
    (audio / "folder.wav").mkdir()
    (audio / "dangling.wav").symlink_to(audio / "nowhere.wav")
    sf.write(audio / "locked.wav", tone(1.0), RATE)
    return {
        "good": ("good.wav", None), "missing": ("missing.wav", "missing_file"),
        "zero_bytes": ("zero_bytes.wav", "empty_audio"), "header_only": ("header_only.wav", "empty_audio"),
        "truncated": ("truncated.wav", "truncated_audio"), "random": ("random.wav", "corrupt_audio"),
        "wav_named_flac": ("wav_named.flac", None), "text": ("text.flac", "corrupt_audio"),
        "unknown": ("unknown.xyz", "unsupported_codec"),
        "odd_codec": ("odd_codec.wav", "unsupported_codec" if HAS_FFMPEG else "corrupt_audio"),
        "zero_channels": ("zero_channels.wav", "corrupt_audio"), "zero_rate": ("zero_rate.wav", "corrupt_audio"),
        "nan": ("nan.wav", "non_finite_samples"), "folder": ("folder.wav", "not_a_file"),
        "dangling": ("dangling.wav", "missing_file"), "locked": ("locked.wav", "permission_denied"),
    }


def test_every_kind_of_bad_file_has_its_own_reason_and_costs_no_worker(ray_cluster, model_dir, tmp_path):
    data = tmp_path / "data"
    expected = write_bad_files(data / "audio")
    manifest = data / "bad.parquet"
    pq.write_table(pa.table({"id": list(expected), "audio": [a for a, _ in expected.values()]}), manifest)
    (tmp_path / "faults").mkdir()
    if os.geteuid() == 0:  # root reads any file: the refusal comes from the (simulated) file system
        faults = ReadFaults(str(tmp_path / "faults"), fail_always={"locked.wav": errno.EACCES})
    else:
        (data / "audio" / "locked.wav").chmod(0)
        faults = None
    storage.inject_read_faults(faults)  # the driver reads headers (no duration_s) as the workers read audio
    try:
        summary = run(manifest, tmp_path / "out", model_dir, read_faults=faults, batch_items=4)
    finally:
        storage.inject_read_faults(None)
    found = {r["id"]: r["error"] for r in rows(tmp_path / "out")}
    assert found == {i: reason for i, (_, reason) in expected.items()}
    assert all(r["error_detail"] for r in rows(tmp_path / "out") if r["error"])
    this_run = summary.run_info["this_run"]
    assert (this_run["worker_replacements"], this_run["retries"], this_run["timeouts"]) == (0, 0, 0)


SHELL = ["$(touch {marker})", "`touch {marker}`", "a.wav; touch {marker}", "a.wav && touch {marker}", "|touch {marker}"]


def test_hostile_paths_open_nothing_outside_the_root_and_run_nothing(ray_cluster, model_dir, tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    audio = data / "audio"
    audio.mkdir(parents=True)
    outside.mkdir()
    sf.write(audio / "fine.wav", tone(1.0), RATE)
    sf.write(audio / "ünïcødé ✓ עברית.wav", tone(1.0), RATE)
    sf.write(outside / "secret.wav", tone(1.0), RATE)
    (audio / "escape.wav").symlink_to(outside / "secret.wav")
    marker = tmp_path / "executed"
    paths = {
        "fine": ("fine.wav", None), "unicode": ("ünïcødé ✓ עברית.wav", None),
        "dotdot": ("../../outside/secret.wav", "outside_audio_root"),
        "absolute": (str(outside / "secret.wav"), "outside_audio_root"),
        "symlink_out": ("escape.wav", "outside_audio_root"),
        "http": ("http://example.com/a.wav", "not_a_file"), "file_url": (f"file://{outside}/secret.wav", "not_a_file"),
        "gs": ("gs://bucket/a.wav", "not_a_file"), "nul": ("a\x00.wav", "not_a_file"),
        "long": ("x" * 5000 + ".wav", "not_a_file"), "deep": ("/".join(["d"] * 2000) + "/a.wav", "missing_file"),
        **{f"shell{i}": (text.format(marker=marker), "missing_file") for i, text in enumerate(SHELL)},
    }
    manifest = data / "hostile.parquet"
    pq.write_table(pa.table({"id": list(paths), "audio": [p for p, _ in paths.values()]}), manifest)
    (tmp_path / "faults").mkdir()
    opened = ReadFaults(str(tmp_path / "faults"))  # injects nothing: records every file opened
    storage.inject_read_faults(opened)
    try:
        run(manifest, tmp_path / "out", model_dir, read_faults=opened, audio_root=str(audio))
    finally:
        storage.inject_read_faults(None)
    found = {r["id"]: r["error"] for r in rows(tmp_path / "out")}
    assert {i: e for i, e in found.items() if i != "long"} == {i: e for i, (_, e) in paths.items() if i != "long"}
    assert found["long"] in ("not_a_file", "missing_file")  # too long a name for the file system
    assert not marker.exists()  # no shell ever saw a path
    names = {p.name[:-len(".reads")] for p in (tmp_path / "faults").glob("*.reads")}
    assert names == {"fine.wav", "ünïcødé ✓ עברית.wav"}  # read, and nothing else


def test_manifest_build_leaves_out_names_that_are_not_utf8(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "ok.wav", tone(1.0), RATE)
    shutil.copy(audio / "ok.wav", os.fsdecode(bytes(audio) + b"/caf\xe9.wav"))
    report = build_manifest(audio, tmp_path / "m.parquet")
    assert report.rows == 1 and len(report.unnamable) == 1 and "not valid UTF-8" in report.summary()
    assert pq.read_table(tmp_path / "m.parquet").column("id").to_pylist() == ["ok"]
