"""A stand-in for the MindSpore model, for pipeline tests and fault injection.

It honours the same contract as model.engine.MindSporeModel (one list of task texts per clip, in
order) and answers deterministically from each clip's key and audio, so runs and reruns can be
compared. Keys listed in `fail_keys` raise inside generate (a model error); keys in `crash_keys`
kill the worker process outright (a lost worker). Lives in the package so Ray workers can import it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from pipeline.model.interface import BatchOutput, ClipInput
from pipeline.model.stats import GenerationStats

ANSWERS = {
    "caption": "A sound recorded for {key}.",
    "events": "speech, {key}",
    "transcript": "<|en|>words of {key}",
    "moderation": "none",
}


class FakeModel:
    def __init__(self, spec, fail_keys=(), crash_keys=(), delay_s=0.0):
        self.task_names = list(spec.plan.task_names)
        self.fail_keys, self.crash_keys = set(fail_keys), set(crash_keys)
        self.delay_s = delay_s  # per batch, to make a run long enough to interrupt
        self.graphs_compiled = 0
        self.calls = 0

    def generate(self, clips: list[ClipInput]) -> BatchOutput:
        self.calls += 1
        self.graphs_compiled = 4
        time.sleep(self.delay_s)
        for clip in clips:
            if clip.key in self.crash_keys:
                os._exit(17)
            if clip.key in self.fail_keys:
                raise RuntimeError(f"injected model failure on {clip.key}")
        texts = []
        for clip in clips:
            level = float(np.round(clip.features[:, :clip.valid_frames].mean(), 3))
            texts.append([ANSWERS.get(t, "{key} {level}").format(key=clip.key, level=level) for t in self.task_names])
        frames = sum(c.valid_frames for c in clips)
        return BatchOutput(texts, GenerationStats(valid_frames=frames, computed_frames=frames))


@dataclass(frozen=True)
class FakeModelFactory:
    """Picklable factory the runner calls on each worker: FakeModelFactory(fail_keys=...)(spec)."""

    fail_keys: tuple[str, ...] = ()
    crash_keys: tuple[str, ...] = ()
    delay_s: float = 0.0

    def __call__(self, spec) -> FakeModel:
        return FakeModel(spec, self.fail_keys, self.crash_keys, self.delay_s)
