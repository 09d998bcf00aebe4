"""Workers that die, run out of memory, crash on one item every time or stop answering: every row
ends exactly once, as an uninterrupted run would have it, and the run ends."""

import os
import signal
import threading
import time

import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.testing.fake_model import FakeModelFactory
from pipeline.testing.faults import ReadFaults
from tests.reliability.conftest import assert_nothing_left, committed_keys, model_calls, rows, run


def test_workers_killed_three_times_lose_and_duplicate_nothing(ray_cluster, clips, model_dir, tmp_path):
    full = tmp_path / "full"
    run(clips, full, model_dir, batch_items=1)
    out, calls = tmp_path / "out", tmp_path / "calls"
    calls.mkdir()
    # Each model call writes a file named after its process, holding its keys, as it starts, then
    # takes 2 s: the killer waits for such a file (the event "a worker is running a batch"), not for
    # a time, and kills that worker mid-batch. Each kill is of another process and of other items (an
    # item killed every time it runs would rightly end as a poison row).
    slow = FakeModelFactory(delay_s=2.0, calls_dir=str(calls))
    killed, killed_keys, finished = [], set(), threading.Event()

    def killer():
        while len(killed) < 3 and not finished.is_set():
            for call in sorted(calls.iterdir()):
                pid, keys = int(call.name.split("-")[0]), set(call.read_text().split())
                if pid in killed or keys & killed_keys:
                    continue
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # gone meanwhile (the run replaced it): not our kill
                    continue
                killed.append(pid)
                killed_keys.update(keys)
                break
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = run(clips, out, model_dir, factory=slow, batch_items=1, commit_items=1)
    finished.set()
    thread.join()
    assert len(killed) == 3
    assert summary.run_info["this_run"]["worker_replacements"] == 3
    keys = committed_keys(out)
    assert len(keys) == len(set(keys)) == 16  # none lost, none twice
    assert rows(out) == rows(full) and rows(out, "segments.parquet") == rows(full, "segments.parquet")
    assert_nothing_left()


def test_an_oom_killed_worker_costs_retries_not_rows(ray_cluster, clips, model_dir, tmp_path):
    # Each worker's memory holds three clips: two batches of two at once kill it (SIGKILL, as the
    # kernel's OOM killer does). Retried alone, and its replacement holding fewer, they all fit.
    oom = FakeModelFactory(delay_s=0.3, memory_clips=3)
    summary = run(clips, tmp_path / "out", model_dir, factory=oom, batch_items=2)
    this_run = summary.run_info["this_run"]
    assert [r["status"] for r in rows(tmp_path / "out")] == ["ok"] * 16
    assert this_run["worker_replacements"] >= 1 and this_run["retries"] >= 1
    assert summary.counts["rows_by_status"] == {"ok": 16}


def test_a_poison_item_fails_alone_and_the_run_ends(ray_cluster, clips, model_dir, tmp_path):
    out, calls = tmp_path / "out", tmp_path / "calls"
    calls.mkdir()
    poison = FakeModelFactory(crash_keys=("c05#0",), calls_dir=str(calls))
    summary = run(clips, out, model_dir, factory=poison, batch_items=4, max_attempts=2)
    by_id = {r["id"]: r for r in rows(out)}
    assert (by_id["c05"]["status"], by_id["c05"]["error"]) == ("error", "worker_lost")
    assert "on its own" in by_id["c05"]["error_detail"]
    assert sum(r["status"] == "ok" for r in by_id.values()) == 15
    # In its batch, that batch alone, the half holding it alone, then three times alone (deaths get
    # one try more): every one of them cost a worker, none counted against the run's replacements.
    assert model_calls(calls).count("c05#0") == 6
    assert summary.run_info["this_run"]["worker_replacements"] >= 6
    # The rerun finds it committed: no model work at all.
    (out / "_SUCCESS").unlink()
    before = len(model_calls(calls))
    again = run(clips, out, model_dir, factory=poison, batch_items=4)
    assert again.run_info["this_run"]["items"] == 0 and len(model_calls(calls)) == before


def test_a_stalled_worker_is_abandoned_and_its_item_isolated(ray_cluster, clips, model_dir, tmp_path):
    hang = FakeModelFactory(hang_keys=("c03#0",))
    summary = run(clips, tmp_path / "out", model_dir, factory=hang, batch_items=4, batch_timeout_min_s=2.0,
                  batch_timeout_factor=2.0, max_attempts=1)
    by_id = {r["id"]: r for r in rows(tmp_path / "out")}
    assert (by_id["c03"]["status"], by_id["c03"]["error"]) == ("error", "timed_out")
    assert sum(r["status"] == "ok" for r in by_id.values()) == 15
    assert summary.run_info["this_run"]["timeouts"] >= 2  # beside others, then alone
    assert_nothing_left()


def test_a_crashing_decode_task_is_decode_crashed_not_a_model_error(ray_cluster, clips, model_dir, tmp_path):
    faults = ReadFaults(str(tmp_path / "faults"), crash_always=("c07.wav",))
    (tmp_path / "faults").mkdir()
    summary = run(clips, tmp_path / "out", model_dir, read_faults=faults, batch_items=4, max_attempts=1)
    by_id = {r["id"]: r for r in rows(tmp_path / "out")}
    assert (by_id["c07"]["status"], by_id["c07"]["error"]) == ("error", "decode_crashed")
    assert sum(r["status"] == "ok" for r in by_id.values()) == 15
    assert summary.run_info["this_run"]["worker_replacements"] == 0  # no model worker was lost over it
    keys = pq.read_table(tmp_path / "out" / "parts").column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 16


def test_workers_that_cannot_load_are_replaced_then_given_up_and_the_run_goes_on(ray_cluster, clips, model_dir,
                                                                              tmp_path):
    """Three failed loads (a bad device): whichever places they hit are tried again, a place that
    fails three times is given up, and the other worker does the run. It used to end the run (exit 2)."""
    loads = tmp_path / "loads"
    loads.mkdir()
    summary = run(clips, tmp_path / "out", model_dir, factory=FakeModelFactory(fail_loads=3, loads_dir=str(loads)))
    assert summary.exit_code == 0 and [r["status"] for r in rows(tmp_path / "out")] == ["ok"] * 16
    this_run = summary.run_info["this_run"]
    assert this_run["worker_replacements"] + this_run["workers_given_up"] == 3
    assert_nothing_left()


def test_no_worker_that_can_load_is_a_clear_error(ray_cluster, clips, model_dir, tmp_path):
    loads = tmp_path / "loads"
    loads.mkdir()
    with pytest.raises(UserError, match=r"no model worker could load the model \(6 tries\): RuntimeError: injected"):
        run(clips, tmp_path / "out", model_dir, factory=FakeModelFactory(fail_loads=1000, loads_dir=str(loads)))
    assert_nothing_left()


def test_results_finished_before_a_failure_are_committed(ray_cluster, clips, model_dir, tmp_path, monkeypatch):
    """Whatever ends the run, what the workers had finished is committed, not lost with the buffer."""
    from pipeline.items import ItemResult
    from pipeline.run import runner

    def finish_two_then_fail(batches, spec, workers, use_npu, prefetch, max_attempts, on_results, **_):
        first = [item for batch in batches for item in batch.items][:2]
        on_results([ItemResult(i, "ok", start_s=0.0, end_s=1.0, silent=False, raw={}, parsed={}) for i in first], None)
        raise RuntimeError("the driver lost its Ray connection")

    monkeypatch.setattr(runner, "execute", finish_two_then_fail)
    with pytest.raises(RuntimeError, match="lost its Ray connection"):
        run(clips, tmp_path / "out", model_dir, commit_items=512, commit_seconds=3600)
    assert len(committed_keys(tmp_path / "out")) == 2
