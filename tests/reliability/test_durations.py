"""Durations: nothing silently cut, a non-positive duration_s is unknown, headers are read once
across resumes, and (with the real tiny model) a sweep from 10 ms to past 30 s reaches the model
only through its declared shapes."""

import pytest

from pipeline.intake import audio
from pipeline.testing.fake_model import FakeModelFactory
from tests.jobs.conftest import write_clip
from tests.reliability.conftest import model_calls, rows, run, write_clips


def test_audio_longer_than_its_manifest_duration_is_planned_again_and_annotated_whole(ray_cluster, model_dir,
                                                                                      tmp_path):
    lengths = {"short_said": 45.0, "long_said": 70.0, "zero": 40.0, "right": 3.0, "fits": 12.0}
    said = {"short_said": 10.0, "long_said": 40.0, "zero": 0.0, "right": 3.0, "fits": 8.0}
    manifest = write_clips(tmp_path / "data", lengths, said)
    out, calls = tmp_path / "out", tmp_path / "calls"
    calls.mkdir()
    summary = run(manifest, out, model_dir, factory=FakeModelFactory(calls_dir=str(calls)))
    by_id = {r["id"]: r for r in rows(out)}
    assert {i: r["status"] for i, r in by_id.items()} == {i: "ok" for i in lengths}
    for item_id, seconds in lengths.items():
        assert by_id[item_id]["duration_s"] == pytest.approx(seconds, abs=0.01), item_id  # all of it annotated
    assert [by_id[i]["n_segments"] for i in lengths] == [2, 3, 2, 1, 1]
    segments = [s for s in rows(out, "segments.parquet") if s["id"] == "long_said"]
    assert segments[0]["start_s"] == 0 and segments[-1]["end_s"] == pytest.approx(70.0, abs=0.01)
    assert all(a["end_s"] == b["start_s"] for a, b in zip(segments, segments[1:]))
    # The decoded lengths are kept in OUT: the rerun plans the same way and has nothing to do.
    assert summary.run_info["counts"]["segments"] == 2 + 3 + 2 + 1 + 1
    (out / "_SUCCESS").unlink()
    before = len(model_calls(calls))
    again = run(manifest, out, model_dir, factory=FakeModelFactory(calls_dir=str(calls)))
    assert again.run_info["this_run"]["items"] == 0 and len(model_calls(calls)) == before
    assert rows(out) == list(by_id.values())


def test_audio_shorter_than_its_manifest_duration_is_planned_again_and_annotated_whole(ray_cluster, model_dir,
                                                                                        tmp_path):
    """An overstated duration_s (100 s for 54 s; 4000, milliseconds, for 4 s) used to plan segments
    past the file's end, which failed with empty_audio (permanent): rows partial or errors, and the
    summary counted the planned hours. Now the row is planned again from the file's real length."""
    lengths = {"over": 54.0, "millis": 4.0, "right": 40.0}
    said = {"over": 100.0, "millis": 4000.0, "right": 40.0}
    manifest = write_clips(tmp_path / "data", lengths, said)
    out, calls = tmp_path / "out", tmp_path / "calls"
    calls.mkdir()
    summary = run(manifest, out, model_dir, factory=FakeModelFactory(calls_dir=str(calls)))
    by_id = {r["id"]: r for r in rows(out)}
    assert {i: (r["status"], r["error"]) for i, r in by_id.items()} == {i: ("ok", None) for i in lengths}
    for item_id, seconds in lengths.items():
        assert by_id[item_id]["duration_s"] == pytest.approx(seconds, abs=0.01), item_id  # the real length
        assert by_id[item_id]["manifest_duration_s"] == said[item_id]  # beside what the manifest said
    assert [by_id[i]["n_segments"] for i in lengths] == [3, 1, 2]
    segments = [s for s in rows(out, "segments.parquet") if s["id"] == "over"]
    assert [s["status"] for s in segments] == ["ok"] * 3 and segments[-1]["end_s"] == pytest.approx(54.0, abs=0.01)
    # Throughput counts the audio decoded (98 s), not the 4140 s the manifest claimed.
    assert summary.run_info["this_run"]["audio_hours"] == pytest.approx(98.0 / 3600, abs=0.001)
    (out / "_SUCCESS").unlink()  # the real lengths are kept in OUT: the rerun plans the same way
    before = len(model_calls(calls))
    again = run(manifest, out, model_dir, factory=FakeModelFactory(calls_dir=str(calls)))
    assert again.run_info["this_run"]["items"] == 0 and len(model_calls(calls)) == before


def test_headers_are_read_once_across_resumes(ray_cluster, model_dir, tmp_path, monkeypatch):
    manifest = write_clips(tmp_path / "data", {f"h{i}": 1.0 + i for i in range(6)})  # no duration_s
    probed = []
    real = audio.probe
    monkeypatch.setattr(audio, "probe", lambda path: probed.append(path.name) or real(path))
    out = tmp_path / "out"
    first = run(manifest, out, model_dir, max_rows=2)
    # Only the rows the budget takes have their headers read (planning stops at the first row it leaves).
    assert first.exit_code == 75 and sorted(probed) == ["h0.wav", "h1.wav"]
    probed.clear()
    second = run(manifest, out, model_dir)
    assert second.exit_code == 0 and sorted(probed) == [f"h{i}.wav" for i in range(2, 6)]
    probed.clear()
    fourth = run(manifest, tmp_path / "out", model_dir)
    assert fourth.already_complete and probed == []
    # A replaced file is read again.
    write_clip(tmp_path / "data" / "audio" / "h0.wav", 2.5)
    third = run(manifest, out, model_dir)
    assert probed == ["h0.wav"] and third.run_info["this_run"]["items"] == 1


SWEEP_S = (0.01, 0.03, 0.1, 0.5, 1.0, 4.99, 5.01, 10.0, 15.0, 20.0, 29.9, 30.0, 30.01, 31.0, 45.0, 61.0)


def test_a_duration_sweep_reaches_the_real_model_through_its_declared_shapes_only(ray_cluster, model_dir, tmp_path):
    """10 ms to past 30 s (and a file twice as long as its manifest says), with the real tiny model:
    every row ok, and the graphs MindSpore compiled are exactly the declared ones (an undeclared
    input signature would compile another)."""
    from pipeline.annotate import annotate
    from tests.pipeline.conftest import fast_config

    lengths = {f"d{i:02d}": seconds for i, seconds in enumerate(SWEEP_S)}
    said = {"d00": 0.01, "d14": 22.0, "d05": 0.0}  # right; half the real length; unknown
    manifest = write_clips(tmp_path / "data", lengths, said)
    summary = annotate(manifest, fast_config(model_dir, manifest), out=tmp_path / "out", workers=1,
                       progress=False)
    by_id = {r["id"]: r for r in rows(tmp_path / "out")}
    assert [by_id[i]["status"] for i in lengths] == ["ok"] * len(SWEEP_S)
    for item_id, seconds in lengths.items():
        assert by_id[item_id]["duration_s"] == pytest.approx(seconds, abs=0.011), item_id
        assert by_id[item_id]["n_segments"] == (1 if seconds <= 30.0 else 2 if seconds <= 52 else 3), item_id
    info = summary.run_info
    declared = info["shape"]["graphs"]
    assert len(declared) == info["this_run"]["graphs_declared_per_worker"] == 4
    assert info["this_run"]["graphs_compiled"] == len(declared) * len(info["this_run"]["workers"])
