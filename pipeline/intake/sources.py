"""What each row's audio is now, recorded with every committed result, so that a row whose audio
changed since it was labelled is labelled again on the next run.

A row's source is its manifest `audio` value and `duration_s` (either changes the work), and the
version of its file (storage.version: size and modification time locally, size and ETag on object
storage), plus the file's SHA-256 with verify_content. Audio inside a shard (intake/embedded) has its
shard's version; with verify_content a tar member's own bytes are hashed, a Parquet cell's are not
(the driver never reads them): its shard's version decides. A committed result is current when:
- it was committed before sources were recorded (parts without these columns): kept as it is;
- its audio value and duration_s equal the manifest's now;
- its file is the same: by SHA-256 with verify_content where the result recorded one, else by
  version. Results labelled without verify_content have no hash: they are compared by version
  until they are labelled again, so turning it on does not relabel a whole corpus.
A file that cannot be found or read now keeps its results: audio deleted after labelling, or an
object store failing, must not erase labels. A file that appears where there was none is a change
(its row was an error, e.g. missing_file, and is labelled now).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.intake.embedded.files import open_source
from pipeline.intake.embedded.refs import ParquetCell, TarMember
from pipeline.reasons import Failure
from pipeline.storage import Location

# Columns every committed part carries for its results (output/sink.py).
SOURCE_FIELDS = (
    pa.field("source_audio", pa.string()), pa.field("source_duration_s", pa.float64()),
    pa.field("source_version", pa.string()), pa.field("source_sha256", pa.string()),
)
SOURCE_COLUMNS = tuple(f.name for f in SOURCE_FIELDS)
_THREADS = 32  # stat calls and HEAD requests are I/O-bound


@dataclass(frozen=True)
class Source:
    audio: str  # the manifest's audio value
    duration_s: float | None  # the manifest's duration_s
    version: str | None  # storage.version of the file; None: no readable file there now
    sha256: str | None = None  # with verify_content

    def row(self) -> dict:
        return dict(zip(SOURCE_COLUMNS, (self.audio, self.duration_s, self.version, self.sha256)))


def read_sources(paths: Sequence[str], durations: Sequence[float | None], resolved: Sequence[Location | Failure],
                 verify_content: bool) -> list[Source]:
    """Every row's source now: one stat (or HEAD request) per row, and with verify_content a full
    read of every file. Rows whose path did not resolve have no file."""

    shard_versions: dict[str, str | None] = {}  # rows of one shard share its version: one stat or HEAD each

    def version_of(where) -> str | None:
        if isinstance(where, (ParquetCell, TarMember)):
            key = str(where.shard)
            if key not in shard_versions:
                shard_versions[key] = storage.version(where.shard)
            return shard_versions[key]
        return storage.version(where)

    def one(index: int) -> Source:
        where = resolved[index]
        version = sha256 = None
        if not isinstance(where, Failure):
            try:
                version = version_of(where)
                # A Parquet cell is compared by its shard's version: the driver never reads audio bytes.
                if version is not None and verify_content and not isinstance(where, ParquetCell):
                    sha256 = content_sha256(where)
            except OSError:  # denied or unavailable now (StorageErrors are OSErrors): results are kept
                version = sha256 = None
        return Source(paths[index], durations[index], version, sha256)

    with ThreadPoolExecutor(_THREADS) as pool:
        return list(pool.map(one, range(len(paths))))


def content_sha256(where) -> str:
    """SHA-256 of a file's bytes, or of a tar member's (read by range from its shard)."""
    if not isinstance(where, TarMember):
        return storage.content_sha256(where)
    digest = hashlib.sha256()
    with open_source(where) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CurrentSources:
    """Tells which committed results still describe their row's audio (see the module docstring)."""

    def __init__(self, ids: Sequence[str], sources: Sequence[Source], verify_content: bool):
        self.by_id = dict(zip(ids, sources))
        self.verify_content = verify_content
        # Each row's planned duration, where known (annotate fills it in): results planned from
        # another duration belong to an older plan of the row and no longer count (output/sink.py).
        self.planned: dict[str, float] = {}

    def is_current(self, item_id: str, audio, duration_s, version, sha256) -> bool:
        now = self.by_id.get(item_id)
        if now is None or audio is None:  # not in the manifest now, or committed before sources were recorded
            return True
        if audio != now.audio or duration_s != now.duration_s:
            return False
        if now.version is None:  # gone or unreadable now: keep what was labelled
            return True
        if self.verify_content and sha256 is not None and now.sha256 is not None:
            return sha256 == now.sha256
        return version == now.version

    def mask(self, table: pa.Table | pa.RecordBatch) -> pa.BooleanArray:
        """For a table with `id` and the SOURCE_COLUMNS: which rows are current (is_current,
        vectorised: a million committed results take a fraction of a second, not a Python loop)."""
        now = self._columns()
        position = pc.index_in(table.column("id"), value_set=now.column("id"))
        audio, duration, version, sha256 = (table.column(name) for name in SOURCE_COLUMNS)
        now_audio, now_duration, now_version, now_sha256 = (now.column(name).take(position) for name in SOURCE_COLUMNS)
        unknown = pc.or_(pc.is_null(position), pc.is_null(audio))  # not in the manifest now, or recorded before sources
        same_file = _same(version, now_version)
        if self.verify_content:
            hashed = pc.and_(pc.is_valid(sha256), pc.is_valid(now_sha256))
            same_file = pc.if_else(hashed, _same(sha256, now_sha256), same_file)
        same_file = pc.or_(pc.is_null(now_version), same_file)  # gone or unreadable now: keep what was labelled
        current = pc.and_(pc.and_(_same(audio, now_audio), _same(duration, now_duration)), same_file)
        found = pc.or_(unknown, current)
        return found.combine_chunks() if isinstance(found, pa.ChunkedArray) else found

    def _columns(self) -> pa.Table:
        """Every row's source now as columns: built for each mask (a few per run), not kept, so the
        driver holds no second copy of every row's source for the whole run."""
        sources = list(self.by_id.values())
        return pa.table({
            "id": pa.array(list(self.by_id), pa.string()),
            **{name: pa.array([getattr(s, attr) for s in sources], field.type)
               for name, attr, field in zip(SOURCE_COLUMNS, ("audio", "duration_s", "version", "sha256"),
                                            SOURCE_FIELDS)}})


def _same(a, b):
    """Null-safe equality, row by row: two nulls are the same, a null and a value are not."""
    return pc.if_else(pc.is_null(a), pc.is_null(b), pc.fill_null(pc.equal(a, b), False))
