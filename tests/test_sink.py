"""The output folder: atomic writes, one commit per key set, settings guard, readable files."""

import os
import stat

import pyarrow as pa
import pytest

from pipeline.errors import UserError
from pipeline.items import Item, ItemResult
from pipeline.output.sink import OutputDir, atomic_write_bytes, atomic_write_table


def result(i):
    item = Item(i, f"id{i}", "/a.wav", 0, 1, 0.0, 1.0)
    return ItemResult(item, "ok", start_s=0.0, end_s=1.0, silent=False, raw={"caption": "x"},
                      parsed={"caption": "x"})


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "t.parquet"
    atomic_write_table(path, pa.table({"a": [1]}))
    before = path.read_bytes()

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("disk on fire")

    with pytest.raises(Exception):
        atomic_write_table(path, Broken())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o044  # readable by others, not 0600


def test_commit_and_committed(tmp_path):
    out = OutputDir(tmp_path / "out")
    out.open("fp", {"tasks": ["caption"]}, restart=False)
    out.commit([result(0), result(1)], {"caption": "string"}, {"valid_frames": 3})
    # id2 has one of its two segments committed: its key counts, the id is not finished.
    half = Item(2, "id2", "/a.wav", 1, 2, 1.0, 2.0)
    out.commit([ItemResult(half, "error", error="empty_audio", error_detail="x")], {"caption": "string"}, None)
    assert out.committed() == ({"id0#0", "id1#0", "id2#1"}, {"id0", "id1"})
    assert list(out.part_stats()) == [{"valid_frames": 3}]  # the part without stats yields none
    with pytest.raises(RuntimeError, match="planned twice"):
        out.commit([result(1), result(0)], {"caption": "string"}, None)


def test_other_settings_are_refused_and_restart_discards(tmp_path):
    out = OutputDir(tmp_path / "out")
    out.open("fp1", {"tasks": ["caption"], "model": "m"}, restart=False)
    out.commit([result(0)], {"caption": "string"}, None)
    with pytest.raises(UserError, match="changed: tasks"):
        OutputDir(tmp_path / "out").open("fp2", {"tasks": ["events"], "model": "m"}, restart=False)
    again = OutputDir(tmp_path / "out")
    again.open("fp2", {"tasks": ["events"], "model": "m"}, restart=True)
    assert again.committed() == (set(), set())


def test_open_sweeps_temporaries_of_a_killed_run(tmp_path):
    out = OutputDir(tmp_path / "out")
    out.open("fp", {}, restart=False)
    (out.parts / ".tmp-part-abc.parquet-xyz").write_bytes(b"half")
    OutputDir(tmp_path / "out").open("fp", {}, restart=False)
    assert not list(out.parts.glob(".tmp-*"))


def test_parts_committed_by_rename_before_commit_records_still_count(tmp_path):
    """OUT folders written before commit records existed: their parts were renamed into place
    complete, so they stay committed; a new-style part without its record does not."""
    columns = {"caption": "string"}
    out = OutputDir(tmp_path / "out")
    out.open("fp", {}, restart=False)
    kept = out.commit([result(0)], columns, None)
    second = out.commit([result(1)], columns, None)
    (out.commits / f"{second.name}.json").unlink()
    legacy = second.rename(out.parts / "part-0123456789abcdef0123.parquet")  # as parts were named then
    orphan = out.parts / f"part-{'f' * 20}-000000000000.parquet"  # written, never committed
    orphan.write_bytes(kept.read_bytes())
    OutputDir(tmp_path / "out").open("fp", {}, restart=False)
    assert legacy.exists() and not orphan.exists()
    assert OutputDir(tmp_path / "out").committed()[0] == {"id0#0", "id1#0"}


def test_atomic_writes_never_touch_the_process_umask(tmp_path, monkeypatch):
    """Reading the umask by setting it (os.umask(0), then back) races with every file another thread
    creates meanwhile (the lock's heartbeat beside commits): such a file could be made world-writable,
    and the umask left at 0. Files get their mode at creation instead."""
    umask = os.umask(0o027)  # the test's own, in a single thread: a group-readable, world-private mode
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("the process umask was changed"))
        atomic_write_table(tmp_path / "t.parquet", pa.table({"a": [1]}))
        atomic_write_bytes(tmp_path / "b.json", b"{}")
    finally:
        monkeypatch.undo()
        os.umask(umask)
    for name in ("t.parquet", "b.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640
