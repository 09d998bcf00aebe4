"""The real tiny MindSpore model through Ray, end to end, and a kill in the middle of a run.

Slower than the fake-model tests (each worker loads the model and compiles its graphs), so the
uninterrupted run is shared by the tests in this module. Its job holds a 3-turn conversation
(caption -> detail -> again, the last with a rule), so the kill lands between two turns of one.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.intake import audio
from pipeline.annotate import annotate
from pipeline.config import CustomTask
from pipeline.tasks.conditions import Condition
from tests.pipeline.conftest import EXPECTED, LONG_S, fast_config, write_mixed_manifest

REPO = Path(__file__).resolve().parents[2]
FOLLOW_UPS = (CustomTask("detail", "Tell me more.", 4, "text", follows="caption"),
              CustomTask("again", "And then?", 3, "list", follows="detail", when={"task": "caption", "matches": "dsds"}))


@pytest.fixture(scope="module")
def real_run(ray_cluster, checkpoint_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    manifest = write_mixed_manifest(root / "data")
    config = fast_config(checkpoint_dir("small-instruct"), manifest, commit_items=1, custom_tasks=FOLLOW_UPS)
    summary = annotate(manifest, config, out=root / "out", workers=2, progress=False)
    return manifest, config, root / "out", summary


def test_rows_statuses_and_segments(real_run):
    manifest, config, out, summary = real_run
    rows = pq.read_table(out / "annotations.parquet").to_pylist()
    assert [r["id"] for r in rows] == list(EXPECTED)
    assert {r["id"]: (r["status"], r["error"]) for r in rows} == EXPECTED
    long = [s for s in pq.read_table(out / "segments.parquet").to_pylist() if s["id"] == "long"]
    assert long[0]["start_s"] == 0 and long[-1]["end_s"] == pytest.approx(LONG_S, abs=0.01)
    assert all(a["end_s"] == b["start_s"] for a, b in zip(long, long[1:]))
    info = summary.run_info
    declared = info["this_run"]["graphs_declared_per_worker"]
    assert 0 < info["this_run"]["graphs_compiled"] <= declared * len(info["this_run"]["workers"])
    assert 0 < info["padding_efficiency"]["frames"] <= 1 and 0 < info["padding_efficiency"]["tokens"] <= 1


def test_annotations_equal_the_reference_on_the_same_audio(real_run):
    """Through planning, decoding, segmentation, Ray and parsing, a clip's raw answer is exactly the
    transformers reference's greedy answer for that clip (and for one segment of the long file)."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    manifest, config, out, summary = real_run
    info = summary.run_info
    processor = AutoProcessor.from_pretrained(config.model)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(config.model).eval()
    prompts = {t["name"]: t for t in info["tasks"]}
    segments = {(s["id"], s["segment"]): s for s in pq.read_table(out / "segments.parquet").to_pylist()}
    audio_dir = manifest.parent / "audio"
    for (item_id, index), path in [(("medium", 0), "medium.flac"), (("long", 1), "long.flac")]:
        segment = segments[(item_id, index)]
        clip = audio.decode(audio_dir / path, segment["start_s"], segment["end_s"])
        for task in ("caption", "transcript"):
            inputs = processor(text=[prompts[task]["prompt"]], audio=[clip.samples], sampling_rate=16_000,
                               return_tensors="pt")
            with torch.no_grad():
                generated = model.generate(**inputs, max_new_tokens=prompts[task]["max_new_tokens"], do_sample=False,
                                           eos_token_id=info["eos_token_ids"], output_logits=True,
                                           return_dict_in_generate=True)
            chosen = generated.sequences[0, inputs["input_ids"].shape[1]:].tolist()
            tokens = [t for t in chosen if t not in info["eos_token_ids"]]
            expected = processor.tokenizer.decode(tokens, skip_special_tokens=False)
            assert dict(segment["raw"])[task] == expected, (item_id, index, task)
            # The mean raw log-probability of its tokens and end token, as transformers' logits give it.
            logprobs = [torch.log_softmax(step[0], -1)[t].item() for step, t in zip(generated.logits, chosen)]
            assert abs(dict(segment["logprob"])[task] - sum(logprobs) / len(logprobs)) < 2e-3, (item_id, task)
            assert dict(segment["answer_tokens"])[task] == len(tokens)
            assert dict(segment["hit_cap"])[task] == (len(chosen) == len(tokens))

    def generate(prompt_task, clip, after, task):
        """The reference's answer ids for the first question's prompt + `after` (ids of the later turns)."""
        inputs = processor(text=[prompts[prompt_task]["prompt"]], audio=[clip.samples], sampling_rate=16_000,
                           return_tensors="pt")
        ids = torch.tensor([inputs["input_ids"][0].tolist() + after])
        inputs["input_ids"], inputs["attention_mask"] = ids, torch.ones_like(ids)
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=prompts[task]["max_new_tokens"], do_sample=False,
                                       eos_token_id=info["eos_token_ids"])
        tokens = generated[0, ids.shape[1]:].tolist()
        return [t for t in tokens if t not in info["eos_token_ids"]]

    def join(task):
        return processor.tokenizer(prompts[task]["prompt"], add_special_tokens=False)["input_ids"]

    rule = Condition.parse(prompts["again"]["when"])
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    paths = {"medium": "medium.flac", "long": "long.flac", "short": "short.wav", "silent": "silent.wav"}
    asked, checked = set(), 0
    for (item_id, index), segment in sorted(segments.items()):
        if item_id not in paths or segment["status"] != "ok":
            continue
        raw = dict(segment["raw"])
        clip = audio.decode(audio_dir / paths[item_id], segment["start_s"], segment["end_s"])
        # The conversation on ids: the caption's answer as generated, then each follow-up's question.
        # When the random model says <|AUDIO|>, transformers takes it for more audio: no reference.
        caption = generate("caption", clip, [], "caption")
        detail = [] if audio_id in caption else generate("caption", clip, caption + join("detail"), "detail")
        if audio_id in caption + detail:
            continue
        checked += 1
        assert raw["detail"] == processor.tokenizer.decode(detail, skip_special_tokens=False), (item_id, index)
        reason = rule.unmet("caption", raw["caption"])
        if reason is None:
            again = generate("caption", clip, caption + join("detail") + detail + join("again"), "again")
            assert raw["again"] == processor.tokenizer.decode(again, skip_special_tokens=False), (item_id, index)
        else:
            assert "again" not in raw and dict(segment["skipped"]) == {"again": reason}
        asked.add(reason is None)
    assert checked >= 3 and asked == {True, False}  # the rule held for some and not for others
    conversations = info["conversations"]
    assert conversations["follow_ups"] > 0 and conversations["prefill_tokens_saved"] > 0


def _cli(manifest, job, out):
    return [sys.executable, "-m", "pipeline", "annotate", str(manifest), "--job", str(job), "--out", str(out),
            "--workers", "2", "--no-progress"]


def _committed(out: Path) -> int:
    return len(list((out / "parts").glob("part-*.parquet"))) if (out / "parts").is_dir() else 0


# The interrupted run: the real model in a driver of its own, whose worker that holds the medium
# clip stalls for minutes between its caption and its first follow-up, so the kill always lands in
# the middle of a run (the engine is fast enough to finish the whole manifest between two polls
# otherwise), and between two turns of a conversation. The other worker commits results meanwhile.
INTERRUPTED_DRIVER = """
import sys
from pathlib import Path
import yaml
from pipeline.annotate import annotate
from pipeline.config import from_mapping
from pipeline.testing.turn_faults import StallBetweenTurns
manifest, job, out, faults = (Path(a) for a in sys.argv[1:5])
config = from_mapping(yaml.safe_load(job.read_text())).with_overrides()
annotate(manifest, config, out=out, workers=2, progress=False,
         model_factory=StallBetweenTurns(str(faults), "medium#"))
"""


def test_kill_midway_then_resume_gives_the_uninterrupted_rows(real_run, tmp_path):
    manifest, config, full_out, _ = real_run
    job = tmp_path / "job.yaml"
    keys = ("model", "audio_root", "device", "batch_items", "decode_slots", "cpu_threads_per_worker", "max_new_tokens",
            "commit_items", "max_error_rate")
    job.write_text(yaml.safe_dump({k: (list(v) if isinstance(v, tuple) else v)
                                   for k, v in vars(config).items() if k in keys}
                                  | {"compile_cache_dir": None, "custom_tasks": [asdict(t) for t in FOLLOW_UPS],
                                     # One batch per worker at a time: the worker whose engine holds
                                     # the medium clip stalls alone, the other commits results.
                                     "prefetch_batches": 0}))
    out, faults = tmp_path / "out", tmp_path / "faults"
    faults.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Its own session, so the kill takes the driver and the Ray it started down together.
    job_process = subprocess.Popen([sys.executable, "-c", INTERRUPTED_DRIVER, str(manifest), str(job), str(out),
                                    str(faults)], cwd=REPO, env=env, start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    # The intake errors are the first part; wait until model results are committed as well, and the
    # medium clip's conversation is held between two turns.
    while ((_committed(out) < 3 or not (faults / "between-turns.stalled").exists())
           and job_process.poll() is None and time.monotonic() < deadline):
        time.sleep(0.2)
    assert job_process.poll() is None, job_process.stdout.read().decode()[-3000:]
    assert time.monotonic() < deadline and (faults / "between-turns.stalled").exists()
    os.killpg(job_process.pid, signal.SIGKILL)
    job_process.wait()
    assert not (out / "_SUCCESS").exists()
    committed_before = _committed(out)
    if (out / "parts").is_dir():  # nothing of the held conversation was committed: no half a clip
        assert "medium" not in pq.read_table(out / "parts").column("id").to_pylist()

    resumed = subprocess.run(_cli(manifest, job, out), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _committed(out) > committed_before
    for name in ("annotations.parquet", "segments.parquet"):
        resumed_rows, full_rows = (pq.read_table(o / name).to_pylist() for o in (out, full_out))
        # Every value identical but the log-probabilities: the clips a clip shares its encoder, prefill
        # and decode rows with change float rounding in its logits (not its greedy tokens), by ~1e-6.
        logprobs = [[dict(r.pop("logprob") or {}) for r in rows] for rows in (resumed_rows, full_rows)]
        assert resumed_rows == full_rows, name
        for resumed_row, full_row in zip(*logprobs):
            assert resumed_row.keys() == full_row.keys()
            assert all(abs(resumed_row[t] - full_row[t]) < 1e-4 for t in full_row), name
    keys = pq.read_table(out / "parts").column("key").to_pylist()
    assert len(keys) == len(set(keys))
