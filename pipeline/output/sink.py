"""The output folder: committed parts, resume state, and the final Parquet files.

Layout of OUT:
    state.json           the run's identity (fingerprint and settings), written when OUT is first used
    parts/part-*.parquet committed segment results; a part's name is a digest of the keys it holds
    segments.parquet     one row per segment (final)
    annotations.parquet  one row per manifest id (final)
    run.json             what ran and how it went (final)
    _SUCCESS             completion marker, written last

Every file is written to a temporary name, fsynced and renamed into place, so a reader never sees
half a file and a crash leaves either the old file or the new one. A key (row id and segment) is
committed once: a rerun reads the committed keys and plans only the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.items import ItemResult

STATS_METADATA_KEY = b"pipeline.stats"
SUCCESS = "_SUCCESS"
FINAL_FILES = ("annotations.parquet", "segments.parquet", "run.json", SUCCESS)


def _atomic(path: Path, write) -> None:
    """write(tmp_path) into a temporary file beside path, fsync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_table(path: Path, table: pa.Table) -> None:
    _atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _readable(tmp: str) -> None:
    """mkstemp creates 0600 files; outputs get the usual permissions (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def column_type(kind: str) -> pa.DataType:
    """Arrow type of an annotation column: "list" -> list<string>, "string" -> string."""
    return pa.list_(pa.string()) if kind == "list" else pa.string()


def segment_schema(columns: dict[str, str]) -> pa.Schema:
    """Part and segments.parquet schema; columns maps each annotation column to string or list."""
    fields = [
        pa.field("key", pa.string()), pa.field("id", pa.string()), pa.field("row", pa.int64()),
        pa.field("segment", pa.int32()), pa.field("n_segments", pa.int32()),
        pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64()),
        pa.field("status", pa.string()), pa.field("error", pa.string()), pa.field("error_detail", pa.string()),
        pa.field("silent", pa.bool_()), pa.field("raw", pa.map_(pa.string(), pa.string())),
    ]
    for name, kind in columns.items():
        fields.append(pa.field(name, column_type(kind)))
    return pa.schema(fields)


def results_table(results: list[ItemResult], columns: dict[str, str], stats: dict | None) -> pa.Table:
    rows = []
    for r in results:
        row = {
            "key": r.item.key, "id": r.item.id, "row": r.item.row, "segment": r.item.segment,
            "n_segments": r.item.n_segments, "start_s": r.start_s, "end_s": r.end_s, "status": r.status,
            "error": r.error, "error_detail": r.error_detail, "silent": r.silent,
            "raw": list(r.raw.items()) if r.status == "ok" else None,
        }
        for name in columns:
            row[name] = r.parsed.get(name)
        rows.append(row)
    schema = segment_schema(columns)
    if stats is not None:
        schema = schema.with_metadata({STATS_METADATA_KEY: json.dumps(stats).encode()})
    return pa.Table.from_pylist(rows, schema=schema)


class OutputDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.parts = self.path / "parts"

    # --- identity and resume ------------------------------------------------------------------

    def open(self, fingerprint: str, settings: dict, restart: bool) -> None:
        """Claim OUT for this run: refuse committed work from different settings unless told to
        discard it, and sweep temporary files a killed run left behind."""
        state_file = self.path / "state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("fingerprint") != fingerprint:
                if not restart:
                    changed = sorted(k for k in set(settings) | set(state.get("settings", {}))
                                     if settings.get(k) != state.get("settings", {}).get(k))
                    raise UserError(
                        f"{self.path} holds work from a run with different settings "
                        f"(changed: {', '.join(changed) or 'model files'}). Use another --out, "
                        "or pass --restart to discard that work."
                    )
                self.discard()
        self.path.mkdir(parents=True, exist_ok=True)
        self.parts.mkdir(exist_ok=True)
        for folder in (self.path, self.parts):
            for tmp in folder.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)
        if not state_file.is_file():
            atomic_write_bytes(state_file, json.dumps(
                {"fingerprint": fingerprint, "settings": settings}, indent=2, sort_keys=True).encode())

    def discard(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)
        for name in (*FINAL_FILES, "state.json"):
            (self.path / name).unlink(missing_ok=True)

    def completed_for(self, manifest_digest: str, fingerprint: str) -> bool:
        marker = self.path / SUCCESS
        if not marker.is_file():
            return False
        done = json.loads(marker.read_text() or "{}")
        return done.get("manifest_digest") == manifest_digest and done.get("fingerprint") == fingerprint

    def invalidate_final(self) -> None:
        """New work is about to be committed: the old final files no longer describe OUT."""
        (self.path / SUCCESS).unlink(missing_ok=True)

    def _dataset(self):
        files = sorted(str(p) for p in self.parts.glob("part-*.parquet"))
        return ds.dataset(files, format="parquet") if files else None

    def committed(self) -> tuple[set[str], set[str]]:
        """-> (committed keys, ids whose every segment is committed), from one read of the parts."""
        dataset = self._dataset()
        if dataset is None:
            return set(), set()
        table = dataset.to_table(columns=["key", "id", "n_segments"])
        keys = set(table.column("key").to_pylist())
        counts = Counter(table.column("id").to_pylist())
        ids_segments = zip(table.column("id").to_pylist(), table.column("n_segments").to_pylist())
        return keys, {item_id for item_id, n in ids_segments if counts[item_id] == n}

    # --- committing -----------------------------------------------------------------------------

    def commit(self, results: list[ItemResult], columns: dict[str, str], stats: dict | None) -> Path:
        keys = sorted(r.item.key for r in results)
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]
        path = self.parts / f"part-{digest}.parquet"
        if path.exists():
            raise RuntimeError(f"{path.name} already committed: the same items were planned twice")
        atomic_write_table(path, results_table(results, columns, stats))
        return path

    def segments(self, columns: dict[str, str]) -> pa.Table:
        dataset = self._dataset()
        schema = segment_schema(columns)
        if dataset is None:
            return schema.empty_table()
        table = dataset.to_table().select(schema.names).cast(schema)
        return table.sort_by([("row", "ascending"), ("segment", "ascending")])

    def part_stats(self) -> Iterable[dict]:
        for path in sorted(self.parts.glob("part-*.parquet")):
            metadata = pq.read_schema(path).metadata or {}
            if STATS_METADATA_KEY in metadata:
                yield json.loads(metadata[STATS_METADATA_KEY])

    def write_final(self, annotations: pa.Table, segments: pa.Table, run_info: dict, marker: dict) -> None:
        atomic_write_table(self.path / "segments.parquet", segments)
        atomic_write_table(self.path / "annotations.parquet", annotations)
        atomic_write_bytes(self.path / "run.json", json.dumps(run_info, indent=2, sort_keys=True, default=str).encode())
        # Last: the marker says everything above is complete and consistent.
        atomic_write_bytes(self.path / SUCCESS, json.dumps(marker, sort_keys=True).encode())
