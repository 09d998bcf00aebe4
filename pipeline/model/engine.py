"""The MindSpore model behind the runner's interface (model.interface.TextModel).

One engine thread runs the generator's continuous-batching loop; `generate` may be called from
several threads at once (a worker holds a few batches), submits its clips and waits for them. So
the decode slots stay full across batch boundaries: a batch's last rows decode beside the next
batch's first ones instead of leaving slots idle.

If a graph raises, every request in flight fails with that error (the runner retries them) and
the engine starts again from empty slots: a half-run step leaves no request's state trustworthy.

A follow-up (a task that follows another) is asked when its parent's answer ends, unless its rule
(the job's `when:`, plan.conditions) says otherwise: the rule reads an earlier answer's text,
decoded here. A skipped follow-up's text is None, with the reason in BatchOutput.skipped.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pipeline.model.checkpoint import checkpoint_on_this_node
from pipeline.model.interface import Answer, BatchOutput, ClipInput
from pipeline.model.loops import looping
from pipeline.model.model_plan import ModelPlan


def follow_up_verdict(plan: ModelPlan, job, task: int, decode) -> str | None:
    """A follow-up's rule (plan.conditions[task]) on the answer it reads: that of the task it
    follows, or of the earlier turn its rule names; None when it holds (or there is no rule), else
    why not. An answer that does not exist (its task was skipped) fails every rule."""
    rule = plan.conditions[task] if plan.conditions else None
    if rule is None:
        return None
    source = plan.task_names.index(rule.task) if rule.task else plan.prompts.parent(task)
    if source in job.skipped:
        return f"{plan.task_names[source]} was skipped"
    return rule.unmet(plan.task_names[source], decode(job.tokens[source]))


def answer(job, task: int) -> Answer:
    """What a finished clip job says about one of its tasks' answers."""
    tokens, ended = job.tokens[task], job.ended[task]
    return Answer(len(tokens), ended, job.logprob_sums[task], looping(tokens, hit_cap=not ended),
                  job.p_yes.get(task))


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

        from pipeline.model import cpu_kernels

        kernels = cpu_kernels.for_graphs(plan.device, plan.dtype, compile_cache_root, cpu_threads)
        clock.lap("cpu_kernels_s")
        cache_dir = None
        if compile_cache_root:
            cache_dir = Path(compile_cache_root) / plan.compile_cache_key(
                ms.__version__, kernels.tag if kernels else None)
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
        self.model = Qwen2Audio(plan.spec, self._dtype, kernels)
        load_weights(self.model, folder, plan.spec.tie_embeddings)
        self.decode = text_decoder(folder)
        self.generator = Generator(self.model, plan.spec, plan.prompts, plan.shape, list(plan.max_new_tokens),
                                   self._dtype, plan.decoding.decoding, plan.decoding.retry, plan.yes_no)
        clock.lap("weights_s")
        if any(plan.conditions):
            self.generator.admit = self.admit
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
        texts = [[None if t in job.skipped else self.decode(job.tokens[t]) for t in job.tasks] for job in request.jobs]
        answers = [[None if t in job.skipped else answer(job, t) for t in job.tasks] for job in request.jobs]
        skipped = [{i: job.skipped[t] for i, t in enumerate(job.tasks) if t in job.skipped} for job in request.jobs]
        with self._cond:
            stats = self.generator.stats.taken()
        return BatchOutput(texts, stats, answers, skipped)

    def admit(self, job, task: int) -> str | None:
        """Whether a follow-up is asked: None, or why its rule skips it."""
        return follow_up_verdict(self.plan, job, task, self.decode)

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
