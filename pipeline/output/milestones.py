"""When each step of an invocation's fixed cost ended, in seconds since its process started.

A user who labels 50 clips waits for the interpreter, Ray, the plan and the workers before the first
clip is dispatched, and for the final tables and Ray's shutdown after the last one returns. These
marks say where that time goes (run.json `this_run.milestones`; `make bench` prints them beside each
worker's own load phases). Counting from the process's start, not from annotate(), puts the
interpreter's start and the imports in the account too.
"""

from __future__ import annotations

import os
import time


def process_started_at() -> float | None:
    """This process's start as a time.time() value, from /proc (Linux); None where there is none.
    Resolution: a clock tick (10 ms)."""
    try:
        with open(f"/proc/{os.getpid()}/stat", "rb") as stat:
            # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as uptime:
            since_boot = float(uptime.read().split()[0])
        # Its age from two clocks of the same kind (since boot, 10 ms ticks); /proc/stat's boot time
        # is whole seconds, too coarse for this.
        age = since_boot - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return None


class Milestones:
    """Named moments of one invocation, each kept once (the first time it is reached)."""

    def __init__(self, clock=time.time):
        self.clock = clock
        started = process_started_at()
        self.origin = started if started is not None else clock()
        self.marks: dict[str, float] = {}

    def mark(self, name: str, at: float | None = None) -> None:
        if name not in self.marks:
            self.marks[name] = round((self.clock() if at is None else at) - self.origin, 3)

    def to_dict(self) -> dict[str, float]:
        """Seconds since the process started, in the order they were reached."""
        return dict(sorted(self.marks.items(), key=lambda item: item[1]))
