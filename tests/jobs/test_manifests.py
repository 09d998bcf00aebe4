"""Several manifests as one: a folder, a glob of date partitions, or several paths."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.intake.manifest_set import default_out_name, read_manifests
from pipeline.intake.manifest_checks import read_manifest
from pipeline.intake.manifest_table import ManifestError
from tests.storage.conftest import s3, s3_server  # noqa: F401  (fixtures: a local S3-compatible server)


def write(path, ids, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "audio": [f"{i}.wav" for i in ids], **extra}), path)
    return path


@pytest.fixture
def incoming(tmp_path):
    root = tmp_path / "incoming"
    write(root / "date=2026-01-02" / "part-0.parquet", ["c", "d"], source=["x", "y"])
    write(root / "date=2026-01-01" / "part-0.parquet", ["a", "b"])
    write(root / "date=2026-01-01" / "part-1.parquet", [])  # a day's second file, empty
    (root / "date=2026-01-02" / "_SUCCESS").write_text("")
    write(root / "date=2026-01-02" / ".tmp-part.parquet", ["zz"])  # a writer's temporary file
    write(root / "_temporary" / "part-9.parquet", ["yy"])
    return root


def test_a_glob_of_date_partitions_reads_oldest_first(incoming):
    manifest = read_manifests(f"{incoming}/date=*/")
    assert manifest.ids == ["a", "b", "c", "d"]  # hidden and underscore names skipped
    assert manifest.table.column("source").to_pylist() == [None, None, "x", "y"]  # a column one file lacks
    # Relative audio paths resolve against each row's own manifest folder.
    assert manifest.base_dirs == [incoming / "date=2026-01-01"] * 2 + [incoming / "date=2026-01-02"] * 2


def test_a_folder_a_glob_and_shell_expanded_paths_are_the_same_manifest(incoming):
    folder = read_manifests(incoming)
    glob = read_manifests(str(incoming / "date=*"))
    expanded = read_manifests(sorted(str(p) for p in incoming.glob("date=*")))
    assert folder.ids == glob.ids == expanded.ids == ["a", "b", "c", "d"]
    assert folder.digest == glob.digest == expanded.digest
    write(incoming / "date=2026-01-03" / "part-0.parquet", ["e"])
    assert read_manifests(incoming).digest != folder.digest  # a new file is a new manifest


def test_one_file_reads_as_before(incoming):
    path = incoming / "date=2026-01-01" / "part-0.parquet"
    assert read_manifests(str(path)).digest == read_manifest(path).digest
    assert default_out_name(str(path)) == "part-0"
    assert default_out_name(f"{incoming}/date=*/") == "incoming"
    assert default_out_name(str(incoming)) == "incoming"
    assert default_out_name(sorted(str(p) for p in incoming.glob("date=*"))) == "incoming"  # a shell's expansion


def test_ids_must_be_unique_across_manifests(incoming):
    write(incoming / "date=2026-01-03" / "part-0.parquet", ["b", "e"])
    with pytest.raises(ManifestError, match=r"'b' in .*date=2026-01-01/part-0.parquet, .*date=2026-01-03"):
        read_manifests(incoming)


def test_nothing_found_or_nothing_in_them_is_an_error(tmp_path):
    with pytest.raises(ManifestError, match="no Parquet manifests"):
        read_manifests(str(tmp_path / "incoming" / "date=*"))
    write(tmp_path / "empty" / "a.parquet", [])
    with pytest.raises(ManifestError, match="have no rows"):
        read_manifests(tmp_path / "empty")


def test_a_glob_on_object_storage(s3, tmp_path):  # noqa: F811
    for date, ids in (("2026-01-01", ["a", "b"]), ("2026-01-02", ["c"])):
        local = write(tmp_path / date / "manifest.parquet", ids)
        s3.put(s3.root / f"incoming/date={date}/manifest.parquet", local.read_bytes())
    s3.put(s3.root / "incoming/date=2026-01-02/_SUCCESS", b"")
    manifest = read_manifests(f"{s3.root}/incoming/date=*/")
    assert manifest.ids == ["a", "b", "c"]
    assert manifest.base_dirs[2] == s3.root / "incoming" / "date=2026-01-02"
    assert read_manifests(str(s3.root / "incoming")).digest == manifest.digest
