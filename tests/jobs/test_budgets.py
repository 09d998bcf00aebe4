"""Work budgets: --max-rows, --max-hours and --max-wall stop a run early (exit 75) with everything
finished committed, and the next runs continue to the same rows an uninterrupted run gives."""

import pytest

from pipeline import exit_codes
from pipeline.config import ConfigError, Config
from pipeline.items import Item
from pipeline.planning.batches import within_budget
from pipeline.testing.fake_model import FakeModelFactory
from tests.jobs.conftest import read_rows, run, run_files


def items(*rows):
    """rows: (row, id, [segment seconds...])"""
    found = []
    for row, item_id, lengths in rows:
        start = 0.0
        for segment, seconds in enumerate(lengths):
            found.append(Item(row, item_id, f"{item_id}.wav", segment, len(lengths), start, start + seconds))
            start += seconds
    return found


QUEUE = items((0, "a", [10.0]), (1, "long", [28.0, 28.0, 28.0]), (2, "b", [5.0]), (3, "c", [5.0]))


def test_budgets_take_whole_rows_in_manifest_order():
    assert within_budget(QUEUE, None, None) == (QUEUE, None)
    chosen, limited_by = within_budget(QUEUE, 2, None)
    assert [i.key for i in chosen] == ["a#0", "long#0", "long#1", "long#2"] and limited_by == "max_rows"
    # 60 s: 'a' fits, the long file does not, and the shorter rows after it wait their turn.
    chosen, limited_by = within_budget(QUEUE, None, 60.0)
    assert [i.key for i in chosen] == ["a#0"] and limited_by == "max_hours"
    assert within_budget(QUEUE, 4, 200.0) == (QUEUE, None)  # both budgets hold everything


def test_a_file_longer_than_the_whole_budget_is_cut_at_a_segment_when_it_heads_the_queue():
    chosen, limited_by = within_budget(QUEUE[1:], 1, 60.0)
    assert [i.key for i in chosen] == ["long#0", "long#1"] and limited_by == "max_hours"
    assert sum(i.end_s - i.start_s for i in chosen) <= 60.0


@pytest.mark.parametrize("key, value, message", [
    ("max_rows", 0, "max_rows"), ("max_hours", 0.001, "at least one 30 s segment"),
    ("max_wall_minutes", 0, "max_wall_minutes"),
])
def test_budgets_must_allow_some_work(key, value, message):
    with pytest.raises(ConfigError, match=message):
        Config().with_overrides(**{key: value})


def test_max_rows_stops_with_75_and_the_next_runs_finish_the_same_rows(ray_cluster, clips, model_dir, tmp_path):
    full = tmp_path / "full"
    assert run(clips, full, model_dir).exit_code == exit_codes.DONE
    out = tmp_path / "out"
    first = run(clips, out, model_dir, max_rows=3)
    assert first.exit_code == exit_codes.STOPPED_EARLY == 75
    assert (first.rows_committed, first.rows_left) == (3, 4)
    assert not (out / "_SUCCESS").exists() and not (out / "annotations.parquet").exists()
    assert [r["id"] for r in read_rows(first.delta)] == ["a", "b", "c"]  # manifest order, no more than 3
    second = run(clips, out, model_dir, max_rows=3)
    assert second.exit_code == 75 and [r["id"] for r in read_rows(second.delta)] == ["long", "d", "e"]
    last = run(clips, out, model_dir, max_rows=3)  # one row left: it finishes within the budget
    assert last.exit_code == exit_codes.DONE and [r["id"] for r in read_rows(last.delta)] == ["f"]
    assert read_rows(out / "annotations.parquet") == read_rows(full / "annotations.parquet")
    assert read_rows(out / "segments.parquet") == read_rows(full / "segments.parquet")
    assert len(run_files(out)) == 3


def test_max_hours_never_dispatches_more_audio_than_allowed(ray_cluster, clips, model_dir, tmp_path):
    out = tmp_path / "out"
    budget_s = 40.0  # a, b, c (7.5 s); the 70 s file heads the next queue and gets cut there
    summaries = []
    while not summaries or summaries[-1].exit_code == 75:
        summaries.append(run(clips, out, model_dir, max_hours=budget_s / 3600))
        assert len(summaries) < 8
    assert [s.exit_code for s in summaries] == [75, 75, 75, 0]
    assert [r["status"] for r in read_rows(out / "annotations.parquet")] == ["ok"] * 7
    # Each run's audio, from the segments it committed: never over the budget.
    by_run = {}
    parts = read_rows(out / "parts")
    for part in parts:
        by_run[part["run"]] = by_run.get(part["run"], 0.0) + part["end_s"] - part["start_s"]
    assert len(by_run) == 4 and max(by_run.values()) <= budget_s + 0.5  # decoded ends may differ by a frame


def test_max_wall_stops_dispatch_and_the_rerun_completes(ray_cluster, clips, model_dir, tmp_path, monkeypatch):
    from pipeline import annotate as annotate_module

    out, calls = tmp_path / "out", tmp_path / "calls"
    calls.mkdir()
    # Nine items (the long file has three segments), one per batch: the window runs out once the
    # model has started three of them (an event, not a time: the workers' start on a loaded machine
    # may take any time), and the batches in flight finish.
    monkeypatch.setattr(annotate_module, "time", ClockJumpingAfterCalls(calls, 3))
    stopped = run(clips, out, model_dir, factory=FakeModelFactory(calls_dir=str(calls)), batch_items=1,
                  prefetch_batches=0, max_wall_minutes=30)
    monkeypatch.undo()
    assert stopped.exit_code == 75 and stopped.stop_reason == "--max-wall 30 min"
    assert 0 < stopped.rows_committed < 7 and stopped.rows_left == 7 - stopped.rows_committed
    done = run(clips, out, model_dir, batch_items=1, prefetch_batches=0, max_wall_minutes=30)
    assert done.exit_code == 0 and done.rows_committed == stopped.rows_left
    assert [r["status"] for r in read_rows(out / "annotations.parquet")] == ["ok"] * 7


class ClockJumpingAfterCalls:
    """annotate's clock (the time module as it sees it), jumping an hour ahead once the fake model
    has started `calls` generate calls: --max-wall runs out at an event, not at a time."""

    def __init__(self, calls_dir, calls: int):
        import time

        self._time, self.calls_dir, self.calls = time, calls_dir, calls

    def __getattr__(self, name):
        return getattr(self._time, name)

    def monotonic(self) -> float:
        jumped = len(list(self.calls_dir.iterdir())) >= self.calls
        return self._time.monotonic() + (3600.0 if jumped else 0.0)


def test_max_wall_leaves_the_tail_of_the_manifest_whatever_the_ids(ray_cluster, model_dir, tmp_path, monkeypatch):
    """Dispatch follows the manifest, not the ids: ids that sort against the manifest (z6 first,
    z0 last) must not make its tail go first and its head wait, night after night."""
    from pipeline import annotate as annotate_module
    from tests.jobs.conftest import write_clip, write_manifest

    ids = [f"z{6 - i}" for i in range(7)]
    for index, item_id in enumerate(ids):
        write_clip(tmp_path / "data" / "audio" / f"{item_id}.wav", 1.0 + 0.1 * index, 300.0 + 30 * index)
    manifest = write_manifest(tmp_path / "data" / "m.parquet", {i: f"audio/{i}.wav" for i in ids})
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setattr(annotate_module, "time", ClockJumpingAfterCalls(calls, 2))
    stopped = run(manifest, tmp_path / "out", model_dir, factory=FakeModelFactory(calls_dir=str(calls)),
                  batch_items=1, prefetch_batches=0, max_wall_minutes=30)
    assert stopped.exit_code == 75 and stopped.stop_reason == "--max-wall 30 min"
    done = [r["id"] for r in read_rows(stopped.delta)]
    assert 0 < len(done) < len(ids) and done == ids[:len(done)]  # the head of the manifest, in its order
