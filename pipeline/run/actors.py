"""What runs in Ray's processes: the decode task (prepare_batch: decode, cut, features for one
batch) and the model actor (AnnotationWorker: loads the model once and runs the prepared batches it
is given). Their bodies are run/worker.py's; this module ships them to Ray.
"""

from __future__ import annotations

import functools
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import ray

from pipeline import storage
from pipeline.items import Batch
from pipeline.model.checkpoint import checkpoint_on_this_node


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
    # Tests inject read faults into the decode tasks here (testing/faults.py); None in production.
    read_faults: Callable | None = None


@functools.lru_cache(maxsize=4)
def _preparer(model_dir: str, silence_dbfs: float, search_s: float):
    """One feature extractor per process and checkpoint, reused by every prepare task there."""
    from transformers import WhisperFeatureExtractor

    from pipeline.run.worker import BatchPreparer

    return BatchPreparer(WhisperFeatureExtractor.from_pretrained(model_dir), silence_dbfs, search_s)


def prepare_batch(spec: WorkerSpec, batch: Batch):
    """Decode, cut and extract features for one batch (a Ray task, in its own process).
    -> (a small summary the driver reads, the prepared batch the worker reads): two objects, so
    the driver learns that decoding finished, or failed, without fetching the features."""
    storage.configure(spec.storage_settings)
    storage.inject_read_faults(spec.read_faults)
    started = time.perf_counter()
    prepared = _preparer(str(checkpoint_on_this_node(spec.plan)), spec.silence_dbfs, spec.search_s).prepare(batch)
    return {"seconds": round(time.perf_counter() - started, 3), "failed": len(prepared.failed)}, prepared


@functools.cache
def remote_prepare():
    # One logical CPU each, which is what decoding uses. With none (as before), every prepare
    # task the driver keeps in flight ran at once in its own process, and Ray, counting those
    # processes against its idle-worker limit (the node's CPUs, all held by model workers), killed
    # each one a second after its task: the next batch started a new process that imported the
    # audio stack again (about 4 s of CPU and 350 MB each: 16 processes for 55 clips on 2 workers,
    # measured), which is what Ray's "N PYTHON worker processes have been started" warning is
    # about. Counted, they run as many at once as there are free CPUs, in processes Ray keeps.
    # Retries are the RetryPolicy's business, not Ray's. Made once per driver so Ray can reuse
    # the processes that already imported the feature extractor.
    return ray.remote(num_cpus=1, max_retries=0, num_returns=2)(prepare_batch)


class AnnotationWorker:
    """The actor body: holds the model and runs the prepared batches it is given (several at once:
    the model serves them together)."""

    def __init__(self, spec: WorkerSpec):
        from pipeline.output.milestones import process_started_at

        started = time.perf_counter()
        process_started = process_started_at()
        # Where a worker's start went: its process's own start (Ray's worker, this package), then
        # the model's load phases (model/engine.py), in seconds.
        self.process_started_at = process_started
        self.phases = {"process_s": round(time.time() - process_started, 2) if process_started else None}
        self.error = None
        if spec.cpu_threads > 0:
            # Ray sets OMP_NUM_THREADS to an actor's logical CPUs (1), and MindSpore's CPU kernels
            # then run on one thread whatever they are told (measured: 2x slower graphs); it is read
            # when MindSpore loads, so this comes first.
            os.environ["OMP_NUM_THREADS"] = str(spec.cpu_threads)
        self.first_call = self.last_return = self.first_call_at = None
        self.busy_s = 0.0
        try:
            from pipeline.run.worker import BatchAnnotator

            if spec.model_factory is not None:
                self.model = spec.model_factory(spec)
            else:
                from pipeline.model.engine import MindSporeModel

                self.model = MindSporeModel(spec.plan, spec.compile_cache_root, spec.cpu_threads)
            self.phases.update(getattr(self.model, "load_phases", {}))
            self.annotator = BatchAnnotator(self.model, spec.tasks, spec.moderation_labels, spec.plan.decoding)
        except Exception as exc:  # reported through ready(): the pool replaces it, then gives its place up
            self.error = f"{type(exc).__name__}: {exc}"
        self.load_s = time.perf_counter() - started

    def ready(self) -> dict:
        # package: where this worker imported the pipeline from; on a joined cluster, the copy the
        # driver shipped (cluster.ray_session's py_modules), not whatever version the node has installed.
        return {"error": self.error, "pid": os.getpid(), "load_s": round(self.load_s, 2), "load_phases": self.phases,
                "process_started_at": self.process_started_at,
                "npu": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"), "node": ray.get_runtime_context().get_node_id(),
                "package": str(Path(__file__).resolve().parents[1])}

    def run(self, prepared):
        if self.error:
            raise RuntimeError(f"worker failed to start: {self.error}")
        if self.first_call is None:
            self.first_call = time.perf_counter()
            self.first_call_at = time.time()
        results, stats = self.annotator.run(prepared)
        self.last_return = time.perf_counter()
        if stats is not None:
            self.busy_s += stats.model_s
        return results, (asdict(stats) if stats is not None else None), self.model.graphs_compiled

    def usage(self) -> dict:
        """Peak memory, and model time against the time it had work (for the busy fraction)."""
        active = self.last_return - self.first_call if self.first_call is not None else 0.0
        return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "busy_s": round(self.busy_s, 2), "active_s": round(active, 2), "first_call_at": self.first_call_at}
