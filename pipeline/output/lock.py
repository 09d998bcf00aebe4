"""One driver per OUT: OUT/_LOCK names the run that owns the folder, and a heartbeat keeps it fresh.

Two drivers on one OUT would sweep each other's temporaries and commit the same keys twice (after
which every later run refuses the folder), so a run takes the lock before it touches OUT and a
second run is refused with a message naming the owner (exit 2).

The lock is a small JSON object: host, pid, the process's start, the run's start, a random token
and a heartbeat time, rewritten every HEARTBEAT_S by a thread. A lock found there is stale, and
taken over, when
- its owner ran on this machine (same host name, boot and pid namespace) and that process is gone
  (no such pid, or a pid reused by a process started at another time): a driver killed with
  SIGKILL is taken over by the next run at once;
- or its heartbeat is older than STALE_AFTER_S (an owner on another machine, which we cannot see).
A finished run removes its lock (on object stores it marks it released instead: a delete there
makes pyarrow write a folder marker). After writing its lock a run waits SETTLE_S and reads it back: two runs that raced for a free
(or stale) lock both wrote, one of them was last, and the other one sees that and gives up. A local
lock created where there was none needs no wait: its creation is exclusive.

Before each commit the sink checks the lock is still its own (check()): a run whose heartbeat
stalled past STALE_AFTER_S (a paused VM) and whose lock was taken over stops instead of
committing beside the new owner.

What holds and what does not. Locally the first lock is created exclusively (a hard link, atomic
on local and NFS file systems) and takeovers replace it atomically. Object stores have no
create-if-absent here (pyarrow cannot send If-None-Match), so there the read-back after SETTLE_S
is what separates two runs started together: it relies on the store's read-after-write
consistency (AWS S3, MinIO; OBS for reads) and on both uploads finishing within SETTLE_S of each
other. A run paused for longer than STALE_AFTER_S loses its lock; one that resumes while another
has just taken over can still commit one part before its next check. Clocks of different
machines are compared (the heartbeat's time against the reader's): keep them in sync (NTP).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import storage
from pipeline.errors import UserError
from pipeline.storage import Location

LOCK_NAME = "_LOCK"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
SETTLE_S = 2.0  # object stores; locally SETTLE_LOCAL_S
SETTLE_LOCAL_S = 0.2


class OutLocked(UserError):
    """Another run owns OUT (a UserError: the command prints it and exits 2)."""


class LockLost(RuntimeError):
    """Our lock was taken over while we ran: stop writing."""


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str  # the run's start, UTC
    token: str
    heartbeat: float  # time.time() of the last heartbeat
    process_start: str | None = None  # /proc/<pid>/stat start time, to tell a reused pid apart
    machine: str | None = None  # boot id and pid namespace: "this machine" for the pid check

    def describe(self, now: float) -> str:
        return (f"host {self.host}, pid {self.pid}, started {self.started}, "
                f"last heartbeat {max(0, now - self.heartbeat):.0f} s ago")


def _proc(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    stat = _proc(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 (starttime), counted after the command name


def _machine() -> str | None:
    boot = _proc("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    return f"{boot} {namespace}" if boot and namespace else None


def _alive(owner: Owner) -> bool | None:
    """Whether the owner's process still runs; None when we cannot tell (another machine)."""
    if owner.host != socket.gethostname() or owner.machine is None or owner.machine != _machine():
        return None
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return owner.process_start is None or _process_start(owner.pid) == owner.process_start


class OutLock:
    """acquire() before touching OUT, release() at the end (also a context manager)."""

    def __init__(self, out: Location, started: str, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.where = storage.location(out) / LOCK_NAME
        self.local = isinstance(self.where, Path)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        pid = os.getpid()
        self.owner = Owner(socket.gethostname(), pid, started, secrets.token_hex(8), time.time(),
                           _process_start(pid), _machine())
        self.taken_over: Owner | None = None  # the stale owner we replaced, if any
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # --- acquiring -------------------------------------------------------------------------------

    def read(self) -> Owner | None:
        try:
            data = json.loads(storage.read_bytes(self.where) or b"null")
        except FileNotFoundError:
            return None
        except ValueError:  # half-written by a process killed mid-write (object stores): stale
            return Owner("?", 0, "?", "", 0.0)
        if not isinstance(data, dict):
            return Owner("?", 0, "?", "", 0.0)
        if data.get("released"):
            return None
        try:
            return Owner(**data)
        except TypeError:
            return Owner("?", 0, "?", "", 0.0)

    def stale(self, owner: Owner) -> bool:
        alive = _alive(owner)
        if alive is not None:
            return not alive
        return time.time() - owner.heartbeat > self.stale_after_s

    def acquire(self) -> None:
        storage.make_dirs(self.where.parent)
        found = self.read()
        if found is not None and not self.stale(found):
            self._refuse(found)
        if found is None and self.local:
            # Exclusive: no other run wrote it, and one that comes to take over finds it alive. No
            # settling (0.2 s of every local run's start).
            self._create_local()
        else:
            if found is not None and self.local and self.read() != found:  # changed while we looked
                self._refuse(self.read() or found)
            self._write()
            self.taken_over = found
            time.sleep(SETTLE_LOCAL_S if self.local else SETTLE_S)
        now = self.read()
        if now is None or now.token != self.owner.token:
            self._refuse(now or found)
        self._thread = threading.Thread(target=self._beat, name="out-lock-heartbeat", daemon=True)
        self._thread.start()

    def _refuse(self, owner: Owner | None) -> None:
        who = owner.describe(time.time()) if owner is not None else "another run"
        raise OutLocked(
            f"{self.where.parent} is in use by another run ({who}); one run at a time per output folder. "
            f"Wait for it to finish. If it is gone for good, its lock is taken over automatically once its "
            f"heartbeat is {self.stale_after_s / 60:g} minutes old (at once on the machine it ran on), or "
            f"delete {self.where} by hand.")

    def _payload(self) -> bytes:
        return json.dumps(asdict(self.owner), sort_keys=True).encode()

    def _create_local(self) -> None:
        """Exclusive create with the content in place: write a temporary file, hard-link it to the
        lock's name (fails when one exists), remove the temporary."""
        tmp = self.where.parent / f".tmp-lock-{self.owner.token}"
        tmp.write_bytes(self._payload())
        try:
            os.link(tmp, self.where)
        except OSError:  # it exists: another run was quicker
            self._refuse(self.read())
        finally:
            tmp.unlink(missing_ok=True)

    def _write(self) -> None:
        with self._write_lock:
            self.owner = Owner(**{**asdict(self.owner), "heartbeat": time.time()})
            storage.write_bytes(self.where, self._payload())

    # --- holding -----------------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self.read()
                if current is None or current.token != self.owner.token:
                    self.lost = True
                    return
                self._write()
            except OSError:  # a store failing for a while: the next beat tries again
                continue

    def check(self) -> None:
        """Raise LockLost when another run has taken OUT over (called before each commit)."""
        if not self.lost:
            current = self.read()
            self.lost = current is None or current.token != self.owner.token
        if self.lost:
            raise LockLost(f"another run took over {self.where.parent} (our heartbeat stalled for more than "
                           f"{self.stale_after_s:g} s); this run stops without writing more. Committed work stays.")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self.read()
            if current is not None and current.token == self.owner.token:
                if self.local:
                    storage.delete(self.where)
                else:  # deleting an object makes pyarrow write a folder marker: one write instead
                    storage.write_bytes(self.where, json.dumps({"released": True, "by": asdict(self.owner)}).encode())
        except OSError:
            pass  # stale now; the next run on this machine takes it over at once
