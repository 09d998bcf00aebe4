"""What the runner and a model agree on (no MindSpore here, so fakes and workers can import it).

A model takes clips and returns, for each clip in order, one raw text per task it was asked for
(every task unless the clip names some), with what the model knows about each answer (Answer). A
follow-up question whose rule skipped it (a task that follows another, with `when:`) has no text
(None) and no Answer, and its reason in `skipped`. It
may be called from several threads at once: a worker holds a few batches, and a continuous-batching
model serves them together, so no decode slot waits for the rest of one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pipeline.model.decoding import Decoding
from pipeline.model.stats import GenerationStats


@dataclass(frozen=True)
class ClipInput:
    key: str  # identifies the clip; seeds its sampling draws
    features: np.ndarray  # [n_mels, >= valid_frames + 2] log-mel frames (shapes.TRAILING_FRAMES)
    valid_frames: int
    tasks: tuple[int, ...] | None = None  # indices of the tasks to run, in order (None: every task)
    decoding: Decoding | None = None  # None: the run's (a retry asks for its own)
    attempt: int = 0  # 1 for a retry: its sampling draws come from another stream


@dataclass(frozen=True)
class Answer:
    """What one (clip, task) generated, besides its text."""

    tokens: int  # ids generated, the end-of-sequence id excluded
    ended: bool  # an end-of-sequence id ended it; False: it hit its max_new_tokens cap
    logprob_sum: float  # natural-log probabilities of its ids and of its end id, under the raw logits
    looped: bool = False  # it hit its cap while repeating itself (model/loops.py)
    p_yes: float | None = None  # a scored yes/no question: P(yes) of its first token (model/scoring.py)

    @property
    def logprob_count(self) -> int:
        """Ids the log-probability sum covers: the tokens, and the end id when one was generated."""
        return self.tokens + int(self.ended)


@dataclass
class BatchOutput:
    texts: list[list[str | None]]  # [clip][task asked for] raw decoded text, special tokens kept; None: skipped
    stats: GenerationStats = field(default_factory=GenerationStats)
    answers: list[list[Answer | None]] | None = None  # [clip][task asked for]; None when the model cannot say
    skipped: list[dict[int, str]] | None = None  # [clip]: position in its tasks -> why that follow-up was skipped


class TextModel(Protocol):
    graphs_compiled: int

    def generate(self, clips: list[ClipInput]) -> BatchOutput:
        """One list of task texts per clip, in order; thread-safe."""
