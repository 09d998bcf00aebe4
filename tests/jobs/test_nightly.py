"""Nightly jobs on one OUT: a growing date-partitioned manifest, audio replaced or touched under
the same id, changed manifest values, and the runs/ delta each invocation writes."""

import os

import pyarrow.parquet as pq

from tests.jobs.conftest import read_rows, run, run_files, write_clip, write_day, write_manifest


def committed_by(out, stamp_file):
    """(id, segment) of every result committed by the run whose runs/ file this is."""
    stamp = stamp_file.stem
    return sorted((r["id"], r["segment"]) for r in read_rows(out / "parts") if r["run"] == stamp)


def test_two_nights_on_a_growing_partitioned_manifest(ray_cluster, model_dir, tmp_path):
    incoming, out = tmp_path / "incoming", tmp_path / "labels"
    write_day(incoming, "2026-01-01", {"a": 1.0, "b": 2.0, "c": 1.5})
    first = run(f"{incoming}/date=*/", out, model_dir)
    assert first.exit_code == 0 and [r["id"] for r in read_rows(first.delta)] == ["a", "b", "c"]

    # The next day: two new files in a new partition, and b's file replaced by a longer recording.
    write_day(incoming, "2026-01-02", {"d": 2.5, "e": 1.0})
    write_clip(incoming / "date=2026-01-01" / "b.wav", 3.5, 900.0)
    second = run(f"{incoming}/date=*/", out, model_dir)
    assert second.exit_code == 0 and second.run_info["this_run"]["items"] == 3
    delta = read_rows(second.delta)
    assert [r["id"] for r in delta] == ["b", "d", "e"]  # exactly tonight's new and changed rows
    assert committed_by(out, second.delta) == [("b", 0), ("d", 0), ("e", 0)]  # nothing else labelled again
    assert run_files(out) == sorted([first.delta, second.delta])

    rows = {r["id"]: r for r in read_rows(out / "annotations.parquet")}
    assert list(rows) == ["a", "b", "c", "d", "e"] and all(r["status"] == "ok" for r in rows.values())
    assert abs(rows["b"]["duration_s"] - 3.5) < 0.01  # the new recording's labels, not the old ones
    assert delta == [rows[i] for i in ("b", "d", "e")]  # the delta holds the rows as annotations.parquet does
    segments = read_rows(out / "segments.parquet")
    assert sorted(s["id"] for s in segments) == ["a", "b", "c", "d", "e"]  # b once: its old result is gone

    third = run(f"{incoming}/date=*/", out, model_dir)  # nothing new: no work, no runs/ file
    assert third.already_complete and third.delta is None and len(run_files(out)) == 2


def test_changed_audio_and_manifest_values_are_labelled_again(ray_cluster, model_dir, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for name, seconds in {"a": 1.0, "b": 2.0, "c": 1.5, "d": 1.0}.items():
        write_clip(data / f"{name}.wav", seconds)
    manifest = write_manifest(data / "m.parquet", {i: f"{i}.wav" for i in "abcd"}, {"c": 1.5})
    run(manifest, out, model_dir)

    stat = os.stat(data / "a.wav")
    write_clip(data / "a.wav", 1.0, 880.0)  # same size, other content: a newer modification time
    os.utime(data / "b.wav", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only
    write_manifest(manifest, {"a": "a.wav", "b": "b.wav", "c": "c.wav", "d": "d.wav"}, {"c": 1.4})  # c's duration_s
    (data / "d.wav").unlink()  # audio deleted after labelling keeps its labels
    summary = run(manifest, out, model_dir)
    assert [r["id"] for r in read_rows(summary.delta)] == ["a", "b", "c"]
    rows = {r["id"]: r for r in read_rows(out / "annotations.parquet")}
    assert rows["d"]["status"] == "ok" and rows["d"]["caption"] == "A sound recorded for d#0."

    # A moved path is another file, even with the same bytes.
    os.rename(data / "c.wav", data / "c2.wav")
    write_manifest(manifest, {"a": "a.wav", "b": "b.wav", "c": "c2.wav", "d": "d.wav"}, {"c": 1.4})
    assert [r["id"] for r in read_rows(run(manifest, out, model_dir).delta)] == ["c"]


def test_verify_content_compares_bytes_not_times(ray_cluster, model_dir, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for name in "ab":
        write_clip(data / f"{name}.wav", 1.0)
    manifest = write_manifest(data / "m.parquet", {i: f"{i}.wav" for i in "ab"})
    run(manifest, out, model_dir, verify_content=True)

    # Copied back with a new time, same bytes: not a change by content.
    os.utime(data / "a.wav", ns=(10**18, 10**18))
    # Same size and time, other bytes (a tool that keeps times): only the content tells.
    before = os.stat(data / "b.wav")
    write_clip(data / "b.wav", 1.0, 660.0)
    os.utime(data / "b.wav", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(data / "b.wav").st_size == before.st_size
    summary = run(manifest, out, model_dir, verify_content=True)
    assert [r["id"] for r in read_rows(summary.delta)] == ["b"]
    assert pq.read_table(out / "parts", columns=["source_sha256"]).column(0).null_count == 0
    # By size and time instead, a changed (its time) and b did not (its new result recorded both).
    assert [r["id"] for r in read_rows(run(manifest, out, model_dir).delta)] == ["a"]
