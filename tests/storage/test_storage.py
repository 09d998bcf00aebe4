"""Object storage without Ray: s3:// locations and path rules, audio read from objects with the
local reason codes, ranged reads, retries, the ffmpeg cache, manifests, and the output folder's
commit protocol on a store with no rename."""

import io
import json
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline import storage
from pipeline.intake.audio import decode, probe, resolve_path
from pipeline.intake.manifest_checks import read_manifest
from pipeline.intake.manifest_table import ManifestError
from pipeline.items import Item, ItemResult
from pipeline.output.sink import OutputDir
from pipeline.reasons import Failure, Reason
from pipeline.storage import ObjectPath, local_copies

RATE = 16_000


def tone_bytes(seconds: float, fmt: str = "WAV", rate: int = RATE, **options) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format=fmt, **options)
    return buffer.getvalue()


def failed(result, reason: Reason) -> Failure:
    assert isinstance(result, Failure) and result.reason == reason, result
    return result


# --- locations (no server) ------------------------------------------------------------------------

def test_s3_paths_resolve_like_folders(tmp_path):
    manifest_dir = ObjectPath.parse("s3://bucket/sets/a")
    root = ObjectPath.parse("s3://bucket/audio/")
    # Relative paths: against the manifest's prefix, or the audio root.
    assert resolve_path("x/../clip.wav", manifest_dir, None) == ObjectPath("bucket", "sets/a/clip.wav")
    assert resolve_path("clip.wav", manifest_dir, root) == ObjectPath("bucket", "audio/clip.wav")
    assert resolve_path("s3://bucket/audio/b.flac", tmp_path, root) == ObjectPath("bucket", "audio/b.flac")
    # The audio root is a prefix as a folder is: no climbing out, no neighbours with a longer name.
    for outside in ("../secret.wav", "s3://bucket/audio-private/x.wav", "s3://other/audio/x.wav",
                    "/local/x.wav"):
        failed(resolve_path(outside, manifest_dir, root), Reason.OUTSIDE_AUDIO_ROOT)
    failed(resolve_path("s3://bucket/x.wav", tmp_path, tmp_path), Reason.OUTSIDE_AUDIO_ROOT)
    failed(resolve_path("../../../x.wav", manifest_dir, None), Reason.NOT_A_FILE)  # above the bucket
    # Other schemes stay refused per row, with the reason they always had.
    for url in ("http://example.com/a.wav", "https://bucket.s3.amazonaws.com/a.wav", "gs://bucket/a.wav",
                "file:///etc/passwd", "s3:///no-bucket.wav"):
        assert "s3://" in failed(resolve_path(url, manifest_dir, None), Reason.NOT_A_FILE).detail
    assert str(ObjectPath.parse("s3://bucket/a//b/./c.wav")) == "s3://bucket/a/b/c.wav"


# --- reading objects ------------------------------------------------------------------------------

def test_objects_decode_as_local_files_and_fail_with_the_local_reasons(s3, write_tone):
    local = write_tone("clip.flac", seconds=2.5, rate=44_100, channels=2)
    clip = s3.put(s3.root / "clip.flac", local.read_bytes())
    s3.put(s3.root / "empty.wav", b"")
    s3.put(s3.root / "corrupt.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 8)
    s3.put(s3.root / "truncated.wav", tone_bytes(4.0)[:40_000])
    s3.put(s3.root / "folder.wav/inside.wav", tone_bytes(1.0))
    s3.put(s3.root / "denied.wav", tone_bytes(1.0))
    s3.proxy.fail("HEAD", "denied.wav", 403, "AccessDenied")
    s3.proxy.fail("GET", "denied.wav", 403, "AccessDenied")

    assert probe(clip).duration_s == pytest.approx(2.5)
    got, expected = decode(str(clip)), decode(local)
    np.testing.assert_array_equal(got.samples, expected.samples)
    assert (got.source_rate, got.source_channels) == (44_100, 2)

    detail = failed(probe(s3.root / "missing.wav"), Reason.MISSING_FILE).detail
    assert "does not exist" in detail and "bucket" not in detail
    assert "there is no bucket 'no-such-bucket'" in failed(probe("s3://no-such-bucket/a.wav"), Reason.MISSING_FILE).detail
    failed(probe(s3.root / "folder.wav"), Reason.NOT_A_FILE)
    failed(decode(s3.root / "empty.wav"), Reason.EMPTY_AUDIO)
    failed(decode(s3.root / "corrupt.wav"), Reason.CORRUPT_AUDIO)
    failed(probe(s3.root / "truncated.wav"), Reason.TRUNCATED_AUDIO)
    assert "denied" in failed(decode(s3.root / "denied.wav"), Reason.PERMISSION_DENIED).detail


def test_a_segment_of_a_long_object_reads_only_about_its_own_bytes(s3):
    data = tone_bytes(300.0)  # 9.6 MB of 16-bit PCM
    long = s3.put(s3.root / "long.wav", data)
    s3.proxy.clear()
    segment = decode(long, 150.0, 152.0)
    assert segment.duration_s == pytest.approx(2.0) and segment.start_s == pytest.approx(150.0)
    served = sum(e.size for e in s3.proxy.log if e.method == "GET" and "long.wav" in e.path)
    assert 2 * RATE * 2 <= served < len(data) / 20  # the 64 kB of the segment, headers and read-ahead


def test_transient_failures_are_retried_and_then_reported_as_transient(s3):
    clip = s3.put(s3.root / "clip.wav", tone_bytes(1.0))
    once = [s3.proxy.fail("HEAD", "clip.wav", 500, "InternalError", times=1),
            s3.proxy.fail("GET", "clip.wav", 503, "SlowDown", times=1)]
    assert decode(clip).duration_s == pytest.approx(1.0)
    assert [f.hits for f in once] == [1, 1]  # each failed once and was retried

    s3.proxy.fail("GET", "clip.wav", 503, "SlowDown")  # now every read: still failing after retries
    detail = failed(decode(clip), Reason.STORAGE_UNAVAILABLE).detail
    assert "clip.wav" in detail and "retried" in detail


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_ffmpeg_only_objects_go_through_a_bounded_local_cache_that_is_cleaned_up(s3, tmp_path):
    sizes = {}
    for name in ("a.m4a", "b.m4a"):
        wav, m4a = tmp_path / f"{name}.wav", tmp_path / name
        noise = np.random.default_rng(0).uniform(-0.3, 0.3, 20 * 44_100).astype(np.float32)
        sf.write(wav, noise, 44_100)  # noise: well over 64 kB as AAC
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
        sizes[name] = m4a.stat().st_size
        s3.put(s3.root / name, m4a.read_bytes())
    storage.configure(s3.settings(cache_bytes=max(sizes.values()) + 1))  # room for one copy
    cache = local_copies._cache.root

    def copies():
        return sorted(p.name for p in cache.rglob("*.m4a"))

    s3.proxy.clear()
    assert decode(s3.root / "a.m4a", 1.0, 2.0).duration_s == pytest.approx(1.0, abs=0.05)
    assert decode(s3.root / "a.m4a", 3.0, 4.0).duration_s == pytest.approx(1.0, abs=0.05)
    # Header checks read 64 kB ranges; a download reads the whole object.
    downloads = [e for e in s3.proxy.log if e.method == "GET" and "a.m4a" in e.path and e.size == sizes["a.m4a"]]
    assert len(downloads) == 1 and copies() == ["a.m4a"]  # the second segment used the copy
    assert probe(s3.root / "b.m4a").duration_s == pytest.approx(20.0, abs=0.1)
    assert copies() == ["b.m4a"]  # over the limit: the idle copy of a.m4a went
    storage.clear_local_cache()
    assert copies() == []


def test_manifests_on_object_storage(s3):
    s3.put(s3.root / "sets/m.parquet", b"not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read_manifest(str(s3.root / "sets/m.parquet"))
    with pytest.raises(ManifestError, match="no bucket 'nowhere'"):
        read_manifest("s3://nowhere/m.parquet")
    with pytest.raises(ManifestError, match="only local paths and s3:// URLs"):
        read_manifest("https://example.com/m.parquet")
    import pyarrow as pa

    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": ["a"], "audio": ["a.wav"]}), buffer)
    s3.put(s3.root / "sets/good.parquet", buffer.getvalue().to_pybytes())
    manifest = read_manifest(str(s3.root / "sets/good.parquet"))
    assert manifest.ids == ["a"] and manifest.base_dir == s3.root / "sets"


# --- the output folder without rename -------------------------------------------------------------

COLUMNS = {"caption": "string"}


def result(i: int, error: str | None = None) -> ItemResult:
    item = Item(i, f"id{i}", "s3://data/a.wav", 0, 1, 0.0, 1.0)
    if error:
        return ItemResult(item, "error", error=error, error_detail="x")
    return ItemResult(item, "ok", start_s=0.0, end_s=1.0, silent=False, raw={"caption": "x"}, parsed={"caption": "x"})


def test_readers_see_committed_parts_only_and_open_sweeps_the_rest(s3):
    out = OutputDir(str(s3.root / "out"))
    out.open("fp", {}, restart=False)
    first = out.commit([result(0), result(1)], COLUMNS, {"valid_frames": 3})
    out.commit([result(2)], COLUMNS, None)
    # What a killed run can leave: a part written without its commit record (here a second copy of
    # id0 and id1), and a commit record whose part is gone.
    orphan = s3.put(out.parts / "part-0123456789abcdef0123-feedface0000.parquet", s3.get(first))
    s3.put(out.commits / "part-00000000000000000000-000000000000.parquet.json", b"{}")
    assert out.committed() == ({"id0#0", "id1#0", "id2#0"}, {"id0", "id1", "id2"})
    assert out.segments(COLUMNS).column("key").to_pylist() == ["id0#0", "id1#0", "id2#0"]
    assert list(out.part_stats()) == [{"valid_frames": 3}]

    OutputDir(str(s3.root / "out")).open("fp", {}, restart=False)
    assert orphan.name not in s3.keys(out.parts) and len(s3.keys(out.parts)) == 2
    assert s3.keys(out.commits) == sorted(f"{p}.json" for p in s3.keys(out.parts))


def test_a_commit_whose_record_cannot_be_written_leaves_nothing_committed(s3):
    out = OutputDir(str(s3.root / "out"))
    out.open("fp", {}, restart=False)
    s3.proxy.fail("POST", "/commits/", 403, "AccessDenied")  # the record's upload is refused
    s3.proxy.fail("PUT", "/commits/", 403, "AccessDenied")
    with pytest.raises(storage.AccessDenied):
        out.commit([result(0)], COLUMNS, None)
    s3.proxy.clear()
    assert out.committed() == (set(), set()) and s3.keys(out.parts) == []
    out.commit([result(0)], COLUMNS, None)  # the same items again, once
    assert out.committed()[0] == {"id0#0"}


def test_transient_failures_are_not_committed_work_and_success_says_so(s3):
    out = OutputDir(str(s3.root / "out"))
    out.open("fp", {}, restart=False)
    out.commit([result(0), result(1, error="storage_unavailable")], COLUMNS, None)
    assert out.committed() == ({"id0#0"}, {"id0"})  # a rerun plans id1 again
    segments = out.segments(COLUMNS)
    out.write_final(segments, segments, {}, {"manifest_digest": "d", "fingerprint": "fp"})
    assert json.loads(s3.get(out.path / "_SUCCESS"))["transient_failures"] == 1
    assert not out.completed_for("d", "fp")  # so the rerun is not a no-op

    out.commit([result(1)], COLUMNS, None)  # the rerun's lasting result replaces the transient one
    segments = out.segments(COLUMNS)
    assert [(r["key"], r["status"]) for r in segments.to_pylist()] == [("id0#0", "ok"), ("id1#0", "ok")]
    s3.proxy.clear()
    out.write_final(segments, segments, {}, {"manifest_digest": "d", "fingerprint": "fp"})
    assert out.completed_for("d", "fp")
    uploads = [e.path for e in s3.writes() if e.method == "PUT"]
    assert "/_SUCCESS" in uploads[-1]  # written last


def test_one_listing_per_prefix_gives_each_object_its_version(s3):
    """Versions by listing (one request per 1,000 objects) equal versions by HEAD per object, so
    results committed before compare as they did; a prefix that cannot be listed is asked object by
    object."""
    import pyarrow as pa

    from pipeline.intake.sources import Sources

    for name, data in (("a.wav", b"one"), ("b.wav", b"two!"), ("sub/c.wav", b"three")):
        s3.put(s3.root / "audio" / name, data)
    s3.put(s3.root / "audio" / "a.wav", b"uno")  # uploaded again: same size, another ETag
    values = ["a.wav", "b.wav", "sub/c.wav", "missing.wav", "sub"]
    s3.proxy.clear()
    found = Sources(None, verify_content=False).of(pa.array(values), s3.root / "audio")
    lists = [e for e in s3.proxy.log if e.method == "GET" and "list-type=2" in e.path]
    heads = [e for e in s3.proxy.log if e.method == "HEAD"]
    assert len(lists) == 2 and not heads  # audio/ and audio/sub/: one listing each, no HEAD at all
    for value, version in zip(values, found.version.to_pylist()):
        assert version == storage.version(s3.root / "audio" / value), value
    assert storage.list_versions(s3.root / "nothing-here") == ([], [])
