"""Everything about the model a run needs before any weights load: checkpoint, prompt token ids,
declared shapes and batch sizes, and the fingerprint that names the run's outputs.

No MindSpore here: the driver builds the plan (reading only config.json and the tokenizer), sizes
batches from it, and ships it to every worker, so all of them compile the same closed set of shapes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipeline.model.checkpoint import resolve_checkpoint
from pipeline.model.graph_shapes import BucketShape, clip_bytes, declare_shapes
from pipeline.model.prompts import PromptPlan, build_prompt_plan, eos_token_ids, resolve_style
from pipeline.model.spec import ModelSpec


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; otherwise top-p sampling with draws seeded per (row, task)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class ModelPlan:
    model_dir: str
    revision: str | None
    spec: ModelSpec
    prompts: PromptPlan
    task_names: tuple[str, ...]
    max_new_tokens: tuple[int, ...]
    device: str  # "ascend" or "cpu"
    dtype: str  # "bf16", "fp16" or "fp32"
    sampling: Sampling
    declared: dict[float, BucketShape]

    @property
    def style(self) -> str:
        return self.prompts.style

    @property
    def batch_sizes(self) -> dict[float, int]:
        return {bucket: shape.batch for bucket, shape in self.declared.items()}

    def checkpoint_identity(self) -> dict:
        """What identifies the weights without hashing gigabytes: file names, sizes and revision."""
        folder = Path(self.model_dir)
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
        return {"revision": self.revision, "files": {p.name: p.stat().st_size for p in files}}

    def compile_cache_key(self, mindspore_version: str) -> str:
        payload = [self.spec.fingerprint(), [asdict(s) for s in self.declared.values()], self.dtype,
                   self.device, self.sampling.greedy, mindspore_version]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def resolve_dtype(requested: str, device: str) -> str:
    if requested != "auto":
        if requested == "bf16" and device == "cpu":
            raise ValueError("bf16 graphs do not run on MindSpore's CPU backend; use fp32 or fp16 on CPU")
        return requested
    return "bf16" if device == "ascend" else "fp32"


def plan_model(config, tasks, device: str, batch_sizes_for_budget) -> ModelPlan:
    """Build the plan for a resolved device. batch_sizes_for_budget is the planner's function
    (buckets, bytes_per_clip, budget_bytes, max_batch) -> {bucket: batch size}."""
    from transformers import AutoProcessor

    model_dir, revision = resolve_checkpoint(config.model, config.revision)
    spec = ModelSpec.from_checkpoint(model_dir)
    processor = AutoProcessor.from_pretrained(str(model_dir))
    style = resolve_style(config.prompt_style, model_dir)
    prompts = build_prompt_plan(processor, style, [t.prompt(style) for t in tasks],
                                eos_token_ids(model_dir, processor.tokenizer, style))
    dtype = resolve_dtype(config.dtype, device)
    max_new_tokens = tuple(t.max_new_tokens for t in tasks)
    # Shapes for one clip first: they give each bucket's per-clip memory, which sizes its batches.
    single = declare_shapes(config.buckets_s, dict.fromkeys(config.buckets_s, 1), prompts, max(max_new_tokens),
                            spec.max_positions)
    batch_sizes = batch_sizes_for_budget(
        config.buckets_s,
        lambda bucket_s: clip_bytes(spec, single[bucket_s], dtype, reuses_layer_memory=device == "ascend"),
        int(config.memory_budget_gb * 2**30),
        config.max_batch,
    )
    declared = {bucket_s: replace(shape, batch=batch_sizes[bucket_s]) for bucket_s, shape in single.items()}
    return ModelPlan(
        model_dir=str(model_dir), revision=revision, spec=spec, prompts=prompts,
        task_names=tuple(t.name for t in tasks), max_new_tokens=max_new_tokens, device=device, dtype=dtype,
        sampling=Sampling(config.temperature, config.top_p, config.seed), declared=declared,
    )
