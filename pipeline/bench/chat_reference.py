"""What a chat-API user runs for conversations about a clip: every question re-sends the whole
conversation so far (the audio, the first question, every earlier answer and question), and the
server encodes the audio and prefills it all again. Here that is transformers' Qwen2-Audio, with
batches of clips per question (left padding, as batched generation needs), greedy.

Each conversation is built on token ids exactly as the pipeline defines it: the first question's
prompt as the processor builds it, each earlier answer's ids as generated (without its end id),
then the follow-up's joining ids (run.json's task prompt: <|im_end|>, the next user turn, the
assistant prompt). A follow-up's rule (`when`) is applied to the earlier answer's text, as the
pipeline applies it.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline import shapes
from pipeline.tasks.conditions import Condition


def _depth(tasks: dict[str, dict], name: str) -> int:
    return 0 if not tasks[name].get("follows") else 1 + _depth(tasks, tasks[name]["follows"])


def run_chat_reference(model_dir, clips: list[np.ndarray], tasks: list[dict], eos_ids, batch: int = 8,
                       threads: int | None = None) -> dict:
    """tasks: run.json's task entries (name, prompt, max_new_tokens, follows, when).
    -> {"texts": [clip] {task: text or None when its rule skipped it}, "skipped": [clip] {task:
    reason}, "load_s", "wall_s", "generate_s", counts of the work computed}."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    tokenizer = processor.tokenizer
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()
    loaded = time.perf_counter()
    by_name = {t["name"]: t for t in tasks}
    order = sorted(by_name, key=lambda name: _depth(by_name, name))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    eos = set(eos_ids)
    # Per clip and task: the ids after the first question's prompt that precede its answer, and the answer.
    after: list[dict[str, list[int]]] = [{} for _ in clips]
    answers: list[dict[str, list[int]]] = [{} for _ in clips]
    texts: list[dict[str, str | None]] = [{} for _ in clips]
    skipped: list[dict[str, str]] = [{} for _ in clips]
    counts = {"generate_calls": 0, "rows": 0, "decode_steps": 0, "encoder_frames_computed": 0,
              "prompt_tokens_computed": 0, "llm_tokens_computed": 0, "generated_tokens": 0}
    for name in order:
        task = by_name[name]
        root = name
        while by_name[root].get("follows"):
            root = by_name[root]["follows"]
        asked = []
        for c in range(len(clips)):
            if not task.get("follows"):
                after[c][name] = []
                asked.append(c)
                continue
            parent = task["follows"]
            while parent in skipped[c]:  # a skipped turn is left out: asked after the turn it followed
                parent = by_name[parent].get("follows")
            rule = Condition.parse(task["when"]) if task.get("when") else None
            source = (rule.task or task["follows"]) if rule else None
            if rule is not None and source in skipped[c]:
                skipped[c][name] = f"{source} was skipped"
                continue
            reason = rule.unmet(source, texts[c][source]) if rule is not None else None
            if reason is not None:
                skipped[c][name] = reason
                continue
            join = tokenizer(task["prompt"], add_special_tokens=False)["input_ids"]
            after[c][name] = after[c][parent] + answers[c][parent] + join
            asked.append(c)
        for first in range(0, len(asked), batch):
            group = asked[first:first + batch]
            inputs = processor(text=[by_name[root]["prompt"]] * len(group), audio=[clips[c] for c in group],
                               sampling_rate=shapes.SAMPLE_RATE, return_tensors="pt", padding=True)
            rows = [[t for t, keep in zip(ids, mask) if keep] + after[c][name]
                    for c, ids, mask in zip(group, inputs["input_ids"].tolist(), inputs["attention_mask"].tolist())]
            width = max(len(r) for r in rows)
            inputs["input_ids"] = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            inputs["attention_mask"] = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=task["max_new_tokens"], do_sample=False,
                                     eos_token_id=list(eos_ids))
            steps = out.shape[1] - width
            counts["generate_calls"] += 1
            counts["rows"] += len(group)
            counts["decode_steps"] += steps
            counts["encoder_frames_computed"] += len(group) * inputs["input_features"].shape[-1]
            counts["prompt_tokens_computed"] += len(group) * width  # padded prompts, prefilled whole
            counts["llm_tokens_computed"] += len(group) * (width + max(steps - 1, 0))
            for c, ids in zip(group, out[:, width:].tolist()):
                end = next((i for i, t in enumerate(ids) if t in eos), len(ids))
                counts["generated_tokens"] += end
                answers[c][name] = ids[:end]
                texts[c][name] = tokenizer.decode(ids[:end], skip_special_tokens=False)
    done = time.perf_counter()
    return {"texts": [{**{n: None for n in s}, **t} for t, s in zip(texts, skipped)], "skipped": skipped,
            "load_s": loaded - start, "wall_s": done - start, "generate_s": done - loaded, **counts}
