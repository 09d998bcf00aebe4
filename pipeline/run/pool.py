"""The model actors as the driver sees them: started in the background, replaced when they die,
given up when they cannot start, shrunk when their model runs out of memory (see runner.py's
docstring for the guarantees)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray

from pipeline.errors import UserError
from pipeline.run.actors import AnnotationWorker, WorkerSpec, remote_prepare

log = logging.getLogger(__name__)

GROW_AFTER = 16  # batches a shrunk worker returns before it holds one more again
# Tries at loading the model in one worker's place (the first and its replacements) before that
# place is given up: a bad device or node fails every time, a passing fault (a file system
# hiccup, memory still held by a dead worker) not.
LOAD_ATTEMPTS = 3
START_GRACE_S = 60.0  # after the first worker is ready, how long dispatch waits for the others


@dataclass(eq=False)
class WorkerHandle:
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
    load_failures: int = 0  # failed loads in this place before this worker (its predecessors')

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
        # No runtime_env of its own (the worker sets its threads itself, see AnnotationWorker): an
        # actor with one needs a new process started through Ray's runtime-env agent, instead of one
        # of the worker processes Ray started ahead (0.6 s later, measured).
        options = {"num_cpus": 1, "max_restarts": 0, "max_concurrency": prefetch + 2}
        if use_npu:
            options["resources"] = {"NPU": 1}
        self.actor_class = ray.remote(**options)(AnnotationWorker)
        self.prepare = remote_prepare()
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
        self.load_errors: list[str] = []  # each failed load's error, for the log and the message
        self.workers: list[WorkerHandle] = []
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

    def _start(self, slots: int, load_failures: int = 0) -> None:
        actor = self.actor_class.remote(self.spec)
        self.workers.append(WorkerHandle(actor, slots, time.monotonic(), actor.ready.remote(),
                                         load_failures=load_failures))

    @property
    def starting(self) -> list[WorkerHandle]:
        return [w for w in self.workers if not w.ready]

    @property
    def ready(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.ready]

    def poll(self, now: float) -> None:
        """Take in the workers that became ready; give up those that could not start in time."""
        starting = self.starting
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
                    self.load_failed(worker, info)
                    continue
                worker.ready_ref = None
                worker.progress_at = now
                if self.first_ready_at is None:
                    self.first_ready_at = now
                worker.info = {**info, "actor_id": worker.actor._actor_id}
                self.info.append(worker.info)
            elif now - worker.started_at > self.start_timeout_s:
                self.given_up += 1
                self.lost(worker, died=False)

    def wait_for_start(self, timeout_s: float) -> None:
        """Return when a starting worker answers ready() (loaded, or failed), or after timeout_s:
        dispatch starts the moment the workers are ready, not at the driver's next look."""
        starting = self.starting
        if starting:
            ray.wait([w.ready_ref for w in starting], num_returns=1, timeout=timeout_s)
        else:
            time.sleep(timeout_s)

    def load_failed(self, worker: WorkerHandle, info: dict) -> None:
        """A worker could not load the model: another one takes its place, up to LOAD_ATTEMPTS in
        that place, then the place is given up and the run goes on with the others. Only no worker
        left at all stops the run: with the load's error, as a UserError (a checkpoint or device
        every worker fails on is the run's configuration)."""
        failures = worker.load_failures + 1
        error = info["error"]
        self.load_errors.append(f"{error} (node {info.get('node')}, NPU {info.get('npu')})")
        log.warning("a model worker could not load the model (try %d of %d in its place): %s",
                    failures, LOAD_ATTEMPTS, self.load_errors[-1])
        self.workers.remove(worker)
        ray.kill(worker.actor, no_restart=True)
        if failures < LOAD_ATTEMPTS:
            self.replacements += 1
            self._start(worker.slots, load_failures=failures)
        else:
            self.given_up += 1
        if not self.workers:
            raise UserError(f"no model worker could load the model ({len(self.load_errors)} tries): {error}")

    def lost(self, worker: WorkerHandle, died: bool = True) -> None:
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

    def shrink(self, worker: WorkerHandle) -> None:
        """The model ran out of memory without dying: this worker holds one batch less for a while."""
        worker.slots = max(1, worker.slots - 1)
        worker.returned = 0

    def grew(self, worker: WorkerHandle) -> None:
        """A worker returned a batch: after GROW_AFTER in a row without trouble, one batch more
        again, up to the configured count (memory pressure passes; a poison item is isolated)."""
        worker.returned += 1
        if worker.slots < self.slots and worker.returned % GROW_AFTER == 0:
            worker.slots += 1

    def item_finished(self) -> None:
        self.deaths_in_a_row = 0

    def near(self, worker: WorkerHandle):
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
