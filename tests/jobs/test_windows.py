"""Planning a window of manifest rows at a time (planning/work.py): the same work and the same final
rows as one plan of the whole manifest, budgets and resume across window boundaries, header reads
only for rows a run takes, a driver killed while later windows are not planned yet, and versions
from one folder listing equal to one stat per file."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import exit_codes, storage
from pipeline.config import Config
from pipeline.intake.durations import DurationCache
from pipeline.intake.manifest_set import read_manifests
from pipeline.intake.sources import Sources
from pipeline.items import ItemResult
from pipeline.output.committed import CommittedIndex
from pipeline.output.sink import OutputDir, Provenance
from pipeline.planning import work
from pipeline.planning.work import Planner
from pipeline.annotate import annotate
from pipeline.testing.fake_model import FakeModelFactory
from tests.jobs.conftest import read_rows, run, write_clip
from tests.pipeline.conftest import fast_config
from tests.reliability.conftest import REPO, subprocess_env

COLUMNS = {"caption": "string"}


@pytest.fixture
def mixed(tmp_path):
    """Eleven rows in manifest order: clips in two folders, a 70 s file (three segments), a missing
    file, a path outside the audio root, and rows without duration_s."""
    audio = tmp_path / "data" / "audio"
    lengths = {"a": 1.0, "b": 2.5, "c": 4.0, "long": 70.0, "d": 1.5, "e": 3.0, "f": 2.0, "g": 1.2}
    for index, (item_id, seconds) in enumerate(lengths.items()):
        folder = audio / ("one" if index % 2 else "two")
        write_clip(folder / f"{item_id}.wav", seconds, 300.0 + 30 * index)
    write_clip(tmp_path / "outside.wav", 1.0)
    ids = ["a", "b", "gone", "c", "long", "d", "out", "e", "f", "g", "a2"]
    paths = [f"audio/{'one' if i % 2 else 'two'}/{k}.wav" for i, k in enumerate(lengths)]
    by_id = dict(zip(lengths, paths))
    audio_values = [by_id.get(i, None) for i in ids]
    audio_values[ids.index("gone")] = "audio/one/gone.wav"
    audio_values[ids.index("out")] = "../outside.wav"
    audio_values[ids.index("a2")] = by_id["a"]  # the same file as row a, under another id
    durations = [lengths.get(i) if i in ("a", "c", "long", "e") else None for i in ids]
    manifest = tmp_path / "data" / "mixed.parquet"
    pq.write_table(pa.table({"id": ids, "audio": audio_values, "duration_s": pa.array(durations, pa.float64()),
                             "note": [f"n{i}" for i in range(len(ids))]}), manifest)
    return manifest


def plan_all(manifest, out, window_rows, **overrides):
    config = Config().with_overrides(audio_root=str(manifest.parent), **overrides)
    sink = OutputDir(out)
    planner = Planner(read_manifests(manifest), config, CommittedIndex.read(sink), DurationCache(sink.durations).load(),
                      window_rows=window_rows)
    windows = list(planner.windows())
    items = [i for w in windows for i in w.items]
    failures = [(r.item.key, r.error) for w in windows for r in w.failures]
    return windows, items, failures, planner


def test_windows_plan_the_same_items_as_one_plan(mixed, tmp_path):
    _, whole, whole_failures, _ = plan_all(mixed, tmp_path / "out", 1000)
    windows, windowed, failures, planner = plan_all(mixed, tmp_path / "out", 2)
    # One header read per file of a row without duration_s (gone's says it is missing).
    assert len(windows) == 6 and planner.probes == 6
    assert windowed == whole and failures == whole_failures
    assert failures == [("gone#0", "missing_file"), ("out#0", "outside_audio_root")]
    assert [i.key for i in whole] == ["a#0", "b#0", "c#0", "long#0", "long#1", "long#2", "d#0", "e#0", "f#0", "g#0",
                                      "a2#0"]
    assert whole[0].source.version == storage.version(mixed.parent / "audio" / "two" / "a.wav")


@pytest.mark.parametrize("max_rows", [1, 2, 3, 5])
def test_a_budget_takes_the_same_rows_whatever_the_windows(mixed, tmp_path, max_rows):
    _, whole, _, one = plan_all(mixed, tmp_path / "out", 1000, max_rows=max_rows)
    _, windowed, _, many = plan_all(mixed, tmp_path / "out", 2, max_rows=max_rows)
    assert windowed == whole and len({i.id for i in whole}) == max_rows
    assert one.limited_by == many.limited_by == "max_rows"


def test_a_row_budget_reads_only_the_headers_of_rows_it_takes(mixed, tmp_path):
    # Rows a (known), b (unknown): the second row is the budget's last; nothing after it is read.
    _, items, _, planner = plan_all(mixed, tmp_path / "out", 2, max_rows=2)
    assert [i.id for i in items] == ["a", "b"] and planner.probes == 1
    assert planner.planned_until == 4  # the third window was never read


def run_rooted(manifest, out, model_dir, **overrides):
    """annotate() as the command runs it, with the fake model, the manifest's folder as audio root."""
    config = fast_config(model_dir, manifest, audio_root=str(manifest.parent), **overrides)
    return annotate(manifest, config, out=out, workers=2, progress=False, model_factory=FakeModelFactory())


def test_the_windows_runs_give_the_same_final_rows_as_one_plan(ray_cluster, mixed, model_dir, tmp_path, monkeypatch):
    whole = run_rooted(mixed, tmp_path / "whole", model_dir)
    monkeypatch.setattr(work, "WINDOW_ROWS", 2)
    windowed = run_rooted(mixed, tmp_path / "windowed", model_dir)
    assert whole.exit_code == windowed.exit_code == exit_codes.DONE
    for name in ("annotations.parquet", "segments.parquet"):
        assert read_rows(tmp_path / "windowed" / name) == read_rows(tmp_path / "whole" / name), name
    rows = read_rows(tmp_path / "windowed" / "annotations.parquet")
    assert [r["id"] for r in rows] == ["a", "b", "gone", "c", "long", "d", "out", "e", "f", "g", "a2"]
    assert [r["note"] for r in rows] == [f"n{i}" for i in range(11)]


def test_runs_resume_at_window_boundaries(ray_cluster, mixed, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(work, "WINDOW_ROWS", 3)
    out = tmp_path / "out"
    taken = []
    while True:
        summary = run_rooted(mixed, out, model_dir, max_rows=3)
        taken.append([r["id"] for r in read_rows(summary.delta)] if summary.delta else [])
        if summary.exit_code != exit_codes.STOPPED_EARLY:
            break
        assert len(taken) < 6
    # Each run takes the next three rows sent to the model; rows that cannot be read come with the
    # window that reaches them.
    assert taken == [["a", "b", "gone", "c"], ["long", "d", "out", "e"], ["f", "g", "a2"]]
    whole = run_rooted(mixed, tmp_path / "whole", model_dir)
    assert whole.exit_code == exit_codes.DONE
    for name in ("annotations.parquet", "segments.parquet"):
        assert read_rows(out / name) == read_rows(tmp_path / "whole" / name), name


def test_committed_rows_are_skipped_window_by_window(mixed, tmp_path):
    out = OutputDir(tmp_path / "out")
    out.open("fp", {}, restart=False)
    _, items, _, _ = plan_all(mixed, out.path, 2)
    out.record_provenance(Provenance("20260101T000000Z"))
    # Rows b and the long file's first two segments are committed (their sources as planned).
    done = [i for i in items if i.id == "b" or (i.id == "long" and i.segment < 2)]
    out.commit([ItemResult(i, "ok", start_s=i.start_s, end_s=i.end_s, silent=False, raw={}, parsed={})
                for i in done], COLUMNS, None)
    windows, left, _, _ = plan_all(mixed, out.path, 2)
    assert [i.key for i in left] == [i.key for i in items if i not in done]
    assert sum(w.rows_done for w in windows) == 1
    # b's file changes: b is planned again.
    b = mixed.parent / "audio" / "one" / "b.wav"
    os.utime(b, ns=(1, 2 * 10**18))
    windows, left, _, _ = plan_all(mixed, out.path, 2)
    assert "b#0" in [i.key for i in left] and sum(w.rows_changed for w in windows) == 1


# A driver in its own process, planning two rows at a time and pulling one batch ahead, slowly.
DRIVER = """
import sys
from pathlib import Path
from pipeline.annotate import annotate
from pipeline.planning import work
from pipeline.run import dispatch_queue, runner
from pipeline.testing.fake_model import FakeModelFactory
from tests.pipeline.conftest import fast_config
work.WINDOW_ROWS = 2
runner.LOOKAHEAD = 1
manifest, out, model = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
config = fast_config(model, manifest, audio_root=None, commit_items=1, batch_items=1, prefetch_batches=0)
summary = annotate(manifest, config, out=out, workers=1, progress=False, model_factory=FakeModelFactory(delay_s=1.0))
sys.exit(summary.exit_code)
"""


def test_a_driver_killed_mid_plan_resumes_to_the_same_rows(ray_cluster, tmp_path, model_dir):
    data = tmp_path / "data"
    lengths = {f"r{i:02d}": 1.0 + i / 10 for i in range(12)}
    for index, (item_id, seconds) in enumerate(lengths.items()):
        write_clip(data / "audio" / f"{item_id}.wav", seconds, 300.0 + 20 * index)
    manifest = data / "clips.parquet"
    pq.write_table(pa.table({"id": list(lengths), "audio": [f"audio/{i}.wav" for i in lengths]}), manifest)  # no durations
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(manifest), str(out), str(model_dir)], cwd=REPO,
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "commits").glob("*.json"))) < 2:
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the driver committed too little in time"
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    # Killed while later windows were still unplanned: their headers were never read.
    cached = sum(pq.read_table(f).num_rows for f in (out / "durations").glob("*.parquet"))
    assert 0 < cached < len(lengths)
    resumed = run(manifest, out, model_dir)
    whole = run(manifest, tmp_path / "whole", model_dir)
    assert resumed.exit_code == whole.exit_code == exit_codes.DONE
    assert read_rows(out / "annotations.parquet") == read_rows(tmp_path / "whole" / "annotations.parquet")
    keys = [r["key"] for r in read_rows(out / "parts")]
    assert len(keys) == len(set(keys)) == len(lengths)  # every key committed once


def test_versions_from_folder_listings_equal_one_stat_per_file(tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    for name in ("a.wav", "b.wav", "sub/c.wav"):
        (audio / name).write_bytes(name.encode())
    os.link(audio / "a.wav", audio / "hard.wav")
    os.symlink(audio / "b.wav", audio / "link.wav")
    os.symlink(audio / "sub", audio / "linked")
    os.symlink(audio / "nowhere.wav", audio / "dangling.wav")
    (audio / "folder.wav").mkdir()
    os.mkfifo(audio / "pipe.wav")
    os.utime(audio / "b.wav", ns=(1, 123456789))
    values = ["a.wav", "b.wav", "sub/c.wav", "hard.wav", "link.wav", "linked/c.wav", "dangling.wav", "folder.wav",
              "pipe.wav", "missing.wav", "sub/../a.wav", "nofolder/x.wav", "./a.wav", "sub"]
    found = Sources(None, verify_content=False).of(pa.array(values), audio)
    for value, where, version in zip(values, found.where.to_pylist(), found.version.to_pylist()):
        assert where == str((audio / value).resolve()), value
        assert version == storage.version(Path(where)), value
    # A folder that may be searched but not read: each name is asked for.
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x.wav").write_bytes(b"x")
    locked.chmod(0o111)
    try:
        found = Sources(None, verify_content=False).of(pa.array(["locked/x.wav", "locked/y.wav"]), tmp_path)
        assert found.version.to_pylist() == [storage.version(locked / "x.wav"), None]
    finally:
        locked.chmod(0o755)
