"""Checking one manifest file before any work: its schema, then its rows in one streamed pass.

Every problem is collected (with the first few offending ids or rows and a total count) and the run
stops with one message. The pass reads only id, audio and duration_s, batch by batch, and keeps
each row's id hash: the ids' uniqueness is checked on the hashes (sorted), and only hashes seen
twice are looked up again, exactly, in a second pass over the ids. Memory: 8 bytes a row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.intake.manifest_table import (AUDIO, DIGEST_CHARS, DURATION, ID, LANGUAGE, SCHEMA_TYPES, Manifest,
                                            ManifestError, file_digest, open_parquet)
from pipeline.key_index import hash_strings, repeated
from pipeline.storage import Location

EXAMPLES = 10  # offending ids shown per problem; the message also gives the total count
IMPLAUSIBLE_S = 24 * 3600.0  # a duration_s over a day is a mistake
MILLISECONDS_MEDIAN = 1000.0  # whole-number durations with a median this high look like milliseconds
MEDIAN_SAMPLE = 1_000_000  # known durations kept (evenly spaced) for that median


def read_manifest(path: str | Path | Location, allow_empty: bool = False, id_column: str | None = None) -> Manifest:
    """Read and validate a manifest (a local file or an s3:// object); raises ManifestError listing
    every problem found. allow_empty: a file with no rows is valid (one of several manifests, e.g.
    a day with no new audio). A Parquet file whose audio column holds the audio itself, or a
    WebDataset tar shard, reads as its rows (intake/embedded; id_column: where their ids are)."""
    try:
        path = storage.location(path)
    except storage.UnsupportedLocation as exc:
        raise ManifestError(str(exc)) from None
    return check_file(path, allow_empty, id_column)


def check_file(path: Location, allow_empty: bool, id_column: str | None = None) -> Manifest:
    """Validate one manifest file and return its handle; raises ManifestError naming every problem.
    A shard that holds its audio reads as the rows intake/embedded makes of it (id_column: where
    their ids are), held in memory, never its audio bytes."""
    try:
        found = storage.info(path)
        if found.kind == "missing":
            missing = storage.missing_detail(path) if isinstance(path, storage.ObjectPath) else f"{path} does not exist"
            raise ManifestError(f"manifest {missing}")
        if found.kind == "dir":
            raise ManifestError(f"{path} is a folder; give the manifest's .parquet file")
        shard = _read_shard(path, id_column)
        if shard is not None:
            table, digest = shard
            schema = normalised_schema(table.schema, path)
            table = table.cast(schema) if table.schema != schema else table
            rows, held = table.num_rows, (table,)
        else:
            digest = file_digest(path)
            with open_parquet(path) as parquet:
                schema = normalised_schema(parquet.schema_arrow, path)
                rows = parquet.metadata.num_rows
            held = ()
        manifest = Manifest(path, (path,), (rows,), schema, digest, tables=held)
        checks = RowChecks(DURATION in schema.names)
        for batch in manifest.batches([ID, AUDIO, DURATION]):
            checks.add(batch.start, batch.table)
    except ManifestError:
        raise
    except (storage.StorageError, PermissionError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc}") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"{path} is not a readable Parquet file: {exc}") from None
    hashes = checks.hashes()
    problems = checks.problems(allow_empty, duplicate_problems(manifest, hashes))
    if problems:
        raise ManifestError(f"{path} is not a valid manifest (rows count from 0):\n"
                            + "\n".join(f"  - {p}" for p in problems))
    return Manifest(path, (path,), (rows,), schema, digest, hashes, held, tuple(checks.warnings()))


def _read_shard(path: Location, id_column: str | None) -> tuple[pa.Table, str] | None:
    """A shard's rows (never its audio bytes) and a digest of its version, or None for a manifest
    that lists audio by path."""
    from pipeline.intake.embedded import parquet_shards, webdataset

    if not webdataset.is_tar(path):
        try:
            with open_parquet(path) as parquet:
                schema = parquet.schema_arrow
        except Exception:  # not Parquet: left to the manifest reader, which names the problem
            return None
        if AUDIO not in schema.names or not parquet_shards.holds_bytes(schema.field(AUDIO).type):
            return None
    try:
        if webdataset.is_tar(path):
            table, _, digest = webdataset.shards_table([path], id_column)
        else:
            table, digest = parquet_shards.shard_table(path, id_column)
    except parquet_shards.ShardError as exc:
        raise ManifestError(str(exc)) from None
    except (storage.StorageError, PermissionError) as exc:
        raise ManifestError(f"cannot read the shard {path}: {exc}") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"{path} is not a readable shard: {exc}") from None
    return table, digest[:DIGEST_CHARS]


def normalised_schema(schema: pa.Schema, path) -> pa.Schema:
    """The schema rows are read as: the schema columns cast to SCHEMA_TYPES, the rest as they are;
    raises ManifestError for repeated or missing columns and types that cannot be cast."""
    names = schema.names
    repeated_names = sorted({n for n in names if names.count(n) > 1})
    if repeated_names:
        raise ManifestError(f"{path}: column(s) {repeated_names} appear more than once")
    missing = [c for c in (ID, AUDIO) if c not in names]
    if missing:
        near = [n for n in names if n.strip().lower() in missing]
        hint = f" (column names are case-sensitive: found {near})" if near else ""
        raise ManifestError(f"{path}: missing required column(s) {missing}; it has {names[:20]}{hint}")
    problems, fields = [], []
    for field in schema:
        target = SCHEMA_TYPES.get(field.name)
        if target is None:
            fields.append(field)
        elif castable(field.type, target):
            fields.append(pa.field(field.name, target))
        else:
            problems.append(type_problem(field.name, field.type))
    if problems:
        raise ManifestError(f"{path} has columns of the wrong type:\n" + "\n".join(f"  - {p}" for p in problems))
    return pa.schema(fields)


def castable(source: pa.DataType, target: pa.DataType) -> bool:
    """Only lossless, unsurprising casts: string flavours to string, numbers to float seconds."""
    if pa.types.is_dictionary(source):
        source = source.value_type
    if pa.types.is_null(source):  # a column that is entirely null
        return True
    if pa.types.is_string(target):
        return any(check(source) for check in (pa.types.is_string, pa.types.is_large_string,
                                                pa.types.is_string_view))
    return pa.types.is_integer(source) or pa.types.is_floating(source)


def type_problem(name: str, found: pa.DataType) -> str:
    if name == ID and pa.types.is_integer(found):
        # Not cast silently: zero-padded ids ("00042") would already have lost their zeros, and
        # the output's ids must equal what the user wrote.
        return (f"column 'id' has type {found}; ids must be strings. Cast them before writing the "
                f"manifest, e.g. pandas: df['id'] = df['id'].astype(str); pyarrow: "
                f"table.set_column(table.schema.get_field_index('id'), 'id', table['id'].cast(pa.string()))")
    if name == DURATION:
        return f"column 'duration_s' has type {found}; it must hold seconds as numbers (float or int) or null"
    what = {ID: "ids must be strings", AUDIO: "audio paths must be strings",
            LANGUAGE: "languages must be strings (e.g. 'en') or null"}[name]
    return f"column '{name}' has type {found}; {what}"


class _Problem:
    """One kind of bad row: how many, and the first EXAMPLES (row, id, value)."""

    def __init__(self, what: str, shows_value: bool):
        self.what, self.shows_value = what, shows_value
        self.count = 0
        self.examples: list[tuple[int, str | None, object]] = []

    def add(self, start: int, mask: pa.Array, ids: pa.Array, values: pa.Array | None) -> None:
        rows = pc.indices_nonzero(pc.fill_null(mask, False))
        if not len(rows):
            return
        self.count += len(rows)
        room = EXAMPLES - len(self.examples)
        if room > 0:
            shown = rows[:room]
            shown_values = values.take(shown).to_pylist() if values is not None else [None] * len(shown)
            self.examples += [(start + r, i, v) for r, i, v in zip(shown.to_pylist(), ids.take(shown).to_pylist(),
                                                                   shown_values)]

    def describe(self) -> str:
        parts = []
        for row, id_, value in self.examples:
            where = f"row {row}" + (f": {value}" if self.shows_value else "")
            parts.append(f"{id_!r} ({where})" if id_ else where)
        more = f" and {self.count - EXAMPLES} more" if self.count > EXAMPLES else ""
        verb = "has" if self.count == 1 else "have"
        return f"{count(self.count, 'row')} {verb} {self.what}: {', '.join(parts)}{more}"


class RowChecks:
    """The per-row checks, batch by batch, in the order the message lists them."""

    def __init__(self, has_durations: bool):
        self.null_id = _Problem("a null id", False)
        self.empty_id = _Problem("an empty id", False)
        self.null_path = _Problem("a null audio path", False)
        self.empty_path = _Problem("an empty audio path", False)
        self.has_durations = has_durations
        self.bad_duration = _Problem("a duration_s that is NaN or infinite (use null for an unknown duration)", True)
        self.negative = _Problem("a negative duration_s", True)
        self.too_long = _Problem("a duration_s over 24 hours", True)
        self.all_whole = True  # every known duration_s a whole number
        self._known: list[np.ndarray] = []  # known durations, every `_stride`-th (for their median)
        self._stride = 1
        self.rows = 0
        self._hashes: list[np.ndarray] = []

    def add(self, start: int, table: pa.Table) -> None:
        ids, paths = table.column(ID).combine_chunks(), table.column(AUDIO).combine_chunks()
        self.rows += table.num_rows
        self._hashes.append(hash_strings(ids))
        self.null_id.add(start, pc.is_null(ids), ids, None)
        self.empty_id.add(start, pc.equal(pc.utf8_length(ids), 0), ids, None)
        self.null_path.add(start, pc.is_null(paths), ids, None)
        self.empty_path.add(start, pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(paths)), 0), ids, None)
        if self.has_durations:
            durations = table.column(DURATION).combine_chunks()
            self.bad_duration.add(start, pc.invert(pc.is_finite(durations)), ids, durations)
            self.negative.add(start, pc.less(durations, 0), ids, durations)
            self.too_long.add(start, pc.greater(durations, IMPLAUSIBLE_S), ids, durations)
            known = pc.fill_null(durations, 0.0).to_numpy(zero_copy_only=False)
            known = known[np.isfinite(known) & (known > 0)]
            if len(known):
                self.all_whole &= bool(np.all(np.floor(known) == known))
                self._known.append(known[::self._stride])
                if sum(len(k) for k in self._known) > MEDIAN_SAMPLE:
                    self._known, self._stride = [np.concatenate(self._known)[::2]], self._stride * 2

    def warnings(self) -> list[str]:
        """duration_s values that cannot be right (manifest_table.duration_warnings)."""
        found = [self.too_long.describe()] if self.too_long.count else []
        known = np.concatenate(self._known) if self._known else np.zeros(0)
        if len(known) and self.all_whole:
            median = float(np.sort(known)[(len(known) - 1) // 2])
            if median >= MILLISECONDS_MEDIAN:
                found.append(f"duration_s holds whole numbers with a median of {median:g}: these look like "
                             "milliseconds, not seconds (divide them by 1000)")
        return found

    def hashes(self) -> np.ndarray:
        return np.concatenate(self._hashes) if self._hashes else np.zeros(0, np.uint64)

    def problems(self, allow_empty: bool, duplicates: list[str]) -> list[str]:
        """Every problem found, the ids' repeats (duplicates) after the ids' own."""
        if self.rows == 0:
            return [] if allow_empty else ["it has no rows, so there is nothing to annotate"]
        ids = [p.describe() for p in (self.null_id, self.empty_id) if p.count]
        rest = [p.describe() for p in (self.null_path, self.empty_path, self.bad_duration, self.negative) if p.count]
        return ids + duplicates + rest


def repeated_ids(manifests: list[Manifest], hashes: np.ndarray) -> dict[str, list[int]]:
    """Ids that appear more than once (exactly compared; hashes only point at candidates): id ->
    the manifest index of each row holding it, in row order; ids in order of first appearance."""
    twice = repeated(hashes)
    found: dict[str, list[int]] = {}
    if not len(twice):
        return found
    for index, manifest in enumerate(manifests):
        for batch in manifest.batches([ID]):
            own = manifest.id_hashes[batch.start:batch.stop] if manifest.id_hashes is not None else \
                hash_strings(batch.table.column(ID))
            rows = np.flatnonzero(np.isin(own, twice))
            for id_ in batch.table.column(ID).take(pa.array(rows)).to_pylist():
                if id_ is not None:
                    found.setdefault(id_, []).append(index)
    return {i: where for i, where in found.items() if len(where) > 1}


def duplicate_problems(manifest: Manifest, hashes: np.ndarray) -> list[str]:
    """The message's line about ids that appear more than once in this file (a second pass over
    its ids, only when two hashes are equal)."""
    found = repeated_ids([Manifest(manifest.path, manifest.files, manifest.file_rows, manifest.schema,
                                   manifest.digest, hashes, manifest.tables)], hashes)
    if not found:
        return []
    items = list(found.items())
    shown = ", ".join(f"{i!r} ({len(rows)} rows)" for i, rows in items[:EXAMPLES])
    more = f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else ""
    return [f"{count(len(items), 'id')} appear{'s' if len(items) == 1 else ''} more than once: {shown}{more}"]


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
