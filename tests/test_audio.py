"""Audio intake: every format decodes to 16 kHz mono float32, and every bad input becomes a Failure
with the right reason code instead of an exception."""

import builtins
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.intake import audio
from pipeline.intake.audio import AudioInfo, DecodedAudio, decode, probe, resolve_path
from pipeline.reasons import Failure, Reason
from pipeline.shapes import SAMPLE_RATE

HAS_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * rate / len(samples)


def ok(result) -> DecodedAudio:
    assert isinstance(result, DecodedAudio), result
    assert result.samples.dtype == np.float32 and result.samples.ndim == 1
    assert np.isfinite(result.samples).all()
    return result


def failed(result, reason: Reason) -> Failure:
    assert isinstance(result, Failure), f"expected {reason}, got a decode of {result}"
    assert result.reason == reason, result
    assert result.detail
    return result


FORMATS = {
    "pcm_u8.wav": {"subtype": "PCM_U8"},
    "pcm_16.wav": {"subtype": "PCM_16"},
    "pcm_24.wav": {"subtype": "PCM_24"},
    "pcm_32.wav": {"subtype": "PCM_32"},
    "float.wav": {"subtype": "FLOAT"},
    "tone.flac": {"subtype": "PCM_16"},
    "vorbis.ogg": {"format": "OGG", "subtype": "VORBIS"},
    "tone.opus": {"format": "OGG", "subtype": "OPUS"},
    "tone.mp3": {"format": "MP3"},
}


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_decodes_to_16k_mono(write_tone, name):
    path = write_tone(name, seconds=2.0, freq=440.0, **FORMATS[name])
    decoded = ok(decode(path))
    assert decoded.duration_s == pytest.approx(2.0, abs=0.03)
    assert dominant_hz(decoded.samples) == pytest.approx(440.0, abs=2)
    assert decoded.source_rate == 16_000 and decoded.source_channels == 1
    assert decoded.start_s == 0 and not decoded.silent
    info = probe(path)
    assert isinstance(info, AudioInfo), info
    assert info.duration_s == pytest.approx(2.0, abs=0.03) and info.sample_rate == 16_000


def test_stereo_is_the_mean_of_its_channels(tmp_path):
    left = tone(1.0, 16_000, 440.0, amplitude=0.5)
    sf.write(tmp_path / "half.wav", np.stack([left, np.zeros_like(left)], axis=1), 16_000)
    decoded = ok(decode(tmp_path / "half.wav"))
    assert decoded.source_channels == 2
    assert np.max(np.abs(decoded.samples)) == pytest.approx(0.25, abs=0.01)  # not the sum, not one side
    sf.write(tmp_path / "opposite.wav", np.stack([left, -left], axis=1), 16_000)
    assert ok(decode(tmp_path / "opposite.wav")).silent  # phases cancel: the mean is silence


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_resampling_keeps_duration_and_pitch(write_tone, rate):
    path = write_tone(f"tone_{rate}.flac", seconds=2.0, rate=rate, channels=2, freq=1000.0)
    decoded = ok(decode(path))
    assert decoded.source_rate == rate and decoded.source_channels == 2
    assert len(decoded.samples) == pytest.approx(2 * SAMPLE_RATE, abs=2)
    assert dominant_hz(decoded.samples) == pytest.approx(1000.0, abs=2)


def two_tone_file(tmp_path, name, **options) -> Path:
    """10 s at 44.1 kHz: 440 Hz for the first 5 s, 880 Hz for the last 5 s."""
    samples = np.concatenate([tone(5.0, 44_100, 440.0), tone(5.0, 44_100, 880.0)])
    sf.write(tmp_path / name, samples, 44_100, **options)
    return tmp_path / name


@pytest.mark.parametrize("name,options", [
    ("long.wav", {}), ("long.flac", {}), ("long.ogg", {"subtype": "VORBIS"}), ("long.mp3", {}),
])
def test_region_decode_seeks_to_the_region(tmp_path, monkeypatch, name, options):
    path = two_tone_file(tmp_path, name, **options)
    frames_read = []
    real_read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, *a, **k: frames_read.append(
        len(result := real_read(self, *a, **k))) or result)
    late = ok(decode(path, start_s=6.0, end_s=8.0))
    assert late.start_s == pytest.approx(6.0, abs=1e-3)
    assert late.duration_s == pytest.approx(2.0, abs=0.01)
    assert dominant_hz(late.samples) == pytest.approx(880.0, abs=3)
    assert sum(frames_read) <= 2 * 44_100  # only the region was decoded, not the 6 s before it
    early = ok(decode(path, start_s=1.0, end_s=3.0))
    assert dominant_hz(early.samples) == pytest.approx(440.0, abs=3)


def test_region_past_the_end(tmp_path):
    path = two_tone_file(tmp_path, "long.flac")
    assert ok(decode(path, start_s=9.0, end_s=12.0)).duration_s == pytest.approx(1.0, abs=0.01)
    assert "after the end" in failed(decode(path, start_s=11.0, end_s=12.0), Reason.EMPTY_AUDIO).detail
    failed(decode(path, start_s=3.0, end_s=3.0), Reason.EMPTY_AUDIO)


def test_missing_file(tmp_path):
    failed(decode(tmp_path / "nope.wav"), Reason.MISSING_FILE)
    failed(probe(tmp_path / "nope.wav"), Reason.MISSING_FILE)


def test_folder_and_pipe_are_not_files(tmp_path):
    (tmp_path / "folder.wav").mkdir()
    assert "folder" in failed(decode(tmp_path / "folder.wav"), Reason.NOT_A_FILE).detail
    os.mkfifo(tmp_path / "pipe.wav")  # reading it would block the worker forever
    failed(decode(tmp_path / "pipe.wav"), Reason.NOT_A_FILE)
    failed(probe(tmp_path / "pipe.wav"), Reason.NOT_A_FILE)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_by_mode(write_tone):
    path = write_tone("locked.wav")
    path.chmod(0)
    try:
        failed(decode(path), Reason.PERMISSION_DENIED)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_permission_denied_when_open_refuses(write_tone, monkeypatch):
    # Runs as root too: the operating system's refusal is simulated at open().
    path = write_tone("locked.wav")
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    failed(decode(path), Reason.PERMISSION_DENIED)
    failed(probe(path), Reason.PERMISSION_DENIED)


def test_empty_files(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    failed(decode(tmp_path / "zero.wav"), Reason.EMPTY_AUDIO)
    sf.write(tmp_path / "no_frames.wav", np.zeros(0, np.float32), 16_000)
    failed(decode(tmp_path / "no_frames.wav"), Reason.EMPTY_AUDIO)
    failed(probe(tmp_path / "no_frames.wav"), Reason.EMPTY_AUDIO)


@pytest.mark.parametrize("name", ["noise.wav", "noise.flac", "noise.ogg", "noise.opus", "noise.mp3"])
def test_garbage_with_an_audio_extension_is_corrupt(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    assert name in failed(decode(tmp_path / name), Reason.CORRUPT_AUDIO).detail
    failed(probe(tmp_path / name), Reason.CORRUPT_AUDIO)


def cut(path: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_truncated_wav_names_both_lengths(write_tone):
    path = cut(write_tone("cut.wav", seconds=10.0))
    detail = failed(decode(path), Reason.TRUNCATED_AUDIO).detail
    assert "10.00 s" in detail and "5.00 s" in detail
    failed(probe(path), Reason.TRUNCATED_AUDIO)  # visible from the header alone
    failed(decode(path, start_s=1.0, end_s=2.0), Reason.TRUNCATED_AUDIO)


@pytest.mark.parametrize("name,options", [
    ("cut.flac", {}), ("cut.ogg", {"subtype": "VORBIS"}), ("cut.opus", {"format": "OGG", "subtype": "OPUS"}),
    ("cut.mp3", {}),
])
def test_truncated_compressed_files(write_tone, name, options):
    path = cut(write_tone(name, seconds=10.0, **options))
    detail = failed(decode(path), Reason.TRUNCATED_AUDIO).detail
    assert "truncated" in detail


def test_a_text_file_is_not_audio(tmp_path):
    (tmp_path / "notes.txt").write_text("these are my notes\n" * 50)
    failed(decode(tmp_path / "notes.txt"), Reason.UNSUPPORTED_CODEC)
    (tmp_path / "notes.wav").write_text("these are my notes\n" * 50)
    assert "WAV" in failed(decode(tmp_path / "notes.wav"), Reason.CORRUPT_AUDIO).detail


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_wav(tmp_path, bad):
    samples = tone(1.0, 16_000)
    samples[8_000] = bad
    sf.write(tmp_path / "bad.wav", samples, 16_000, subtype="FLOAT")
    assert "0.500 s" in failed(decode(tmp_path / "bad.wav"), Reason.NON_FINITE_SAMPLES).detail


def test_silence_is_flagged_not_failed(write_tone, tmp_path):
    quiet = write_tone("quiet.wav", amplitude=10 ** (-70 / 20), subtype="FLOAT")
    assert ok(decode(quiet)).silent
    assert not ok(decode(quiet, silence_dbfs=-80)).silent
    sf.write(tmp_path / "zeros.wav", np.zeros(16_000, np.float32), 16_000)
    assert ok(decode(tmp_path / "zeros.wav")).silent
    assert not ok(decode(write_tone("loud.wav", amplitude=0.01))).silent  # -40 dBFS


# --- paths ---------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_manifest_folder_or_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    assert resolve_path("a/b.wav", tmp_path, None) == tmp_path.resolve() / "a/b.wav"
    assert resolve_path("a/b.wav", tmp_path, tmp_path / "root") == (tmp_path / "root").resolve() / "a/b.wav"
    assert resolve_path(str(tmp_path / "abs.wav"), Path("/elsewhere"), None) == tmp_path.resolve() / "abs.wav"


def test_paths_are_data(tmp_path):
    # No ~ or variable expansion: these are ordinary (odd) relative names.
    assert resolve_path("~/x.wav", tmp_path, None) == tmp_path.resolve() / "~" / "x.wav"
    assert resolve_path("$HOME/x.wav", tmp_path, None) == tmp_path.resolve() / "$HOME" / "x.wav"
    assert resolve_path("$(touch pwned).wav", tmp_path, None) == tmp_path.resolve() / "$(touch pwned).wav"
    assert not (tmp_path / "pwned").exists()
    failed(resolve_path("a\x00b.wav", tmp_path, None), Reason.NOT_A_FILE)
    for url in ("http://example.com/a.wav", "file:///etc/passwd", "gs://bucket/a.wav"):
        assert "URL" in failed(resolve_path(url, tmp_path, None), Reason.NOT_A_FILE).detail
    # s3:// is object storage, read through pipeline.storage (tests/storage).
    assert str(resolve_path("s3://bucket/a.wav", tmp_path, None)) == "s3://bucket/a.wav"
    failed(resolve_path("", tmp_path, None), Reason.NOT_A_FILE)


def test_paths_outside_the_audio_root_are_rejected(tmp_path, write_tone):
    root = tmp_path / "root"
    secret = write_tone("secret.wav")
    write_tone("root/inside.wav")
    (root / "escape.wav").symlink_to(secret)
    (root / "alias.wav").symlink_to(root / "inside.wav")
    failed(resolve_path("../secret.wav", tmp_path, root), Reason.OUTSIDE_AUDIO_ROOT)
    failed(resolve_path("sub/../../secret.wav", tmp_path, root), Reason.OUTSIDE_AUDIO_ROOT)
    failed(resolve_path(str(secret), tmp_path, root), Reason.OUTSIDE_AUDIO_ROOT)
    failed(resolve_path("escape.wav", tmp_path, root), Reason.OUTSIDE_AUDIO_ROOT)
    assert resolve_path("alias.wav", tmp_path, root) == (root / "inside.wav").resolve()
    assert resolve_path(str(root / "inside.wav"), tmp_path, root) == (root / "inside.wav").resolve()
    # A root that is itself a symlink still contains its own files.
    (tmp_path / "root_link").symlink_to(root)
    assert isinstance(resolve_path("inside.wav", tmp_path, tmp_path / "root_link"), Path)


# --- ffmpeg fallback -------------------------------------------------------------------------------

M4A_HEADER = b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A isommp42" + bytes(64)


def test_decoder_unavailable_without_ffmpeg(tmp_path, monkeypatch):
    # shutil itself: audio (choosing a reader) and audio_ffmpeg (running it) both look ffmpeg up.
    monkeypatch.setattr(shutil, "which", lambda name: None)
    (tmp_path / "clip.m4a").write_bytes(M4A_HEADER)
    assert "install ffmpeg" in failed(decode(tmp_path / "clip.m4a"), Reason.DECODER_UNAVAILABLE).detail
    failed(probe(tmp_path / "clip.m4a"), Reason.DECODER_UNAVAILABLE)
    # Recognised by its content too: an M4A renamed to .wav is not "corrupt".
    (tmp_path / "renamed.wav").write_bytes(M4A_HEADER)
    failed(decode(tmp_path / "renamed.wav"), Reason.DECODER_UNAVAILABLE)
    # Without ffmpeg, an unknown container is unsupported and the detail says what would help.
    (tmp_path / "clip.xyz").write_bytes(bytes(range(256)) * 10)
    assert "ffmpeg" in failed(decode(tmp_path / "clip.xyz"), Reason.UNSUPPORTED_CODEC).detail


FAKE_TOOL = """#!{python}
import json, sys, numpy as np
tool = sys.argv[0].rsplit("/", 1)[-1]
with open({log!r}, "a") as log:
    log.write(json.dumps([tool] + sys.argv[1:]) + "\\n")
if tool == "ffprobe":
    print(json.dumps({{"streams": [{{"codec_name": "aac", "sample_rate": "44100", "channels": 2,
                                   "duration": "3.0"}}], "format": {{"format_name": "mov,mp4,m4a"}}}}))
else:
    seconds = float(sys.argv[sys.argv.index("-t") + 1]) if "-t" in sys.argv else 3.0
    t = np.arange(round(seconds * 16000)) / 16000
    sys.stdout.buffer.write((0.5 * np.sin(2 * np.pi * 1000 * t)).astype("<f4").tobytes())
"""


def test_ffmpeg_is_called_safely(tmp_path, monkeypatch):
    """A stand-in ffmpeg records its arguments: a list (no shell), no stdin, file protocol only."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    for tool in ("ffmpeg", "ffprobe"):
        (bin_dir / tool).write_text(FAKE_TOOL.format(python=sys.executable, log=str(log)))
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "-i evil; rm -rf ~.m4a"  # a hostile name stays one argument, one file
    path.write_bytes(M4A_HEADER)
    info = probe(path)
    assert info == AudioInfo(3.0, 44_100, 2, 132_300, "mov,mp4,m4a/aac")
    decoded = ok(decode(path, start_s=1.0, end_s=2.5))
    assert decoded.duration_s == pytest.approx(1.5) and decoded.start_s == 1.0
    assert (decoded.source_rate, decoded.source_channels) == (44_100, 2)
    assert dominant_hz(decoded.samples) == pytest.approx(1000, abs=2)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    ffmpeg = next(c for c in calls if c[0] == "ffmpeg")
    assert "-nostdin" in ffmpeg
    for call in calls:
        assert call[call.index("-protocol_whitelist") + 1] == "file"
        assert f"file:{path}" in call
    assert ffmpeg[ffmpeg.index("-ss") + 1] == "1.000000" and ffmpeg[ffmpeg.index("-t") + 1] == "1.500000"
    assert ffmpeg.index("-ss") < ffmpeg.index("-i")  # input seeking: no decode up to the region


@pytest.mark.skipif(not HAS_FFMPEG, reason="ffmpeg is not installed; the fallback is covered by the stand-in test")
def test_real_m4a_through_ffmpeg(tmp_path, write_tone):
    wav = write_tone("source.wav", seconds=3.0, rate=44_100, channels=2, freq=1000.0)
    m4a = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", str(m4a)],
                   check=True)
    info = probe(m4a)
    assert isinstance(info, AudioInfo) and info.duration_s == pytest.approx(3.0, abs=0.1)
    decoded = ok(decode(m4a))
    assert decoded.duration_s == pytest.approx(3.0, abs=0.1)
    assert dominant_hz(decoded.samples) == pytest.approx(1000, abs=3)
    assert ok(decode(m4a, 1.0, 2.0)).duration_s == pytest.approx(1.0, abs=0.05)
    failed(decode(cut(m4a, 0.3)), Reason.CORRUPT_AUDIO)


# --- never raises -----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), suffix=st.sampled_from([".wav", ".flac", ".ogg", ".mp3", ".m4a", ".bin"]))
def test_arbitrary_bytes_never_raise(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    assert isinstance(decode(path), (Failure, DecodedAudio))
    assert isinstance(probe(path), (Failure, AudioInfo))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 1.0), name=st.sampled_from(["f.wav", "f.flac", "f.ogg", "f.mp3"]))
def test_cutting_a_file_anywhere_never_raises(write_tone, fraction, name):
    path = write_tone(name, seconds=2.0, rate=22_050, channels=2)
    result = decode(cut(path, fraction))
    if isinstance(result, Failure):
        assert result.reason in (Reason.TRUNCATED_AUDIO, Reason.CORRUPT_AUDIO, Reason.EMPTY_AUDIO), result


def test_an_unexpected_decoder_error_becomes_a_failure(write_tone, monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(audio.soxr, "ResampleStream", broken)
    detail = failed(decode(write_tone("tone.wav", rate=44_100)), Reason.CORRUPT_AUDIO).detail
    assert "MemoryError" in detail
