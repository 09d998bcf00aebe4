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
import math
import os
import resource
import time
from collections import defaultdict, deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray

from pipeline import storage
from pipeline.errors import UserError
from pipeline.items import Batch, ItemResult
from pipeline.model.runtime import log_environment
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
    # One logical CPU each, which is what decoding uses. With none (as before), every prepare
    # task the driver keeps in flight ran at once in its own process, and Ray, counting those
    # processes against its idle-worker limit (the node's CPUs, all held by model workers), killed
    # each one a second after its task: the next batch started a new process that imported the
    # audio stack again (about 4 s of CPU and 350 MB each: 16 processes for 55 clips on 2 workers,
    # measured), which is what Ray's "N PYTHON worker processes have been started" warning is
    # about. Counted, they run as many at once as there are free CPUs, in processes Ray keeps.
    # Retries are the RetryPolicy's business, not Ray's. Made once per driver so Ray can reuse
    # the processes that already imported the feature extractor.
    return ray.remote(num_cpus=1, max_retries=0)(prepare_batch)


class AnnotationWorker:
    """The actor body: holds the model and runs the prepared batches it is given (several at once:
    the model serves them together)."""

    def __init__(self, spec: WorkerSpec):
        started = time.perf_counter()
        self.error = None
        self.first_call = self.last_return = None
        self.busy_s = 0.0
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
        self.load_s = time.perf_counter() - started

    def ready(self) -> dict:
        return {"error": self.error, "pid": os.getpid(), "load_s": round(self.load_s, 2),
                "npu": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"), "node": ray.get_runtime_context().get_node_id()}

    def run(self, prepared):
        if self.error:
            raise RuntimeError(f"worker failed to start: {self.error}")
        if self.first_call is None:
            self.first_call = time.perf_counter()
        results, stats = self.annotator.run(prepared)
        self.last_return = time.perf_counter()
        if stats is not None:
            self.busy_s += stats.model_s
        return results, (asdict(stats) if stats is not None else None), self.model.graphs_compiled

    def usage(self) -> dict:
        """Peak memory, and model time against the time it had work (for the busy fraction)."""
        active = self.last_return - self.first_call if self.first_call is not None else 0.0
        return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "busy_s": round(self.busy_s, 2), "active_s": round(active, 2)}


@dataclass
class ExecutionReport:
    workers: list[dict] = field(default_factory=list)
    graphs_compiled: int = 0
    retries: int = 0
    splits: int = 0
    worker_replacements: int = 0
    stopped: bool = False  # dispatch stopped early (see execute's stop); batches were left undone


@contextmanager
def ray_session(workers: int):
    """Join the cluster at RAY_ADDRESS, reuse a Ray already started in this process (tests share
    one per session), or start a local one that ends with the run.

    Every worker's stdout and stderr (MindSpore's glog included, see runtime.log_environment)
    comes to this process (log_to_driver), from every node of a cluster, and Ray prints it on
    this process's stderr: the run's log file when the command line runs (output/library_log.py).
    """
    if ray.is_initialized():
        yield
        return
    runtime_env = {"env_vars": log_environment()}
    if os.environ.get("RAY_ADDRESS"):
        # Ship this package to the cluster's workers; its dependencies must be installed there.
        runtime_env["py_modules"] = [str(Path(__file__).parents[1])]
        ray.init(runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
    else:
        # Logical CPUs, not cores: one per model worker and as many again for prepare tasks (one
        # CPU each, see _remote_prepare), so decoding always has room beside the models.
        ray.init(num_cpus=max(os.cpu_count() or 1, 2 * workers), include_dashboard=False, logging_level="WARNING",
                 log_to_driver=True, runtime_env=runtime_env)
    try:
        yield
    finally:
        ray.shutdown()


def cluster_npus() -> int:
    return int(ray.cluster_resources().get("NPU", 0))


# An Ascend 910B's memory; the engine plans its caches inside it (the host's memory is not used).
NPU_MEMORY_BYTES = 64 * 2**30
# What a worker may plan for, of its share of a device: the rest covers the framework's own
# allocations, and on CPU the driver, the decode tasks and Ray's object store beside it (Ray's
# memory monitor kills workers when a node passes 95%).
NPU_MEMORY_SHARE = 0.85
CPU_MEMORY_SHARE = 0.6


def worker_memory_bytes(workers: int, use_npu: bool) -> int:
    """Memory one worker may use in all: its NPU's, or its share of its node's (Ray's memory
    resource, which already leaves the object store out)."""
    if use_npu:
        return int(NPU_MEMORY_BYTES * NPU_MEMORY_SHARE)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    smallest = min(n["Resources"].get("memory", 0) for n in nodes)
    per_node = math.ceil(workers / len(nodes))
    return int(smallest * CPU_MEMORY_SHARE / per_node)


def check_room_for_decoding(model_workers: int) -> None:
    """Prepare tasks take a CPU each: a Ray whose CPUs the model workers hold would wait forever."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < model_workers + 1:
        raise UserError(f"the Ray cluster has {cpus:g} CPUs: {model_workers} model workers take one each, "
                        "and decoding needs at least one more")


class WorkerPool:
    def __init__(self, spec: WorkerSpec, count: int, use_npu: bool, prefetch: int):
        # Threaded actor: the batches a worker holds run concurrently, so its model can decode the
        # next batch's rows in slots the current batch no longer needs (continuous batching); one
        # more thread answers ready().
        options = {"num_cpus": 1, "max_restarts": 0, "max_concurrency": prefetch + 2,
                   # Ray sets OMP_NUM_THREADS to an actor's logical CPUs (1), and MindSpore's CPU
                   # kernels then run on one thread whatever it was told: measured 2x slower graphs.
                   "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(spec.cpu_threads)}}}
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
        # Started, not waited for: the caller decodes the first batches while the workers load.
        self.actors = [self.actor_class.remote(spec) for _ in range(count)]
        self.info = []

    def wait_ready(self) -> None:
        self.info = [self._check(actor) for actor in self.actors]

    def _check(self, actor) -> dict:
        info = ray.get(actor.ready.remote())
        if info["error"]:
            raise UserError(f"a worker could not load the model: {info['error']}")
        self.nodes[actor._actor_id] = info["node"]
        return {**info, "actor_id": actor._actor_id}

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
        usage = {}
        try:  # best effort: a report must not fail a finished run
            for actor, report in zip(self.actors, ray.get([a.usage.remote() for a in self.actors], timeout=30)):
                usage[actor._actor_id] = report
        except ray.exceptions.RayError:
            pass
        for info in self.info:
            info.update(usage.get(info.pop("actor_id", None), {}))
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def execute(batches: list[Batch], spec: WorkerSpec, workers: int, use_npu: bool, prefetch: int,
            max_attempts: int, on_results: Callable[[list[ItemResult], dict | None], None],
            stop: Callable[[], bool] = lambda: False) -> ExecutionReport:
    """Run every batch; on_results receives each batch's results (every item exactly once).

    When stop() turns true (a work budget is spent, a signal came), no more batches are dispatched:
    the ones in flight finish and are reported, the rest are left undone (report.stopped)."""
    report = ExecutionReport()
    policy = RetryPolicy(max_attempts)
    pool = WorkerPool(spec, workers, use_npu, prefetch)
    pending: deque[Batch] = deque(batches)
    # Loading and compiling take the workers seconds: decode the batches they will take first in
    # the meantime (on any node: the workers' nodes are not known yet), so they start at once.
    early: deque = deque()
    for _ in range(min(len(pending), workers * pool.slots)):
        batch = pending.popleft()
        early.append((batch, pool.prepare.remote(pool.spec_ref, batch)))
    inflight: dict = {}
    load: dict[int, int] = defaultdict(int)  # calls in flight per actor
    graphs: dict[int, int] = {}
    try:
        pool.wait_ready()
        while pending or inflight or early:
            if (pending or early) and stop():
                report.stopped = True
                pending.clear()
                early.clear()
            for actor in list(pool.actors):
                while (early or pending) and load[id(actor)] < pool.slots:
                    if early:
                        batch, prepared = early.popleft()
                    else:
                        batch = pending.popleft()
                        prepared = pool.prepare.options(scheduling_strategy=pool.near(actor)).remote(pool.spec_ref,
                                                                                                    batch)
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
