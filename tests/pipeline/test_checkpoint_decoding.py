"""The checkpoint's own decoding, end to end through the command line (`python -m pipeline
annotate`, as `make annotate` runs it), against transformers' generate() reading the same
generation_config.json: greedy with a repetition penalty and two end-of-sequence ids, a job with no
decoding keys, real recordings (the example manifest's), one of them cut into segments."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.intake import audio

REPO = Path(__file__).resolve().parents[2]
CLIPS = ("speech_greeting", "long_story")  # the long story is cut into segments
LOGPROB_ATOL = 2e-3


def test_the_checkpoints_decoding_through_the_cli_equals_generate(checkpoint_dir, tmp_path):
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model_dir = checkpoint_dir("penalty-instruct")
    config = json.loads((model_dir / "generation_config.json").read_text())
    assert config["repetition_penalty"] == 1.3 and not config["do_sample"] and len(config["eos_token_id"]) == 2
    example = pq.read_table(REPO / "manifests" / "example.parquet").to_pylist()
    rows = [dict(r, audio=str(REPO / "manifests" / r["audio"])) for r in example if r["id"] in CLIPS]
    manifest = tmp_path / "clips.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    job = tmp_path / "job.yaml"  # no decoding key: the checkpoint decides
    job.write_text(yaml.safe_dump({
        "model": str(model_dir), "device": "cpu", "compile_cache_dir": None, "decode_slots": 8,
        "max_new_tokens": {"caption": 16, "events": 12, "transcript": 32, "moderation": 8},
    }))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "pipeline", "annotate", str(manifest), "--job", str(job),
                           "--out", str(out), "--workers", "1", "--no-progress"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "decoding: greedy (checkpoint), repetition_penalty 1.3 (checkpoint)" in done.stdout

    info = json.loads((out / "run.json").read_text())
    decoding = info["decoding"]
    assert (decoding["do_sample"], decoding["repetition_penalty"]) == (False, 1.3)
    assert decoding["sources"]["do_sample"] == decoding["sources"]["repetition_penalty"] == "checkpoint"
    assert decoding["eos_token_ids_from"] == "checkpoint" and info["eos_token_ids"] == config["eos_token_id"]

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()
    eos = set(config["eos_token_id"])
    paths = {r["id"]: r["audio"] for r in rows}
    segments = pq.read_table(out / "segments.parquet").to_pylist()
    assert [s["status"] for s in segments] == ["ok"] * len(segments)
    assert sum(s["id"] == "long_story" for s in segments) > 1
    pooled, penalty_decides = {}, False
    for segment in segments:
        clip = audio.decode(paths[segment["id"]], segment["start_s"], segment["end_s"]).samples
        for task in info["tasks"]:
            name = task["name"]
            inputs = processor(text=[task["prompt"]], audio=[clip], sampling_rate=16_000, return_tensors="pt")
            with torch.no_grad():  # no decoding argument: generation_config.json decides, as for a user
                generated = model.generate(**inputs, max_new_tokens=task["max_new_tokens"], output_logits=True,
                                           return_dict_in_generate=True)
                if not penalty_decides:
                    plain = model.generate(**inputs, max_new_tokens=task["max_new_tokens"], repetition_penalty=1.0)
                    penalty_decides = plain[0, inputs["input_ids"].shape[1]:].tolist() != generated.sequences[
                        0, inputs["input_ids"].shape[1]:].tolist()
            chosen = generated.sequences[0, inputs["input_ids"].shape[1]:].tolist()
            ended = bool(chosen) and chosen[-1] in eos
            answer = chosen[:-1] if ended else chosen
            where = (segment["id"], segment["segment"], name)
            assert dict(segment["raw"])[name] == processor.tokenizer.decode(answer, skip_special_tokens=False), where
            logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(generated.logits, chosen)]
            assert abs(dict(segment["logprob"])[name] - np.mean(logprobs)) < LOGPROB_ATOL, where
            assert (dict(segment["answer_tokens"])[name], dict(segment["hit_cap"])[name]) == (len(answer), not ended)
            totals = pooled.setdefault((segment["id"], name), [0.0, 0])
            totals[0] += sum(logprobs)
            totals[1] += len(logprobs)
    assert penalty_decides  # the checkpoint's penalty changes answers here: ignoring it would fail
    # A row's logprob: the mean over all its segments' tokens (end tokens included).
    for row in pq.read_table(out / "annotations.parquet").to_pylist():
        for name, value in dict(row["logprob"]).items():
            total, count = pooled[(row["id"], name)]
            assert abs(value - total / count) < LOGPROB_ATOL, (row["id"], name)
