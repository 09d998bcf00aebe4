"""The MindSpore model behind the runner's interface (model.interface.TextModel).

One engine thread runs the generator's continuous-batching loop; `generate` may be called from
several threads at once (a worker holds a few batches), submits its clips and waits for them. So
the decode slots stay full across batch boundaries: a batch's last rows decode beside the next
batch's first ones instead of leaving slots idle.

If a graph raises, every request in flight fails with that error (the runner retries them) and
the engine starts again from empty slots: a half-run step leaves no request's state trustworthy.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pipeline.model.checkpoint import checkpoint_on_this_node
from pipeline.model.interface import Answer, BatchOutput, ClipInput
from pipeline.model.loops import looping
from pipeline.model.model_plan import ModelPlan


def answer(job, task: int) -> Answer:
    """What a finished clip job says about one of its tasks' answers."""
    tokens, ended = job.tokens[task], job.ended[task]
    return Answer(len(tokens), ended, job.logprob_sums[task], looping(tokens, hit_cap=not ended))


class _PhaseClock:
    def __init__(self, phases: dict):
        self.phases, self.last = phases, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(now - self.last, 3)
        self.last = now


class _Request:
    def __init__(self, clips: int):
        self.remaining = clips
        self.jobs = []
        self.error: str | None = None
        self.done = threading.Event()


class MindSporeModel:
    """Loads the checkpoint once, compiles the declared graphs, and serves generate() calls."""

    def __init__(self, plan: ModelPlan, compile_cache_root: str | None = None, cpu_threads: int = 0):
        # Seconds per load phase, for run.json (the worker reports them with its ready()).
        self.load_phases: dict[str, float] = {}
        clock = _PhaseClock(self.load_phases)
        from pipeline.model import runtime

        import mindspore as ms

        clock.lap("import_s")

        cache_dir = None
        if compile_cache_root:
            cache_dir = Path(compile_cache_root) / plan.compile_cache_key(ms.__version__)
        cache_folder = runtime.configure(plan.device, cache_dir, cpu_threads)

        from pipeline.model.generate import Generator
        from pipeline.model.graphs import Qwen2Audio
        from pipeline.model.prompts import text_decoder
        from pipeline.model.weights import load_weights

        self.plan = plan
        self._dtype = runtime.mindspore_dtype(plan.dtype)
        # This node's copy of the checkpoint the driver planned with (it may be elsewhere than the
        # driver's, or missing: CheckpointMissing names the node).
        folder = checkpoint_on_this_node(plan)
        self.model = Qwen2Audio(plan.spec, self._dtype)
        load_weights(self.model, folder, plan.spec.tie_embeddings)
        self.decode = text_decoder(folder)
        self.generator = Generator(self.model, plan.spec, plan.prompts, plan.shape, list(plan.max_new_tokens),
                                   self._dtype, plan.decoding.decoding, plan.decoding.retry)
        clock.lap("weights_s")
        # Every graph compiles now, in a fixed order: that is what MindSpore's compile cache needs
        # (see runtime.configure), and it keeps compile time out of the first batches.
        with runtime.compile_lock(cache_folder):
            self.generator.precompile()
        clock.lap("graphs_s")
        self.generator.warm_up()
        clock.lap("first_runs_s")
        self._compiled = self.generator.graphs_compiled
        self._cond = threading.Condition()
        self._requests: set[_Request] = set()
        threading.Thread(target=self._loop, name="engine", daemon=True).start()

    @property
    def graphs_compiled(self) -> int:
        return self._compiled

    def generate(self, clips: list[ClipInput]) -> BatchOutput:
        if not clips:
            return BatchOutput([])
        request = _Request(len(clips))
        with self._cond:
            request.jobs = self.generator.submit(clips, owner=request)
            self._requests.add(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise RuntimeError(request.error)
        texts = [[self.decode(job.tokens[t]) for t in job.tasks] for job in request.jobs]
        answers = [[answer(job, t) for t in job.tasks] for job in request.jobs]
        with self._cond:
            stats = self.generator.stats.taken()
        return BatchOutput(texts, stats, answers)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.generator.scheduler.busy():
                    self._cond.wait()
                try:
                    finished = self.generator.run_once() or []
                except Exception as exc:  # fail what is in flight; the runner retries it
                    self._fail_all(f"{type(exc).__name__}: {exc}")
                    continue
                for job in finished:
                    request = job.owner
                    request.remaining -= 1
                    if request.remaining == 0:
                        self._requests.discard(request)
                        request.done.set()

    def _fail_all(self, error: str) -> None:
        for request in self._requests:
            request.error = error
            request.done.set()
        self._requests.clear()
        self.generator.reset()
