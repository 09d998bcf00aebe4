"""Embedded audio as files for the decoders: a Parquet cell's bytes in memory (AudioBytes), a tar
member as a window onto its shard (read in place by range: locally or on object storage, never
extracted), and either as a temporary local file for ffmpeg, which reads only files.

audio.probe and audio.decode take these as they take paths; formats' header checks read them
through open_source as they read files.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline import storage
from pipeline.intake.embedded.refs import TarMember
from pipeline.reasons import Failure, Reason
from pipeline.storage import Location

_COPY_BLOCK = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._#=+-]")


@dataclass(frozen=True, eq=False)
class AudioBytes:
    """An encoded audio file held in memory (a Parquet cell). `hint`, the Hugging Face struct's
    path when it has one, only names the format (its suffix); the bytes decide."""

    name: str  # for messages: "train-00000-of-00004.parquet#17"
    data: bytes
    hint: str = ""

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.hint).suffix

    def __str__(self) -> str:
        return self.name


Source = Location | AudioBytes | TarMember  # what audio.probe and audio.decode read


class WindowFile(io.RawIOBase):
    """Bytes [offset, offset + size) of a seekable file, as a seekable file of their own. A shard
    shorter than the window reads as the end of the member (callers check the size first)."""

    def __init__(self, base, offset: int, size: int):
        self.base, self.offset, self.size = base, offset, size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.size - self._pos)
        if count <= 0:
            return 0
        self.base.seek(self.offset + self._pos)
        view = memoryview(buffer)[:count]
        got = self.base.readinto(view)
        got = got or 0
        self._pos += got
        return got

    @property
    def error(self) -> OSError | None:
        return storage.read_error(self.base)

    def close(self) -> None:
        if not self.closed:
            self.base.close()
        super().close()


def open_source(source: Source, quiet: bool = False):
    """A seekable binary file of the audio (see storage.open_input for quiet)."""
    if isinstance(source, AudioBytes):
        return io.BytesIO(source.data)
    if isinstance(source, TarMember):
        return WindowFile(storage.open_input(source.shard, quiet=quiet), source.offset, source.size)
    return storage.open_input(source, quiet=quiet)


def member_head(member: TarMember) -> bytes | Failure:
    """A tar member's first bytes, once its shard is known to be there and to hold the whole member
    (a shard cut short is caught here, before a decoder sees a member that ends early). Raises
    OSError (StorageError) when the shard cannot be read."""
    found = storage.info(member.shard)
    if found.kind == "missing":
        return Failure(Reason.MISSING_FILE, f"the shard {member.shard} does not exist")
    if found.kind != "file":
        return Failure(Reason.NOT_A_FILE, f"the shard {member.shard} is not a file")
    if member.size == 0:
        return Failure(Reason.EMPTY_AUDIO, f"{member.name} is 0 bytes")
    if found.size < member.offset + member.size:
        return Failure(Reason.TRUNCATED_AUDIO, f"{member.name} is truncated: the tar declares {member.size} bytes "
                                               f"but the shard ends {max(0, found.size - member.offset)} bytes into it")
    with open_source(member) as fh:
        return fh.read(64)


def read_error(opened) -> OSError | None:
    """The storage error a quiet file kept (storage.read_error), through a member's window too."""
    if isinstance(opened, WindowFile):
        return opened.error
    return storage.read_error(opened)


@contextmanager
def local_file(source: Source) -> Iterator[Path]:
    """A local file holding the audio, for ffmpeg: the file itself or storage's cached copy of an
    object; embedded audio is written to a private temporary folder, removed afterwards. Its name
    is the source's (made safe for a file name), so ffmpeg's messages name what the user knows."""
    if not isinstance(source, (AudioBytes, TarMember)):
        with storage.local_copy(source) as path:
            yield path
        return
    folder = Path(tempfile.mkdtemp(prefix="pipeline-embedded-"))
    try:
        name = _UNSAFE.sub("_", source.name)[-200:]
        if source.suffix and not name.lower().endswith(source.suffix.lower()):
            name += source.suffix
        target = folder / name
        with open(target, "wb") as out:
            if isinstance(source, AudioBytes):
                out.write(source.data)
            else:
                with open_source(source) as member:
                    shutil.copyfileobj(member, out, _COPY_BLOCK)
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["AudioBytes", "Source", "WindowFile", "local_file", "member_head", "open_source", "read_error"]
