"""Ray execution: one worker actor per NPU (or a configurable number of CPU workers), each loading
the model once and pulling batches until none are left. This module is the driver's loop
(Execution); the cluster (cluster.py), the actors (actors.py), the pool of model workers (pool.py)
and the queue of batches (dispatch_queue.py) stand beside it. Only pipeline/run imports Ray.

Decoding and feature extraction run as separate Ray tasks (other processes), submitted
`prefetch_batches` ahead of each actor: while the model works on one batch, the next ones are
being decoded, and the actor receives them ready (Ray passes the features through its shared-memory
object store). Results come back to the driver, which alone commits them (a single writer keeps
every row committed exactly once).

Failures (docs/guarantees.md):
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

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import ray

from pipeline.items import Batch
from pipeline.reasons import Reason
from pipeline.run.actors import WorkerSpec
from pipeline.run.dispatch_queue import LOOKAHEAD, DispatchQueue
from pipeline.run.pool import WorkerHandle, WorkerPool
from pipeline.run.retry import RetryPolicy
from pipeline.run.watchdog import Watchdog


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
class _Flight:
    """A batch on its way: its decode task's two results and, once dispatched, the model's call."""

    batch: Batch
    summary: object  # the decode task's small summary (ObjectRef)
    features: object  # the prepared batch (ObjectRef)
    submitted_at: float
    worker: WorkerHandle | None = None
    alone: bool = False  # ran alone on its worker: a failure is evidence against it
    prepared_at: float | None = None

    @property
    def audio_s(self) -> float:
        return sum(i.end_s - i.start_s for i in self.batch.items)


WAIT_S = 1.0  # the driver loop's longest sleep: stops, signals and the watchdog are checked this often
IDLE_WAIT_S = 0.2  # its sleep when nothing is in flight (a starting worker's answer ends it sooner)


def execute(batches: Iterable[Batch], spec: WorkerSpec, workers: int, use_npu: bool, prefetch: int,
            max_attempts: int, on_results: Callable[..., list[Batch] | None],
            stop: Callable[[], bool] = lambda: False, abandon: Callable[[], bool] = lambda: False,
            policy: RunPolicy = RunPolicy(), milestones=None) -> ExecutionReport:
    """Run every batch; on_results(results, stats, worker) receives results as they come (every item
    exactly once, except what a stop leaves undone), with the returning worker's ready() info (None
    for items given up), and may return more batches to run (a row planned again). batches may be a
    generator still planning them: it is pulled as workers need work (DispatchQueue).

    When stop() turns true (a work budget is spent, a signal came), no more batches are dispatched:
    the ones in flight finish and are reported, the rest are left undone (report.stopped). When
    abandon() turns true as well, the batches still in flight are dropped (report.abandoned).
    milestones (output/milestones.Milestones) is told when the workers are ready, the first batch
    is dispatched, the last one is done and the workers are gone."""
    return Execution(batches, spec, workers, use_npu, prefetch, max_attempts, on_results, policy,
                     milestones).run(stop, abandon)


class Execution:
    """One execute() call: the driver's loop over the queue, the workers and the batches in flight.
    Its methods are the loop's steps; they share the state below."""

    def __init__(self, batches: Iterable[Batch], spec: WorkerSpec, workers: int, use_npu: bool, prefetch: int,
                 max_attempts: int, on_results: Callable[..., list[Batch] | None],
                 policy: RunPolicy, milestones=None):
        self.on_results = on_results
        self.mark = milestones.mark if milestones is not None else lambda name, at=None: None
        self.report = ExecutionReport()
        self.retry = RetryPolicy(max_attempts, policy.transient_attempts)
        self.watchdog = Watchdog(policy.batch_timeout_factor, policy.batch_timeout_min_s)
        self.pool = WorkerPool(spec, workers, use_npu, prefetch, policy.worker_start_timeout_s)
        self.mark("workers_started")
        self.queue = DispatchQueue(batches, lookahead=max(LOOKAHEAD, 2 * workers * self.pool.slots))
        # Loading and compiling take the workers seconds: decode the batches they will take first in
        # the meantime (on any node: the workers' nodes are not known yet), so they start at once.
        # No more decoding at once than the CPUs the model workers leave: the actors are placed
        # through the GCS, a decode task straight by the node, and decode tasks submitted all at
        # once took every CPU first, so the model worker waited for one to free and for a new
        # process (2 s of a start, measured) instead of taking one Ray had started ahead.
        self.early: deque[_Flight] = deque()
        self.early_target = workers * self.pool.slots
        self.spare_cpus = max(1, int(ray.cluster_resources().get("CPU", workers + 1)) - workers)
        self.top_up_early()
        self.flights: dict = {}  # the model call's ObjectRef -> its _Flight
        self.graphs: dict[int, int] = {}

    def run(self, stop: Callable[[], bool], abandon: Callable[[], bool]) -> ExecutionReport:
        report, queue, pool, early, flights = self.report, self.queue, self.pool, self.early, self.flights
        last_tick = time.monotonic()
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
                self.dispatch(now)
                if flights:
                    done, _ = ray.wait(list(flights), num_returns=1, timeout=WAIT_S)
                    if done:
                        done, _ = ray.wait(list(flights), num_returns=len(flights), timeout=0)
                else:  # nothing in flight: the workers are loading, or batches wait to be retried
                    done = []
                    pool.wait_for_start(IDLE_WAIT_S)
                now = time.monotonic()
                for ref in done:
                    flight = flights.get(ref)
                    if flight is None:
                        continue
                    try:
                        output = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        self.on_failure(ref, flight, exc, now)
                    else:
                        self.on_success(ref, flight, output, now)
                self.watch(now, now - last_tick)
                last_tick = now
            self.mark("work_done")
        finally:
            for flight in [*flights.values(), *early]:
                if flight.prepared_at is None:
                    ray.cancel(flight.summary, force=True)
            pool.shutdown(fast=report.abandoned > 0)
            self.mark("workers_stopped")
            self.mark_from_workers(pool.info)
        report.workers = pool.info
        report.graphs_compiled = sum(self.graphs.values())
        report.retries, report.splits = self.retry.retries, self.retry.splits
        report.transient_retries = self.retry.transient_retries
        report.worker_replacements = pool.replacements
        report.workers_given_up = pool.given_up
        return report

    def top_up_early(self) -> None:
        """Decode the first batches while the workers load, at most spare_cpus at a time."""
        decoding = sum(1 for flight in self.early if flight.prepared_at is None)
        while len(self.early) < self.early_target and decoding < self.spare_cpus and self.queue:
            batch = self.queue.take(idle_worker=True)
            if batch is None:
                return
            self.early.append(_Flight(batch, *self.pool.prepare.remote(self.pool.spec_ref, batch), time.monotonic()))
            decoding += 1

    def mark_from_workers(self, workers: list[dict]) -> None:
        """The first worker process's start and the first model call, from the workers' own clocks."""
        for name, key in (("worker_process_started", "process_started_at"), ("first_model_call", "first_call_at")):
            times = [w[key] for w in workers if w.get(key) is not None]
            if times:
                self.mark(name, min(times))

    def failed(self, flight: _Flight, reason: Reason, detail: str, alone: bool, now: float) -> None:
        again, lost = self.retry.on_failure(flight.batch, reason, detail, alone)
        for batch in again:
            self.queue.put([batch], self.retry.delay_s(batch), now)
        if lost:
            self.pool.item_finished()
            more = self.on_results(lost, None)
            self.queue.put(list(more or []), 0.0, now)

    def dispatch(self, now: float) -> None:
        queue, pool = self.queue, self.pool
        queue.release(now)
        if not pool.started(now):
            self.top_up_early()
            return
        self.mark("workers_ready")
        ready = [w for w in pool.ready if not w.holds_alone]
        # A batch that must run alone needs an idle worker: when none is, the least loaded one
        # takes no new work until it is (or poison isolation would wait for the end of the run).
        draining = None
        if queue.has_alone() and not any(w.load == 0 for w in ready) and ready:
            draining = min(ready, key=lambda w: w.load)
        for worker in ready:
            while worker.load < worker.slots and not worker.holds_alone and worker is not draining:
                if self.early:
                    flight = self.early.popleft()
                else:
                    batch = queue.take(idle_worker=worker.load == 0)
                    if batch is None:
                        break
                    flight = _Flight(batch, *pool.prepare.options(scheduling_strategy=pool.near(worker)).remote(
                        pool.spec_ref, batch), now)
                flight.worker, flight.alone = worker, flight.batch.alone
                worker.holds_alone = flight.alone
                worker.load += 1
                self.flights[worker.actor.run.remote(flight.features)] = flight
                self.mark("first_dispatch")

    def forget(self, ref, flight: _Flight) -> None:
        self.flights.pop(ref, None)
        worker = flight.worker
        worker.load -= 1
        if flight.alone:
            worker.holds_alone = False

    def decode_error(self, flight: _Flight) -> BaseException | None:
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

    def on_failure(self, ref, flight: _Flight, exc: BaseException, now: float) -> None:
        self.forget(ref, flight)
        problem = self.decode_error(flight)
        if problem is not None:
            if isinstance(problem, ray.exceptions.TaskCancelledError):
                return  # the watchdog cancelled it and has dealt with the batch
            if isinstance(problem, (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError)):
                # Decoding runs in a task of its own: its failure is this batch's.
                self.failed(flight, Reason.DECODE_CRASHED, _first_line(problem), alone=True, now=now)
            else:  # its node died, its result was lost: nobody's fault
                self.failed(flight, Reason.WORKER_LOST, _first_line(problem), alone=False, now=now)
        elif isinstance(exc, ray.exceptions.RayActorError):
            oom = _is_oom(exc)
            self.pool.lost(flight.worker)
            self.failed(flight, Reason.OUT_OF_MEMORY if oom else Reason.WORKER_LOST, _first_line(exc), flight.alone,
                        now)
        elif isinstance(exc, ray.exceptions.RayTaskError):  # the model raised: the engine fails all it holds
            oom = _is_oom(exc)
            if oom:
                self.pool.shrink(flight.worker)
            self.failed(flight, Reason.OUT_OF_MEMORY if oom else Reason.MODEL_ERROR, _first_line(exc.cause or exc),
                        flight.alone, now)
        else:  # the features were lost with a node, the worker's node went away...
            self.failed(flight, Reason.WORKER_LOST, _first_line(exc), alone=False, now=now)

    def on_success(self, ref, flight: _Flight, output, now: float) -> None:
        self.forget(ref, flight)
        results, stats, compiled = output
        worker = flight.worker
        self.watchdog.annotated(worker.busy_s, flight.audio_s)
        worker.busy_s, worker.progress_at = 0.0, now
        self.pool.grew(worker)
        self.graphs[id(worker)] = compiled
        keep, again, delay = self.retry.on_results(results)
        if again is not None:
            self.queue.put([again], delay, now)
        if keep:
            self.pool.item_finished()
        more = self.on_results(keep, stats, worker.info)
        self.queue.put(list(more or []), 0.0, now)

    def watch(self, now: float, elapsed: float) -> None:
        """Note finished decodes; cancel stalled ones; kill workers that stopped returning work."""
        flights, watchdog = self.flights, self.watchdog
        pending = [f for f in [*flights.values(), *self.early] if f.prepared_at is None]
        if pending:
            # A worker's stall clock starts when it begins holding prepared work, or at its last return.
            holding = {id(f.worker) for f in flights.values() if f.prepared_at is not None}
            done, _ = ray.wait([f.summary for f in pending], num_returns=len(pending), timeout=0, fetch_local=False)
            finished = set(done)
            for flight in pending:
                if flight.summary in finished:
                    flight.prepared_at = now
                    self.mark("first_batch_decoded")
                    watchdog.prepared(now - flight.submitted_at, flight.audio_s)
                    if flight.worker is not None and id(flight.worker) not in holding:
                        flight.worker.progress_at = now
                        holding.add(id(flight.worker))
                elif now - flight.submitted_at > watchdog.decode_limit(flight.audio_s):
                    self.report.timeouts += 1
                    ray.cancel(flight.summary, force=True)
                    if flight.worker is not None:
                        self.forget(next(r for r, f in flights.items() if f is flight), flight)
                    else:
                        self.early.remove(flight)
                    self.failed(flight, Reason.TIMED_OUT, f"decoding ran {now - flight.submitted_at:.0f} s, past its "
                                f"expected time; abandoned", alone=True, now=now)
        for worker in list(self.pool.ready):
            holding = [f for f in flights.values() if f.worker is worker and f.prepared_at is not None]
            if not holding:
                continue
            worker.busy_s += elapsed
            stalled_for = now - worker.progress_at
            limit = watchdog.worker_limit(sum(f.audio_s for f in holding))
            if stalled_for > limit:
                self.report.timeouts += 1
                for ref, flight in [(r, f) for r, f in flights.items() if f.worker is worker]:
                    self.forget(ref, flight)
                    self.failed(flight, Reason.TIMED_OUT, f"its worker returned nothing for {stalled_for:.0f} s "
                                f"(expected at most {limit:.0f} s); the worker was replaced", flight.alone, now)
                self.pool.lost(worker, died=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = next((line for line in reversed(text) if line.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {message[:300]}"
