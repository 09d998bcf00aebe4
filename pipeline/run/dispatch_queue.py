"""Batches waiting for a worker, in the order the driver dispatches them.

Batches come from an iterable that may still be planning them (planning/work.py plans the manifest
a window at a time): the queue pulls from it only when fewer than `lookahead` batches wait, so
dispatch starts after the first window and planning keeps ahead of the workers, never the whole
manifest ahead."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable

from pipeline.items import Batch

LOOKAHEAD = 64  # batches pulled ahead of dispatch at least


class DispatchQueue:
    """Batches waiting for a worker: ready ones in order, retries first; retries with a back-off
    wait until it has passed."""

    def __init__(self, batches: Iterable[Batch], lookahead: int = LOOKAHEAD):
        self.waiting: deque[Batch] = deque()
        self.delayed: list[tuple[float, int, Batch]] = []
        self._order = itertools.count()
        self._source = iter(batches)
        self._more = True  # the source may still give batches
        self.lookahead = max(1, lookahead)
        self.pulled = 0  # batches taken from the source so far
        self.fill()

    def __len__(self) -> int:
        """Batches waiting, and one more while the source may still give some."""
        return len(self.waiting) + len(self.delayed) + int(self._more)

    def fill(self) -> None:
        """Pull from the source until `lookahead` batches wait (or it has no more)."""
        while self._more and len(self.waiting) < self.lookahead:
            try:
                batch = next(self._source)
            except StopIteration:
                self._more = False
                return
            self.waiting.append(batch)
            self.pulled += 1

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
        self.fill()
        for index, batch in enumerate(self.waiting):
            if idle_worker or not batch.alone:
                del self.waiting[index]
                return batch
        return None

    def clear(self) -> None:
        """Drop what waits and pull nothing more (a stop: what is left is the next run's)."""
        self.waiting.clear()
        self.delayed.clear()
        self._more = False
