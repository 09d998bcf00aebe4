"""What a user would otherwise run, as they would run it: a plain transformers script over a folder
of clips, started as its own process (`make bench` times it whole: interpreter, imports, loading,
generation, like `make annotate`).

    python pipeline/bench/transformers_script.py JOB.json OUT.json

JOB.json: {"model": checkpoint folder, "clips": [16 kHz audio files], "prompts": [exact prompt text
per task, one <|AUDIO|> each], "max_new_tokens": [cap per task], "eos_token_ids": [...],
"batch": 8, "threads": cores}. Batches of clips with left padding (batched generation needs it),
one generate per task and batch, greedy, each task capped at its budget: the plain way to get
several answers per clip out of transformers. Texts are decoded with special tokens kept, as the
pipeline keeps them. OUT.json: the texts, the phases' seconds and the work computed.

Standalone on purpose: it imports nothing of this package (a user's script would not).
"""

import json
import sys
import time

started = time.perf_counter()

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration  # noqa: E402

SAMPLE_RATE = 16_000


def main(job_path: str, out_path: str) -> None:
    imported = time.perf_counter()
    job = json.loads(open(job_path).read())
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    processor = AutoProcessor.from_pretrained(job["model"])
    processor.tokenizer.padding_side = "left"
    model = Qwen2AudioForConditionalGeneration.from_pretrained(job["model"]).eval()
    loaded = time.perf_counter()
    eos = list(job["eos_token_ids"])
    clips = []
    for path in job["clips"]:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise SystemExit(f"{path}: {rate} Hz; this script expects 16 kHz clips")
        clips.append(np.ascontiguousarray(samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]))
    batch = job.get("batch", 8)
    texts = [[""] * len(job["prompts"]) for _ in clips]
    counts = {"generate_calls": 0, "rows": 0, "decode_steps": 0, "encoder_frames_computed": 0,
              "llm_tokens_computed": 0, "generated_tokens": 0}
    generating = time.perf_counter()
    for first in range(0, len(clips), batch):
        group = clips[first:first + batch]
        for task, (prompt, budget) in enumerate(zip(job["prompts"], job["max_new_tokens"])):
            inputs = processor(text=[prompt] * len(group), audio=group, sampling_rate=SAMPLE_RATE,
                               return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=budget, do_sample=False, eos_token_id=eos)
            prompt_len = inputs["input_ids"].shape[1]
            steps = out.shape[1] - prompt_len
            counts["generate_calls"] += 1
            counts["rows"] += len(group)
            counts["decode_steps"] += steps
            counts["encoder_frames_computed"] += len(group) * inputs["input_features"].shape[-1]
            # Prefill of the padded prompts, then one position per row per step (the last token
            # generated needs no step of its own).
            counts["llm_tokens_computed"] += len(group) * (prompt_len + max(steps - 1, 0))
            for row, ids in enumerate(out[:, prompt_len:].tolist()):
                end = next((i for i, t in enumerate(ids) if t in eos), len(ids))
                counts["generated_tokens"] += end
                texts[first + row][task] = processor.tokenizer.decode(ids[:end], skip_special_tokens=False)
    done = time.perf_counter()
    result = {"texts": texts, "imports_s": imported - started, "load_s": loaded - imported,
              "read_s": generating - loaded, "generate_s": done - generating, "script_s": done - started, **counts}
    with open(out_path, "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
