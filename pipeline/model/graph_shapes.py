"""The closed set of shapes a worker compiles, and the memory each clip costs in them.

Pure arithmetic (no MindSpore): the planner sizes batches from `clip_bytes` before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import shapes
from pipeline.model.prompts import PromptPlan
from pipeline.model.spec import ModelSpec

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class BucketShape:
    """Everything static about one audio bucket's three graphs."""

    bucket_s: float
    frames: int  # mel frames the encoder sees
    batch: int  # clips per batch
    tasks: int  # task rows per clip
    prefix_len: int  # prompt head + audio tokens + tail
    suffix_len: int  # longest task suffix
    new_tokens: int  # most tokens any task may generate

    @property
    def rows(self) -> int:
        return self.batch * self.tasks

    @property
    def own_len(self) -> int:
        """Slots of a task row's own cache: its suffix and the tokens it generates."""
        return self.suffix_len + self.new_tokens

    @property
    def cache_len(self) -> int:
        """Positions a row spans: the clip's prefix plus its own cache."""
        return self.prefix_len + self.own_len

    def graph_names(self) -> tuple[str, str, str]:
        return (
            f"prefix[B={self.batch},F={self.frames},P={self.prefix_len}]",
            f"tasks[N={self.rows},C={self.suffix_len},T={self.own_len},P={self.prefix_len}]",
            f"step[N={self.rows},T={self.own_len},P={self.prefix_len}]",
        )


def declare_shapes(buckets_s, batch_sizes: dict[float, int], prompts: PromptPlan, new_tokens: int,
                   max_positions: int) -> dict[float, BucketShape]:
    """One shape per bucket: its batch size, and text lengths from the prompts (one task per suffix)."""
    declared = {}
    for bucket_s in buckets_s:
        frames = shapes.bucket_frames_for_seconds(bucket_s)
        shape = BucketShape(
            bucket_s=bucket_s, frames=frames, batch=batch_sizes[bucket_s], tasks=len(prompts.suffixes),
            prefix_len=prompts.prefix_len(shapes.audio_tokens(frames)),
            suffix_len=prompts.suffix_len, new_tokens=new_tokens,
        )
        if shape.cache_len > max_positions:
            raise ValueError(
                f"bucket {bucket_s} s needs {shape.cache_len} positions but the model has {max_positions}"
            )
        declared[bucket_s] = shape
    return declared


def clip_bytes(spec: ModelSpec, shape: BucketShape, dtype: str, reuses_layer_memory: bool) -> int:
    """Rough peak memory one clip adds to a batch of this shape (its batch size plays no part), for
    sizing batches (weights are per worker, not per clip, and excluded).

    Attention dominates: a layer holds about three score-sized fp32 tensors (the scores, the masked
    scores, the probabilities) beside the mask broadcast once per graph. Whether layers reuse each
    other's memory depends on the backend: MindSpore's CPU backend measurably keeps most of every
    layer's intermediates until the graph ends, while Ascend's graph compiler plans memory reuse
    across layers (an assumption from MindSpore's documentation, not measured here), so only one
    layer's worth counts there. `python -m pipeline bench` prints measured against estimated
    per-clip memory (4-layer bench model: 451 vs 287 MB at 5 s, 1294 vs 1412 MB at 30 s).
    """
    size = DTYPE_BYTES[dtype]
    positions = shapes.encoder_positions(shape.frames)
    prefix_len, own_len, suffix_len, tasks = shape.prefix_len, shape.own_len, shape.suffix_len, shape.tasks
    encoder_layers = 1 if reuses_layer_memory else spec.audio_layers
    text_layers = 1 if reuses_layer_memory else spec.layers
    encoder_scores = spec.audio_heads * positions**2 * 4
    encoder = (encoder_scores * (1 + 3 * encoder_layers)
               + encoder_layers * positions * (spec.audio_dim * 6 + spec.audio_ffn * 2) * size)
    # Per token and layer: projections, rotary temporaries, residuals and the MLP's activations.
    token_activations = (spec.hidden * 12 + spec.intermediate * 3) * size
    prefill_scores = spec.heads * prefix_len**2 * 4
    prefill = prefill_scores * (1 + 3 * text_layers) + text_layers * prefix_len * token_activations
    # Keys and values: the clip's prefix once, and each task row's own slots; x2 because a
    # functional cache update briefly holds the old and the new cache.
    cache = 2 * 2 * spec.layers * spec.kv_heads * spec.head_dim * size * (prefix_len + tasks * own_len)
    # The task rows' suffix prefill attends over the prefix and their own slots: folding the task
    # rows onto the shared prefix costs transposed copies, a concatenation and slices of the scores,
    # about seven score-sized tensors per layer instead of three.
    suffix = ((1 + 7 * text_layers) * spec.heads * tasks * suffix_len * (prefix_len + own_len) * 4
              + text_layers * tasks * suffix_len * token_activations)
    logits = tasks * spec.vocab * 4 * 2
    return int(encoder + prefill + cache + suffix + logits)
