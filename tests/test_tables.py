"""Rows of annotations.parquet from committed segments (output/tables.py)."""

import pyarrow as pa

from pipeline.intake.manifest_table import Manifest
from pipeline.output.sink import segment_schema
from pipeline.output.tables import annotations_output, current_segments, output_column_names
from pipeline.storage import location
from pipeline.tasks.catalog import OUTPUT_COLUMNS

TASKS_RAN = ["caption"]


def _segment(item_id, status, caption=None, language=None, error=None):
    return {"key": f"{item_id}#0", "id": item_id, "row": 0, "segment": 0, "n_segments": 1, "start_s": 0.0,
            "end_s": 2.0, "status": status, "error": error, "error_detail": error and "detail",
            "silent": False, "raw": [("caption", caption)] if status == "ok" else None,
            "caption": caption, "language": language}


def _rows(manifest_table, segments):
    manifest = Manifest.from_table(location("/nowhere/m.parquet"), manifest_table)
    table = pa.Table.from_pylist(segments, schema=segment_schema(OUTPUT_COLUMNS))
    rows = next(manifest.batches()).table  # every column, as the final tables read them
    found = current_segments(table, rows.column("id"))
    return annotations_output(found, rows, [2.0] * manifest.num_rows, OUTPUT_COLUMNS, TASKS_RAN).to_pylist()


def test_language_is_null_where_the_transcript_did_not_run_and_on_error_rows():
    """The manifest's language is a hint, not a detection: it never fills `language`, which is
    null for a task that did not run (docs/output.md), and it stays in manifest_language."""
    manifest = pa.table({"id": ["ok", "bad"], "audio": ["a.wav", "b.wav"], "language": ["en", "de"]})
    rows = _rows(manifest, [_segment("ok", "ok", caption="A dog barks."),
                            _segment("bad", "error", error="missing_file")])
    assert [r["language"] for r in rows] == [None, None]
    assert [r["manifest_language"] for r in rows] == ["en", "de"]
    assert rows[0]["caption"] == "A dog barks." and rows[1]["status"] == "error"


def test_detected_language_wins_and_manifest_language_is_null_without_the_column():
    manifest = pa.table({"id": ["a"], "audio": ["a.wav"], "source": ["radio"]})
    rows = _rows(manifest, [_segment("a", "ok", caption="Speech.", language="fr")])
    assert rows[0]["language"] == "fr" and rows[0]["manifest_language"] is None
    assert rows[0]["source"] == "radio"  # pass-through columns still come last
    assert list(rows[0])[-2:] == ["manifest_language", "source"]


def test_manifest_language_is_an_output_column_a_manifest_column_must_not_shadow():
    assert "manifest_language" in output_column_names(OUTPUT_COLUMNS)


def _answered(segment, index, n, sums, tokens, hit_cap, looped=None, retried=None):
    """A successful segment of a long row, with what the model said about its caption answer."""
    return {**segment, "key": f"{segment['id']}#{index}", "segment": index, "n_segments": n,
            "logprob_sum": [("caption", sums)], "answer_tokens": [("caption", tokens)],
            "hit_cap": [("caption", hit_cap)], "looped": [("caption", bool(looped))],
            "retried": [("caption", retried)] if retried else []}


def test_a_rows_logprob_is_the_mean_over_all_its_segments_tokens():
    """Sums and token counts are added up before the mean: a segment's mean weighs by its tokens
    (and its end token when it has one), never one segment one vote."""
    from pipeline.output.tables import segments_output

    manifest = Manifest.from_table(location("/nowhere/m.parquet"),
                                   pa.table({"id": ["long", "bad"], "audio": ["l.wav", "b.wav"]}))
    manifest_rows = next(manifest.batches()).table
    first = _answered(_segment("long", "ok", caption="Talk."), 0, 2, sums=-2.0, tokens=3, hit_cap=False)
    second = _answered(_segment("long", "ok", caption="Music."), 1, 2, sums=-1.8, tokens=9, hit_cap=True,
                       looped=True, retried="repetition_penalty=1.2")
    table = pa.Table.from_pylist([first, second, _segment("bad", "error", error="missing_file")],
                                 schema=segment_schema(OUTPUT_COLUMNS))
    found = current_segments(table, manifest_rows.column("id"))
    segments = segments_output(found).to_pylist()
    assert [dict(s["logprob"]) for s in segments[:2]] == [{"caption": -2.0 / 4}, {"caption": -1.8 / 9}]
    assert "logprob_sum" not in segments[0] and segments[2]["logprob"] is None
    rows = annotations_output(found, manifest_rows, [60.0, 1.0], OUTPUT_COLUMNS, TASKS_RAN).to_pylist()
    long, bad = rows
    assert dict(long["logprob"]) == {"caption": (-2.0 - 1.8) / (4 + 9)}  # not (-0.5 - 0.2) / 2
    assert dict(long["answer_tokens"]) == {"caption": 12}
    assert dict(long["hit_cap"]) == {"caption": True} and dict(long["looped"]) == {"caption": True}
    assert dict(long["retried"]) == {"caption": "repetition_penalty=1.2"}
    assert all(bad[c] is None for c in ("logprob", "answer_tokens", "hit_cap", "looped", "retried"))
    assert list(long)[list(long).index("raw") + 1:][:5] == ["logprob", "answer_tokens", "hit_cap", "looped", "retried"]
