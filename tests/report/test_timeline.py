"""The driver's record of each worker's throughput: bounded, whatever the run's length."""

import pytest

from pipeline.output.timeline import MAX_BUCKETS, Timeline


def test_buckets_coarsen_and_keep_every_audio_second():
    now = [0.0]
    timeline = Timeline(started=100.0, clock=lambda: now[0])
    workers = [{"pid": 1, "node": "a", "npu": "0"}, {"pid": 2, "node": "a", "npu": "1"}]
    total = 0.0
    for step in range(2000):  # 2000 batches over 10,000 s: far past MAX_BUCKETS one-second buckets
        now[0] = 100.0 + 5 * step + 3
        timeline.record(workers[step % 2], 1.5)
        total += 1.5
    timeline.record(None, 99.0)  # rows no worker returned (intake failures) count for no worker
    found = timeline.to_dict(wall_s=10_010.0)
    assert found["bucket_s"] == 128 and all(len(s) <= MAX_BUCKETS for s in found["audio_s"].values())
    assert sum(map(sum, found["audio_s"].values())) == pytest.approx(total)
    assert found["workers"] == {"w0": {"pid": 1, "npu": "0", "node": "a"}, "w1": {"pid": 2, "npu": "1", "node": "a"}}
    assert found["phases"] == {"startup_s": 3.0, "annotating_s": 9995.0, "finishing_s": 12.0}


def test_no_worker_result_no_phases():
    timeline = Timeline(started=0.0, clock=lambda: 5.0)
    timeline.record(None, 3.0)
    assert timeline.to_dict(10.0) == {"bucket_s": 1.0, "audio_s": {}, "workers": {}, "phases": None}
