"""The MindSpore model behind the runner's interface: one list of task texts per clip, in order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.model.stats import GenerationStats
from pipeline.model.model_plan import ModelPlan


@dataclass
class BatchOutput:
    texts: list[list[str]]  # [clip][task] raw decoded text, special tokens kept
    stats: GenerationStats


class MindSporeModel:
    """Loads the checkpoint once and generates for batches of one declared shape at a time."""

    def __init__(self, plan: ModelPlan, compile_cache_root: str | None = None, cpu_threads: int = 0):
        from pipeline.model import runtime

        import mindspore as ms

        cache_dir = None
        if compile_cache_root:
            cache_dir = Path(compile_cache_root) / plan.compile_cache_key(ms.__version__)
        # With a compile cache, every graph compiles at load in a fixed order (see precompile).
        runtime.configure(plan.device, cache_dir, cpu_threads, compile_order_fixed=cache_dir is not None)

        from transformers import AutoTokenizer

        from pipeline.model.generate import Generator
        from pipeline.model.graphs import Qwen2Audio
        from pipeline.model.weights import load_weights

        dtype = runtime.mindspore_dtype(plan.dtype)
        self.plan = plan
        self.model = Qwen2Audio(plan.spec, dtype)
        load_weights(self.model, Path(plan.model_dir), plan.spec.tie_embeddings)
        self.tokenizer = AutoTokenizer.from_pretrained(plan.model_dir)
        self.generator = Generator(self.model, plan.spec, plan.prompts, plan.declared, list(plan.max_new_tokens),
                                   dtype, plan.sampling)
        if cache_dir is not None:
            self.generator.precompile()

    @property
    def graphs_compiled(self) -> int:
        return self.generator.graphs_compiled

    def generate(self, bucket_s: float, features: np.ndarray, valid_frames: list[int], keys: list[str]) -> BatchOutput:
        result = self.generator.generate(bucket_s, features, valid_frames, keys)
        texts = [[self.tokenizer.decode(ids, skip_special_tokens=False) for ids in clip] for clip in result.tokens]
        return BatchOutput(texts=texts, stats=result.stats)
