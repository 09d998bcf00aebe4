"""What a person sees on the terminal, and what goes to the log file in OUT instead.

The end-to-end test runs the real command line in a pseudo-terminal, as a person at a terminal
would (the progress bar only shows on one), on the example manifest with a tiny random model.
"""

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.output.committer import Committer
from pipeline.output.console import warn_unreadable
from pipeline.items import Item, ItemResult
from pipeline.output.console import Console, start_line, summary_lines
from pipeline.reasons import Failure, Reason
from pipeline.items import failure_result

REPO = Path(__file__).resolve().parents[2]
BAR = re.compile(r"(\d+)/(\d+) audio-s \[([^<\]]*)<([^,\]]*)")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class NoSink:
    def commit(self, results, columns, stats):
        pass


def test_progress_bar_ends_exactly_full_whatever_order_items_finish():
    # Durations whose float sum depends on the order: summed in plan order (the total) they are
    # less than summed in reverse (the updates), so a bar in float seconds passed its total,
    # clamped it and showed a negative ETA.
    durations = [0.1, 0.2, 0.3, 29.999, 54.172 / 3, 1e-3, 7.7, 3.577] * 8
    assert sum(reversed(durations)) > sum(durations)
    items = [Item(i, f"row{i}", "a.wav", 0, 1, 0.0, d) for i, d in enumerate(durations)]
    terminal = FakeTerminal()
    console = Console(terminal, terminal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm warns when it has to clamp
        committer = Committer(NoSink(), {}, items, console, commit_items=1000, commit_seconds=1e9)
        for item in reversed(items):
            committer([ItemResult(item, "ok")], None)
            committer.bar.refresh()
        committer.close()
    shown = [tuple(map(int, m.groups()[:2])) + m.groups()[2:] for m in BAR.finditer(terminal.getvalue())]
    assert shown and all(n <= total and not remaining.strip().startswith("-") for n, total, _, remaining in shown)
    assert shown[-1][0] == shown[-1][1] == round(sum(durations))
    assert f"rows {len(items)}/{len(items)}, errors 0" in terminal.getvalue()


def test_summary_names_counts_top_reasons_time_and_places():
    info = {
        "counts": {"rows": 20, "rows_by_status": {"ok": 11, "error": 8, "partial": 1},
                   "rows_by_error": {"missing_file": 3, "corrupt_audio": 1, "empty_audio": 1, "model_error": 1,
                                     "truncated_audio": 1, "not_a_file": 1, "worker_lost": 1}},
        "this_run": {"audio_hours": 1.25, "wall_s": 600.0, "throughput_audio_s_per_s": 7.5},
    }
    lines = summary_lines(info, Path("/data/out"), Path("/data/out/logs/annotate-1.log"))
    assert lines[0] == "done: 20 rows (ok 11, error 8, partial 1)"
    # The five commonest reasons by name, the others counted together.
    assert lines[1] == ("errors by reason: missing_file 3, corrupt_audio 1, empty_audio 1, model_error 1, "
                        "not_a_file 1, 2 other reasons 2")
    assert lines[2] == "this run: 1.25 h of audio in 10.0 min (7.50 audio-s/s)"
    assert lines[3:] == ["outputs: /data/out/annotations.parquet, segments.parquet, run.json",
                         "log: /data/out/logs/annotate-1.log"]


def test_start_line_says_what_is_left_on_a_resume():
    assert start_line(8, 8, 91.1, 2, False, "fp32") == "annotating 8 rows (1.5 min of audio) with 2 workers on CPU, fp32"
    assert start_line(3, 8, 4000, 8, True, "bf16") == \
        "annotating 3 of 8 rows left (1.11 h of audio) with 8 workers on Ascend NPUs, bf16"
    assert start_line(8, 8, 91.1, 2, False, "fp32", decoding="greedy (checkpoint)",
                      ray_cluster="the cluster at 10.0.0.5:6379 (named by RAY_ADDRESS), 3 nodes") == \
        "annotating 8 rows (1.5 min of audio) with 2 workers on CPU, fp32; Ray: the cluster at 10.0.0.5:6379 " \
        "(named by RAY_ADDRESS), 3 nodes; decoding: greedy (checkpoint)"
    # Audio inside Parquet without duration_s: its length is known once decoded, not counted as 0 s.
    assert start_line(6, 6, 0.0, 1, False, "fp32", unknown_rows=6) == \
        "annotating 6 rows (6 rows of a length known once decoded) with 1 worker on CPU, fp32"
    assert start_line(6, 6, 4.0, 1, False, "fp32", unknown_rows=5) == \
        "annotating 6 rows (4 s of audio and 5 rows of a length known once decoded) with 1 worker on CPU, fp32"


def test_quiet_console_shows_errors_and_the_summary_only():
    terminal, logged = FakeTerminal(), []
    console = Console(terminal, terminal, quiet=True, log=logged.append)
    console.info("annotating 8 rows")
    console.warning("2 rows cannot be read")
    console.error("interrupted")
    console.summary(["done: 8 rows (ok 8)"])
    assert terminal.getvalue().splitlines() == ["error: interrupted", "done: 8 rows (ok 8)"]
    assert logged == ["annotating 8 rows", "warning: 2 rows cannot be read", "error: interrupted", "done: 8 rows (ok 8)"]
    assert console.progress_bar(1000).disable


def test_rows_that_cannot_be_read_are_a_warning_at_the_start():
    terminal = FakeTerminal()
    failures = [failure_result(Item(r, f"clip{r}", f"/audio/clip{r}.wav", 0, 1, 0.0, 0.0), failure)
                for r, failure in enumerate([Failure(Reason.MISSING_FILE, "no such file: /audio/clip0.wav"),
                                             Failure(Reason.MISSING_FILE, "no such file: /audio/clip1.wav"),
                                             Failure(Reason.CORRUPT_AUDIO, "not a WAV file")])]
    warn_unreadable(Console(terminal, terminal), failures)
    warn_unreadable(Console(terminal, terminal), [])
    assert terminal.getvalue().splitlines() == [
        "warning: 3 rows cannot be read and become error rows (missing_file 2, corrupt_audio 1); "
        "first: clip0: no such file: /audio/clip0.wav"]


def run_in_terminal(argv: list[str], timeout: float) -> tuple[int, str]:
    """Runs argv with a pseudo-terminal as stdout and stderr; -> (exit status, what it showed)."""
    import pty

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    process = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
                               stdout=child, stderr=child, start_new_session=True)
    os.close(child)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([main], [], [], 1.0)[0]:
                try:
                    data = os.read(main, 1 << 16)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not data:
                    break
                shown += data
        else:
            process.kill()
            pytest.fail(f"timed out; it showed:\n{shown.decode(errors='replace')[-3000:]}")
        return process.wait(timeout=60), shown.decode(errors="replace")
    finally:
        os.close(main)


def screen_lines(shown: str) -> list[str]:
    """What a person reads: colour and style codes are invisible on a terminal (one is written at
    exit by colorama, which Ray imports)."""
    shown = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    return [line.strip() for line in re.split(r"[\r\n]+", shown) if line.strip()]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    from pipeline.testing.tiny_model import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("console")
    model = write_tiny_checkpoint(root / "model", seed=0, flavour="instruct", size="small")
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump({
        "model": str(model), "device": "cpu", "decode_slots": 4, "batch_items": 2,
        "cpu_threads_per_worker": 1, "compile_cache_dir": None,
        "max_new_tokens": {"caption": 6, "events": 6, "transcript": 8, "moderation": 4},
    }))
    out = root / "out"
    argv = [sys.executable, "-m", "pipeline", "annotate", "manifests/example.parquet", "--job", str(job),
            "--out", str(out), "--workers", "1"]
    status, shown = run_in_terminal(argv, timeout=600)
    assert status == 0, shown[-3000:]
    log = re.search(r"^log: (\S+\.log)\r?$", shown, re.M)
    return argv, out, shown, Path(log.group(1)) if log else None


def test_terminal_shows_start_bar_and_summary_and_no_library_output(example_run):
    _, out, shown, log = example_run
    lines = screen_lines(shown)
    # No MindSpore glog line, nothing Ray printed (its warnings, worker output with "(name pid=N)"),
    # no Python warning (tqdm's clamping).
    noise = [line for line in lines if re.search(r"\[(WARNING|ERROR|INFO)\]|WARNING|pid=\d+|Warning|clamping", line)]
    assert not noise, noise
    assert lines[0] == ("annotating 8 rows (1.5 min of audio) with 1 worker on CPU, fp32; "
                        "Ray: a private local cluster for this run; decoding: greedy (checkpoint)")
    bars = [(int(n), int(total), remaining) for n, total, _, remaining in BAR.findall(shown)]
    assert bars and all(n <= total == 91 and not remaining.startswith("-") for n, total, remaining in bars)
    assert bars[-1][0] == 91
    statuses = pq.read_table(out / "annotations.parquet").column("status").to_pylist()
    assert statuses == ["ok"] * 8
    summary = lines[-5:]
    assert summary[0] == "done: 8 rows (ok 8)"
    assert re.fullmatch(r"this run: 1.5 min of audio in [\d.]+ (s|min) \([\d.]+ audio-s/s\)", summary[1])
    assert summary[2] == f"outputs: {out}/annotations.parquet, segments.parquet, run.json, report.html"
    assert (out / "report.html").is_file()
    assert re.fullmatch(rf"this run's rows: {out}/runs/\d{{8}}T\d{{6}}Z\.parquet", summary[3])
    assert summary[4] == f"log: {log}"
    assert log.parent == out / "logs" and log.is_file()


def test_log_in_out_holds_the_library_output(example_run):
    _, out, shown, log = example_run
    text = log.read_text()
    # Ray ships the workers' output to the driver, which writes it here: with this model and
    # manifest, MindSpore's warnings from the model worker and the mp3 decoder's from decoding.
    from_workers = re.findall(r"^\((?:AnnotationWorker|prepare_batch) pid=\d+\) .+$", text, re.M)
    assert from_workers
    assert not any(line.split(") ", 1)[1][:60] in shown for line in from_workers)
    # What the terminal showed is there too, marked as ours.
    assert re.search(r"^\[annotate [\d:]+\] done: 8 rows \(ok 8\)$", text, re.M)


def test_quiet_rerun_prints_only_its_summary_and_keeps_earlier_logs(example_run):
    argv, out, _, log = example_run
    before = sorted((out / "logs").glob("annotate-*.log"))
    first_log = log.read_text()
    status, shown = run_in_terminal(argv + ["--quiet"], timeout=300)
    assert status == 0, shown[-3000:]
    assert screen_lines(shown) == [f"{out} is already complete for this manifest and settings; nothing to do."]
    after = sorted((out / "logs").glob("annotate-*.log"))
    assert len(after) == len(before) + 1 and log.read_text() == first_log
