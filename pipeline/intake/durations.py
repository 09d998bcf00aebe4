"""Durations known for audio files, kept in OUT/durations/ across runs.

Planning needs each row's duration. The manifest's duration_s comes first; a row without one (or
with 0: unknown) has its header read (a probe: a stat and a ranged read, a subprocess for ffmpeg
formats), and a backfill that works through millions of rows over many nights would otherwise
probe every remaining row again every night. So every probe is recorded here, and so is what a
decode found when a file's length differed from its plan (its manifest duration_s or header was
wrong): later runs plan that file from its decoded length instead.

An entry is keyed by the file's resolved location and version (storage.version: size and
modification time, or size and ETag), so a replaced file is probed again. Entries are written as
small Parquet files (one per planning window that probed, one per re-planned file), never
rewritten, and read together; when there are many they are merged into one.

In memory the cache is columnar: header entries as a sorted array of 64-bit hashes of (location,
version) beside their durations (16 bytes an entry, however long the paths), decoded entries (few)
with their keys, matched exactly. A lookup is a binary search per row.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.key_index import KeyIndex, combine, hash_strings
from pipeline.storage import Location

SCHEMA = pa.schema([
    pa.field("path", pa.string()), pa.field("version", pa.string()),
    pa.field("duration_s", pa.float64()), pa.field("origin", pa.string()),
])
HEADER, DECODED = "header", "decoded"  # origins: read from the header, or measured by decoding
MERGE_AFTER = 32  # files; more are merged into one when the next entries are written
_READ_ROWS = 262_144


@dataclass(frozen=True)
class Entry:
    path: str
    version: str
    duration_s: float
    origin: str


def entries_table(entries: list[Entry]) -> pa.Table:
    return pa.Table.from_pylist([e.__dict__ for e in entries], schema=SCHEMA)


def _keys(paths: pa.Array, versions: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(paths, versions, "\n")


class DurationCache:
    def __init__(self, folder: Location):
        self.folder = folder
        self._header_keys: list[np.ndarray] = []  # sorted hash arrays, one per piece (merged when many)
        self._header_seconds: list[np.ndarray] = []
        self._decoded = pa.table({"key": pa.array([], pa.string()), "duration_s": pa.array([], pa.float64())})
        self._decoded_index: tuple[KeyIndex, np.ndarray] | None = None

    def load(self) -> DurationCache:
        """Read every entry (OUT/durations/ as it is now)."""
        files = self._files()
        if not files:
            return self
        fs, _ = storage.filesystem(self.folder)
        dataset = ds.dataset([storage.filesystem(f)[1] for f in files], filesystem=fs, schema=SCHEMA, format="parquet")
        for batch in dataset.to_batches(batch_size=_READ_ROWS):
            self._remember(pa.Table.from_batches([batch], schema=SCHEMA))
            self._compact()
        return self

    def __len__(self) -> int:
        return sum(len(k) for k in self._header_keys) + self._decoded.num_rows

    def planned(self, paths: pa.Array, versions: pa.Array, manifest_s: np.ndarray) -> np.ndarray:
        """Each row's duration to plan from (NaN: unknown, probe it): a decoded length beats
        everything (the file's length differed from a plan), then the manifest's positive duration_s,
        then a header read earlier. Rows without a version (no file now) use the manifest's only."""
        planned = np.where(manifest_s > 0, manifest_s, np.nan)
        has_version = versions.is_valid().to_numpy(zero_copy_only=False)
        if not has_version.any():
            return planned
        if self._decoded.num_rows:
            rows = np.flatnonzero(has_version)
            keys = _keys(paths.take(pa.array(rows)), versions.take(pa.array(rows)))
            index, seconds = self._decoded_lookup()
            found = index.find(keys)
            hit = found >= 0
            planned[rows[hit]] = seconds[found[hit]]
        wanted = np.flatnonzero(np.isnan(planned) & has_version)
        if len(wanted) and self._header_keys:
            hashes = combine(hash_strings(paths.take(pa.array(wanted))), hash_strings(versions.take(pa.array(wanted))))
            for keys, seconds in zip(self._header_keys, self._header_seconds):  # later pieces win
                at = np.searchsorted(keys, hashes)
                inside = at < len(keys)
                hit = np.zeros(len(wanted), bool)
                hit[inside] = keys[at[inside]] == hashes[inside]
                planned[wanted[hit]] = seconds[at[hit]]
        return planned

    def add(self, entries: pa.Table | list[Entry]) -> None:
        """Record entries (SCHEMA) in a new file (and merge the files when there are many)."""
        table = entries if isinstance(entries, pa.Table) else entries_table(entries)
        table = table.filter(pc.is_valid(table.column("version")))
        if not table.num_rows:
            return
        self._remember(table)
        self._compact()
        storage.make_dirs(self.folder)
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}.parquet"
        storage.write_table(self.folder / name, table, compression="zstd")
        files = self._files()
        if len(files) > MERGE_AFTER:
            self._merge(files)

    def _remember(self, table: pa.Table) -> None:
        decoded = pc.equal(table.column("origin"), DECODED)
        found = table.filter(decoded)
        if found.num_rows:
            keys = _keys(found.column("path"), found.column("version"))
            self._decoded = pa.concat_tables([self._decoded, pa.table({"key": keys, "duration_s": found.column("duration_s")})])
            self._decoded_index = None
        header = table.filter(pc.invert(decoded))
        if header.num_rows:
            hashes = combine(hash_strings(header.column("path")), hash_strings(header.column("version")))
            order = np.argsort(hashes, kind="stable")
            self._header_keys.append(hashes[order])
            self._header_seconds.append(header.column("duration_s").to_numpy(zero_copy_only=False)[order])

    def _compact(self) -> None:
        """One sorted piece when there are many (lookups search each piece)."""
        if len(self._header_keys) <= 8:
            return
        keys = np.concatenate(self._header_keys)
        seconds = np.concatenate(self._header_seconds)
        order = np.argsort(keys, kind="stable")  # equal keys keep their order: the later entry last
        keys, seconds = keys[order], seconds[order]
        last = np.r_[keys[1:] != keys[:-1], True]
        self._header_keys, self._header_seconds = [keys[last]], [seconds[last]]

    def _decoded_lookup(self) -> tuple[KeyIndex, np.ndarray]:
        """The decoded entries, latest first (a key's latest entry is the one found)."""
        if self._decoded_index is None:
            latest = self._decoded.take(pa.array(np.arange(self._decoded.num_rows - 1, -1, -1)))
            self._decoded_index = (KeyIndex(latest.column("key")), latest.column("duration_s").to_numpy())
        return self._decoded_index

    def _files(self) -> list[Location]:
        return [self.folder / n for n in storage.list_names(self.folder) if n.endswith(".parquet")
                and not n.startswith((".", "_"))]

    def _merge(self, files: list[Location]) -> None:
        """One file with every entry, written before the others are deleted: a reader in between
        sees entries twice, never none."""
        fs, _ = storage.filesystem(self.folder)
        table = pa.concat_tables([pq.read_table(storage.filesystem(f)[1], filesystem=fs, schema=SCHEMA) for f in files])
        storage.write_table(self.folder / f"merged-{secrets.token_hex(6)}.parquet", table, compression="zstd")
        for f in files:
            storage.delete(f)
