"""From committed segment results to the final tables: one row per segment, one row per manifest id.

The file-row rule (docs/output.md quotes it): status is `ok` when every segment succeeded, `error`
when none did, `partial` otherwise; `error` is the first failed segment's reason code and
`error_detail` names every failed segment. Annotations combine the successful segments by
tasks.merge.aggregate: transcripts joined in order, language by majority, distinct captions in order,
events and moderation labels as a union. `raw` keeps each task's raw text, segments joined by
newlines (a follow-up its rule skipped has none). `skipped` names the follow-ups a rule skipped:
with the reason when every segment skipped it (its column is then null), else how many did. `language` is what the transcript task detected, and null where it did not run or
detected none, and on error rows: a column of a task that did not run is null. The manifest's own
`language` value (a hint the manifest author gave) is kept, untouched, in `manifest_language`.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.intake.embedded import refs
from pipeline.intake.manifest_table import AUDIO, ID, SCHEMA_COLUMNS
from pipeline.output import answer_columns
from pipeline.output.sink import PROVENANCE_COLUMNS, column_type
from pipeline.tasks.merge import aggregate_row

# Resume state, not output: where a result sits and what it was labelled from (sink.Provenance).
SEGMENT_COLUMNS_DROPPED = ("key", "row", *PROVENANCE_COLUMNS)
# annotations.parquet's own columns, between the manifest's id and audio and the annotation
# columns; raw comes after the annotations, then what the model says about each answer
# (output/answer_columns.py), pass-through columns last.
FILE_COLUMNS = (
    ("status", pa.string()), ("error", pa.string()), ("error_detail", pa.string()),
    ("duration_s", pa.float64()), ("n_segments", pa.int32()), ("silent", pa.bool_()),
)
RAW_COLUMN = ("raw", pa.map_(pa.string(), pa.string()))
SKIPPED_COLUMN = ("skipped", pa.map_(pa.string(), pa.string()))
# The manifest's values of its schema columns that the output replaces with what was found
# (`duration_s` is the decoded length, `language` the detected one), so that annotations.parquet
# loses none of the manifest's values and a wrong one shows beside the real one; they come after
# raw, before the pass-through columns.
MANIFEST_VALUE_COLUMNS = (("manifest_duration_s", pa.float64(), "duration_s"),
                          ("manifest_language", pa.string(), "language"))


def output_column_names(columns: dict[str, str]) -> set[str]:
    """Every column annotations.parquet writes besides the manifest's own."""
    return ({name for name, _ in FILE_COLUMNS} | set(columns) | {RAW_COLUMN[0], SKIPPED_COLUMN[0]}
            | set(answer_columns.OUTPUT_NAMES) | {name for name, _, _ in MANIFEST_VALUE_COLUMNS})


def current_segments(segments: pa.Table, ids: pa.Array | pa.ChunkedArray) -> pa.Table:
    """The committed segments of these manifest rows' ids (a chunk of the manifest), in their order.
    Ids, not row positions, are the identity: a manifest that gained, lost or reordered rows since
    a part was committed still joins correctly."""
    position = pc.index_in(segments.column("id"), value_set=ids)
    segments = segments.set_column(segments.schema.get_field_index("row"), "row", position.cast(pa.int64()))
    segments = segments.filter(pc.is_valid(position))
    keys = segments.column("key")
    if pc.count_distinct(keys).as_py() != len(keys):
        raise RuntimeError("a key was committed twice; the output folder is inconsistent")
    return segments.sort_by([("row", "ascending"), ("segment", "ascending")])


def segments_output(segments: pa.Table) -> pa.Table:
    """segments.parquet's rows: the parts' without resume state, each answer's log-probability sum
    turned into its mean (output/answer_columns.py)."""
    table = segments.drop_columns(list(SEGMENT_COLUMNS_DROPPED))
    values = [answer_columns.segment_values(row) for row in
              table.select(list(answer_columns.PART_NAMES)).to_pylist()]
    table = table.drop_columns(list(answer_columns.PART_NAMES))
    for field in answer_columns.OUTPUT_FIELDS:
        table = table.append_column(field, pa.array([v[field.name] for v in values], field.type))
    return table


def _detail(failed: list[dict], n_segments: int) -> str:
    if n_segments == 1:
        return failed[0]["error_detail"]
    return "; ".join(
        f"segment {s['segment']} ({_span(s)}): {s['error']}: {s['error_detail']}" for s in failed
    )


def _span(segment: dict) -> str:
    if segment["start_s"] is None or segment["end_s"] is None:
        return "unknown span"
    return f"{segment['start_s']:.1f}-{segment['end_s']:.1f} s"


def _file_row(segments: list[dict], columns: dict[str, str], tasks: list[str], planned_s) -> dict:
    ok = [s for s in segments if s["status"] == "ok"]
    failed = [s for s in segments if s["status"] != "ok"]
    n = segments[0]["n_segments"]
    ends = [s["end_s"] for s in segments if s["end_s"] is not None]
    row = {
        "status": "ok" if not failed else "error" if not ok else "partial",
        "error": failed[0]["error"] if failed else None,
        "error_detail": _detail(failed, n) if failed else None,
        "duration_s": max(ends) if ends and max(ends) > 0 else planned_s,
        "n_segments": n,
        "silent": all(s["silent"] for s in ok) if ok else None,
    }
    if ok:
        # A column no segment answered (its task did not run) stays null rather than empty.
        answered = {c: kind for c, kind in columns.items() if any(s[c] is not None for s in ok)}
        row.update({c: None for c in columns})
        row.update(aggregate_row(ok, answered))
        raws = [dict(s["raw"] or []) for s in ok]
        row["raw"] = [(t, "\n".join(r[t] for r in raws if t in r)) for t in tasks if any(t in r for r in raws)]
        row["skipped"] = _skipped([dict(s.get("skipped") or []) for s in ok], tasks)
        row.update(answer_columns.file_values(ok, tasks))
    else:
        row.update({c: None for c in columns})
        row["raw"] = row["skipped"] = None
        row.update({name: None for name in answer_columns.OUTPUT_NAMES})
    return row


def _skipped(segments: list[dict], tasks: list[str]) -> list[tuple[str, str]]:
    """A row's skipped follow-ups from its successful segments' (each segment is its own
    conversation): the reason when every segment skipped it, else how many did and the first reason."""
    found = []
    for task in tasks:
        reasons = [s[task] for s in segments if task in s]
        if reasons:
            count = "" if len(reasons) == len(segments) else f"in {len(reasons)} of {len(segments)} segments: "
            found.append((task, count + reasons[0]))
    return found


def annotations_output(segments: pa.Table, rows: pa.Table, planned_durations: list, columns: dict[str, str],
                       tasks: list[str]) -> pa.Table:
    """Exactly one row per manifest row, in manifest order, with its pass-through columns. rows: the
    manifest's rows (every column, Manifest.batches); segments must come from current_segments
    (rows renumbered to these)."""
    by_row: dict[int, list[dict]] = defaultdict(list)
    for segment in segments.to_pylist():
        by_row[segment["row"]].append(segment)
    ids = rows.column(ID)
    found_rows = []
    for index in range(rows.num_rows):
        found = by_row.get(index)
        if not found:
            raise RuntimeError(f"row {index} (id {ids[index].as_py()!r}) has no committed result")
        indices = [s["segment"] for s in found]
        if indices != list(range(found[0]["n_segments"])):
            raise RuntimeError(f"id {ids[index].as_py()!r} has segments {indices}, expected each once")
        found_rows.append(_file_row(found, columns, tasks, planned_durations[index]))

    fields = [*FILE_COLUMNS, *((c, column_type(kind)) for c, kind in columns.items()), RAW_COLUMN,
              *answer_columns.OUTPUT_FIELDS, SKIPPED_COLUMN]
    body = pa.Table.from_pylist(found_rows, schema=pa.schema(fields))
    # Where the audio came from: the path as written, or `shard#row` / `shard.tar#key` for audio
    # inside a shard (never its bytes, never the reference's internals).
    audio = rows.column(AUDIO)
    if pc.any(pc.starts_with(pc.fill_null(audio, ""), refs.PARQUET_ROW)).as_py() or \
            pc.any(pc.starts_with(pc.fill_null(audio, ""), refs.TAR_MEMBER)).as_py() or \
            pc.any(pc.starts_with(pc.fill_null(audio, ""), refs.NO_AUDIO)).as_py():
        audio = pa.array([refs.display(v) for v in audio.to_pylist()], pa.string())
    table = rows.select([ID]).append_column(AUDIO, audio)
    for name in body.column_names:
        table = table.append_column(name, body.column(name))
    for name, kind, source in MANIFEST_VALUE_COLUMNS:
        values = rows.column(source) if source in rows.column_names else None
        table = table.append_column(name, values.cast(kind) if values is not None else pa.nulls(len(table), kind))
    for name in rows.column_names:
        if name not in SCHEMA_COLUMNS:
            table = table.append_column(name, rows.column(name))
    return table
