"""--dry-run: the plan from the manifest and OUT; no model, no worker, nothing written in OUT."""

import io
import json

import pytest

from pipeline.dry_run import DryPlan, dry_run
from pipeline.errors import UserError
from pipeline.intake.manifest_set import read_manifests
from pipeline.items import Item, ItemResult
from pipeline.intake.durations import DurationCache
from pipeline.model.model_plan import split_lengths
from pipeline.output.committed import CommittedIndex
from pipeline.output.console import Console
from pipeline.output.sink import OutputDir
from pipeline.planning.stream import WorkStream
from pipeline.planning.work import Planner
from pipeline.testing.shards import recordings, write_hf_parquet
from tests.jobs.conftest import run
from tests.pipeline.conftest import fast_config


def plan_text(manifest, out, model_dir, **overrides) -> str:
    shown = io.StringIO()
    config = fast_config(model_dir, manifest, audio_root=None, **overrides)
    assert dry_run(manifest, config, out=out, workers=2, console=Console(shown, shown, progress=False)) == 0
    return shown.getvalue()


def snapshot(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_fresh_out_is_planned_and_not_created(clips, model_dir, tmp_path):
    out = tmp_path / "out"
    text = plan_text(clips, out, model_dir, max_rows=3)
    assert not out.exists()
    assert f"output: {out}: nothing committed yet" in text
    # Seven rows; the 70 s file is three segments: nine items.
    assert "to do: 7 rows, 9 items (clips and segments of long files), 84 s of audio" in text
    assert ("this run: 3 rows to the model (3 items, 8 s of audio) in 2 batches of about 60 s (at most 2 items); "
            "--max-rows 3 leaves 4 rows for the next runs") in text
    assert "graphs: encode[F=3000], prefill[" in text and ", step[N=6," in text  # the four declared graphs
    assert "decoding: greedy (checkpoint)\n" in text
    assert "estimate: none (no earlier run in this OUT annotated audio)" in text


def test_audio_inside_parquet_without_durations_is_said_unknown_not_zero(model_dir, tmp_path):
    # The driver never reads a Parquet cell (nor resolves a struct's path): their lengths come from decoding.
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "dog.flac").write_bytes(recordings()["dog_barks.flac"])
    cells = [{"bytes": recordings()[name], "path": name} for name in ("speech_greeting.wav", "rain.opus")]
    manifest = write_hf_parquet(tmp_path / "hub" / "train.parquet", cells + [{"bytes": None, "path": "dog.flac"}])
    text = plan_text(manifest, tmp_path / "out", model_dir, max_rows=2)
    assert "to do: 3 rows, 3 items (clips and segments of long files), 3 rows of a length known once decoded" in text
    assert "unknown lengths: 3 rows of Parquet files that hold audio have no duration_s" in text
    assert "this run: 2 rows to the model (2 items, 2 rows of a length known once decoded) in 1 batch" in text
    assert "estimate: none (2 rows of a length known once decoded)" in text


def test_after_a_run_it_counts_done_failed_and_retryable_and_estimates(ray_cluster, clips, model_dir, tmp_path):
    out = tmp_path / "out"
    assert run(clips, out, model_dir, max_rows=3).exit_code == 75
    # As if the object store had failed on row d: a transient result, retried by the next run.
    sink = OutputDir(out)
    sink.commit([ItemResult(Item(4, "d", "d.wav", 0, 1, 0.0, 1.5), "error", error="storage_unavailable",
                            error_detail="the object store kept failing")], {}, None)
    before = snapshot(out)
    text = plan_text(clips, out, model_dir)
    assert snapshot(out) == before  # not a byte written, no log file
    assert f"output: {out}: 4 rows done (ok 3, error 1); 1 failed, 1 of them retryable" in text
    assert "to do: 4 rows (1 retried), 6 items" in text
    assert "this run: 4 rows to the model (6 items, 76 s of audio) in 3 batches" in text
    assert "estimate: about " in text and "audio-s/s, the throughput of the run started " in text
    assert "--max-wall 0.01 min stops dispatch before then (exit 75" in plan_text(clips, out, model_dir,
                                                                                 max_wall_minutes=0.01)
    assert snapshot(out) == before


def graphs_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("graphs: "))


def test_it_declares_the_graphs_the_run_compiles_short_slots_included(ray_cluster, clips, model_dir, tmp_path,
                                                                      monkeypatch):
    # The run sizes short decode slots from its head's items, a long file's segments counted as whole windows.
    out = tmp_path / "out"
    config = fast_config(model_dir, clips, audio_root=None, decode_slots=16, short_slots=True)
    assert DryPlan.of(read_manifests(clips), config, OutputDir(out), False).split_sample == [
        1.0, 2.5, 4.0, 30.0, 30.0, 30.0, 1.5, 3.0, 2.0]
    assert ", step[N=16," in plan_text(clips, out, model_dir, decode_slots=16)  # only when the job asks for them

    def declared_then_run(out):
        text = plan_text(clips, out, model_dir, decode_slots=16, short_slots=True)
        assert run(clips, out, model_dir, decode_slots=16, short_slots=True).exit_code == 0
        assert graphs_line(text) == "graphs: " + ", ".join(json.loads((out / "run.json").read_text())["shape"]["graphs"])
        return text

    # Windows of 3 rows: the head is a, b, c; on a resume after them, the window after theirs.
    monkeypatch.setattr("pipeline.planning.work.WINDOW_ROWS", 3)
    text = declared_then_run(out)
    assert ", step[N=8+8," in graphs_line(text) and "16 decode slots (8 of " in text
    resumed = tmp_path / "resumed"
    assert run(clips, resumed, model_dir, decode_slots=16, short_slots=True, max_rows=3).exit_code == 75
    assert ", step[N=12+4," in graphs_line(declared_then_run(resumed))  # long's three segments, d and e


def run_head_sample(manifest, config, out) -> list[float]:
    """What annotate() sizes the split from: its head's items, as WorkStream.head plans them."""
    sink = OutputDir(out)
    durations = DurationCache(sink.durations)
    stream = WorkStream(Planner(read_manifests(manifest), config, CommittedIndex(), durations), config, durations)
    return list(split_lengths(item for window in stream.head() for item in window.items))


def test_the_split_sample_is_the_run_heads_even_when_its_rows_all_fail(clips, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.planning.work.WINDOW_ROWS", 3)
    config = fast_config(model_dir, clips, audio_root=None, decode_slots=16, short_slots=True)
    out = tmp_path / "out"
    assert DryPlan.of(read_manifests(clips), config, OutputDir(out), False).split_sample == run_head_sample(
        clips, config, out) == [1.0, 2.5, 4.0]
    # The head is the first window with work, here three missing files: the run compiles no split
    # (no clip to size it from), so the dry run must not size one from the window after it.
    for name in ("a", "b", "c"):
        (clips.parent / "audio" / f"{name}.wav").unlink()
    assert DryPlan.of(read_manifests(clips), config, OutputDir(out), False).split_sample == run_head_sample(
        clips, config, out) == []


def test_other_settings_are_reported_as_the_run_would_stop(ray_cluster, clips, model_dir, tmp_path):
    out = tmp_path / "out"
    run(clips, out, model_dir, max_rows=1)
    with pytest.raises(UserError, match="different settings"):
        plan_text(clips, out, model_dir, tasks=("caption",))
    with pytest.raises(UserError, match=r"different settings \(changed: decoding\)"):
        plan_text(clips, out, model_dir, repetition_penalty=1.2)
    shown = io.StringIO()
    config = fast_config(model_dir, clips, audio_root=None, tasks=("caption",))
    dry_run(clips, config, out=out, restart=True, console=Console(shown, shown, progress=False))
    assert "--restart discards its committed work" in shown.getvalue() and "to do: 7 rows" in shown.getvalue()


def test_decoding_says_where_each_value_came_from(clips, checkpoint_dir, tmp_path):
    """The checkpoint's generation_config.json, under job keys, under command-line options."""
    model_dir = checkpoint_dir("sampling-instruct")
    assert ("decoding: sampling (checkpoint): temperature 0.7 (checkpoint), top_k 20 (checkpoint), top_p 0.5 "
            "(checkpoint), repetition_penalty 1.1 (checkpoint), seed 0 (default)\n") in plan_text(clips, tmp_path, model_dir)
    shown = io.StringIO()
    config = fast_config(model_dir, clips, audio_root=None, top_p=0.8, temperature=0.9).with_overrides(temperature=0.5)
    dry_run(clips, config, out=tmp_path, console=Console(shown, shown, progress=False))
    assert ("decoding: sampling (checkpoint): temperature 0.5 (option), top_k 20 (checkpoint), top_p 0.8 (job), "
            "repetition_penalty 1.1 (checkpoint), seed 0 (default)\n") in shown.getvalue()
    greedy = fast_config(model_dir, clips, audio_root=None, do_sample=True).with_overrides(do_sample=False)
    shown = io.StringIO()
    dry_run(clips, greedy, out=tmp_path, console=Console(shown, shown, progress=False))
    assert "decoding: greedy (option), repetition_penalty 1.1 (checkpoint)\n" in shown.getvalue()


def test_a_hub_model_that_is_not_local_is_fetched_without_its_weights(clips, model_dir, tmp_path, monkeypatch):
    """A dry run needs the configuration and tokenizer, not gigabytes of weights."""
    from tests.fake_hub import FakeHub

    hub = FakeHub(monkeypatch, model_dir, tmp_path / "hub-cache")
    text = plan_text(clips, tmp_path / "out", "tiny-org/tiny-audio")
    assert hub.downloads and all(call["allow_patterns"] for call in hub.downloads)
    fetched = {p.name for p in hub.snapshot("tiny-org/tiny-audio").iterdir()}
    assert "config.json" in fetched and "tokenizer_config.json" in fetched and "model.safetensors" not in fetched
    assert "model: tiny-org/tiny-audio: the weights are not here" in text and "the run downloads them first" in text
    assert "graphs: encode[F=3000], prefill[" in text  # still planned from the configuration


def test_npu_memory_is_the_job_s_not_a_constant(clips, model_dir, tmp_path):
    """Decode slots on Ascend are sized from npu_memory_gb (the driver need not see an NPU): a device
    with less memory gets fewer slots, instead of plans for a 64 GB 910B that it cannot hold."""
    import re

    def slots(npu_memory_gb: float) -> int:
        text = plan_text(clips, tmp_path / "out", model_dir, device="ascend", decode_slots=0,
                         npu_memory_gb=npu_memory_gb, max_new_tokens={"caption": 64, "events": 48,
                                                                      "transcript": 192, "moderation": 32})
        return int(re.search(r"(\d+) decode slots", text).group(1))

    assert slots(64) == 32 and slots(0.0625) < 32


def test_the_estimate_says_which_rows_it_cannot_count(monkeypatch, model_dir, tmp_path):
    from pipeline import dry_run as module

    monkeypatch.setattr(module.delta, "last_run", lambda sink: {"audio_s": 100.0, "wall_s": 10.0, "started": "T"})
    config = fast_config(model_dir, tmp_path)
    assert module.estimate_line(None, 50.0, config, unknown_rows=3) == \
        "estimate: about 5 s at 10.00 audio-s/s, the throughput of the run started T " \
        "(not counting 3 rows of a length known once decoded)"
    limited = fast_config(model_dir, tmp_path, max_wall_minutes=1)
    assert module.estimate_line(None, 50.0, limited, unknown_rows=3).endswith(
        "(not counting 3 rows of a length known once decoded); --max-wall 1 min leaves room")
    assert module.estimate_line(None, 0.0, limited, unknown_rows=3) == \
        "estimate: none (3 rows of a length known once decoded); --max-wall 1 min"
