"""Intake's side of reliability, without Ray: every reason has a kind, storage errors are
transient rather than a verdict on the file, ffmpeg gets a say before a file is called corrupt,
and ffmpeg opens audio containers only."""

import errno
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from pipeline import storage
from pipeline.intake.audio import decode, probe
from pipeline.reasons import KIND, RETRIED_IN_RUN, TRANSIENT, Kind, Reason, parse_reasons

HAS_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def test_every_reason_has_a_kind():
    assert set(KIND) == set(Reason)
    assert TRANSIENT == {Reason.STORAGE_UNAVAILABLE, Reason.READ_ERROR}
    assert RETRIED_IN_RUN == TRANSIENT | {r for r in Reason if KIND[r] is Kind.PROCESSING}
    assert {Reason.WORKER_LOST, Reason.MODEL_ERROR, Reason.OUT_OF_MEMORY, Reason.TIMED_OUT,
            Reason.DECODE_CRASHED} <= RETRIED_IN_RUN
    assert Reason.CORRUPT_AUDIO not in RETRIED_IN_RUN
    assert parse_reasons("model_error, missing_file") == {Reason.MODEL_ERROR, Reason.MISSING_FILE}
    with pytest.raises(ValueError, match="unknown reason"):
        parse_reasons("model_eror")


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE, errno.ETIMEDOUT])
def test_a_failing_file_system_is_a_transient_read_error(write_tone, code):
    path = write_tone("clip.wav", seconds=1.0)

    def failing(where):
        raise OSError(code, "simulated", str(where))

    storage.inject_read_faults(failing)
    try:
        for result in (decode(path), probe(path)):
            assert result.reason == Reason.READ_ERROR and errno.errorcode[code] in result.detail, result
    finally:
        storage.inject_read_faults(None)


def test_an_io_error_in_the_middle_of_a_decode_is_not_corruption(write_tone, monkeypatch):
    path = write_tone("long.wav", seconds=20.0)
    real = storage.QuietLocalFile.readinto
    calls = []

    def flaky(self, buffer):  # the header reads fine, the audio does not
        calls.append(len(buffer))
        if len(calls) > 3:
            self.error = OSError(errno.EIO, "Input/output error")
            return 0
        return real(self, buffer)

    monkeypatch.setattr(storage.QuietLocalFile, "readinto", flaky)
    result = decode(path)
    assert result.reason == Reason.READ_ERROR, result


@pytest.mark.skipif(not HAS_FFMPEG, reason="needs ffmpeg")
def test_speex_in_ogg_is_decoded_by_ffmpeg_not_called_corrupt(tmp_path):
    path = tmp_path / "speech.ogg"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=f=440:d=2",
                    "-ar", "16000", "-c:a", "libspeex", str(path)], check=True)
    with pytest.raises(Exception):
        sf.info(str(path))  # libsndfile refuses it
    decoded = decode(path)
    assert decoded.duration_s == pytest.approx(2.0, abs=0.1), decoded
    assert probe(path).duration_s == pytest.approx(2.0, abs=0.1)


@pytest.mark.skipif(not HAS_FFMPEG, reason="needs ffmpeg")
def test_garbage_is_still_corrupt_when_ffmpeg_cannot_decode_it_either(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    assert decode(path).reason == Reason.CORRUPT_AUDIO and "not a readable WAV" in decode(path).detail


@pytest.mark.skipif(not HAS_FFMPEG, reason="needs ffmpeg")
@pytest.mark.parametrize("name, text", [
    # An HLS playlist with an absolute path outside the audio folder, and a concat script with a
    # relative one: without a demuxer whitelist ffmpeg decodes the file they name.
    ("playlist.m4a", "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2,\n{secret}\n#EXT-X-ENDLIST\n"),
    ("concat.m4a", "ffconcat version 1.0\nfile '{neighbour}'\n"),
])
def test_ffmpeg_opens_audio_containers_only(tmp_path, name, text):
    secret = tmp_path / "outside" / "secret.aac"
    secret.parent.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=f=440:d=2", "-c:a", "aac",
                    str(secret)], check=True)
    folder = tmp_path / "audio"
    folder.mkdir()
    shutil.copy(secret, folder / "neighbour.aac")
    path = folder / name
    path.write_text(text.format(secret=secret, neighbour="neighbour.aac"))
    for result in (decode(path), probe(path)):
        assert result.reason in (Reason.UNSUPPORTED_CODEC, Reason.CORRUPT_AUDIO), result


def test_the_manifest_digest_is_of_the_bytes_that_were_read(tmp_path, monkeypatch):
    """A manifest rewritten between its read and its hashing must not let _SUCCESS describe rows
    that were never processed: the digest comes from the very bytes parsed."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.intake import manifest_checks as manifest_module

    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a"], "audio": ["a.wav"]}), path)
    read = path.read_bytes()
    real = storage.read_bytes

    def read_then_rewrite(where):
        data = real(where)
        pq.write_table(pa.table({"id": ["a", "b"], "audio": ["a.wav", "b.wav"]}), path)  # rewritten meanwhile
        return data

    monkeypatch.setattr(storage, "read_bytes", read_then_rewrite)
    found = manifest_module.read_manifest(path)
    assert found.ids == ["a"] and found.digest == hashlib.sha256(read).hexdigest()[:len(found.digest)]
