"""Clips, runs with the fake model, and checks on what a run leaves behind, for the reliability
tests. Runs share the session's Ray (tests/conftest.py); runs that must be killed get their own
process (and their own Ray)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.annotate import annotate
from pipeline.testing.fake_model import FakeModelFactory
from tests.jobs.conftest import write_clip
from tests.pipeline.conftest import fast_config

REPO = Path(__file__).resolve().parents[2]


def write_clips(folder: Path, lengths: dict[str, float], durations: dict[str, float] | None = None) -> Path:
    """Clips (id -> seconds) under folder/audio, and folder/clips.parquet listing them (with
    duration_s when given: id -> the value the manifest says)."""
    for index, (item_id, seconds) in enumerate(lengths.items()):
        write_clip(folder / "audio" / f"{item_id}.wav", seconds, 300.0 + 25 * index)
    columns = {"id": list(lengths), "audio": [f"{i}.wav" for i in lengths]}
    if durations is not None:
        columns["duration_s"] = pa.array([durations.get(i) for i in lengths], pa.float64())
    manifest = folder / "clips.parquet"
    pq.write_table(pa.table(columns), manifest)
    return manifest


@pytest.fixture
def model_dir(checkpoint_dir):
    return checkpoint_dir("small-instruct")


@pytest.fixture
def clips(tmp_path):
    """Sixteen short clips (0.5 to 4.25 s)."""
    return write_clips(tmp_path / "data", {f"c{i:02d}": 0.5 + 0.25 * i for i in range(16)})


def config(manifest: Path, model_dir: Path, **overrides):
    return fast_config(model_dir, manifest, **overrides)


def run(manifest: Path, out: Path, model_dir: Path, factory=FakeModelFactory(), read_faults=None, workers=2,
        **overrides):
    """annotate() with the fake model on two CPU workers; overrides are job keys."""
    return annotate(manifest, config(manifest, model_dir, **overrides), out=out, workers=workers, progress=False,
                    model_factory=factory, read_faults=read_faults)


def rows(out: Path, name: str = "annotations.parquet") -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def committed_keys(out: Path) -> list[str]:
    """Every key in a committed part (a part with a commit record), duplicates kept."""
    records = {p.name[:-len(".json")] for p in (out / "commits").glob("*.json")}
    parts = [p for p in (out / "parts").glob("part-*.parquet") if p.name in records]
    return [k for p in parts for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()]


def model_calls(folder: Path) -> list[str]:
    """Keys the fake model was called with (FakeModelFactory(calls_dir=folder)), over all workers."""
    return [k for p in folder.iterdir() for k in p.read_text().split()] if folder.exists() else []


def worker_processes() -> list:
    import psutil

    # Only this test process's own (its Ray's raylet, or a run it started, spawns them): other
    # test sessions on the same machine have model workers of their own, never to be touched.
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if "ray::AnnotationWorker" in cmdline:
            found.append(process)
    return found


def assert_nothing_left(timeout_s: float = 20.0) -> None:
    """After a run on the session's Ray: no model worker process, every resource free again."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        free, total = ray.available_resources(), ray.cluster_resources()
        if not worker_processes() and all(free.get(k, 0) == v for k, v in total.items() if k in ("CPU", "NPU")):
            return
        time.sleep(0.5)
    raise AssertionError(f"left behind: workers {[p.pid for p in worker_processes()]}, "
                         f"resources free {ray.available_resources()} of {ray.cluster_resources()}")


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}
