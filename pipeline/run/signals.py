"""SIGTERM and SIGINT during a run: stop dispatching, commit what finished, and exit promptly.

A preempting scheduler sends SIGTERM and kills the process a little later (Kubernetes waits 30 s,
Slurm its KillWait); Ctrl-C sends SIGINT. Ray's own SIGTERM handler exits at once, losing the
results not committed yet, so the run installs these handlers, and again once Ray has started.

The first signal asks the run to stop. Inside a graceful section (the dispatch loop and the
commits after it) it only records the request: no more batches are dispatched, the batches in
flight get GRACE_S to finish and be committed, then they are abandoned (redone by the next run),
and the run returns. Anywhere else (planning, writing the final tables) there is nothing to save
that is not already committed, so the handler raises StopRequested at once. A second signal always
raises at once: whoever sends it wants the process gone now, and committed work is safe anyway.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager

HANDLED = (signal.SIGTERM, signal.SIGINT)
# In-flight batches get this long after the signal; the rest of the 30 s is for committing,
# writing this run's runs/ file and shutting Ray down.
GRACE_S = 15.0


class StopRequested(BaseException):
    """A signal asked the run to stop (a BaseException, like KeyboardInterrupt: nothing may catch
    it by accident)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Context manager: installs the handlers (main thread only; elsewhere it does nothing) and
    restores the previous ones on exit."""

    def __init__(self, grace_s: float = GRACE_S):
        self.grace_s = grace_s
        self.signum: int | None = None
        self.received_at: float | None = None
        self._graceful = 0
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def install(self) -> None:
        """Put the handlers back after a library replaced them (ray.init installs a SIGTERM handler
        that exits at once); the previous handlers restored on exit stay those found on entry."""
        if self._previous:
            for signum in HANDLED:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def stop_requested(self) -> bool:
        """True once a signal came: dispatch no more work."""
        return self.signum is not None

    def abandon_in_flight(self) -> bool:
        """True once the in-flight batches have had their grace time."""
        return self.received_at is not None and time.monotonic() - self.received_at >= self.grace_s

    def seconds_since(self) -> float:
        return 0.0 if self.received_at is None else time.monotonic() - self.received_at

    @contextmanager
    def graceful(self):
        """A section in which the first signal only records the request (see the module docstring)."""
        self._graceful += 1
        try:
            yield
        finally:
            self._graceful -= 1

    def raise_if_requested(self) -> None:
        """Leaving a graceful section with a request pending: stop here."""
        if self.signum is not None:
            raise StopRequested(self.signum)

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum, self.received_at = signum, time.monotonic()
        if not first or not self._graceful:
            raise StopRequested(signum)
