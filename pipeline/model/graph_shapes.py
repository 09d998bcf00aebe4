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
    def cache_len(self) -> int:
        return self.prefix_len + self.suffix_len + self.new_tokens

    def graph_names(self) -> tuple[str, str, str]:
        return (
            f"prefix[B={self.batch},F={self.frames},P={self.prefix_len}]",
            f"tasks[N={self.rows},C={self.suffix_len},S={self.cache_len}]",
            f"step[N={self.rows},S={self.cache_len}]",
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
    """Rough peak memory one clip adds to a batch in this bucket: encoder activations and
    attention scores, the KV cache of its task rows, and their logits. An estimate for sizing
    batches, not an accounting; weights are excluded (they are per worker, not per clip)."""
    size = DTYPE_BYTES[dtype]
    positions = shapes.encoder_positions(shapes.bucket_frames_for_seconds(bucket_s))
    encoder = positions * (spec.audio_dim * 4 + spec.audio_ffn) * size + spec.audio_heads * positions**2 * 4
    prefix_len = text_len + shapes.audio_tokens(shapes.bucket_frames_for_seconds(bucket_s))
    prefill = prefix_len * (spec.hidden * 4 + spec.intermediate * 2) * size + spec.heads * prefix_len**2 * 4
    # Keys and values, for every task row; x2 because a functional cache update briefly holds the
    # old and the new cache.
    cache = 2 * 2 * spec.layers * tasks * spec.kv_heads * prefix_len * spec.head_dim * size
    logits = tasks * spec.vocab * 4 * 2
    return int(max(encoder, prefill) + cache + logits)
