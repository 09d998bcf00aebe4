"""A stand-in for the MindSpore model, for pipeline tests and fault injection.

It honours the same contract as model.engine.MindSporeModel (one list of task texts per clip, in
order) and answers deterministically from each clip's key and audio, so runs and reruns can be
compared. Keys listed in `fail_keys` raise inside generate (a model error); keys in `crash_keys`
kill the worker process outright (a lost worker); keys in `hang_keys` make generate block (a stalled
worker, for the watchdog). `memory_clips` plays a worker's memory: holding more clips than that at
once (over the batches it serves together) kills the process with SIGKILL, as the kernel's OOM
killer does. `calls_dir` gets one file per generate call, so tests can count model work across
processes. Every answer comes with what a model says about it (interface.Answer): its words count
as tokens, its mean log-probability is -0.05 x (task index + 1). Keys in `loop_keys` get answers
that repeat one word until the cap (flagged as loops), unless asked again by a retry (attempt 1).
`fail_loads` makes the first loads
fail (the model cannot be built). Follow-up questions (tasks that follow others) go through the same
rules as the real engine's (`when:`, engine.follow_up_verdict); their text names the turn they
were asked after, and a skipped one has none. `answers` replaces the texts of ANSWERS. Lives in
the package so Ray workers can import it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pipeline.model.engine import follow_up_verdict
from pipeline.model.interface import Answer, BatchOutput, ClipInput
from pipeline.model.loops import looping
from pipeline.model.stats import GenerationStats

ANSWERS = {
    "caption": "A sound recorded for {key}.",
    "events": "speech, {key}",
    "transcript": "<|en|>words of {key}",
    "moderation": "none",
}
LOOP_WORDS = 12  # a looping answer's length: its cap


def fake_answer(task: int, text: str, loops: bool) -> Answer:
    words = text.split()
    ended = not loops
    return Answer(len(words), ended, -0.05 * (task + 1) * (len(words) + ended), looping(words, hit_cap=loops))


class FakeModel:
    def __init__(self, spec, fail_keys=(), crash_keys=(), delay_s=0.0, hang_keys=(), memory_clips=None,
                 calls_dir=None, loop_keys=(), answers=None):
        self.plan = spec.plan
        self.task_names = list(spec.plan.task_names)
        self.answers = {**ANSWERS, **(answers or {})}
        self.fail_keys, self.crash_keys, self.hang_keys = set(fail_keys), set(crash_keys), set(hang_keys)
        self.delay_s = delay_s  # per batch, to make a run long enough to interrupt
        self.memory_clips = memory_clips
        self.calls_dir = calls_dir
        self.loop_keys = set(loop_keys)
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
        texts, answers, skipped = [], [], []
        for clip in clips:
            level = float(np.round(clip.features[:, :clip.valid_frames].mean(), 3))
            tasks = range(len(self.task_names)) if clip.tasks is None else clip.tasks
            loops = clip.key in self.loop_keys and clip.attempt == 0
            job = self._conversation(clip.key, level)
            clip_texts = [None if t in job.skipped else " ".join(["la"] * LOOP_WORDS) if loops else job.tokens[t]
                          for t in tasks]
            texts.append(clip_texts)
            answers.append([None if text is None else fake_answer(t, text, loops) for t, text in zip(tasks, clip_texts)])
            skipped.append({i: job.skipped[t] for i, t in enumerate(tasks) if t in job.skipped})
        frames = sum(c.valid_frames for c in clips)
        return BatchOutput(texts, GenerationStats(valid_frames=frames, computed_frames=frames), answers, skipped)

    def _conversation(self, key: str, level: float):
        """Every task's text, first questions first; a follow-up asked (its rule holds) says which
        answer it followed, a skipped one has none."""
        prompts, names = self.plan.prompts, self.task_names
        job = SimpleNamespace(key=key, tokens={}, skipped={})
        for task in sorted(range(len(names)), key=lambda t: len(prompts.chain(t))):
            text = self.answers.get(names[task], "{key} {level}").format(key=key, level=level)
            parent = prompts.parent(task)
            if parent is not None:
                reason = follow_up_verdict(self.plan, job, task, lambda answer: answer)
                if reason is not None:
                    job.skipped[task] = reason
                    continue
                while parent in job.skipped:
                    parent = prompts.parent(parent)
                text += f" (after {names[parent]})"
            job.tokens[task] = text
        return job


@dataclass(frozen=True)
class FakeModelFactory:
    """Picklable factory the runner calls on each worker: FakeModelFactory(fail_keys=...)(spec)."""

    fail_keys: tuple[str, ...] = ()
    crash_keys: tuple[str, ...] = ()
    delay_s: float = 0.0
    hang_keys: tuple[str, ...] = ()
    memory_clips: int | None = None
    calls_dir: str | None = None
    loop_keys: tuple[str, ...] = ()
    answers: tuple[tuple[str, str], ...] = ()  # (task, text with {key} and {level}) over ANSWERS
    # The first fail_loads models built (counted across processes in loads_dir) fail to load, as
    # on a bad device or a node without the checkpoint.
    fail_loads: int = 0
    loads_dir: str | None = None

    def __call__(self, spec) -> FakeModel:
        if self.fail_loads and _next_load(self.loads_dir) <= self.fail_loads:
            raise RuntimeError("injected load failure: the device is unusable")
        return FakeModel(spec, self.fail_keys, self.crash_keys, self.delay_s, self.hang_keys, self.memory_clips,
                         self.calls_dir, self.loop_keys, dict(self.answers))


def _next_load(folder: str) -> int:
    """This load's number, 1 for the first, across processes (a file created exclusively per load)."""
    number = 1
    while True:
        try:
            os.close(os.open(os.path.join(folder, f"load-{number}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return number
        except FileExistsError:
            number += 1
