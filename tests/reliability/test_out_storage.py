"""An OUT that cannot be written (read-only, or a disk that fills up mid-run): a clear error, nothing
partial presented, and the same command resumes once the problem is fixed."""

import errno
from pathlib import Path

import pytest

from pipeline import annotate as annotate_module
from pipeline import cli, storage
from pipeline.storage import atomic_files
from tests.reliability.conftest import committed_keys, rows, run


def refuse_writes(monkeypatch, out: Path, code: int, after: int = 0, only: str | None = None) -> list:
    """Writes under out fail with `code` (after `after` successful ones; only files in folder `only`)."""
    written = []
    real = atomic_files._present

    def present(tmp, target):
        path = Path(tmp)
        if path.is_relative_to(out) and (only is None or path.parent.name == only):
            if len(written) >= after:
                raise OSError(code, "simulated", tmp)
            written.append(path)
        return real(tmp, target)

    monkeypatch.setattr(atomic_files, "_present", present)
    return written


def test_a_read_only_out_is_a_clear_error_and_nothing_is_presented(ray_cluster, clips, model_dir, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "out"
    refuse_writes(monkeypatch, out, errno.EROFS)
    with pytest.raises(storage.WriteFailed, match="read-only"):
        run(clips, out, model_dir)
    monkeypatch.undo()
    assert not list(out.rglob("*.parquet")) and not (out / "_SUCCESS").exists() and not list(out.rglob(".tmp-*"))
    assert not (out / "_LOCK").exists()
    assert run(clips, out, model_dir).exit_code == 0 and len(rows(out)) == 16


def test_a_disk_filling_up_mid_run_keeps_what_was_committed_and_resumes(ray_cluster, clips, model_dir, tmp_path,
                                                                        monkeypatch):
    full = tmp_path / "full"
    run(clips, full, model_dir, batch_items=1, commit_items=1)
    out = tmp_path / "out"
    refuse_writes(monkeypatch, out, errno.ENOSPC, after=3, only="parts")
    with pytest.raises(storage.WriteFailed, match="the disk is full"):
        run(clips, out, model_dir, batch_items=1, commit_items=1)
    monkeypatch.undo()
    committed = committed_keys(out)
    assert len(committed) == 3 and len(list((out / "parts").iterdir())) == 3  # no part without its record
    assert not list(out.rglob(".tmp-*")) and not (out / "_SUCCESS").exists()
    summary = run(clips, out, model_dir, batch_items=1, commit_items=1)
    assert summary.run_info["this_run"]["items"] == 13 and rows(out) == rows(full)


def test_the_command_says_what_to_do(tmp_path, monkeypatch, capfd):
    def full_disk(*args, **kwargs):
        raise storage.WriteFailed(f"cannot write {tmp_path}/out/parts/part-1.parquet: No space left on device "
                                  "(the disk is full)")

    monkeypatch.setattr(annotate_module, "annotate", full_disk)
    status = cli.main(["annotate", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capfd.readouterr().err
    assert status == 2 and "the disk is full" in err and "rerun the same command to resume" in err


@pytest.mark.parametrize("failure", [
    storage.StorageUnavailable("the object store kept failing on s3://b/out/commits/x.json (retried): SLOW_DOWN"),
    OSError("When reading information for key 'out/parts' in bucket 'b': AWS Error NETWORK_CONNECTION during "
            "ListObjectsV2 operation: curlCode: 7, Couldn't connect to server"),  # raised by pyarrow itself
])
def test_a_storage_outage_that_ends_a_run_exits_75_for_the_scheduler_to_retry(tmp_path, monkeypatch, capfd, failure):
    def outage(*args, **kwargs):
        raise failure

    monkeypatch.setattr(annotate_module, "annotate", outage)
    status = cli.main(["annotate", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capfd.readouterr().err
    assert status == 75 and "rerun the same command later to resume" in err and "Traceback" not in err


def test_configuration_errors_still_exit_2(tmp_path, capfd):
    status = cli.main(["annotate", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "out"), "--quiet"])
    assert status == 2 and "error:" in capfd.readouterr().err
