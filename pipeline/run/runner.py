"""Ray execution: one worker actor per NPU (or a configurable number of CPU workers), each loading
the model once and pulling batches until none are left. The only module that imports Ray.

Decoding and feature extraction run as separate Ray tasks (other processes), submitted
`prefetch_batches` ahead of each actor: while the model works on one batch, the next ones are
being decoded, and the actor receives them ready (Ray passes the features through its shared-memory
object store). Results come back to the driver, which alone commits them (a single writer keeps
every row committed exactly once).

Failures (README "Guarantees"):
- a batch that fails is retried under the RetryPolicy (run/retry.py): alone on a worker, then in
  halves, until a poison item stands alone; items that failed transiently are retried after a
  back-off. Which step failed is told apart: a decode task that crashed is decode_crashed, a model
  that raised model_error (out_of_memory when it ran out of memory), a worker process that died
  worker_lost (out_of_memory when Ray's memory monitor killed it).
- a dead worker is replaced; its replacement holds one batch less for a while (a death may be the
  kernel's OOM killer, which Ray cannot tell from a crash), so does a worker whose model ran out
  of memory.
  Replacements are bounded by deaths in a row without any item finishing (a poison item's final
  failure counts as finishing), so a poison item cannot use up the run's replacements, and a
  model that kills every worker ends the run instead of looping.
- workers start in the background: a worker (a replacement too) not ready after
  worker_start_timeout_s (its node is gone, the cluster has no room for it) is given up and the run
  goes on with the others; it stops with an error only when no worker is left.
- the watchdog (run/watchdog.py): a decode task running far past its expected time is cancelled
  and its batch retried; a worker that holds work and returns nothing for far longer than its
  measured speed says is killed and replaced, and its batches retried (timed_out).
- stop() stops dispatch (work budgets, signals); abandon() then drops what is still in flight
  (signals: the process must exit within 30 s); it is redone by the next run.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import os
import resource
import signal
import time
from collections import deque
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
from pipeline.run.signals import StopRequested
from pipeline.run.watchdog import Watchdog


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
    prepared = _preparer(spec.plan.model_dir, spec.silence_dbfs, spec.search_s).prepare(batch)
    return {"seconds": round(time.perf_counter() - started, 3), "failed": len(prepared.failed)}, prepared


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
    return ray.remote(num_cpus=1, max_retries=0, num_returns=2)(prepare_batch)


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
    transient_retries: int = 0  # items retried after a transient failure (storage, I/O)
    timeouts: int = 0  # batches the watchdog abandoned
    workers_given_up: int = 0  # workers never ready within worker_start_timeout_s
    stopped: bool = False  # dispatch stopped early (see execute's stop); batches were left undone
    abandoned: int = 0  # batches in flight dropped at a stop (see execute's abandon)


@dataclass(frozen=True)
class RunPolicy:
    """How failures and stalls are handled (job keys; see config.py)."""

    transient_attempts: int = 3
    batch_timeout_factor: float = 5.0
    batch_timeout_min_s: float = 600.0
    worker_start_timeout_s: float = 1800.0

    @classmethod
    def from_config(cls, config) -> RunPolicy:
        return cls(config.transient_attempts, config.batch_timeout_factor, config.batch_timeout_min_s,
                   config.worker_start_timeout_s)


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
    try:
        if os.environ.get("RAY_ADDRESS"):
            # Ship this package to the cluster's workers; its dependencies must be installed there.
            runtime_env["py_modules"] = [str(Path(__file__).parents[1])]
            ray.init(runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
        else:
            # Logical CPUs, not cores: one per model worker and as many again for prepare tasks (one
            # CPU each, see _remote_prepare), so decoding always has room beside the models.
            # address="local": a private cluster for this run, even where another Ray runs on the
            # node (`ray start`, another run): without it ray.init joins that one, and refuses
            # num_cpus there.
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 2 * workers), include_dashboard=False,
                     logging_level="WARNING", log_to_driver=True, runtime_env=runtime_env)
    except SystemExit as exc:
        # ray.init installs a SIGTERM handler that exits at once; a SIGTERM while Ray starts comes
        # out here. Nothing has run: stop like any stop request (exit 75), leaving nothing behind.
        if exc.code != signal.SIGTERM:
            raise
        ray.shutdown()
        raise StopRequested(signal.SIGTERM) from None
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


# Text of Ray's memory monitor killing a worker ("Task was killed due to the node running low on
# memory", worker exit type NODE_OUT_OF_MEMORY), and of a device or host allocation failing.
_OOM_TEXT = ("node_out_of_memory", "running low on memory", "memory monitor", "out of memory", "outofmemory",
             "cannot allocate memory")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (ray.exceptions.OutOfMemoryError, MemoryError)):
        return True
    cause = getattr(exc, "cause", None)
    if isinstance(cause, MemoryError):
        return True
    return any(text in str(exc).lower() for text in _OOM_TEXT)


@dataclass(eq=False)
class _Worker:
    """One model actor as the driver sees it."""

    actor: object
    slots: int  # batches it may hold at once
    started_at: float
    ready_ref: object | None  # its ready() call, until that has answered
    info: dict = field(default_factory=dict)
    load: int = 0  # batches dispatched to it and not returned
    holds_alone: bool = False  # it runs a batch that must run alone: nothing else goes to it
    progress_at: float = 0.0  # when it last returned a batch, or began holding prepared work
    busy_s: float = 0.0  # seconds with prepared work since it last returned a batch (the watchdog's measure)
    returned: int = 0  # batches returned since it started or last shrank

    @property
    def ready(self) -> bool:
        return self.ready_ref is None


class WorkerPool:
    """The model actors: started in the background, replaced when they die, given up when they
    cannot start (see the module docstring)."""

    def __init__(self, spec: WorkerSpec, count: int, use_npu: bool, prefetch: int, start_timeout_s: float):
        # Threaded actor: the batches a worker holds run concurrently, so its model can decode the
        # next batch's rows in slots the current batch no longer needs (continuous batching); one
        # more thread answers ready() and usage().
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
        self.start_timeout_s = start_timeout_s
        # Deaths in a row without any item finishing: bounded, or a model that kills every worker
        # (or a crash at load time) would loop forever. A poison item's final failure is an item
        # finishing, so isolating poison items never uses this up.
        self.max_deaths_in_a_row = 2 * count + 2
        self.deaths_in_a_row = 0
        self.replacements = 0
        self.given_up = 0
        self.workers: list[_Worker] = []
        self.info: list[dict] = []  # every worker that became ready, for run.json
        self.first_ready_at: float | None = None
        # Started, not waited for: the caller decodes the first batches while the workers load.
        for _ in range(count):
            self._start(self.slots)
        self.initial = list(self.workers)

    def started(self, now: float) -> bool:
        """Whether work may be dispatched: once every first worker is ready (they load side by side
        and are ready at about the same time; the first one alone would take every batch of a small
        run), or START_GRACE_S after the first one was, when another one is slow or cannot start."""
        if self.initial and any(not w.ready and w in self.workers for w in self.initial):
            return self.first_ready_at is not None and now - self.first_ready_at > START_GRACE_S
        self.initial = []
        return True

    def _start(self, slots: int) -> None:
        actor = self.actor_class.remote(self.spec)
        self.workers.append(_Worker(actor, slots, time.monotonic(), actor.ready.remote()))

    @property
    def ready(self) -> list[_Worker]:
        return [w for w in self.workers if w.ready]

    def poll(self, now: float) -> None:
        """Take in the workers that became ready; give up those that could not start in time."""
        starting = [w for w in self.workers if not w.ready]
        if not starting:
            return
        done, _ = ray.wait([w.ready_ref for w in starting], num_returns=len(starting), timeout=0)
        answered = set(done)
        for worker in starting:
            if worker.ready_ref in answered:
                try:
                    info = ray.get(worker.ready_ref)
                except ray.exceptions.RayError:  # died while loading (OOM, a crash, its node gone)
                    self.lost(worker)
                    continue
                if info["error"]:
                    raise UserError(f"a worker could not load the model: {info['error']}")
                worker.ready_ref = None
                worker.progress_at = now
                if self.first_ready_at is None:
                    self.first_ready_at = now
                worker.info = {**info, "actor_id": worker.actor._actor_id}
                self.info.append(worker.info)
            elif now - worker.started_at > self.start_timeout_s:
                self.given_up += 1
                self.lost(worker, died=False)

    def lost(self, worker: _Worker, died: bool = True) -> None:
        """A worker died (died), or was killed by the watchdog or never started: replace it while
        the budget allows. A worker that died unexpectedly may have been killed for memory (the
        kernel's OOM killer leaves no trace Ray can report): its replacement holds one batch less,
        and earns it back after GROW_AFTER batches (see grew)."""
        if worker not in self.workers:
            return  # already handled: its other calls in flight fail the same way
        self.workers.remove(worker)
        ray.kill(worker.actor, no_restart=True)
        self.deaths_in_a_row += 1
        if self.deaths_in_a_row <= self.max_deaths_in_a_row:
            self.replacements += 1
            self._start(max(1, worker.slots - 1) if died else worker.slots)
        if not self.workers:
            raise RuntimeError(f"no model worker is left: {self.deaths_in_a_row} workers in a row died or could not be "
                               "started (in time) without any item finishing; see the Ray logs. Committed work is "
                               "kept: rerun the same command to resume.")

    def shrink(self, worker: _Worker) -> None:
        """The model ran out of memory without dying: this worker holds one batch less for a while."""
        worker.slots = max(1, worker.slots - 1)
        worker.returned = 0

    def grew(self, worker: _Worker) -> None:
        """A worker returned a batch: after GROW_AFTER in a row without trouble, one batch more
        again, up to the configured count (memory pressure passes; a poison item is isolated)."""
        worker.returned += 1
        if worker.slots < self.slots and worker.returned % GROW_AFTER == 0:
            worker.slots += 1

    def item_finished(self) -> None:
        self.deaths_in_a_row = 0

    def near(self, worker: _Worker):
        """Prepare a batch on its worker's node, so its features travel through shared memory."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=worker.info["node"], soft=True)

    def shutdown(self, fast: bool = False) -> None:
        """Collect each worker's usage (best effort), then kill every actor, started or not."""
        usage = {}
        ready = self.ready
        try:  # a report must not fail a finished run, nor hold up a stopping one
            reports = ray.get([w.actor.usage.remote() for w in ready], timeout=5 if fast else 30)
            usage = {w.actor._actor_id: report for w, report in zip(ready, reports)}
        except ray.exceptions.RayError:
            pass
        for info in self.info:
            info.update(usage.get(info.pop("actor_id", None), {}))
        for worker in self.workers:
            ray.kill(worker.actor, no_restart=True)
        # ray.kill returns at once; wait (briefly) until they are gone, so that no process or
        # resource of this run outlives it (the next run on this Ray finds every NPU free).
        calls = [worker.actor.ready.remote() for worker in self.workers]
        if calls:
            ray.wait(calls, num_returns=len(calls), timeout=10)
        self.workers.clear()


class _Queue:
    """Batches waiting for a worker: ready ones in order, retries first; retries with a back-off
    wait until it has passed."""

    def __init__(self, batches: list[Batch]):
        self.waiting: deque[Batch] = deque(batches)
        self.delayed: list[tuple[float, int, Batch]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self.waiting) + len(self.delayed)

    def put(self, batches: list[Batch], delay_s: float, now: float) -> None:
        for batch in reversed(batches):
            if delay_s > 0:
                heapq.heappush(self.delayed, (now + delay_s, next(self._order), batch))
            else:
                self.waiting.appendleft(batch)

    def release(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            self.waiting.appendleft(heapq.heappop(self.delayed)[2])

    def has_alone(self) -> bool:
        return any(b.alone for b in self.waiting)

    def take(self, idle_worker: bool) -> Batch | None:
        """The first batch a worker may take: anything when it holds nothing, else the first batch
        that need not run alone."""
        for index, batch in enumerate(self.waiting):
            if idle_worker or not batch.alone:
                del self.waiting[index]
                return batch
        return None

    def clear(self) -> None:
        self.waiting.clear()
        self.delayed.clear()


@dataclass(eq=False)
class _Flight:
    """A batch on its way: its decode task's two results and, once dispatched, the model's call."""

    batch: Batch
    summary: object  # the decode task's small summary (ObjectRef)
    features: object  # the prepared batch (ObjectRef)
    submitted_at: float
    worker: _Worker | None = None
    alone: bool = False  # ran alone on its worker: a failure is evidence against it
    prepared_at: float | None = None

    @property
    def audio_s(self) -> float:
        return sum(i.end_s - i.start_s for i in self.batch.items)


GROW_AFTER = 16  # batches a shrunk worker returns before it holds one more again
START_GRACE_S = 60.0  # after the first worker is ready, how long dispatch waits for the others
WAIT_S = 1.0  # the driver loop's longest sleep: stops, signals and the watchdog are checked this often


def execute(batches: list[Batch], spec: WorkerSpec, workers: int, use_npu: bool, prefetch: int,
            max_attempts: int, on_results: Callable[[list[ItemResult], dict | None], list[Batch] | None],
            stop: Callable[[], bool] = lambda: False, abandon: Callable[[], bool] = lambda: False,
            policy: RunPolicy = RunPolicy()) -> ExecutionReport:
    """Run every batch; on_results receives results as they come (every item exactly once, except
    what a stop leaves undone) and may return more batches to run (a row planned again).

    When stop() turns true (a work budget is spent, a signal came), no more batches are dispatched:
    the ones in flight finish and are reported, the rest are left undone (report.stopped). When
    abandon() turns true as well, the batches still in flight are dropped (report.abandoned)."""
    report = ExecutionReport()
    retry = RetryPolicy(max_attempts, policy.transient_attempts)
    watchdog = Watchdog(policy.batch_timeout_factor, policy.batch_timeout_min_s)
    pool = WorkerPool(spec, workers, use_npu, prefetch, policy.worker_start_timeout_s)
    queue = _Queue(batches)
    # Loading and compiling take the workers seconds: decode the batches they will take first in
    # the meantime (on any node: the workers' nodes are not known yet), so they start at once.
    early: deque[_Flight] = deque()
    for _ in range(min(len(queue), workers * pool.slots)):
        batch = queue.take(idle_worker=True)
        early.append(_Flight(batch, *pool.prepare.remote(pool.spec_ref, batch), time.monotonic()))
    flights: dict = {}  # the model call's ObjectRef -> its _Flight
    graphs: dict[int, int] = {}
    last_tick = time.monotonic()

    def failed(flight: _Flight, reason: Reason, detail: str, alone: bool, now: float) -> None:
        again, lost = retry.on_failure(flight.batch, reason, detail, alone)
        for batch in again:
            queue.put([batch], retry.delay_s(batch), now)
        if lost:
            pool.item_finished()
            more = on_results(lost, None)
            queue.put(list(more or []), 0.0, now)

    def dispatch(now: float) -> None:
        queue.release(now)
        if not pool.started(now):
            return
        ready = [w for w in pool.ready if not w.holds_alone]
        # A batch that must run alone needs an idle worker: when none is, the least loaded one
        # takes no new work until it is (or poison isolation would wait for the end of the run).
        draining = None
        if queue.has_alone() and not any(w.load == 0 for w in ready) and ready:
            draining = min(ready, key=lambda w: w.load)
        for worker in ready:
            while worker.load < worker.slots and not worker.holds_alone and worker is not draining:
                if early:
                    flight = early.popleft()
                else:
                    batch = queue.take(idle_worker=worker.load == 0)
                    if batch is None:
                        break
                    flight = _Flight(batch, *pool.prepare.options(scheduling_strategy=pool.near(worker)).remote(
                        pool.spec_ref, batch), now)
                flight.worker, flight.alone = worker, flight.batch.alone
                worker.holds_alone = flight.alone
                worker.load += 1
                flights[worker.actor.run.remote(flight.features)] = flight

    def forget(ref, flight: _Flight) -> None:
        flights.pop(ref, None)
        worker = flight.worker
        worker.load -= 1
        if flight.alone:
            worker.holds_alone = False

    def decode_error(flight: _Flight) -> BaseException | None:
        """The decode task's own failure, if it failed (as opposed to the model's call)."""
        ready, _ = ray.wait([flight.summary], timeout=0)
        if not ready:
            ray.cancel(flight.summary, force=True)  # the model's call failed first: its decode is not needed
            return None
        try:
            ray.get(flight.summary)
        except ray.exceptions.RayError as exc:
            return exc
        return None

    def on_failure(ref, flight: _Flight, exc: BaseException, now: float) -> None:
        forget(ref, flight)
        problem = decode_error(flight)
        if problem is not None:
            if isinstance(problem, ray.exceptions.TaskCancelledError):
                return  # the watchdog cancelled it and has dealt with the batch
            if isinstance(problem, (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError)):
                # Decoding runs in a task of its own: its failure is this batch's.
                failed(flight, Reason.DECODE_CRASHED, _first_line(problem), alone=True, now=now)
            else:  # its node died, its result was lost: nobody's fault
                failed(flight, Reason.WORKER_LOST, _first_line(problem), alone=False, now=now)
        elif isinstance(exc, ray.exceptions.RayActorError):
            oom = _is_oom(exc)
            pool.lost(flight.worker)
            failed(flight, Reason.OUT_OF_MEMORY if oom else Reason.WORKER_LOST, _first_line(exc), flight.alone, now)
        elif isinstance(exc, ray.exceptions.RayTaskError):  # the model raised: the engine fails all it holds
            oom = _is_oom(exc)
            if oom:
                pool.shrink(flight.worker)
            failed(flight, Reason.OUT_OF_MEMORY if oom else Reason.MODEL_ERROR, _first_line(exc.cause or exc),
                   flight.alone, now)
        else:  # the features were lost with a node, the worker's node went away...
            failed(flight, Reason.WORKER_LOST, _first_line(exc), alone=False, now=now)

    def on_success(ref, flight: _Flight, output, now: float) -> None:
        forget(ref, flight)
        results, stats, compiled = output
        worker = flight.worker
        watchdog.annotated(worker.busy_s, flight.audio_s)
        worker.busy_s, worker.progress_at = 0.0, now
        pool.grew(worker)
        graphs[id(worker)] = compiled
        keep, again, delay = retry.on_results(results)
        if again is not None:
            queue.put([again], delay, now)
        if keep:
            pool.item_finished()
        more = on_results(keep, stats)
        queue.put(list(more or []), 0.0, now)

    def watch(now: float, elapsed: float) -> None:
        """Note finished decodes; cancel stalled ones; kill workers that stopped returning work."""
        pending = [f for f in [*flights.values(), *early] if f.prepared_at is None]
        if pending:
            # A worker's stall clock starts when it begins holding prepared work, or at its last return.
            holding = {id(f.worker) for f in flights.values() if f.prepared_at is not None}
            done, _ = ray.wait([f.summary for f in pending], num_returns=len(pending), timeout=0, fetch_local=False)
            finished = set(done)
            for flight in pending:
                if flight.summary in finished:
                    flight.prepared_at = now
                    watchdog.prepared(now - flight.submitted_at, flight.audio_s)
                    if flight.worker is not None and id(flight.worker) not in holding:
                        flight.worker.progress_at = now
                        holding.add(id(flight.worker))
                elif now - flight.submitted_at > watchdog.decode_limit(flight.audio_s):
                    report.timeouts += 1
                    ray.cancel(flight.summary, force=True)
                    if flight.worker is not None:
                        forget(next(r for r, f in flights.items() if f is flight), flight)
                    else:
                        early.remove(flight)
                    failed(flight, Reason.TIMED_OUT, f"decoding ran {now - flight.submitted_at:.0f} s, past its "
                           f"expected time; abandoned", alone=True, now=now)
        for worker in list(pool.ready):
            holding = [f for f in flights.values() if f.worker is worker and f.prepared_at is not None]
            if not holding:
                continue
            worker.busy_s += elapsed
            stalled_for = now - worker.progress_at
            limit = watchdog.worker_limit(sum(f.audio_s for f in holding))
            if stalled_for > limit:
                report.timeouts += 1
                for ref, flight in [(r, f) for r, f in flights.items() if f.worker is worker]:
                    forget(ref, flight)
                    failed(flight, Reason.TIMED_OUT, f"its worker returned nothing for {stalled_for:.0f} s (expected "
                           f"at most {limit:.0f} s); the worker was replaced", flight.alone, now)
                pool.lost(worker, died=False)

    try:
        while queue or flights or early:
            now = time.monotonic()
            if (queue or early) and stop():
                report.stopped = True
                queue.clear()
                for flight in early:
                    ray.cancel(flight.summary, force=True)
                early.clear()
            if flights and stop() and abandon():
                report.stopped = True
                report.abandoned = len(flights)
                break
            pool.poll(now)
            dispatch(now)
            if flights:
                done, _ = ray.wait(list(flights), num_returns=1, timeout=WAIT_S)
                if done:
                    done, _ = ray.wait(list(flights), num_returns=len(flights), timeout=0)
            else:
                done = []
                time.sleep(0.2)
            now = time.monotonic()
            for ref in done:
                flight = flights.get(ref)
                if flight is None:
                    continue
                try:
                    output = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    on_failure(ref, flight, exc, now)
                else:
                    on_success(ref, flight, output, now)
            watch(now, now - last_tick)
            last_tick = now
    finally:
        for flight in [*flights.values(), *early]:
            if flight.prepared_at is None:
                ray.cancel(flight.summary, force=True)
        pool.shutdown(fast=report.abandoned > 0)
    report.workers = pool.info
    report.graphs_compiled = sum(graphs.values())
    report.retries, report.splits = retry.retries, retry.splits
    report.transient_retries = retry.transient_retries
    report.worker_replacements = pool.replacements
    report.workers_given_up = pool.given_up
    return report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = next((line for line in reversed(text) if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {message[:300]}"
