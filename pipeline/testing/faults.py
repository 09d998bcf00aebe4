"""Read faults for tests, injected into the decode tasks' reads (storage.inject_read_faults, through
WorkerSpec.read_faults): an I/O error once or always, a read that stalls once, or a read that kills
the process (as a decoder crashing on a file would).

Decode tasks run in several processes and a retry may land in another one, so "once" is kept on
disk: the first read of a file leaves a marker in `folder` and later reads find it. Every read is
also counted there (one line per read in <name>.reads), so tests can tell a retried file from one
read once. Lives in the package so Ray workers can import it.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ReadFaults:
    folder: str  # markers and read counts
    fail_once: tuple[str, ...] = ()  # file names whose first read fails with EIO
    fail_always: dict[str, int] = field(default_factory=dict)  # file name -> errno, on every read
    stall_once: dict[str, float] = field(default_factory=dict)  # file name -> seconds its first read blocks
    crash_always: tuple[str, ...] = ()  # file names whose every read kills the process (a decoder crash)

    def __call__(self, where) -> None:
        name = getattr(where, "name", str(where))
        folder = Path(self.folder)
        with open(folder / f"{name}.reads", "a") as log:
            log.write(f"{os.getpid()}\n")
        if name in self.crash_always:
            os._exit(70)
        if name in self.fail_always:
            code = self.fail_always[name]
            raise OSError(code, os.strerror(code), str(where))
        if name in self.fail_once and self._first(folder / f"{name}.failed"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(where))
        if name in self.stall_once and self._first(folder / f"{name}.stalled"):
            time.sleep(self.stall_once[name])

    @staticmethod
    def _first(marker: Path) -> bool:
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return False
        return True

    def reads(self, name: str) -> int:
        path = Path(self.folder) / f"{name}.reads"
        return len(path.read_text().splitlines()) if path.exists() else 0
