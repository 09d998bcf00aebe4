"""Ray execution: one worker actor per NPU (or a configurable number of CPU workers), each loading
the model once and pulling batches until none are left. The only module that imports Ray.

Decoding and feature extraction run as separate Ray tasks (other processes), submitted
`prefetch_batches` ahead of each actor: while the model works on one batch, the next ones are
being decoded, and the actor receives them ready (Ray passes the features through its shared-memory
object store). Results come back to the driver, which alone commits them (a single writer keeps
every row committed exactly once). A dead actor is replaced (a bounded number of times) and its
batches are retried elsewhere under the RetryPolicy.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict, deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray

from pipeline import storage
from pipeline.errors import UserError
from pipeline.items import Batch, ItemResult
from pipeline.reasons import Reason
from pipeline.run.retry import RetryPolicy


@dataclass
class WorkerSpec:
    """Everything a worker needs to build its BatchProcessor; shipped to every actor."""

    plan: object  # model.model_plan.ModelPlan
    tasks: list
    moderation_labels: tuple[str, ...]
    silence_dbfs: float
    search_s: float
    compile_cache_root: str | None
    cpu_threads: int
    # Builds the model from the spec; None means the MindSpore model. Tests pass fakes here.
    model_factory: Callable | None = None
    # How the driver reaches object stores (endpoint, region; never credentials: each node's own).
    storage_settings: storage.Settings | None = None


@functools.lru_cache(maxsize=4)
def _preparer(model_dir: str, silence_dbfs: float, search_s: float):
    """One feature extractor per process and checkpoint, reused by every prepare task there."""
    from transformers import WhisperFeatureExtractor

    from pipeline.run.worker import BatchPreparer

    return BatchPreparer(WhisperFeatureExtractor.from_pretrained(model_dir), silence_dbfs, search_s)


def prepare_batch(spec: WorkerSpec, batch: Batch):
    """Decode, cut and extract features for one batch (a Ray task, in its own process)."""
    storage.configure(spec.storage_settings)
    return _preparer(spec.plan.model_dir, spec.silence_dbfs, spec.search_s).prepare(batch)


@functools.cache
def _remote_prepare():
    # No logical CPUs: how many prepare tasks run at once is bounded by the prefetch depth the
    # driver keeps, and on a small CPU machine the model workers hold every logical CPU.
    # Retries are the RetryPolicy's business, not Ray's. Made once per driver so Ray can reuse
    # the processes that already imported the feature extractor.
    return ray.remote(num_cpus=0, max_retries=0)(prepare_batch)


class AnnotationWorker:
    """The actor body: holds the model and runs prepared batches one at a time."""

    def __init__(self, spec: WorkerSpec):
        self.error = None
        try:
            from pipeline.run.worker import BatchAnnotator

            if spec.model_factory is not None:
                self.model = spec.model_factory(spec)
            else:
                from pipeline.model.engine import MindSporeModel

                self.model = MindSporeModel(spec.plan, spec.compile_cache_root, spec.cpu_threads)
            self.annotator = BatchAnnotator(self.model, spec.tasks, spec.moderation_labels)
        except Exception as exc:  # reported through ready(): a worker that cannot load stops the run
            self.error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> dict:
        return {"error": self.error, "pid": os.getpid(),
                "npu": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"), "node": ray.get_runtime_context().get_node_id()}

    def run(self, prepared):
        if self.error:
            raise RuntimeError(f"worker failed to start: {self.error}")
        results, stats = self.annotator.run(prepared)
        return results, (asdict(stats) if stats is not None else None), self.model.graphs_compiled


@dataclass
class ExecutionReport:
    workers: list[dict] = field(default_factory=list)
    graphs_compiled: int = 0
    retries: int = 0
    splits: int = 0
    worker_replacements: int = 0


@contextmanager
def ray_session(num_cpus: int):
    """Join the cluster at RAY_ADDRESS, reuse a Ray already started in this process (tests share
    one per session), or start a local one that ends with the run."""
    if ray.is_initialized():
        yield
        return
    if os.environ.get("RAY_ADDRESS"):
        # Ship this package to the cluster's workers; its dependencies must be installed there.
        ray.init(runtime_env={"py_modules": [str(Path(__file__).parents[1])]}, logging_level="WARNING")
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def cluster_npus() -> int:
    return int(ray.cluster_resources().get("NPU", 0))


class WorkerPool:
    def __init__(self, spec: WorkerSpec, count: int, use_npu: bool, prefetch: int):
        options = {"num_cpus": 1, "max_restarts": 0}
        if use_npu:
            options["resources"] = {"NPU": 1}
        self.actor_class = ray.remote(**options)(AnnotationWorker)
        self.prepare = _remote_prepare()
        self.spec = spec
        self.spec_ref = ray.put(spec)
        self.slots = 1 + prefetch
        # Replacing dead workers is bounded too, or a crash at load time would loop forever.
        self.replacements_left = 2 * count + 2
        self.replacements = 0
        self.nodes = {}
        self.actors = [self.actor_class.remote(spec) for _ in range(count)]
        self.info = [self._check(actor) for actor in self.actors]

    def _check(self, actor) -> dict:
        info = ray.get(actor.ready.remote())
        if info["error"]:
            raise UserError(f"a worker could not load the model: {info['error']}")
        self.nodes[actor._actor_id] = info["node"]
        return info

    def near(self, actor):
        """Prepare a batch on its actor's node, so its features travel through shared memory."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=self.nodes[actor._actor_id], soft=True)

    def replace(self, dead) -> None:
        if dead not in self.actors:
            return  # already replaced: its other in-flight calls fail the same way
        self.actors.remove(dead)
        ray.kill(dead, no_restart=True)
        if self.replacements_left > 0:
            self.replacements_left -= 1
            self.replacements += 1
            actor = self.actor_class.remote(self.spec)
            self.info.append(self._check(actor))
            self.actors.append(actor)
        if not self.actors:
            raise RuntimeError("every worker died and the replacement budget is spent; see the Ray logs. "
                               "Committed work is kept: rerun the same command to resume.")

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def execute(batches: list[Batch], spec: WorkerSpec, workers: int, use_npu: bool, prefetch: int,
            max_attempts: int, on_results: Callable[[list[ItemResult], dict | None], None]) -> ExecutionReport:
    """Run every batch; on_results receives each batch's results (every item exactly once)."""
    report = ExecutionReport()
    policy = RetryPolicy(max_attempts)
    pool = WorkerPool(spec, workers, use_npu, prefetch)
    pending: deque[Batch] = deque(batches)
    inflight: dict = {}
    load: dict[int, int] = defaultdict(int)  # calls in flight per actor
    graphs: dict[int, int] = {}
    try:
        while pending or inflight:
            for actor in list(pool.actors):
                while pending and load[id(actor)] < pool.slots:
                    batch = pending.popleft()
                    prepared = pool.prepare.options(scheduling_strategy=pool.near(actor)).remote(pool.spec_ref, batch)
                    inflight[actor.run.remote(prepared)] = (actor, batch)
                    load[id(actor)] += 1
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in done:
                actor, batch = inflight.pop(ref)
                load[id(actor)] -= 1
                try:
                    results, stats, compiled = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    pool.replace(actor)
                    again, failed = policy.on_failure(batch, Reason.WORKER_LOST, _first_line(exc))
                except ray.exceptions.RayTaskError as exc:
                    again, failed = policy.on_failure(batch, Reason.MODEL_ERROR, _first_line(exc.cause or exc))
                except ray.exceptions.RayError as exc:  # a prepare task's process died (e.g. a decoder crash)
                    again, failed = policy.on_failure(batch, Reason.WORKER_LOST, _first_line(exc))
                else:
                    graphs[id(actor)] = compiled
                    on_results(results, stats)
                    continue
                pending.extend(again)
                if failed:
                    on_results(failed, None)
    finally:
        pool.shutdown()
    report.workers = pool.info
    report.graphs_compiled = sum(graphs.values())
    report.retries, report.splits = policy.retries, policy.splits
    report.worker_replacements = pool.replacements
    return report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = next((line for line in reversed(text) if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {message[:300]}"
