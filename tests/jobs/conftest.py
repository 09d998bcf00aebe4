"""Audio, date-partitioned manifests and runs with the fake model, for scheduled-job tests."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.annotate import annotate
from pipeline.testing.fake_model import FakeModelFactory
from tests.pipeline.conftest import RATE, fast_config, tone


def write_clip(path: Path, seconds: float, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, freq), RATE)
    return path


def write_manifest(path: Path, rows: dict[str, str], durations: dict[str, float] | None = None) -> Path:
    """rows: id -> audio path as the manifest says it (relative ones resolve against its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"id": list(rows), "audio": list(rows.values())}
    if durations is not None:
        columns["duration_s"] = pa.array([durations.get(i) for i in rows], pa.float64())
    pq.write_table(pa.table(columns), path)
    return path


def write_day(incoming: Path, date: str, clips: dict[str, float]) -> Path:
    """One date partition: its clips (id -> seconds) beside its manifest, with relative paths."""
    day = incoming / f"date={date}"
    for index, (item_id, seconds) in enumerate(clips.items()):
        write_clip(day / f"{item_id}.wav", seconds, 300.0 + 40 * index)
    return write_manifest(day / "manifest.parquet", {i: f"{i}.wav" for i in clips})


@pytest.fixture
def model_dir(checkpoint_dir):
    return checkpoint_dir("small-instruct")


@pytest.fixture
def clips(tmp_path):
    """Six short clips and a 70 s file (three segments), in one manifest."""
    audio = tmp_path / "data" / "audio"
    lengths = {"a": 1.0, "b": 2.5, "c": 4.0, "long": 70.0, "d": 1.5, "e": 3.0, "f": 2.0}
    for index, (item_id, seconds) in enumerate(lengths.items()):
        write_clip(audio / f"{item_id}.wav", seconds, 300.0 + 30 * index)
    return write_manifest(tmp_path / "data" / "clips.parquet", {i: f"audio/{i}.wav" for i in lengths})


def run(manifest, out, model_dir, factory=FakeModelFactory(), **overrides):
    """annotate() as the command runs it, with the fake model; overrides are job keys."""
    anchor = manifest if isinstance(manifest, Path) and manifest.suffix == ".parquet" else Path(str(manifest)).parent
    config = fast_config(model_dir, anchor, audio_root=None, **overrides)
    return annotate(manifest, config, out=out, workers=2, progress=False, model_factory=factory)


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def run_files(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*.parquet"))
