"""Throughput over an invocation, per worker: the audio each worker returned, in time buckets.

The driver records every batch a worker returns (Committer), so nothing runs in the workers and
nothing is added to the parts. The record is bounded whatever the run's length: buckets start one
second wide and double (neighbours merged) whenever the run outgrows MAX_BUCKETS, so a ten-hour
run keeps the same few kilobytes as a one-minute one. It goes into run.json (`this_run.timeline`)
and into the invocation's runs/ file metadata, so a run stopped by a budget has it too; the report
page draws it (pipeline/report/).
"""

from __future__ import annotations

import time

MAX_BUCKETS = 120
FIRST_BUCKET_S = 1.0


class Timeline:
    """started: the invocation's start (time.time()); offsets are seconds since then."""

    def __init__(self, started: float, clock=time.time):
        self.started = started
        self.clock = clock
        self.bucket_s = FIRST_BUCKET_S
        self.audio_s: dict[str, list[float]] = {}  # worker label -> audio seconds returned per bucket
        self.workers: dict[str, dict] = {}  # worker label -> pid, npu, node
        self._labels: dict[tuple, str] = {}
        self.first_result_s: float | None = None
        self.last_result_s: float | None = None

    def record(self, worker: dict | None, audio_s: float) -> None:
        """A batch came back: worker is the worker's ready() info (pid, npu, node), or None for
        results no worker returned (rows that failed before any model work, items given up)."""
        if worker is None:
            return
        at = max(0.0, self.clock() - self.started)
        if self.first_result_s is None:
            self.first_result_s = at
        self.last_result_s = at
        label = self._label(worker)
        bucket = int(at // self.bucket_s)
        while bucket >= MAX_BUCKETS:
            self._coarsen()
            bucket = int(at // self.bucket_s)
        series = self.audio_s[label]
        series.extend([0.0] * (bucket + 1 - len(series)))
        series[bucket] += audio_s

    def _label(self, worker: dict) -> str:
        identity = (worker.get("node"), worker.get("pid"))
        if identity not in self._labels:
            label = f"w{len(self._labels)}"
            self._labels[identity] = label
            self.workers[label] = {k: worker.get(k) for k in ("pid", "npu", "node")}
            self.audio_s[label] = []
        return self._labels[identity]

    def _coarsen(self) -> None:
        self.bucket_s *= 2
        for label, series in self.audio_s.items():
            self.audio_s[label] = [sum(series[i:i + 2]) for i in range(0, len(series), 2)]

    def to_dict(self, wall_s: float | None = None) -> dict:
        """JSON-ready. wall_s: the invocation's wall time, to split it into phases: start-up (to the
        first result: Ray, loading and compiling, the first batches), annotating (first to last
        result) and finishing (the last commits, the final tables)."""
        phases = None
        if self.first_result_s is not None:
            phases = {"startup_s": round(self.first_result_s, 2),
                      "annotating_s": round(self.last_result_s - self.first_result_s, 2)}
            if wall_s is not None:
                phases["finishing_s"] = round(max(0.0, wall_s - self.last_result_s), 2)
        return {
            "bucket_s": self.bucket_s,
            "audio_s": {label: [round(a, 3) for a in series] for label, series in self.audio_s.items()},
            "workers": self.workers,
            "phases": phases,
        }
