"""A stand-in for the MindSpore model, for pipeline tests and fault injection.

It honours the same contract as model.engine.MindSporeModel (one list of task texts per clip, in
order) and answers deterministically from each clip's key and audio, so runs and reruns can be
compared. Keys listed in `fail_keys` raise inside generate (a model error); keys in `crash_keys`
kill the worker process outright (a lost worker); keys in `hang_keys` make generate block (a stalled
worker, for the watchdog). `memory_clips` plays a worker's memory: holding more clips than that at
once (over the batches it serves together) kills the process with SIGKILL, as the kernel's OOM
killer does. `calls_dir` gets one file per generate call, so tests can count model work across
processes. Lives in the package so Ray workers can import it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

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
    def __init__(self, spec, fail_keys=(), crash_keys=(), delay_s=0.0, hang_keys=(), memory_clips=None,
                 calls_dir=None):
        self.task_names = list(spec.plan.task_names)
        self.fail_keys, self.crash_keys, self.hang_keys = set(fail_keys), set(crash_keys), set(hang_keys)
        self.delay_s = delay_s  # per batch, to make a run long enough to interrupt
        self.memory_clips = memory_clips
        self.calls_dir = calls_dir
        self.graphs_compiled = 0
        self.calls = 0
        self.holding = 0
        self.lock = threading.Lock()

    def generate(self, clips: list[ClipInput]) -> BatchOutput:
        self.calls += 1
        self.graphs_compiled = 4
        if self.calls_dir:
            (Path(self.calls_dir) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}").write_text("\n".join(c.key for c in clips))
        with self.lock:
            self.holding += len(clips)
            if self.memory_clips is not None and self.holding > self.memory_clips:
                os.kill(os.getpid(), signal.SIGKILL)
        try:
            return self._answer(clips)
        finally:
            with self.lock:
                self.holding -= len(clips)

    def _answer(self, clips: list[ClipInput]) -> BatchOutput:
        time.sleep(self.delay_s)
        if any(clip.key in self.hang_keys for clip in clips):
            time.sleep(3600)
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
    hang_keys: tuple[str, ...] = ()
    memory_clips: int | None = None
    calls_dir: str | None = None

    def __call__(self, spec) -> FakeModel:
        return FakeModel(spec, self.fail_keys, self.crash_keys, self.delay_s, self.hang_keys, self.memory_clips,
                         self.calls_dir)
