"""The final tables are streamed chunk by chunk of manifest rows: the same tables whatever the chunk
size, and never more than a chunk of rows combined at once in the driver."""

import shutil

import pyarrow.parquet as pq

from pipeline.planning.job import annotation_columns
from pipeline.config import Config
from pipeline.intake.manifest_checks import read_manifest
from pipeline.output import final, tables
from pipeline.output.sink import OutputDir
from pipeline.tasks.catalog import resolve_tasks
from tests.pipeline.conftest import EXPECTED, mixed_manifest  # noqa: F401  (a fixture)
from tests.reliability.conftest import rows, run


def test_final_tables_are_streamed_in_chunks(ray_cluster, mixed_manifest, model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run(mixed_manifest, out, model_dir, audio_root=str(mixed_manifest.parent / "audio"))
    whole = {name: pq.read_table(out / name) for name in ("annotations.parquet", "segments.parquet")}
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = read_manifest(mixed_manifest)
    columns = annotation_columns(resolve_tasks(Config()))
    combined = []
    real = tables.annotations_output
    monkeypatch.setattr(final, "annotations_output",
                        lambda segments, subset, *rest: combined.append(subset.num_rows) or real(segments, subset, *rest))
    # No planning facts: every committed result counts as it was committed, no plan is known.
    totals = final.write_tables(OutputDir(copy), manifest, final.RowsNow(None, False), columns,
                                ["caption", "events", "transcript", "moderation"], chunk_rows=5)
    assert combined[1:] == [5, 5, 2] and max(combined) <= 5  # the first call only finds the schema
    for name, table in whole.items():
        assert pq.read_table(copy / name).to_pylist() == table.to_pylist(), name
    assert totals.rows == len(EXPECTED) and totals.rows_by_status == {"ok": 5, "error": 7}
    assert [r["id"] for r in rows(copy)] == list(EXPECTED)
