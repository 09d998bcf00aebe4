"""What identifies a row's audio (size and time, an object's ETag, a content hash), and results
committed before it was recorded."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import storage
import pyarrow as pa

from pipeline.intake.sources import SOURCE_COLUMNS, SOURCE_FIELDS, CurrentSources, Source, Sources, source_is_current
from pipeline.items import Item, ItemResult
from pipeline.output.sink import PROVENANCE_COLUMNS, OutputDir, Provenance
from tests.storage.conftest import s3, s3_server  # noqa: F401  (fixtures: a local S3-compatible server)

COLUMNS = {"caption": "string"}


def result(item_id, segment=0, n=1, error=None):
    item = Item(ord(item_id) - ord("a"), item_id, f"/{item_id}.wav", segment, n, 0.0, 1.0)
    if error:
        return ItemResult(item, "error", error=error, error_detail="x")
    return ItemResult(item, "ok", start_s=0.0, end_s=1.0, silent=False, raw={"caption": item_id},
                      parsed={"caption": item_id})


def test_local_versions_follow_size_and_time_and_hashes_follow_bytes(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"one")
    first, sha = storage.version(path), storage.content_sha256(path)
    os.utime(path, ns=(1, 2 * 10**18))
    assert storage.version(path) != first and storage.content_sha256(path) == sha
    path.write_bytes(b"two")
    assert storage.content_sha256(path) != sha
    assert storage.version(tmp_path / "missing.wav") is None and storage.version(tmp_path) is None


def test_object_versions_are_size_and_etag(s3):  # noqa: F811
    where = s3.put(s3.root / "a.wav", b"one")
    first = storage.version(where)
    assert first.startswith("size=3 etag=")
    s3.put(where, b"two")  # same size, uploaded again
    assert storage.version(where) not in (None, first)
    assert storage.content_sha256(where) == storage.content_sha256(s3.put(s3.root / "b.wav", b"two"))
    assert storage.version(s3.root / "missing.wav") is None and storage.version(s3.root) is None


def is_current(sources: CurrentSources, item_id, audio, duration_s, version, sha256) -> bool:
    """Whether a result committed with this recorded source is current for these sources now."""
    table = pa.table({"id": [item_id], **{name: pa.array([value], field_type)
                                          for name, value, field_type in zip(SOURCE_COLUMNS, (audio, duration_s, version, sha256),
                                                                             (pa.string(), pa.float64(), pa.string(), pa.string()))}})
    return bool(sources.mask(table)[0])


def test_which_results_are_current():
    now = Source("a.wav", 2.0, "size=1 mtime_ns=5", "h1")
    current = CurrentSources.of(["a"], [now], verify_content=False)
    assert is_current(current, "a", "a.wav", 2.0, "size=1 mtime_ns=5", None)
    assert not is_current(current, "a", "a.wav", 2.0, "size=1 mtime_ns=4", None)  # replaced or touched
    assert not is_current(current, "a", "b.wav", 2.0, "size=1 mtime_ns=5", None)  # another path
    assert not is_current(current, "a", "a.wav", 3.0, "size=1 mtime_ns=5", None)  # another duration_s
    assert not is_current(current, "a", "a.wav", 2.0, None, None)  # a file where there was none
    assert is_current(current, "a", None, None, None, None)  # committed before sources were recorded
    assert is_current(current, "gone", "x.wav", None, "v", None)  # no longer in the manifest
    gone = CurrentSources.of(["a"], [Source("a.wav", 2.0, None)], verify_content=False)
    assert is_current(gone, "a", "a.wav", 2.0, "size=1 mtime_ns=5", None)  # deleted since: labels kept
    by_hash = CurrentSources.of(["a"], [now], verify_content=True)
    assert is_current(by_hash, "a", "a.wav", 2.0, "size=1 mtime_ns=4", "h1")  # new time, same bytes
    assert not is_current(by_hash, "a", "a.wav", 2.0, "size=1 mtime_ns=5", "h0")  # same time, other bytes
    assert not is_current(by_hash, "a", "a.wav", 2.0, "size=1 mtime_ns=4", None)  # no hash recorded: by time
    unknown = CurrentSources.of(["a"], [Source("a.wav", None, "v")], verify_content=False)
    assert is_current(unknown, "a", "a.wav", None, "v", None)  # no duration_s then, none now


_maybe = lambda values: st.one_of(st.none(), st.sampled_from(values))  # noqa: E731


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "gone"]), _maybe(["a.wav", "b.wav"]), _maybe([1.0, 2.0]),
                          _maybe(["v1", "v2"]), _maybe(["h1", "h2"])), max_size=30),
       st.tuples(_maybe(["v1", "v2"]), _maybe(["h1", "h2"]), _maybe([1.0, 2.0])), st.booleans())
def test_the_columnar_mask_says_what_is_current_says(results, now, verify_content):
    """mask() decides a whole table at once (a million results in a fraction of a second); row by
    row it must say exactly what is_current says."""
    version, sha256, duration = now
    sources = {"a": Source("a.wav", duration, version, sha256), "b": Source("b.wav", 2.0, None)}
    current = CurrentSources.of(list(sources), list(sources.values()), verify_content)
    names = ("id", *SOURCE_COLUMNS)
    table = pa.table({name: [r[i] for r in results] for i, name in enumerate(names)},
                     schema=pa.schema([pa.field("id", pa.string()), *SOURCE_FIELDS]))
    assert current.mask(table).to_pylist() == [source_is_current(sources.get(r[0]), *r[1:], verify_content)
                                               for r in results]


def test_unresolved_paths_have_no_file(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    found = Sources(tmp_path, verify_content=True).of(pa.array(["a.wav", "../b.wav"]), tmp_path)
    assert found.version[0].as_py().startswith("size=1 ") and found.sha256[0].as_py()
    assert found.version[1].as_py() is None and found.sha256[1].as_py() is None
    assert found.reason.to_pylist() == [None, "outside_audio_root"]


def test_parts_from_before_provenance_still_read_and_stay_current(tmp_path):
    out = OutputDir(tmp_path / "out")
    out.open("fp", {}, restart=False)
    old = out.commit([result("a"), result("b")], COLUMNS, None)
    # Rewrite that part as an older version of the pipeline wrote it: no provenance columns at all.
    pq.write_table(pq.read_table(old).drop_columns(list(PROVENANCE_COLUMNS)), old)
    sources = [Source(f"{i}.wav", None, "v1") for i in "abc"]
    out.record_provenance(Provenance("20260101T000000Z", dict(zip("abc", sources))))
    out.commit([result("c")], COLUMNS, None)
    current = CurrentSources.of(list("abc"), sources, verify_content=False)
    progress = out.progress(current)
    assert progress.done_ids == {"a", "b", "c"} and not progress.changed_ids
    rows = out.segments(COLUMNS, current).to_pylist()
    assert [(r["id"], r["run"], r["source_version"]) for r in rows] == [
        ("a", None, None), ("b", None, None), ("c", "20260101T000000Z", "v1")]
    # c's audio changes: its result no longer counts, and it can be committed again.
    changed = CurrentSources.of(list("abc"), sources[:2] + [Source("c.wav", None, "v2")], verify_content=False)
    assert out.progress(changed).done_ids == {"a", "b"} and out.progress(changed).changed_ids == {"c"}
    out.record_provenance(Provenance("20260102T000000Z", {"c": Source("c.wav", None, "v2")}))
    out.commit([result("c")], COLUMNS, None)
    assert [r["run"] for r in out.segments(COLUMNS, changed).to_pylist()] == [None, None, "20260102T000000Z"]


def test_a_lasting_result_replaces_a_transient_one_and_the_latest_run_wins(tmp_path):
    out = OutputDir(tmp_path / "out")
    out.open("fp", {}, restart=False)
    out.record_provenance(Provenance("20260101T000000Z"))
    out.commit([result("a", error="storage_unavailable"), result("b")], COLUMNS, None)
    assert out.committed() == ({"b#0"}, {"b"})  # the transient one is tried again
    out.record_provenance(Provenance("20260102T000000Z"))
    out.commit([result("a")], COLUMNS, None)
    assert [(r["id"], r["status"]) for r in out.segments(COLUMNS).to_pylist()] == [("a", "ok"), ("b", "ok")]
