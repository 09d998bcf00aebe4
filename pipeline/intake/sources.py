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

Sources are found a window of rows at a time (Sources.of): locations once per folder (paths.py),
versions from one listing per folder (listings.py), hashes read once per distinct file. They are
compared as 64-bit hashes of each part (SourceKeys): columns of numbers, not an object per row.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.intake.embedded import refs
from pipeline.intake.embedded.files import open_source
from pipeline.intake.listings import FolderListings
from pipeline.intake.paths import PathResolver
from pipeline.items import Source
from pipeline.key_index import NULL_HASH, hash_strings
from pipeline.reasons import Failure
from pipeline.storage import Location

# Columns every committed part carries for its results (output/sink.py).
SOURCE_FIELDS = (
    pa.field("source_audio", pa.string()), pa.field("source_duration_s", pa.float64()),
    pa.field("source_version", pa.string()), pa.field("source_sha256", pa.string()),
)
SOURCE_COLUMNS = tuple(f.name for f in SOURCE_FIELDS)
_HASH_THREADS = 8  # files read at once for verify_content

__all__ = ["SOURCE_COLUMNS", "SOURCE_FIELDS", "CurrentSources", "RowSources", "Source", "SourceKeys", "Sources",
           "is_current", "source_is_current"]


@dataclass(frozen=True)
class RowSources:
    """A window's rows: where each one's audio is now and what identifies its version."""

    where: pa.Array  # string location, null where the path cannot be used (reason says why)
    reason: pa.Array  # string Reason, null where the row resolved
    detail: pa.Array  # string
    version: pa.Array  # string storage.version, null where no readable file is there now
    sha256: pa.Array  # string, with verify_content (else all null)


class Sources:
    """Every row's audio now, found a window at a time; remembers folders and listings across windows."""

    def __init__(self, audio_root: Location | None, verify_content: bool):
        self.resolver = PathResolver(audio_root)
        self.listings = FolderListings()
        self.verify_content = verify_content
        self._shard_versions: dict[str, str | None] = {}  # shards whose rows were asked for (per shard, not row)

    def of(self, paths: pa.Array, base_dir: Location) -> RowSources:
        """The sources of rows of one manifest file (base_dir: its folder)."""
        resolved = self.resolver.resolve(paths, base_dir)
        versions, links = self.listings.versions(self.resolver.folders, resolved.folder, resolved.name)
        where, reason, detail = resolved.where, resolved.reason, resolved.detail
        # Rows resolved alone (odd values) and symlinked files (resolved to their target, as
        # audio.resolve_path does) have their location and version found one by one.
        alone = np.flatnonzero((resolved.folder < 0) | links)
        if len(alone):
            where, reason, detail, versions = self._one_by_one(alone, paths, base_dir, where, reason, detail,
                                                               versions, links)
        sha256 = self._hashes(where, versions) if self.verify_content else pa.nulls(len(paths), pa.string())
        return RowSources(where, reason, detail, versions, sha256)

    def _one_by_one(self, rows, paths, base_dir, where, reason, detail, versions, links):
        where, reason, detail, versions = (c.to_pylist() for c in (where, reason, detail, versions))
        for row in rows.tolist():
            if links[row]:
                found = self.resolver.resolve_one(paths[row].as_py(), base_dir)
                if isinstance(found, Failure):
                    where[row], reason[row], detail[row] = None, str(found.reason), found.detail
                    versions[row] = None
                    continue
                where[row] = str(found)
            if where[row] is not None:
                versions[row] = self._version(where[row])
        return (pa.array(where, pa.string()), pa.array(reason, pa.string()), pa.array(detail, pa.string()),
                pa.array(versions, pa.string()))

    def _version(self, where: str) -> str | None:
        """The version of one location, or of a shard's for audio inside it (one stat or HEAD per
        shard, however many of its rows)."""
        if not refs.is_embedded(where):
            return _version(storage.location(where))
        found = refs.parse(where)
        key = str(found.shard)
        if key not in self._shard_versions:
            self._shard_versions[key] = _version(found.shard)
        return self._shard_versions[key]

    def _hashes(self, where: pa.Array, versions: pa.Array) -> pa.Array:
        """SHA-256 of every distinct file that has a version (a full read each); a tar member's own
        bytes, none for a Parquet cell (the driver never reads audio bytes)."""
        present = pc.if_else(versions.is_valid(), where, pa.nulls(len(where), pa.string()))
        files = [f for f in pc.unique(present).to_pylist() if f is not None]

        def digest(location: str) -> str | None:
            try:
                if refs.is_embedded(location):
                    found = refs.parse(location)
                    return content_sha256(found) if isinstance(found, refs.TarMember) else None
                return storage.content_sha256(storage.location(location))
            except OSError:  # denied or unavailable now: results are kept
                return None

        with ThreadPoolExecutor(_HASH_THREADS) as pool:
            digests = pa.array(list(pool.map(digest, files)), pa.string())
        positions = pc.index_in(present, value_set=pa.array(files, pa.string()))
        return digests.take(positions) if files else pa.nulls(len(where), pa.string())


def content_sha256(where) -> str:
    """SHA-256 of a file's bytes, or of a tar member's (read by range from its shard)."""
    if not isinstance(where, refs.TarMember):
        return storage.content_sha256(where)
    digest = hashlib.sha256()
    with open_source(where) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(where: Location) -> str | None:
    try:
        return storage.version(where)
    except OSError:  # denied or unavailable now (StorageErrors are OSErrors): results are kept
        return None


@dataclass(frozen=True)
class SourceKeys:
    """Sources as numbers, row by row: a hash of each string part (NULL_HASH for null) and the
    duration (NaN for null). What is_current compares."""

    audio: np.ndarray
    duration_s: np.ndarray
    version: np.ndarray
    sha256: np.ndarray

    @classmethod
    def of(cls, audio, duration_s, version, sha256) -> SourceKeys:
        durations = duration_s if isinstance(duration_s, np.ndarray) else \
            pc.fill_null(duration_s, np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
        return cls(hash_strings(audio), durations, hash_strings(version), hash_strings(sha256))

    def take(self, rows: np.ndarray) -> SourceKeys:
        return SourceKeys(self.audio[rows], self.duration_s[rows], self.version[rows], self.sha256[rows])


def is_current(recorded: SourceKeys, now: SourceKeys, verify_content: bool) -> np.ndarray:
    """Which recorded sources (committed results) still describe their rows now (see the module)."""
    before = recorded.audio == NULL_HASH  # committed before sources were recorded
    same_duration = (recorded.duration_s == now.duration_s) | (np.isnan(recorded.duration_s) & np.isnan(now.duration_s))
    same_values = (recorded.audio == now.audio) & same_duration
    gone = now.version == NULL_HASH  # no readable file now: labels are kept
    by_hash = verify_content & (recorded.sha256 != NULL_HASH) & (now.sha256 != NULL_HASH)
    same_file = np.where(by_hash, recorded.sha256 == now.sha256, recorded.version == now.version)
    return before | (same_values & (gone | same_file))


class CurrentSources:
    """The sources now of some rows (a chunk of the manifest, or a few in tests), to tell which
    committed results still describe them: CurrentSources.mask(parts' rows). Results of ids not
    among these rows count as current. planned: each row's planned duration (NaN: not known)."""

    def __init__(self, ids: pa.Array, keys: SourceKeys, verify_content: bool, planned: np.ndarray | None = None):
        from pipeline.key_index import KeyIndex

        self.ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        self.keys, self.verify_content = keys, verify_content
        self.index = KeyIndex(self.ids)
        self.planned_s = planned if planned is not None else np.full(len(self.ids), np.nan)

    @classmethod
    def of(cls, ids: list[str], sources: list[Source], verify_content: bool, planned: dict | None = None):
        """From Source values (a few rows)."""
        keys = SourceKeys.of(pa.array([s.audio for s in sources], pa.string()),
                             pa.array([s.duration_s for s in sources], pa.float64()),
                             pa.array([s.version for s in sources], pa.string()),
                             pa.array([s.sha256 for s in sources], pa.string()))
        seconds = np.array([np.nan if (planned or {}).get(i) is None else planned[i] for i in ids], np.float64)
        return cls(pa.array(ids, pa.string()), keys, verify_content, seconds)

    @property
    def planned(self) -> dict[str, float]:
        """Each row's planned duration where known, by id (output/sink.one_plan_per_id)."""
        known = np.flatnonzero(~np.isnan(self.planned_s))
        return dict(zip(self.ids.take(pa.array(known)).to_pylist(), self.planned_s[known].tolist()))

    def mask(self, table: pa.Table | pa.RecordBatch) -> pa.BooleanArray:
        """For a table with `id` and the SOURCE_COLUMNS: which rows are current (source_is_current,
        vectorised)."""
        keep = np.ones(table.num_rows, bool)
        if table.num_rows:
            positions, rows = self.index.pairs(table.column("id"))
            if len(positions):
                recorded = SourceKeys.of(*(table.column(c).take(pa.array(positions)) for c in SOURCE_COLUMNS))
                keep[positions] = is_current(recorded, self.keys.take(rows), self.verify_content)
        return pa.array(keep, pa.bool_())


def source_is_current(now: Source | None, audio, duration_s, version, sha256, verify_content: bool) -> bool:
    """The rule (the module docstring's), for one committed result: what the columnar is_current
    computes for many at once (tests hold them to each other)."""
    if now is None or audio is None:  # not in the manifest now, or committed before sources were recorded
        return True
    if audio != now.audio or duration_s != now.duration_s:
        return False
    if now.version is None:  # gone or unreadable now: keep what was labelled
        return True
    if verify_content and sha256 is not None and now.sha256 is not None:
        return sha256 == now.sha256
    return version == now.version
