"""Strings as 64-bit hashes, and a sorted index that finds them: how the driver joins millions of
ids (manifest rows against committed results, files against OUT's duration cache) without a Python
object or a hash-table entry per row.

A hash only locates: every match is confirmed by comparing the strings themselves, so two strings
that happen to share a hash are never confused (they sit side by side in the index and only the
equal one matches). Hashes are DuckDB's hash() (vectorised, unseeded), so they are the same in
every process of a run; 0 is reserved for null.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NULL_HASH = np.uint64(0)
_local = threading.local()


def hash_strings(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each string's 64-bit hash (uint64), NULL_HASH for a null. Per row: about 0.03 us."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if len(values) == 0:
        return np.zeros(0, np.uint64)
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    strings = pa.table({"s": values})  # noqa: F841  (read by the query below, by its name)
    hashes = _connection().sql("SELECT hash(s) AS h FROM strings").to_arrow_table().column(0)
    hashes = hashes.to_numpy().astype(np.uint64, copy=True)
    hashes[hashes == NULL_HASH] = np.uint64(1)  # a real string never hashes to "null"
    if values.null_count:
        hashes[values.is_null().to_numpy(zero_copy_only=False)] = NULL_HASH
    return hashes


def _connection():
    """This thread's DuckDB connection (its hash(): fast, vectorised, the same in every process)."""
    found = getattr(_local, "connection", None)
    if found is None:
        import duckdb

        found = _local.connection = duckdb.connect(config={"threads": 1})
    return found


def combine(*hashes: np.ndarray) -> np.ndarray:
    """One hash of several (per row), e.g. a file's path and its version as one key."""
    out = np.zeros(len(hashes[0]), np.uint64)
    with np.errstate(over="ignore"):
        for h in hashes:
            out = (out ^ h) * np.uint64(0x100000001B3) + np.uint64(0x9E3779B97F4A7C15)
    out[out == NULL_HASH] = np.uint64(1)
    return out


def repeated(hashes: np.ndarray) -> np.ndarray:
    """The hash values that occur more than once (sorted)."""
    if len(hashes) < 2:
        return np.zeros(0, np.uint64)
    ordered = np.sort(hashes)
    twice = ordered[1:] == ordered[:-1]
    return np.unique(ordered[1:][twice])


class KeyIndex:
    """Rows of a table found by a string key: the keys' hashes sorted (and the rows in that order),
    with the keys kept to confirm each match. Several rows may share a key (a row id's segments)."""

    def __init__(self, keys: pa.Array | pa.ChunkedArray, hashes: np.ndarray | None = None):
        hashes = hash_strings(keys) if hashes is None else hashes
        self.order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[self.order]
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        self.keys = keys.take(pa.array(self.order)) if len(keys) else keys

    def __len__(self) -> int:
        return len(self.hashes)

    def pairs(self, keys: pa.Array | pa.ChunkedArray, hashes: np.ndarray | None = None,
              slots: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Every (position in keys, row of the index's table) whose keys are equal: two int64
        arrays, by position in keys, then by row. slots: positions in the index's sorted order
        (self.keys, self.hashes) instead of rows."""
        hashes = hash_strings(keys) if hashes is None else hashes
        if not len(self.hashes) or not len(hashes):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lo = np.searchsorted(self.hashes, hashes, "left")
        hi = np.searchsorted(self.hashes, hashes, "right")
        counts = hi - lo
        found = np.flatnonzero(counts)
        if not len(found):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        per = counts[found]
        positions = np.repeat(found, per)
        # For each found key, the sorted slots lo..hi-1.
        starts = np.repeat(lo[found] - np.cumsum(per) + per, per)
        found_slots = starts + np.arange(len(positions))
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        same = pc.equal(keys.take(pa.array(positions)), self.keys.take(pa.array(found_slots)))
        same = same.to_numpy(zero_copy_only=False)
        same = np.asarray(same, dtype=bool)
        positions, found_slots = positions[same], found_slots[same]
        rows = found_slots if slots else self.order[found_slots]
        order = np.lexsort((rows, positions))
        return positions[order].astype(np.int64), rows[order].astype(np.int64)

    def find(self, keys: pa.Array | pa.ChunkedArray, hashes: np.ndarray | None = None) -> np.ndarray:
        """The row of each key (the first, where several share it), -1 where absent."""
        found = np.full(len(keys), -1, np.int64)
        positions, rows = self.pairs(keys, hashes)
        if len(positions):
            first = np.r_[True, positions[1:] != positions[:-1]]
            found[positions[first]] = rows[first]
        return found
