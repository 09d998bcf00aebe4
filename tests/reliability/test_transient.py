"""Transient failures are retried within the run and permanent ones are not; a stalled read is
abandoned and retried; --retry-errors re-runs committed error rows without touching ok rows."""

import errno

from pipeline.testing.fake_model import FakeModelFactory
from pipeline.testing.faults import ReadFaults
from tests.reliability.conftest import committed_keys, model_calls, rows, run, write_clips

TWENTY = {f"t{i:02d}": 0.5 + 0.1 * i for i in range(20)}


def test_transient_read_errors_are_retried_and_permanent_ones_are_not(ray_cluster, model_dir, tmp_path):
    manifest = write_clips(tmp_path / "data", TWENTY, durations=TWENTY)  # no header reads in the driver
    (tmp_path / "faults").mkdir()
    faults = ReadFaults(str(tmp_path / "faults"), fail_once=("t03.wav", "t11.wav"),  # 10%: EIO once
                        fail_always={"t07.wav": errno.EACCES, "t15.wav": errno.EIO})
    out = tmp_path / "out"
    summary = run(manifest, out, model_dir, read_faults=faults, batch_items=4, transient_attempts=3)
    by_id = {r["id"]: r for r in rows(out)}
    assert (by_id["t07"]["status"], by_id["t07"]["error"]) == ("error", "permission_denied")
    assert (by_id["t15"]["status"], by_id["t15"]["error"]) == ("error", "read_error")
    assert all(r["status"] == "ok" for i, r in by_id.items() if i not in ("t07", "t15"))
    assert faults.reads("t03.wav") >= 2 and faults.reads("t11.wav") >= 2  # failed once, then read
    assert faults.reads("t07.wav") == 1  # permanent: never retried
    assert faults.reads("t15.wav") == 3  # transient every time: transient_attempts tries, then written
    assert summary.run_info["this_run"]["transient_retries"] == 2 + 2
    # Written as the transient error it is: the next run retries exactly that row, and it is read now.
    again = run(manifest, out, model_dir)
    assert again.run_info["this_run"]["items"] == 1
    assert {r["id"]: r["status"] for r in rows(out)}["t15"] == "ok"


def test_a_stalled_read_is_abandoned_and_retried(ray_cluster, model_dir, tmp_path):
    lengths = {f"s{i}": 1.0 for i in range(6)}
    manifest = write_clips(tmp_path / "data", lengths, durations=lengths)
    (tmp_path / "faults").mkdir()
    # The stall (10 minutes) dwarfs every margin: a run that waited for it would take that long. The
    # timeout (10 s at least) is far above a 1 s clip's decoding even on a loaded machine; should one
    # still time out there, it is retried like the stalled one, so only "at least one" is asserted.
    faults = ReadFaults(str(tmp_path / "faults"), stall_once={"s2.wav": 600.0})
    summary = run(manifest, tmp_path / "out", model_dir, read_faults=faults, batch_items=2,
                  batch_timeout_min_s=10.0, batch_timeout_factor=2.0)
    assert [r["status"] for r in rows(tmp_path / "out")] == ["ok"] * 6
    assert summary.run_info["this_run"]["timeouts"] >= 1 and faults.reads("s2.wav") >= 2
    assert summary.run_info["this_run"]["wall_s"] < 300  # abandoned, not waited for


def test_retry_errors_reruns_committed_error_rows_only(ray_cluster, model_dir, tmp_path):
    lengths = {f"r{i}": 1.0 + 0.2 * i for i in range(8)}
    manifest = write_clips(tmp_path / "data", lengths, durations=lengths)
    (tmp_path / "data" / "audio" / "r6.wav").unlink()  # missing_file: permanent
    out, calls = tmp_path / "out", tmp_path / "calls"
    calls.mkdir()
    run(manifest, out, model_dir, factory=FakeModelFactory(fail_keys=("r2#0", "r4#0")), max_attempts=1)
    statuses = {r["id"]: r["error"] for r in rows(out)}
    assert statuses == {**{i: None for i in lengths}, "r2": "model_error", "r4": "model_error", "r6": "missing_file"}
    ok_parts = sorted(p.name for p in (out / "parts").iterdir())
    # A plain rerun keeps committed errors...
    assert run(manifest, out, model_dir, factory=FakeModelFactory(calls_dir=str(calls))).already_complete
    assert model_calls(calls) == []
    # ...--retry-errors model_error runs exactly those rows again, and touches nothing else.
    summary = run(manifest, out, model_dir, factory=FakeModelFactory(calls_dir=str(calls)),
                  retry_errors=("model_error",))
    assert sorted(model_calls(calls)) == ["r2#0", "r4#0"] and summary.run_info["this_run"]["items"] == 2
    assert {r["id"]: r["error"] for r in rows(out)} == {**{i: None for i in lengths}, "r6": "missing_file"}
    assert set(ok_parts) <= {p.name for p in (out / "parts").iterdir()}  # earlier parts untouched
    # --retry-errors (all): the missing file is back now.
    from tests.jobs.conftest import write_clip
    write_clip(tmp_path / "data" / "audio" / "r6.wav", 2.2)
    run(manifest, out, model_dir, retry_errors=("all",))
    assert [r["status"] for r in rows(out)] == ["ok"] * 8
    keys = committed_keys(out)
    assert sorted(set(keys)) == sorted(f"r{i}#0" for i in range(8))
