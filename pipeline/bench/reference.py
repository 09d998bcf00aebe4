"""What a user would otherwise run: transformers' Qwen2-Audio with its processor, batched generate.

Batches of clips with left padding (batched generation needs it), one generate per task, greedy,
each task capped at its token budget: the plain way to get several answers per clip out of
transformers. Texts are decoded with special tokens kept, as the pipeline keeps them.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline import shapes


def run_reference(model_dir, clips: list[np.ndarray], prompts: list[str], budgets: list[int], eos_ids,
                  batch: int = 8, threads: int | None = None) -> dict:
    """clips: 16 kHz mono audio; prompts: the exact prompt text per task (one <|AUDIO|>).
    -> {"texts": [clip][task], "load_s", "wall_s", counts of the work computed}."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()
    loaded = time.perf_counter()
    eos = set(eos_ids)
    texts = [[""] * len(prompts) for _ in clips]
    counts = {"generate_calls": 0, "rows": 0, "decode_steps": 0, "encoder_frames_computed": 0,
              "llm_tokens_computed": 0, "generated_tokens": 0}
    for first in range(0, len(clips), batch):
        group = clips[first:first + batch]
        for task, (prompt, budget) in enumerate(zip(prompts, budgets)):
            inputs = processor(text=[prompt] * len(group), audio=group, sampling_rate=shapes.SAMPLE_RATE,
                               return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=budget, do_sample=False, eos_token_id=list(eos_ids))
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
    return {"texts": texts, "load_s": loaded - start, "wall_s": done - start, "generate_s": done - loaded, **counts}
