"""Durations known for audio files, kept in OUT/durations/ across runs.

Planning needs each row's duration. The manifest's duration_s comes first; a row without one (or
with 0: unknown) has its header read (a probe: a stat and a ranged read, a subprocess for ffmpeg
formats), and a backfill that works through millions of rows over many nights would otherwise
probe every remaining row again every night. So every probe is recorded here, and so is what a
decode found when a file turned out longer than planned (its manifest duration_s or header was
wrong): later runs plan that file from its decoded length instead of cutting it short.

An entry is keyed by the file's resolved location and version (storage.version: size and
modification time, or size and ETag), so a replaced file is probed again. Entries are written as
small Parquet files (one per run, one per re-planned file), never rewritten, and read together;
when there are many they are merged into one.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.storage import Location

SCHEMA = pa.schema([
    pa.field("path", pa.string()), pa.field("version", pa.string()),
    pa.field("duration_s", pa.float64()), pa.field("origin", pa.string()),
])
HEADER, DECODED = "header", "decoded"  # origins: read from the header, or measured by decoding
MERGE_AFTER = 32  # files; more are merged into one when the next entries are written


@dataclass(frozen=True)
class Entry:
    path: str
    version: str
    duration_s: float
    origin: str


class DurationCache:
    def __init__(self, folder: Location):
        self.folder = folder
        self.header: dict[tuple[str, str], float] = {}
        self.decoded: dict[tuple[str, str], float] = {}

    def load(self, wanted: set[tuple[str, str]]) -> DurationCache:
        """Read the entries for these (path, version) pairs (the manifest's files now)."""
        files = self._files()
        if not files or not wanted:
            return self
        fs, _ = storage.filesystem(self.folder)
        table = pa.concat_tables([pq.read_table(storage.filesystem(f)[1], filesystem=fs, schema=SCHEMA) for f in files])
        table = table.filter(pc.is_in(table.column("path"), value_set=pa.array(sorted({p for p, _ in wanted}),
                                                                                 pa.string())))
        for path, version, seconds, origin in zip(*(table.column(n).to_pylist() for n in SCHEMA.names)):
            if (path, version) in wanted:
                (self.decoded if origin == DECODED else self.header)[(path, version)] = seconds
        return self

    def planned(self, path: str, version: str | None, manifest_s: float | None) -> float | None:
        """The duration to plan a row from: a decoded length beats everything (the file was found
        longer than a plan said), then the manifest's positive duration_s, then a header read
        earlier. None: unknown (probe it)."""
        key = (path, version)
        if version is not None and key in self.decoded:
            return self.decoded[key]
        if manifest_s is not None and manifest_s > 0:
            return manifest_s
        return self.header.get(key) if version is not None else None

    def add(self, entries: list[Entry]) -> None:
        """Record entries in a new file (and merge the files when there are many)."""
        entries = [e for e in entries if e.version is not None]
        if not entries:
            return
        for e in entries:
            (self.decoded if e.origin == DECODED else self.header)[(e.path, e.version)] = e.duration_s
        table = pa.Table.from_pylist([e.__dict__ for e in entries], schema=SCHEMA)
        storage.make_dirs(self.folder)
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}.parquet"
        storage.write_table(self.folder / name, table, compression="zstd")
        files = self._files()
        if len(files) > MERGE_AFTER:
            self._merge(files)

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
