"""Batches waiting for a worker, in the order the driver dispatches them."""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from pipeline.items import Batch


class DispatchQueue:
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
