"""Reading embedded audio out of Parquet shards, on the workers: the cells a batch needs, by shard
and row group, with range reads (locally or on object storage). Only the `audio` column of the row
groups that hold a wanted row is read, each once per batch, and only the wanted rows' bytes are
kept; the rest of the shard is never read. (Writers such as Hugging Face `datasets` put a row
group's audio in one data page, so a row group is the smallest unit that can be read.)

The `audio` column is binary (the encoded file) or the Hugging Face Audio struct {bytes, path}:
bytes present are decoded (path only names the format); bytes null mean "read path", which
planning resolved into the cell's fallback. Nothing here raises for bad input: a row group that
cannot be read makes a corrupt_shard Failure for each of its cells and the other row groups still
read; a storage failure is the transient reason audio reads give (intake/audio.io_failure).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.intake.audio import io_failure
from pipeline.intake.embedded.files import AudioBytes, read_error
from pipeline.intake.embedded.refs import ParquetCell
from pipeline.reasons import Failure, Reason
from pipeline.storage import Location

AUDIO_COLUMN = "audio"
Audio = AudioBytes | Location | Failure  # what a cell holds: bytes to decode, a file to read, or why neither


def read_cells(cells: Iterable[ParquetCell]) -> dict[ParquetCell, Audio]:
    """The audio of every cell (see the module docstring), each shard opened once."""
    by_shard: dict[Location, list[ParquetCell]] = defaultdict(list)
    for cell in dict.fromkeys(cells):
        by_shard[cell.shard].append(cell)
    found: dict[ParquetCell, Audio] = {}
    for shard, wanted in by_shard.items():
        found.update(_read_shard(shard, wanted))
    return found


def _read_shard(shard: Location, cells: list[ParquetCell]) -> dict[ParquetCell, Audio]:
    try:
        opened = storage.open_input(shard, quiet=True)
    except OSError as exc:
        failure = io_failure(shard, exc)
        return {cell: failure for cell in cells}
    with opened:
        try:
            parquet = pq.ParquetFile(opened)
        except Exception as exc:  # a damaged footer: nothing in the shard can be found
            failure = _read_failure(opened, shard) or Failure(
                Reason.CORRUPT_SHARD, f"the Parquet shard {shard} cannot be read ({_first_line(exc)})")
            return {cell: failure for cell in cells}
        problem = _column_problem(parquet.schema_arrow, shard)
        if problem:
            return {cell: problem for cell in cells}
        starts = [0]
        for group in range(parquet.metadata.num_row_groups):
            starts.append(starts[-1] + parquet.metadata.row_group(group).num_rows)
        by_group: dict[int, list[ParquetCell]] = defaultdict(list)
        found: dict[ParquetCell, Audio] = {}
        for cell in cells:
            if not 0 <= cell.row < starts[-1]:
                found[cell] = Failure(Reason.MISSING_FILE, f"{cell.name}: the shard holds {starts[-1]} rows now "
                                                           "(it changed after planning)")
            else:
                by_group[bisect.bisect_right(starts, cell.row) - 1].append(cell)
        for group, wanted in sorted(by_group.items()):
            found.update(_read_group(parquet, opened, shard, group, starts[group], wanted))
        return found


def _read_group(parquet: pq.ParquetFile, opened, shard: Location, group: int, first_row: int,
                cells: list[ParquetCell]) -> dict[ParquetCell, Audio]:
    try:
        column = parquet.read_row_group(group, columns=[AUDIO_COLUMN]).column(0)
        values = column.take(pa.array([c.row - first_row for c in cells], pa.int64())).to_pylist()
    except Exception as exc:  # damaged pages, a bad codec, a cut file: this row group's rows only
        failure = _read_failure(opened, shard) or Failure(
            Reason.CORRUPT_SHARD, f"row group {group} of the Parquet shard {shard} cannot be read "
                                  f"({_first_line(exc)})")
        return {cell: failure for cell in cells}
    return {cell: _audio_of(cell, value) for cell, value in zip(cells, values)}


def _audio_of(cell: ParquetCell, value) -> Audio:
    if value is None:
        return Failure(Reason.NO_AUDIO, f"{cell.name} holds no audio (its audio value is null)")
    if isinstance(value, dict):  # the Hugging Face struct
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return AudioBytes(cell.name, data, path or "")
        if cell.fallback_failure is not None:  # planning could not resolve the path (outside the audio root...)
            return cell.fallback_failure
        if cell.fallback:
            return storage.location(cell.fallback)
        named = f" and its path {path!r} could not be used" if path else " and it names no path"
        return Failure(Reason.NO_AUDIO, f"{cell.name} holds no audio: its bytes are null{named}")
    return AudioBytes(cell.name, value)


def _column_problem(schema: pa.Schema, shard: Location) -> Failure | None:
    """The shard's audio column must still be one that holds bytes (the shard may have changed)."""
    if AUDIO_COLUMN not in schema.names:
        return Failure(Reason.CORRUPT_SHARD, f"the Parquet shard {shard} has no '{AUDIO_COLUMN}' column now")
    kind = schema.field(AUDIO_COLUMN).type
    if holds_bytes(kind):
        return None
    return Failure(Reason.CORRUPT_SHARD, f"the '{AUDIO_COLUMN}' column of {shard} has type {kind}, which holds no bytes")


def holds_bytes(kind: pa.DataType) -> bool:
    """A binary column, or a struct with a binary `bytes` field (the Hugging Face Audio feature)."""
    if _is_binary(kind):
        return True
    return (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0
            and _is_binary(kind.field("bytes").type))


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)


def _read_failure(opened, shard: Location) -> Failure | None:
    """The storage's failure behind a read pyarrow saw as a short or damaged file, if any."""
    error = read_error(opened)
    return io_failure(shard, error) if error is not None else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
