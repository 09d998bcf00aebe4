"""A small manifest that mixes good clips, a long recording and every kind of bad file."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.config import Config

RATE = 16_000


def tone(seconds: float, freq: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def bursts_with_pauses(seconds: float) -> np.ndarray:
    """Speech-like: 3 s of sound, then 0.6 s of quiet, repeated: long audio with pauses to cut at."""
    out = []
    while sum(len(x) for x in out) < seconds * RATE:
        out += [tone(3.0, 300 + 20 * len(out)), np.zeros(int(0.6 * RATE), np.float32)]
    return np.concatenate(out)[: int(seconds * RATE)]


# id -> (expected status, expected reason)
EXPECTED = {
    "short": ("ok", None),
    "medium": ("ok", None),
    "stereo44k": ("ok", None),
    "silent": ("ok", None),
    "long": ("ok", None),
    "missing": ("error", "missing_file"),
    "corrupt": ("error", "corrupt_audio"),
    "truncated": ("error", "truncated_audio"),
    "empty": ("error", "empty_audio"),
    "nonfinite": ("error", "non_finite_samples"),
    "outside": ("error", "outside_audio_root"),
    "folder": ("error", "not_a_file"),
}
LONG_S = 45.0


def write_mixed_manifest(root: Path) -> Path:
    audio = root / "audio"
    audio.mkdir(parents=True)
    sf.write(audio / "short.wav", tone(1.0, 440), RATE)
    sf.write(audio / "medium.flac", tone(7.3, 330), RATE)
    sf.write(audio / "stereo44k.ogg", np.stack([tone(3.1, 500, 44_100)] * 2, axis=1), 44_100)
    sf.write(audio / "silent.wav", np.zeros(2 * RATE, np.float32), RATE)
    sf.write(audio / "long.flac", bursts_with_pauses(LONG_S), RATE)
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 8)
    sf.write(audio / "full.wav", tone(4.0, 440), RATE, subtype="PCM_16")
    data = (audio / "full.wav").read_bytes()
    (audio / "truncated.wav").write_bytes(data[: len(data) // 2])
    (audio / "full.wav").unlink()
    sf.write(audio / "empty.wav", np.zeros(0, np.float32), RATE)
    bad = tone(2.0, 440)
    bad[100:200] = np.nan
    sf.write(audio / "nonfinite.wav", bad, RATE, subtype="FLOAT")
    sf.write(root / "outside.wav", tone(1.0, 440), RATE)
    (audio / "folder.wav").mkdir()
    rows = {
        "id": list(EXPECTED),
        "audio": ["short.wav", "medium.flac", "stereo44k.ogg", "silent.wav", "long.flac", "missing.wav",
                  "corrupt.wav", "truncated.wav", "empty.wav", "nonfinite.wav", "../outside.wav", "folder.wav"],
        "language": ["en", None, None, None, "en", None, None, None, None, None, None, None],
        "source": [f"src-{i}" for i in range(len(EXPECTED))],
    }
    manifest = root / "mixed.parquet"
    pq.write_table(pa.table(rows), manifest)
    return manifest


@pytest.fixture
def mixed_manifest(tmp_path):
    return write_mixed_manifest(tmp_path / "data")


def fast_config(model_dir: Path, manifest: Path, **overrides) -> Config:
    """Small shapes so that a CPU test run compiles and decodes quickly."""
    values = dict(
        model=str(model_dir), audio_root=str(manifest.parent / "audio"), device="cpu",
        batch_items=2, decode_slots=6, cpu_threads_per_worker=1, compile_cache_dir=None,
        max_new_tokens={"caption": 6, "events": 6, "transcript": 8, "moderation": 4},
        # The mixed manifest is mostly bad files on purpose: no error gate unless a test sets one.
        max_error_rate=None,
    )
    values.update(overrides)
    return Config(**values).with_overrides()


