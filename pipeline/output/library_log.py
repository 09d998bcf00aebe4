"""The run's log file, OUT/logs/annotate-<time>-<pid>.log: everything the libraries print.

While a run lasts, this process's file descriptors 1 and 2 point at the log, so output from C++
(MindSpore, Ray's core), Python libraries (transformers, Ray, warnings) and any subprocess all land
there; the terminal gets only what output/console.py writes. Ray workers' output arrives here too:
Ray ships every worker's stdout and stderr to the driver, from every node of a cluster, and prints
it on the driver's stderr (run/cluster.ray_session). With echo (--verbose) the descriptors point at
a pipe instead, and a thread copies it to the log and to the terminal.

One file per invocation, so a resumed run keeps the logs of the runs before it.
"""

from __future__ import annotations

import codecs
import os
import select
import sys
import threading
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from tqdm import tqdm

from pipeline import storage


class LibraryLog:
    """Context manager; inside it, terminal_out and terminal_err are the terminal."""

    def __init__(self, folder, echo: bool = False):
        name = f"annotate-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        # On object storage the log is written here, where file descriptors can point, and uploaded
        # when the run ends (storage has no appending writes).
        self.upload_to = None if isinstance(folder, Path) else folder / name
        local = Path(folder) if isinstance(folder, Path) else Path(tempfile.mkdtemp(prefix="annotate-log-"))
        self.path = local / name
        self.echo = echo
        self.terminal_out = self.terminal_err = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def destination(self):
        """Where the log ends up (OUT/logs/...), local or on object storage."""
        return self.upload_to or self.path

    def write_line(self, text: str) -> None:
        """A line of ours (what the console showed), marked apart from library output."""
        data = f"[annotate {time.strftime('%H:%M:%S')}] {text}\n".encode(errors="replace")
        with self._lock:
            os.write(self._fd, data)

    def __enter__(self) -> LibraryLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        self.write_line(f"{' '.join(sys.argv)} (pid {os.getpid()}), {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
        # Ray wraps each worker's prefix in colour codes, noise in a file.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._terminal = (os.dup(1), os.dup(2))
        self.terminal_out = open(self._terminal[0], "w", buffering=1, closefd=False,
                                 encoding=sys.stdout.encoding, errors="replace")
        self.terminal_err = open(self._terminal[1], "w", buffering=1, closefd=False,
                                 encoding=sys.stderr.encoding, errors="replace")
        if self.echo:
            read_end, write_end = os.pipe()
            target = write_end
            self._pump_thread = threading.Thread(target=self._pump, args=(read_end,), name="library-log", daemon=True)
            self._pump_thread.start()
        else:
            target = self._fd
        os.dup2(target, 1)
        os.dup2(target, 2)
        if self.echo:
            os.close(write_end)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        if exc is not None:
            self.write_line("stopped by " + "".join(traceback.format_exception(exc)).rstrip())
        os.dup2(self._terminal[0], 1)  # also closes the pipe's write ends, which ends the pump
        os.dup2(self._terminal[1], 2)
        if self.echo:
            self._stop.set()
            self._pump_thread.join()
        for stream in (self.terminal_out, self.terminal_err):
            stream.close()
        for fd in (*self._terminal, self._fd):
            os.close(fd)
        if self.upload_to is not None:
            try:
                storage.write_bytes(self.upload_to, self.path.read_bytes())
                shutil.rmtree(self.path.parent, ignore_errors=True)
                self.path = self.upload_to
            except OSError as err:  # the run's outcome stands; the local copy says what happened
                print(f"the log could not be uploaded to {self.upload_to} ({err}); it is at {self.path}",
                      file=sys.stderr)

    def _pump(self, read_end: int) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks may split a character
        try:
            while True:
                if not select.select([read_end], [], [], 0.2)[0]:
                    # A process that inherited the pipe may keep it open: stop when told, not at EOF.
                    if self._stop.is_set():
                        break
                    continue
                chunk = os.read(read_end, 1 << 16)
                if not chunk:
                    break
                with self._lock:
                    os.write(self._fd, chunk)
                # Above the progress bar (cleared and redrawn). No tqdm lock: the main thread may
                # hold it while it writes to this very pipe.
                with tqdm.external_write_mode(file=self.terminal_err, nolock=True):
                    self.terminal_err.write(decoder.decode(chunk))
                    self.terminal_err.flush()
        finally:
            os.close(read_end)
