"""How long work should take, from this run's own measurements: what the runner's watchdog compares
elapsed times against before it abandons a batch. Pure arithmetic, no Ray.

Two phases are watched separately:
- decoding (a prepare task: read, decode, cut, features): its latency from dispatch, per second of
  audio, measured over this run's finished prepare tasks. A read that stalls (a hung NFS server, an
  object store that stops answering) shows here.
- the model: a worker serves every batch it holds together (continuous batching shares its decode
  slots), so one batch's time depends on the others'. What is measured is the worker's throughput,
  audio seconds annotated per second in which it had prepared work, over the whole run; what is
  expected is the time to get through all the audio the worker holds now. The watchdog trips when a
  worker holding work has returned nothing for factor times that. A hung graph, a deadlock, a worker
  that stopped answering show here.

A limit is never below min_s, and until a phase has a measurement it is factor * min_s: first
batches compile graphs or warm caches, and a false alarm costs a worker.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Rate:
    """Seconds per audio second, from totals (robust to a few odd batches)."""

    seconds: float = 0.0
    audio_s: float = 0.0

    def add(self, seconds: float, audio_s: float) -> None:
        self.seconds += max(0.0, seconds)
        self.audio_s += max(0.0, audio_s)

    def expected(self, audio_s: float) -> float | None:
        if self.audio_s <= 0 or self.seconds <= 0:
            return None
        return audio_s * self.seconds / self.audio_s


class Watchdog:
    def __init__(self, factor: float, min_s: float):
        self.factor, self.min_s = factor, min_s
        self.decoding = _Rate()
        self.annotating = _Rate()

    def prepared(self, seconds: float, audio_s: float) -> None:
        """A prepare task finished `seconds` after it was dispatched."""
        self.decoding.add(seconds, audio_s)

    def annotated(self, busy_seconds: float, audio_s: float) -> None:
        """A worker annotated audio_s seconds of audio in busy_seconds in which it had work."""
        self.annotating.add(busy_seconds, audio_s)

    def _limit(self, expected: float | None) -> float:
        if expected is None:
            return self.factor * self.min_s
        return max(self.min_s, self.factor * expected)

    def decode_limit(self, audio_s: float) -> float:
        """Seconds a prepare task of audio_s seconds of audio may take from its dispatch."""
        return self._limit(self.decoding.expected(audio_s))

    def worker_limit(self, audio_in_flight_s: float) -> float:
        """Seconds a worker holding audio_in_flight_s of prepared audio may go without returning a batch."""
        return self._limit(self.annotating.expected(audio_in_flight_s))
