"""moderation_mode scored through the real command line and the tiny model: the moderation_scores
map column in both tables, per-label thresholds, a long file's highest segment score, and one
segment's score against transformers' first-step logits on the same audio."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.intake import audio
from tests.jobs.conftest import write_clip, write_manifest
from tests.jobs.test_command_line import command

LABELS = ["violence", "profanity", "spam"]
# 0 flags a label whatever its score, 1 (almost) never; spam takes moderation_threshold.
THRESHOLDS = {"violence": 0.0, "profanity": 1.0}


def test_scored_run_writes_scores_and_thresholded_labels(checkpoint_dir, tmp_path):
    import torch

    from tests.model.conftest import Reference

    data, out = tmp_path / "data", tmp_path / "out"
    write_clip(data / "short.wav", 2.0)
    write_clip(data / "long.wav", 40.0, freq=330.0)  # two segments
    manifest = write_manifest(data / "m.parquet", {"short": "short.wav", "long": "long.wav"})
    model_dir = checkpoint_dir("small-instruct")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "model": str(model_dir), "device": "cpu", "decode_slots": 4, "cpu_threads_per_worker": 1,
        "compile_cache_dir": None, "tasks": ["caption", "moderation"], "max_new_tokens": {"caption": 3},
        "moderation_labels": LABELS, "moderation_mode": "scored", "moderation_thresholds": THRESHOLDS,
        "moderation_threshold": 0.5,
    }))
    result = command(manifest, "--job", job, "--out", out, "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]

    table = pq.read_table(out / "annotations.parquet")
    assert table.schema.field("moderation_scores").type == pa.map_(pa.string(), pa.float64())
    segments = pq.read_table(out / "segments.parquet")
    assert segments.schema.field("moderation_scores").type == pa.map_(pa.string(), pa.float64())
    rows = {r["id"]: r for r in table.to_pylist()}
    for row in rows.values():
        scores = dict(row["moderation_scores"])
        assert list(scores) == LABELS and all(0 < p < 1 for p in scores.values())
        thresholds = {label: THRESHOLDS.get(label, 0.5) for label in LABELS}
        assert row["moderation"] == [label for label in LABELS if scores[label] >= thresholds[label]]
        assert "violence" in row["moderation"] and "profanity" not in row["moderation"]
    by_segment = [dict(s["moderation_scores"]) for s in segments.to_pylist() if s["id"] == "long"]
    assert len(by_segment) == 2
    assert dict(rows["long"]["moderation_scores"]) == {label: max(s[label] for s in by_segment) for label in LABELS}

    # The report counts the labels of the per-label questions as the moderation column's.
    page = (out / "report.html").read_text()
    assert 'data-figure="rows_with_tags:moderation"' in page
    assert 'id="scores"' in page and all(f"{label} P(yes)" in page for label in LABELS)

    info = json.loads((out / "run.json").read_text())
    scoring = info["settings"]["moderation_scoring"]
    assert scoring["thresholds"] == {"violence": 0.0, "profanity": 1.0, "spam": 0.5}
    yes_ids, no_ids = list(scoring["yes"].values()), list(scoring["no"].values())

    # The second segment of the long file, alone, through transformers with the run's own prompt.
    reference = Reference(model_dir)
    prompts = {t["name"]: t["prompt"] for t in info["tasks"]}
    second = next(s for s in segments.to_pylist() if s["id"] == "long" and s["segment"] == 1)
    clip = audio.decode(data / "long.wav", second["start_s"], second["end_s"])
    for label in LABELS:
        _, logits = reference.generate(prompts[f"moderation:{label}"], clip.samples, 1, info["eos_token_ids"])
        probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), -1)
        yes, no = probs[yes_ids].sum().item(), probs[no_ids].sum().item()
        assert abs(dict(second["moderation_scores"])[label] - yes / (yes + no)) < 1e-3, label
