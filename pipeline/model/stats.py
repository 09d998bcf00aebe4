"""Per-batch generation counts, summed by the runner into run.json (no MindSpore here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationStats:
    """Counts for padding efficiency and timing."""

    valid_frames: int = 0
    computed_frames: int = 0
    valid_tokens: int = 0
    computed_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    prefix_s: float = 0.0
    tasks_s: float = 0.0
    steps_s: float = 0.0
