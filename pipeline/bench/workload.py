"""A podcast-like workload, made deterministically from the recordings the project ships.

Real manifests are mostly short clips with a share of longer ones and a few multi-minute files;
a benchmark on one uniform batch flatters batching. This writes such a mix: clips cut from the
example recordings (espeak speech, music, rain, barks, room tone; manifests/audio), mixed with each
other and with quiet gaps, at varied levels, and long files made of many such pieces separated by
pauses (so that segmentation has somewhere to cut). The same seed always gives the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from pipeline import shapes
from pipeline.intake import audio

SOURCES = Path(__file__).resolve().parents[2] / "manifests" / "audio"
RATE = shapes.SAMPLE_RATE


@dataclass(frozen=True)
class Mix:
    """How many clips of each kind; lengths in seconds."""

    short: int = 60  # 1-10 s
    medium: int = 20  # 10-29.5 s
    long: int = 3  # multi-minute files
    long_minutes: tuple[float, float] = (2.0, 4.0)
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.short} x 1-10 s, {self.medium} x 10-29.5 s, {self.long} x {self.long_minutes[0]:g}-" \
               f"{self.long_minutes[1]:g} min"


def _pool() -> list[np.ndarray]:
    """The shipped recordings as 16 kHz mono float32 (decoded by the pipeline's own decoder)."""
    pool = []
    for path in sorted(p for p in SOURCES.iterdir() if p.suffix != ".mp3"):  # mpg123 prints noise
        decoded = audio.decode(path)
        if isinstance(decoded, audio.DecodedAudio) and len(decoded.samples) > RATE:
            pool.append(decoded.samples)
    if not pool:
        raise RuntimeError(f"no usable recordings in {SOURCES}")
    return pool


def _piece(pool, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """seconds of audio: spans of random recordings at random levels, overlapping now and then."""
    out = np.zeros(round(seconds * RATE), np.float32)
    at = 0
    while at < len(out):
        source = pool[rng.integers(len(pool))]
        length = min(len(out) - at, int(rng.uniform(0.8, 6.0) * RATE), len(source))
        start = rng.integers(0, len(source) - length + 1)
        out[at:at + length] += source[start:start + length] * rng.uniform(0.3, 1.0)
        if rng.random() < 0.25:  # another sound under this one, as in real recordings
            other = pool[rng.integers(len(pool))]
            span = min(length, len(other))
            out[at:at + span] += 0.3 * other[:span]
        at += length
    peak = np.max(np.abs(out)) or 1.0
    return (out * min(1.0, 0.9 / peak)).astype(np.float32)


def _long(pool, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Pieces of 3-12 s with 0.3-1.5 s pauses of room tone between them, like speech turns."""
    parts, total = [], 0.0
    while total < seconds:
        length = rng.uniform(3.0, 12.0)
        pause = rng.uniform(0.3, 1.5)
        parts += [_piece(pool, rng, length), (rng.standard_normal(round(pause * RATE)) * 3e-4).astype(np.float32)]
        total += length + pause
    return np.concatenate(parts)[: round(seconds * RATE)]


def write_workload(folder: Path, mix: Mix = Mix()) -> Path:
    """Write audio files under folder/audio and a manifest folder/manifest.parquet; -> the manifest."""
    rng = np.random.default_rng(mix.seed)
    pool = _pool()
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lengths = ([("short", rng.uniform(1.0, 10.0)) for _ in range(mix.short)]
               + [("medium", rng.uniform(10.0, 29.5)) for _ in range(mix.medium)]
               + [("long", 60 * rng.uniform(*mix.long_minutes)) for _ in range(mix.long)])
    order = rng.permutation(len(lengths))  # manifests are not sorted by length
    ids, paths, durations, kinds = [], [], [], []
    for n, index in enumerate(order):
        kind, seconds = lengths[index]
        samples = _long(pool, rng, seconds) if kind == "long" else _piece(pool, rng, seconds)
        name = f"{kind}-{n:04d}.flac"
        sf.write(folder / "audio" / name, samples, RATE, subtype="PCM_16")
        ids.append(f"{kind}-{n:04d}")
        paths.append(f"audio/{name}")
        durations.append(len(samples) / RATE)
        kinds.append(kind)
    manifest = folder / "manifest.parquet"
    pq.write_table(pa.table({"id": ids, "audio": paths, "duration_s": pa.array(durations, pa.float64()),
                             "kind": kinds}), manifest)
    return manifest
