"""The whole pipeline through Ray with a fake model: identity, error rows, resume, faults.

The fake model answers deterministically from each clip's key, so these tests check what the
pipeline does with answers (planning, decoding, retries, commits), not the model.
"""

import json

import pyarrow.parquet as pq
import pytest

from pipeline.annotate import annotate
from pipeline.config import CustomTask
from pipeline.errors import UserError
from pipeline.testing.fake_model import FakeModelFactory
from tests.pipeline.conftest import EXPECTED, LONG_S, fast_config


def read(out, name="annotations.parquet"):
    return pq.read_table(out / name).to_pylist()


@pytest.fixture
def model_dir(checkpoint_dir):
    return checkpoint_dir("small-instruct")


def run(manifest, out, model_dir, factory=FakeModelFactory(), **overrides):
    config = fast_config(model_dir, manifest, **overrides)
    return annotate(manifest, config, out=out, workers=2, progress=False, model_factory=factory)


def test_every_row_once_with_status_and_reason(ray_cluster, mixed_manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    summary = run(mixed_manifest, out, model_dir)
    rows = read(out)
    assert [r["id"] for r in rows] == list(EXPECTED)
    for row in rows:
        assert (row["status"], row["error"]) == EXPECTED[row["id"]], row
        if row["status"] == "error":
            assert row["error_detail"] and row["caption"] is None and row["raw"] is None
        else:
            assert row["caption"].startswith("A sound recorded for") and row["error_detail"] is None
            assert dict(row["raw"])["events"].startswith("speech, ")
    by_id = {r["id"]: r for r in rows}
    assert by_id["silent"]["silent"] is True and by_id["short"]["silent"] is False
    # What the model said about each answer (the fake: its words are its tokens, each task a mean
    # log-probability of its own); a long row's tokens add up over its segments.
    tasks = ("caption", "events", "transcript", "moderation")
    for row in rows:
        if row["status"] == "error":
            assert all(row[c] is None for c in ("logprob", "answer_tokens", "hit_cap", "looped", "retried"))
            continue
        assert dict(row["logprob"]) == pytest.approx({t: -0.05 * (i + 1) for i, t in enumerate(tasks)})
        assert dict(row["hit_cap"]) == dict(row["looped"]) == {t: False for t in tasks} and not row["retried"]
    segments = [s for s in read(out, "segments.parquet") if s["id"] == "long"]
    assert dict(by_id["long"]["answer_tokens"])["caption"] == sum(dict(s["answer_tokens"])["caption"] for s in segments)
    assert dict(segments[0]["answer_tokens"])["caption"] == len("A sound recorded for long#0.".split())
    assert by_id["short"]["language"] == "en" and by_id["short"]["transcript"] == "words of short#0"
    assert [r["source"] for r in rows] == [f"src-{i}" for i in range(len(EXPECTED))]  # pass-through
    assert summary.counts["rows_by_status"] == {"ok": 5, "error": 7}
    assert (out / "_SUCCESS").is_file() and not list(out.glob(".tmp-*"))


def test_follow_ups_fill_their_own_columns_and_skipped_ones_say_why(ray_cluster, mixed_manifest, model_dir, tmp_path):
    """A 3-turn chain with rules: the fake model asks each follow-up as the real engine would
    (same rules), and says which answer it followed. A long file's segments are each a
    conversation: a rule that holds for one segment only skips the question in the others."""
    out = tmp_path / "out"
    summary = run(mixed_manifest, out, model_dir, tasks=("caption", "events"), custom_tasks=(
        CustomTask("speaker", "Who speaks?", 8, "text", follows="events", when={"contains": "speech"}),
        CustomTask("more", "Anything else?", 8, "list", follows="speaker",
                   when={"task": "events", "matches": r"short|long#0"})))
    rows = {r["id"]: r for r in read(out)}
    short, medium, long = rows["short"], rows["medium"], rows["long"]
    assert short["speaker"].startswith("short#0 ") and short["speaker"].endswith(" (after events)")
    assert short["more"] and short["more"][-1].endswith("(after speaker)") and not short["skipped"]
    assert dict(short["raw"]).keys() == {"caption", "events", "speaker", "more"}
    assert medium["more"] is None and "more" not in dict(medium["raw"])
    assert dict(medium["skipped"]) == {"more": "when: events matches 'short|long#0': no"}
    segments = [s for s in read(out, "segments.parquet") if s["id"] == "long"]
    assert segments[0]["more"] and not segments[0]["skipped"]
    assert all(dict(s["skipped"]) == {"more": "when: events matches 'short|long#0': no"} for s in segments[1:])
    assert long["more"] == segments[0]["more"]
    assert dict(long["skipped"]) == {"more": f"in {len(segments) - 1} of {len(segments)} segments: "
                                             "when: events matches 'short|long#0': no"}
    assert rows["missing"]["skipped"] is None  # an error row
    tasks = {t["name"]: t for t in summary.run_info["tasks"]}
    assert tasks["more"]["follows"] == "speaker" and tasks["more"]["when"] == {"matches": "short|long#0", "task": "events"}
    assert tasks["speaker"]["prompt"].startswith("<|im_end|>\n<|im_start|>user\nWho speaks?")
    assert "follows" not in tasks["caption"] and "conversations" in summary.run_info


def test_long_audio_is_segmented_at_pauses_and_covered(ray_cluster, mixed_manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    run(mixed_manifest, out, model_dir)
    segments = [s for s in read(out, "segments.parquet") if s["id"] == "long"]
    assert len(segments) >= 2 and all(s["status"] == "ok" for s in segments)
    assert [s["segment"] for s in segments] == list(range(len(segments)))
    assert segments[0]["start_s"] == 0 and segments[-1]["end_s"] == pytest.approx(LONG_S, abs=0.01)
    for before, after in zip(segments, segments[1:]):
        assert before["end_s"] == after["start_s"]  # contiguous: nothing lost, nothing twice
        # The test audio has 0.6 s pauses after every 3 s of tone: each cut lands in one.
        assert (after["start_s"] % 3.6) >= 3.0 - 0.03
    assert all(s["end_s"] - s["start_s"] <= 30 for s in segments)
    row = next(r for r in read(out) if r["id"] == "long")
    assert row["n_segments"] == len(segments)
    # Transcripts of the segments are joined in order.
    assert row["transcript"] == " ".join(f"words of long#{s['segment']}" for s in segments)


def test_rerun_of_a_finished_run_does_no_work(ray_cluster, mixed_manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    run(mixed_manifest, out, model_dir)
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # A factory that fails on every key: any model work would turn rows into errors.
    summary = run(mixed_manifest, out, model_dir, factory=FakeModelFactory(fail_keys=tuple(f"{k}#0" for k in EXPECTED)))
    assert summary.already_complete
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_resume_processes_only_uncommitted_items(ray_cluster, mixed_manifest, model_dir, tmp_path):
    full = tmp_path / "full"
    run(mixed_manifest, full, model_dir, commit_items=1)
    resumed = tmp_path / "resumed"
    run(mixed_manifest, resumed, model_dir, commit_items=1)
    # As if killed after committing half of its parts: later parts and the final files are gone.
    parts = sorted((resumed / "parts").glob("part-*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    lost = parts[len(parts) // 2:]
    lost_keys = {k for p in lost for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()}
    for path in lost:
        path.unlink()
    for name in ("_SUCCESS", "annotations.parquet", "segments.parquet", "run.json"):
        (resumed / name).unlink()
    summary = run(mixed_manifest, resumed, model_dir, commit_items=1)
    assert summary.run_info["this_run"]["items"] == len(lost_keys)
    assert read(resumed) == read(full)
    assert read(resumed, "segments.parquet") == read(full, "segments.parquet")
    keys = pq.read_table(resumed / "parts").column("key").to_pylist()
    assert len(keys) == len(set(keys))  # committed exactly once


def test_resume_reads_no_header_of_a_finished_row(ray_cluster, mixed_manifest, model_dir, tmp_path, monkeypatch):
    from pipeline.intake import audio

    out = tmp_path / "out"
    run(mixed_manifest, out, model_dir)
    (out / "_SUCCESS").unlink()  # as if killed after the last commit, before the final files
    probed = []
    real_probe = audio.probe
    monkeypatch.setattr(audio, "probe", lambda path: probed.append(path) or real_probe(path))
    before = read(out)
    summary = run(mixed_manifest, out, model_dir)
    assert not summary.already_complete and summary.run_info["this_run"]["items"] == 0
    assert probed == []
    assert read(out) == before


def test_new_manifest_rows_are_processed_on_rerun(ray_cluster, mixed_manifest, model_dir, tmp_path):

    out = tmp_path / "out"
    table = pq.read_table(mixed_manifest)
    first = tmp_path / "data" / "first.parquet"
    pq.write_table(table.slice(0, 3), first)
    run(first, out, model_dir)
    pq.write_table(table.slice(0, 5), first)  # a nightly job's manifest grows
    summary = run(first, out, model_dir)
    assert summary.run_info["this_run"]["items"] > 0
    grown = read(out)
    assert [r["id"] for r in grown] == list(EXPECTED)[:5]
    # Reordered, with a row gone: ids are the identity, so rows follow the new order, no work.
    order = [4, 2, 0, 1]
    pq.write_table(table.take(order), first)
    summary = run(first, out, model_dir)
    assert summary.run_info["this_run"]["items"] == 0
    assert read(out) == [grown[i] for i in order]
    assert [s["id"] for s in read(out, "segments.parquet")][0] == grown[4]["id"]


def test_model_failure_is_isolated_to_its_item(ray_cluster, mixed_manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    summary = run(mixed_manifest, out, model_dir, factory=FakeModelFactory(fail_keys=("short#0",)), batch_items=4)
    rows = {r["id"]: r for r in read(out)}
    assert (rows["short"]["status"], rows["short"]["error"]) == ("error", "model_error")
    assert "injected model failure" in rows["short"]["error_detail"]
    assert all(rows[i]["status"] == status for i, (status, _) in EXPECTED.items() if i != "short")
    assert summary.run_info["this_run"]["splits"] >= 1


def test_crashing_worker_is_replaced_and_item_isolated(ray_cluster, mixed_manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    summary = run(mixed_manifest, out, model_dir, factory=FakeModelFactory(crash_keys=("medium#0",)))
    rows = {r["id"]: r for r in read(out)}
    assert (rows["medium"]["status"], rows["medium"]["error"]) == ("error", "worker_lost")
    assert all(rows[i]["status"] == status for i, (status, _) in EXPECTED.items() if i != "medium")
    assert summary.run_info["this_run"]["worker_replacements"] >= 1


def test_one_worker_per_fake_npu(ray_cluster, mixed_manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    summary = run(mixed_manifest, out, model_dir, device="auto", dtype="auto")
    workers = summary.run_info["this_run"]["workers"]
    assert sorted(w["npu"] for w in workers) == ["0", "1"]
    assert summary.run_info["model"]["device"] == "ascend" and summary.run_info["model"]["dtype"] == "bf16"


def test_changed_settings_are_refused_unless_restarted(ray_cluster, mixed_manifest, model_dir, tmp_path):
    out = tmp_path / "out"
    run(mixed_manifest, out, model_dir, tasks=("caption",))
    with pytest.raises(UserError, match="different settings"):
        run(mixed_manifest, out, model_dir, tasks=("events",))
    config = fast_config(model_dir, mixed_manifest, tasks=("events",))
    annotate(mixed_manifest, config, out=out, workers=2, restart=True, progress=False, model_factory=FakeModelFactory())
    rows = read(out)
    assert all(r["caption"] is None for r in rows)
    assert any(r["events"] for r in rows)
    assert json.loads((out / "state.json").read_text())["settings"]["prompts"].keys() == {"events"}


def test_manifest_column_clashing_with_output_is_refused(ray_cluster, mixed_manifest, model_dir, tmp_path):
    table = pq.read_table(mixed_manifest).append_column("caption", pq.read_table(mixed_manifest).column("source"))
    clash = tmp_path / "data" / "clash.parquet"
    pq.write_table(table, clash)
    with pytest.raises(UserError, match="caption"):
        run(clash, tmp_path / "out", model_dir)


INTERRUPTIBLE_RUN = """
import sys
from pathlib import Path
from pipeline.annotate import annotate
from pipeline.config import CustomTask
from pipeline.testing.fake_model import FakeModelFactory
from tests.pipeline.conftest import fast_config
manifest, out, model = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
# One batch in flight at a time: the interrupt must find work left (a worker holding several
# batches finishes them all within the stop's grace).
config = fast_config(model, manifest, commit_items=1, batch_items=1, prefetch_batches=0)
try:
    annotate(manifest, config, out=out, workers=1, progress=False, model_factory=FakeModelFactory(delay_s=1.0))
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_stops_cleanly_and_the_rerun_completes(mixed_manifest, model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE_RUN, str(mixed_manifest), str(out), str(model_dir)],
                               cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list(out.glob("parts/part-*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "rerun the same command to resume" in stderr
    assert not (out / "_SUCCESS").exists() and not list(out.rglob(".tmp-*"))
    committed = pq.read_table(out / "parts").column("key").to_pylist()
    # The reruns are in this process: Ray starts here on first use.
    full = tmp_path / "full"
    config = fast_config(model_dir, mixed_manifest, commit_items=1, batch_items=1)
    options = dict(workers=1, progress=False, model_factory=FakeModelFactory())
    annotate(mixed_manifest, config, out=full, **options)
    total = pq.read_table(full / "segments.parquet").num_rows
    assert 0 < len(committed) < total
    summary = annotate(mixed_manifest, config, out=out, **options)
    assert summary.run_info["this_run"]["items"] == total - len(committed)
    assert read(out) == read(full)


def test_looping_answers_are_flagged_and_retried_when_asked(ray_cluster, mixed_manifest, model_dir, tmp_path):
    """A looping answer is flagged per task; with retry_degenerate it alone is generated again with
    the retry's decoding, and the output records that it was."""
    loops = FakeModelFactory(loop_keys=("short#0",))
    flagged = tmp_path / "flagged"
    run(mixed_manifest, flagged, model_dir, factory=loops)
    by_id = {r["id"]: r for r in read(flagged)}
    short = by_id["short"]
    tasks = ("caption", "events", "transcript", "moderation")
    assert dict(short["looped"]) == dict(short["hit_cap"]) == {t: True for t in tasks} and not short["retried"]
    assert dict(short["answer_tokens"])["caption"] == 12
    assert dict(by_id["medium"]["looped"]) == {t: False for t in tasks}

    retried = tmp_path / "retried"
    summary = run(mixed_manifest, retried, model_dir, factory=loops, retry_degenerate={"repetition_penalty": 1.2})
    rows = {r["id"]: r for r in read(retried)}
    short = rows["short"]
    assert dict(short["retried"]) == {t: "repetition_penalty=1.2" for t in tasks}
    assert dict(short["looped"]) == {t: False for t in tasks} and short["caption"] == "A sound recorded for short#0."
    assert all(not r["retried"] for i, r in rows.items() if i != "short" and r["status"] == "ok")
    # Only the flagged answers ran again; everything else is as the run without the retry gave it.
    for item_id, row in rows.items():
        if item_id != "short":
            assert row["raw"] == by_id[item_id]["raw"], item_id
    info = summary.run_info
    assert info["generation"]["retried_answers"] == 4
    assert info["decoding"]["retry_degenerate"]["changes"] == {"repetition_penalty": 1.2}
    assert json.loads((retried / "state.json").read_text())["settings"]["decoding"]["retry_degenerate"] == {
        "do_sample": False, "repetition_penalty": 1.2}
