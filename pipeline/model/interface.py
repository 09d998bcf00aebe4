"""What the runner and a model agree on (no MindSpore here, so fakes and workers can import it).

A model takes clips and returns, for each clip in order, one raw text per task. It may be called
from several threads at once: a worker holds a few batches, and a continuous-batching model serves
them together, so no decode slot waits for the rest of one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipeline.model.stats import GenerationStats


@dataclass(frozen=True)
class ClipInput:
    key: str  # identifies the clip; seeds its sampling draws
    features: np.ndarray  # [n_mels, >= valid_frames + 2] log-mel frames (shapes.TRAILING_FRAMES)
    valid_frames: int


@dataclass
class BatchOutput:
    texts: list[list[str]]  # [clip][task] raw decoded text, special tokens kept
    stats: GenerationStats = field(default_factory=GenerationStats)


class TextModel(Protocol):
    graphs_compiled: int

    def generate(self, clips: list[ClipInput]) -> BatchOutput:
        """One list of task texts per clip, in order; thread-safe."""
