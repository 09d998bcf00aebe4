"""One driver per OUT: a second driver is refused (exit 2) naming the owner, whose run goes on
undisturbed; a lock whose owner is gone is taken over; locally and on object storage."""

import json
import socket
import subprocess
import sys
import time

import pytest

from pipeline import cli
from pipeline.output import lock as lock_module
from pipeline.output.lock import LockLost, OutLock, OutLocked
from tests.reliability.conftest import committed_keys, rows, run
from tests.reliability.test_interruptions import start_driver
from tests.storage.conftest import s3, s3_server  # noqa: F401  (fixtures: a local S3-compatible server)


def test_a_second_driver_on_the_same_out_is_refused(ray_cluster, clips, model_dir, tmp_path, capfd):
    out = tmp_path / "out"
    first = start_driver(clips, out, model_dir, delay_s=0.3)
    deadline = time.monotonic() + 120
    while not list((out / "commits").glob("*.json")):
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()[-3000:]
        time.sleep(0.1)
    with pytest.raises(OutLocked, match=f"pid {first.pid}"):
        run(clips, out, model_dir)
    status = cli.main(["annotate", str(clips), "--out", str(out), "--model", str(model_dir), "--device", "cpu",
                       "--no-progress", "--quiet"])
    assert status == 2 and f"is in use by another run (host {socket.gethostname()}, pid {first.pid}" in \
        capfd.readouterr().err
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output[-3000:]
    # The first run was not disturbed: every row once, nothing swept from under it.
    keys = committed_keys(out)
    assert len(keys) == len(set(keys)) == 16 and [r["status"] for r in rows(out)] == ["ok"] * 16
    assert not (out / "_LOCK").exists()


def test_the_lock_of_a_driver_that_is_gone_is_taken_over_at_once(ray_cluster, clips, model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = OutLock(out, "2026-01-01T00:00:00Z").owner
    stale = {**owner.__dict__, "pid": int(gone.stdout), "process_start": "1"}
    (out / "_LOCK").write_text(json.dumps(stale))
    summary = run(clips, out, model_dir)
    assert summary.exit_code == 0 and not (out / "_LOCK").exists()


def test_locks_of_other_machines_go_by_their_heartbeat(tmp_path, monkeypatch):
    other = {"host": "elsewhere", "pid": 1, "started": "2026-01-01T00:00:00Z", "token": "t0", "heartbeat": time.time(),
             "process_start": None, "machine": "another boot"}
    (tmp_path / "_LOCK").write_text(json.dumps(other))
    with pytest.raises(OutLocked, match="host elsewhere, pid 1"):
        OutLock(tmp_path, "now").acquire()
    (tmp_path / "_LOCK").write_text(json.dumps({**other, "heartbeat": time.time() - 3600}))
    with OutLock(tmp_path, "now") as taken:
        assert taken.taken_over.host == "elsewhere"
        assert json.loads((tmp_path / "_LOCK").read_text())["token"] == taken.owner.token
        # Taken over in turn while we were paused: we stop writing.
        (tmp_path / "_LOCK").write_text(json.dumps({**other, "heartbeat": time.time()}))
        with pytest.raises(LockLost):
            taken.check()
    assert json.loads((tmp_path / "_LOCK").read_text())["host"] == "elsewhere"  # not ours to delete


def test_the_heartbeat_keeps_a_lock_fresh(tmp_path, monkeypatch):
    with OutLock(tmp_path, "now", heartbeat_s=0.2) as held:
        first = json.loads((tmp_path / "_LOCK").read_text())["heartbeat"]
        # Waits for the heartbeat to land (a loaded machine may run the thread late), up to a margin
        # 150 times its period: a heartbeat that never comes fails, a late one does not.
        deadline = time.monotonic() + 30
        while json.loads((tmp_path / "_LOCK").read_text())["heartbeat"] <= first:
            assert time.monotonic() < deadline, "no heartbeat in 30 s"
            time.sleep(0.05)
        held.check()


def test_the_lock_on_object_storage(s3, monkeypatch):  # noqa: F811
    monkeypatch.setattr(lock_module, "SETTLE_S", 0.2)
    out = s3.root / "out"
    with OutLock(out, "now") as held:
        assert json.loads(s3.get(out / "_LOCK"))["token"] == held.owner.token
        with pytest.raises(OutLocked, match=f"pid {held.owner.pid}"):
            OutLock(out, "later", stale_after_s=300).acquire()
    assert json.loads(s3.get(out / "_LOCK"))["released"]  # marked released (a delete would write a folder marker)
    with OutLock(out, "again"):  # a released lock is free
        pass
    # A lock of another machine whose heartbeat stopped long ago is taken over.
    s3.put(out / "_LOCK", json.dumps({"host": "elsewhere", "pid": 7, "started": "x", "token": "t",
                                      "heartbeat": time.time() - 3600}).encode())
    with OutLock(out, "now") as held:
        assert held.taken_over.host == "elsewhere"


def test_a_dry_run_says_when_out_is_in_use(clips, model_dir, tmp_path):
    import io

    from pipeline.dry_run import dry_run
    from pipeline.output.console import Console
    from tests.reliability.conftest import config

    out = tmp_path / "out"
    out.mkdir()
    (out / "_LOCK").write_text(json.dumps({"host": "elsewhere", "pid": 42, "started": "2026-12-01T01:30:00Z",
                                           "token": "t", "heartbeat": time.time()}))
    shown = io.StringIO()
    assert dry_run(clips, config(clips, model_dir), out=out, console=Console(shown, shown, progress=False)) == 0
    assert "in use: another run holds" in shown.getvalue() and "host elsewhere, pid 42" in shown.getvalue()
