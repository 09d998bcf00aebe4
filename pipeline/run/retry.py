"""What happens to a batch that fails, and to items that fail transiently: retry, isolate, or give
up on one item. Pure logic, no Ray.

Processing failures (reasons.Kind.PROCESSING: a model error, a lost or OOM-killed worker, a
stalled batch, a crashed decode task) are only evidence against a batch that ran alone: a worker
serves the batches it holds together, and a model error or a crash fails all of them. So:
- a batch that failed beside others is retried alone (on a worker holding nothing else), its
  attempts not counted: it may be innocent;
- a batch that failed alone counts an attempt and is retried alone, up to max_attempts, then it is
  halved, each half alone, until the item that breaks it stands alone; a batch whose failure cost
  its worker (lost, out of memory, stalled) is halved at once: a restart is expensive, and the same
  batch again would only run out of memory again;
- a lone item that fails max_attempts times (one more when its worker died: deaths may come from
  outside) is a poison item and gets its error result. Every other item still runs.
Every item is therefore budgeted on its own (at most max_attempts failures alone at each halving
level), whatever happens to the rest of the run; retried batches wait a back-off first.

Transient failures (reasons.Kind.TRANSIENT: storage failing) come back as results of a batch that
otherwise ran: such an item is retried in a new batch after a back-off, up to transient_attempts
tries, and then written with its reason (the next run tries it again).
"""

from __future__ import annotations

import random
from dataclasses import replace

from pipeline.items import Batch, ItemResult, failure_result
from pipeline.reasons import TRANSIENT, Failure, Reason

BACKOFF_S = 1.0  # before the first retry alone; doubles with each attempt
MAX_BACKOFF_S = 60.0
# Failures that cost a worker (a restart, and for a stall the whole timeout): a batch alone that
# fails so is halved at once rather than tried again whole.
COSTLY = frozenset({Reason.WORKER_LOST, Reason.OUT_OF_MEMORY, Reason.TIMED_OUT})
# A worker's death may come from outside (a kill, memory taken by a neighbour, a node lost) even
# when it ran one item alone: such an item gets one try more before it counts as poison.
DEATHS = frozenset({Reason.WORKER_LOST, Reason.OUT_OF_MEMORY})


class RetryPolicy:
    def __init__(self, max_attempts: int, transient_attempts: int = 3, backoff_s: float = BACKOFF_S):
        if max_attempts < 1 or transient_attempts < 1:
            raise ValueError("max_attempts and transient_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.transient_attempts = transient_attempts
        self.backoff_s = backoff_s
        self.retries = 0
        self.splits = 0
        self.transient_retries = 0
        self._transient_tries: dict[str, int] = {}

    def on_failure(self, batch: Batch, reason: Reason, detail: str,
                   alone: bool = True) -> tuple[list[Batch], list[ItemResult]]:
        """A processing failure of the whole batch. alone: it ran by itself (on its worker, or in its
        own decode task), so the failure is evidence against it. -> (batches to run again, final
        error results)."""
        if not alone:
            self.retries += 1
            return [replace(batch, attempt=batch.attempt, alone=True)], []
        attempt = batch.attempt + 1
        if len(batch.items) > 1:
            if reason in COSTLY or attempt >= self.max_attempts:
                return self._halves(batch), []
            self.retries += 1
            return [replace(batch, attempt=attempt, alone=True)], []
        if attempt < self.max_attempts + (reason in DEATHS):
            self.retries += 1
            return [replace(batch, attempt=attempt, alone=True)], []
        item = batch.items[0]
        failure = Failure(reason, f"failed {attempt} time(s) on its own; last error: {detail}")
        return [], [failure_result(item, failure, item.start_s, item.end_s)]

    def _halves(self, batch: Batch) -> list[Batch]:
        self.splits += 1
        middle = len(batch.items) // 2
        return [Batch(batch.items[:middle], alone=True), Batch(batch.items[middle:], alone=True)]

    def delay_s(self, batch: Batch) -> float:
        """Back-off before a retried batch runs again: none for a first retry alone (the failure may
        have been another batch's), then doubling with its attempts."""
        if batch.attempt == 0:
            return 0.0
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** (batch.attempt - 1)) * random.uniform(0.75, 1.25)

    def on_results(self, results: list[ItemResult]) -> tuple[list[ItemResult], Batch | None, float]:
        """The results of a batch that ran. -> (results to commit, a batch of the items that failed
        transiently and get another try, the back-off before it)."""
        keep, again = [], []
        for result in results:
            if result.error in TRANSIENT:
                tries = self._transient_tries.get(result.item.key, 0) + 1
                self._transient_tries[result.item.key] = tries
                if tries < self.transient_attempts:
                    again.append(result.item)
                    continue
            keep.append(result)
        if not again:
            return keep, None, 0.0
        self.transient_retries += len(again)
        tries = max(self._transient_tries[i.key] for i in again)
        delay = min(MAX_BACKOFF_S, self.backoff_s * 2 ** (tries - 1)) * random.uniform(0.75, 1.25)
        return keep, Batch(tuple(again)), delay
