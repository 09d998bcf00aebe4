"""The final tables from OUT's committed parts (output/final.py) and which results count
(output/sink.py CurrentResults), without Ray: an OUT written as runs commit it, with long files,
keys retried after a transient failure and results for audio that changed since."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.bench.final_tables import STALE_CAPTION, TASKS, _layout, _manifest, _sources, write_out
from pipeline.output import final
from pipeline.output.current_results import current_results
from pipeline.output.sink import OutputDir
from pipeline.output.tables import annotations_output, current_segments, segments_output
from pipeline.tasks.catalog import OUTPUT_COLUMNS

RESULTS = 3000


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    where = tmp_path_factory.mktemp("final") / "out"
    write_out(where, RESULTS)
    return where


def test_final_tables_hold_each_current_result_once_in_manifest_order(out, monkeypatch):
    monkeypatch.setattr(final, "SORT_MEMORY", "8MB")  # the sort spills to disk
    segments = _layout(RESULTS)
    manifest, sink = _manifest(len(segments)), OutputDir(out)
    current = _sources(manifest, segments)
    planned = [current.planned[i] for i in manifest.ids]
    totals = final.write_tables(sink, manifest, final.RowsNow(sources=current, planned=planned), OUTPUT_COLUMNS,
                                TASKS, chunk_rows=400)
    annotations = pq.read_table(out / "annotations.parquet")
    written = pq.read_table(out / "segments.parquet")
    assert annotations.column("id").to_pylist() == manifest.ids
    assert set(annotations.column("status").to_pylist()) == {"ok"}  # transient results lost to the retries
    assert annotations.column("n_segments").to_pylist() == segments.tolist()
    assert written.num_rows == RESULTS == totals.segments
    assert STALE_CAPTION not in written.column("caption").to_pylist()  # results for older audio
    # The same rows as from every result at once, in memory.
    rows = next(manifest.batches(rows=manifest.num_rows)).table  # every column, as the final tables read them
    whole = current_segments(sink.segments(OUTPUT_COLUMNS, current), rows.column("id"))
    assert written.equals(segments_output(whole))
    assert annotations.equals(annotations_output(whole, rows, planned, OUTPUT_COLUMNS, TASKS))


def _state(rows):
    names = ("key", "id", "planned_s", "error", "run", "caption")
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)},
                    schema=pa.schema([("key", pa.string()), ("id", pa.string()), ("planned_s", pa.float64()),
                                      ("error", pa.string()), ("run", pa.string()), ("caption", pa.string())]))


@pytest.mark.parametrize("rows, planned, kept", [
    # One plan per id: the known plan now wins; else the best result's (lasting, latest run, longer).
    ([("a#0", "a", 40.0, None, "r1", "old plan"), ("a#0", "a", 60.0, None, "r2", "new plan")], {"a": 40.0},
     ["old plan"]),
    ([("a#0", "a", 40.0, None, "r1", "old plan"), ("a#0", "a", 60.0, None, "r2", "new plan")], {}, ["new plan"]),
    ([("a#0", "a", 40.0, None, "r2", "lasting"), ("a#0", "a", 60.0, "storage_unavailable", "r3", "transient")],
     {}, ["lasting"]),
    ([("a#0", "a", None, None, None, "before plans"), ("a#1", "a", 60.0, None, "r1", "planned")], {"a": 30.0},
     ["before plans"]),
    ([("a#0", "a", 40.0, None, "r1", "another plan")], {"a": 60.0}, []),  # none counts (this crashed before)
    # One result per key: lasting over transient, then the latest run; transient ones keep their first.
    ([("k#0", "k", 5.0, "storage_unavailable", "r1", "t1"), ("k#0", "k", 5.0, None, "r1", "ok")], {}, ["ok"]),
    ([("k#0", "k", 5.0, "model_error", "r1", "e1"), ("k#0", "k", 5.0, "model_error", "r2", "e2")], {}, ["e2"]),
    ([("k#0", "k", 5.0, "storage_unavailable", "r1", "t1"), ("k#0", "k", 5.0, "storage_unavailable", "r1", "t2"),
      ("k#0", "k", 5.0, "read_error", "r1", "t3")], {}, ["t1"]),
    ([("k#0", "k", 5.0, None, "r1", "twice"), ("k#0", "k", 5.0, None, "r1", "twice")], {}, ["twice", "twice"]),
    ([("k#0", "k", 5.0, None, None, "unstamped"), ("k#0", "k", 5.0, None, "r1", "stamped")], {}, ["stamped"]),
])
def test_which_results_count(rows, planned, kept):
    assert current_results(_state(rows), planned).column("caption").to_pylist() == kept
