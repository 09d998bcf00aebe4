"""Local copies of objects, for tools that read only local files (ffmpeg): a bounded cache per
process, so that the segments of one long file download it once."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.storage.errors import ObjectNotFound
from pipeline.storage.input_files import MAX_BLOCK
from pipeline.storage.locations import Location, ObjectPath
from pipeline.storage.reading import info
from pipeline.storage.s3 import missing_detail, s3_filesystem, with_retries
from pipeline.storage.settings import cache_bytes, current_settings


@dataclass
class _Copy:
    path: Path
    size: int
    users: int = 0
    last_used: float = 0.0
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class _LocalCache:
    """Copies of objects that only ffmpeg decodes (it reads local files only), kept so that the
    segments and cut windows of one long file download it once. Bounded by settings.cache_bytes()
    (plus the copies in use at that moment): the least recently used idle copies go first. Each process
    has its own folder, removed at exit; folders of processes that died without exiting are swept
    by the next process that makes one."""

    root = Path(tempfile.gettempdir()) / "pipeline-object-cache"

    def __init__(self):
        self.lock = threading.Lock()
        self.copies: dict[tuple, _Copy] = {}
        self.folder: Path | None = None

    def _folder(self) -> Path:
        if self.folder is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep_dead()
            self.folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.root))
            atexit.register(self.clear)
        return self.folder

    def _sweep_dead(self) -> None:
        for entry in self.root.iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)

    @contextmanager
    def copy_of(self, where: ObjectPath) -> Iterator[Path]:
        found = info(where)
        if found.kind != "file":
            raise ObjectNotFound(missing_detail(where))
        key = (current_settings().endpoint_url, str(where), found.size)
        with self.lock:
            copy = self.copies.get(key)
            fetch = copy is None
            if fetch:
                self._evict(room_for=found.size)
                folder = Path(tempfile.mkdtemp(dir=self._folder()))
                copy = self.copies[key] = _Copy(folder / (where.name or "object"), found.size)
            copy.users += 1
        try:
            if fetch:
                try:
                    with_retries(lambda: _download(where, copy.path), where)
                except BaseException as exc:
                    copy.error = exc
                    with self.lock:
                        self.copies.pop(key, None)
                    shutil.rmtree(copy.path.parent, ignore_errors=True)
                    raise
                finally:
                    copy.ready.set()
            else:
                copy.ready.wait()
                if copy.error is not None:
                    raise copy.error
            yield copy.path
        finally:
            with self.lock:
                copy.users -= 1
                copy.last_used = time.monotonic()
                self._evict(room_for=0)

    def _evict(self, room_for: int) -> None:
        """Drop idle copies, least recently used first, until `room_for` more bytes fit the bound."""
        total = sum(c.size for c in self.copies.values())
        for key, copy in sorted(self.copies.items(), key=lambda kv: kv[1].last_used):
            if total + room_for <= cache_bytes():
                break
            if copy.users == 0 and copy.ready.is_set():
                shutil.rmtree(copy.path.parent, ignore_errors=True)
                del self.copies[key]
                total -= copy.size

    def clear(self) -> None:
        with self.lock:
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
            self.copies.clear()


def _download(where: ObjectPath, target: Path) -> None:
    with s3_filesystem().open_input_stream(where.fs_path) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, MAX_BLOCK)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_cache = _LocalCache()


@contextmanager
def local_copy(where: Location) -> Iterator[Path]:
    """A local file with the content of `where` (the file itself when it is local), for tools that
    read only local files (ffmpeg). Objects come from the bounded per-process cache."""
    if isinstance(where, ObjectPath):
        with _cache.copy_of(where) as path:
            yield path
    else:
        yield where


def clear_local_cache() -> None:
    """Remove this process's local copies now (also done at exit)."""
    _cache.clear()
