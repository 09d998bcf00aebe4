"""The closed set of shapes a worker compiles, and the memory each clip costs in them.

Pure arithmetic (no MindSpore): the planner sizes batches from `clip_bytes` before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import shapes
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
    def audio_tokens(self) -> int:
        return shapes.audio_tokens(self.frames)

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


def declare_shapes(buckets_s, batch_sizes: dict[float, int], head_len: int, tail_len: int,
                   suffix_len: int, new_tokens: int, tasks: int, max_positions: int) -> dict[float, BucketShape]:
    declared = {}
    for bucket_s in buckets_s:
        frames = shapes.bucket_frames_for_seconds(bucket_s)
        shape = BucketShape(
            bucket_s=bucket_s, frames=frames, batch=batch_sizes[bucket_s], tasks=tasks,
            prefix_len=head_len + shapes.audio_tokens(frames) + tail_len,
            suffix_len=suffix_len, new_tokens=new_tokens,
        )
        if shape.cache_len > max_positions:
            raise ValueError(
                f"bucket {bucket_s} s needs {shape.cache_len} positions but the model has {max_positions}"
            )
        declared[bucket_s] = shape
    return declared


def clip_bytes(spec: ModelSpec, bucket_s: float, tasks: int, text_len: int, dtype: str) -> int:
    """Rough peak memory one clip adds to a batch in this bucket, for sizing batches (weights are
    per worker, not per clip, and excluded). Attention dominates: at its peak a layer holds about
    four score-sized fp32 tensors (the broadcast mask, the scores, the masked scores, the
    probabilities). Measured on the CPU backend with the tiny model, the estimate is within
    about 20% of the real per-clip peak."""
    size = DTYPE_BYTES[dtype]
    frames = shapes.bucket_frames_for_seconds(bucket_s)
    positions = shapes.encoder_positions(frames)
    encoder = positions * (spec.audio_dim * 6 + spec.audio_ffn * 2) * size + 4 * spec.audio_heads * positions**2 * 4
    prefix_len = text_len + shapes.audio_tokens(frames)
    prefill = prefix_len * (spec.hidden * 6 + spec.intermediate * 3) * size + 4 * spec.heads * prefix_len**2 * 4
    # Keys and values: the clip's prefix once, and each task row's own slots; x2 because a
    # functional cache update briefly holds the old and the new cache.
    cache = 2 * 2 * spec.layers * spec.kv_heads * spec.head_dim * size * (prefix_len + tasks * text_len)
    # The task rows' suffix prefill attends over the whole cache (text_len bounds the suffix).
    suffix = 4 * spec.heads * tasks * text_len * (prefix_len + text_len) * 4
    logits = tasks * spec.vocab * 4 * 2
    return int(encoder + prefill + cache + suffix + logits)
