"""What the report counts and samples, streamed; which rows it describes (final or committed)."""

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.output.sink import OutputDir
from pipeline.report import rows as rows_module
from pipeline.report import write_report
from pipeline.report.figures import MIN_PER_STATUS, SAMPLE_ROWS, gather
from pipeline.report.rows import COMMITTED, FINAL, read_rows
from pipeline.testing.synthetic_out import TASKS, annotations, write_out


def figures_of(table, batch_rows=None):
    batches = table.to_batches(max_chunksize=batch_rows) if batch_rows else table.to_batches()
    return gather(batches, list(TASKS), ["events", "moderation"], "logprob" in table.column_names)


def test_counts_reasons_durations_and_tags_match_the_table():
    table = annotations(3000, seed=1, logprob=True)
    found = figures_of(table, batch_rows=700)
    statuses = Counter(table.column("status").to_pylist())
    assert found.rows == 3000 and found.by_status == statuses
    assert found.by_reason == Counter(e for e in table.column("error").to_pylist() if e)
    for reason, examples in found.reason_examples.items():
        assert 1 <= len(examples) <= 3 and all(e["id"] for e in examples)
        ids = {e["id"] for e in examples}
        assert {r["error"] for r in table.filter(pc.is_in(table.column("id"), pa.array(list(ids)))).to_pylist()} == {reason}
    durations = np.array(table.column("duration_s").to_pylist())
    assert sum(c for _, c in found.duration_bins()) == 3000
    assert found.duration_bins()[1] == ("1\u20132s", int(((durations >= 1) & (durations < 2)).sum()))
    assert found.audio_s == pytest.approx(durations.sum())
    events = Counter(t for tags in table.column("events").to_pylist() if tags for t in tags)
    assert found.tags["events"] == events
    languages = Counter(l for l, s in zip(table.column("language").to_pylist(), table.column("status").to_pylist())
                        if s != "error")
    assert found.languages == languages
    # The logprob column: every labelled row's value of each task in the histogram, the mean exact.
    for task in TASKS:
        values = [dict(m)[task] for m in table.column("logprob").to_pylist() if m is not None]
        assert found.logprob[task].rows == len(values) == sum(c for _, c in found.logprob[task].bins())
        assert found.logprob[task].mean == pytest.approx(np.mean(values))
        lowest = [row["logprob"] for row in found.lowest[task]]
        assert sorted(dict(m)[task] for m in lowest) == sorted(values)[:len(lowest)]


def test_the_sample_is_stratified_bounded_and_the_same_on_every_build():
    table = annotations(5000, seed=2, ok_share=0.98)
    found = figures_of(table, batch_rows=999)
    sample = found.sample
    assert len(sample) == SAMPLE_ROWS and len({r["id"] for r in sample}) == SAMPLE_ROWS
    by_status = Counter(r["status"] for r in sample)
    counts = Counter(table.column("status").to_pylist())
    assert all(by_status[s] >= min(MIN_PER_STATUS, counts[s]) for s in counts)
    assert by_status["ok"] > by_status["error"]  # the rest in proportion
    assert [r["id"] for r in figures_of(table, batch_rows=999).sample] == [r["id"] for r in sample]
    # A small OUT shows all of its rows.
    assert len(figures_of(annotations(7, seed=3)).sample) == 7


def test_no_rows_and_only_errors():
    empty = figures_of(annotations(0))
    assert empty.rows == 0 and empty.sample == [] and not empty.by_status
    errors = figures_of(annotations(200, seed=4, ok_share=0.0).filter(
        pc.equal(annotations(200, seed=4, ok_share=0.0).column("status"), "error")))
    assert set(errors.by_status) == {"error"} and errors.languages == Counter()


def write_runs(out, tables, outcomes):
    (out / "runs").mkdir(parents=True)
    for n, (table, outcome) in enumerate(zip(tables, outcomes)):
        meta = {"outcome": outcome, "wall_s": 10.0, "audio_s": 5.0}
        pq.write_table(table.replace_schema_metadata({b"pipeline.run": json.dumps(meta).encode()}),
                       out / "runs" / f"2026010{n + 1}T000000Z.parquet")


def test_a_stopped_run_is_described_by_the_replay_of_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(rows_module, "BATCH_ROWS", 7)
    table = annotations(40, seed=5)
    first = table.slice(0, 30)
    # The second invocation labelled rows 20..39: rows 20..29 again, as errors this time.
    again = table.slice(20, 20).set_column(2, "status", pa.array(["error"] * 20))
    out = tmp_path / "out"
    write_out(out, first, runs=False)
    write_runs(out, [first, again], ["stopped", "stopped"])
    rows = read_rows(OutputDir(out))
    assert rows.kind == COMMITTED
    found = gather(rows.batches(["id", "audio", "status", "error", "error_detail", "duration_s", "language"]),
                   [], [], False)
    expected = Counter(first.slice(0, 20).column("status").to_pylist()) + Counter({"error": 20})
    assert found.rows == 40 and found.by_status == expected
    written = write_report(out)
    page = (out / "report.html").read_text()
    assert written.rows == 40 and "ended stopped" in page and 'data-figure="status:error">' in page
    # Once a run finishes, annotations.parquet describes OUT again.
    write_runs(tmp_path / "later", [table], ["finished"])
    (tmp_path / "later" / "runs" / "20260101T000000Z.parquet").rename(out / "runs" / "20260109T000000Z.parquet")
    assert read_rows(OutputDir(out)).kind == FINAL


def test_a_logprob_column_of_another_shape_or_none_is_skipped():
    table = annotations(50, seed=6)
    assert figures_of(table).logprob == {}
    odd = table.append_column("logprob", pa.array([1.0] * 50))  # not a map: nothing to show per task
    assert gather(odd.to_batches(), list(TASKS), [], True).logprob == {}


def test_moderation_scores_are_counted_per_label_and_tenth():
    scores = [{"violence": 0.05, "spam": 0.95}, None, {"violence": 0.55, "spam": 1.0}, {"violence": 0.5, "spam": 0.0}]
    table = pa.table({"id": list("abcd"), "audio": list("abcd"), "status": ["ok", "error", "ok", "ok"],
                      "error": [None, "read_error", None, None], "error_detail": [None, "x", None, None],
                      "duration_s": [1.0] * 4, "language": [None] * 4,
                      "moderation_scores": pa.array([list(s.items()) if s else None for s in scores],
                                                    pa.map_(pa.string(), pa.float64()))})
    # Batches of one row: each a slice of the map column (offsets into shared entries).
    found = gather(table.to_batches(max_chunksize=1), [], [], False, has_scores=True)
    assert found.scores["violence"].tolist() == [1, 0, 0, 0, 0, 2, 0, 0, 0, 0]
    assert found.scores["spam"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert found.score_bins("spam")[-1] == ("0.9", 2)
