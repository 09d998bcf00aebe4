"""The ffmpeg fallback: probe and decode the containers libsndfile cannot read (AAC/M4A, WMA,
WebM...) by running ffprobe and ffmpeg on one local file at a time.

A missing ffmpeg, a timeout or ffmpeg's own error message comes back as a Failure with a reason a
user can act on; anything else that goes wrong is caught by audio.probe and audio.decode.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np

from pipeline.intake.formats import AUDIO_EXTENSIONS, AudioInfo
from pipeline.reasons import Failure, Reason
from pipeline.shapes import SAMPLE_RATE

_FFMPEG_TIMEOUT_S = 600  # a pathological file must not hang a worker forever
# The demuxers ffmpeg may use: audio containers only. Without this list ffmpeg picks a demuxer by
# content, and playlist or script formats (HLS, concat, ffmetadata...) name other files to open:
# a crafted "audio" file could make a worker read files outside the audio root.
AUDIO_DEMUXERS = ("aac", "ac3", "aiff", "amr", "amrnb", "amrwb", "ape", "asf", "au", "caf", "dsf", "dts",
                  "eac3", "flac", "loas", "matroska", "mov", "mp3", "mpc", "mpc8", "ogg", "tta", "voc", "w64",
                  "wav", "wv", "xwma")


def decode_ffmpeg(path: Path, start_s: float, end_s: float | None):
    """(samples at SAMPLE_RATE, source rate, source channels, start_s) for [start_s, end_s), or a Failure."""
    info = probe_ffmpeg(path)  # also names the problem precisely when the file is not audio
    if isinstance(info, Failure):
        return info
    if info.frames and start_s >= info.duration_s:
        return Failure(Reason.EMPTY_AUDIO, f"the region from {start_s:.2f} s starts after the end of "
                                           f"{path.name} ({info.duration_s:.2f} s)")
    args = ["-ss", f"{start_s:.6f}"] if start_s > 0 else []  # before -i: seek, do not decode up to it
    args += ["-i", _ffmpeg_input(path)]
    if end_s is not None:
        args += ["-t", f"{end_s - start_s:.6f}"]
    args += ["-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    done = _run_ffmpeg("ffmpeg", path, args)
    if isinstance(done, Failure):
        return done
    samples = np.frombuffer(done[: len(done) // 4 * 4], dtype="<f4").astype(np.float32)
    return samples, info.sample_rate, info.channels, start_s


def probe_ffmpeg(path: Path) -> AudioInfo | Failure:
    args = ["-select_streams", "a:0", "-show_entries",
            "stream=codec_name,sample_rate,channels,duration:format=format_name,duration",
            "-of", "json", _ffmpeg_input(path)]
    out = _run_ffmpeg("ffprobe", path, args)
    if isinstance(out, Failure):
        return out
    data = json.loads(out or b"{}")
    streams, container = data.get("streams") or [], data.get("format") or {}
    if not streams:
        return Failure(Reason.UNSUPPORTED_CODEC, f"{path.name} has no audio stream")
    stream = streams[0]
    if stream.get("codec_name") in (None, "", "none", "unknown"):
        return Failure(Reason.UNSUPPORTED_CODEC, f"{path.name} uses an audio codec ffmpeg does not know")
    rate, channels = int(stream.get("sample_rate") or 0), int(stream.get("channels") or 0)
    if rate <= 0:
        return Failure(Reason.CORRUPT_AUDIO, f"{path.name}: ffprobe finds no sample rate")
    duration = float(stream.get("duration") or container.get("duration") or "nan")
    if not math.isfinite(duration):  # raw streams may not say; counting decoded samples always works
        decoded = _run_ffmpeg("ffmpeg", path, ["-i", _ffmpeg_input(path), "-vn", "-ac", "1", "-ar",
                                               str(rate), "-f", "f32le", "pipe:1"])
        if isinstance(decoded, Failure):
            return decoded
        duration = len(decoded) / 4 / rate
    if duration <= 0:
        return Failure(Reason.EMPTY_AUDIO, f"{path.name} holds no samples")
    return AudioInfo(duration, rate, channels, round(duration * rate),
                     f"{container.get('format_name', '?')}/{stream.get('codec_name', '?')}")


def _ffmpeg_input(path: Path) -> str:
    # "file:" keeps a name such as "-x.m4a" or "concat:a|b" from being read as an option or protocol.
    return f"file:{path.absolute()}"


def _run_ffmpeg(tool: str, path: Path, args: list[str]) -> bytes | Failure:
    """Run ffmpeg or ffprobe on one local file: an argument list, never a shell; no stdin; only
    the file protocol and audio demuxers, so a crafted container cannot make it open URLs or other
    files."""
    exe = shutil.which(tool)
    if exe is None:
        return Failure(Reason.DECODER_UNAVAILABLE,
                       f"{path.name} needs ffmpeg ({path.suffix or 'this container'} is not a format "
                       f"libsndfile reads) and {tool} is not on PATH; install ffmpeg (e.g. apt-get "
                       f"install ffmpeg) or convert the file to FLAC or WAV")
    log = ["-v", "error"] if tool == "ffprobe" else ["-nostdin", "-hide_banner", "-loglevel", "error"]
    try:
        done = subprocess.run([exe, *log, "-protocol_whitelist", "file", "-format_whitelist", ",".join(AUDIO_DEMUXERS),
                               *args], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=_FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return Failure(Reason.CORRUPT_AUDIO,
                       f"{tool} did not finish reading {path.name} in {_FFMPEG_TIMEOUT_S} s")
    except OSError as exc:
        return Failure(Reason.DECODER_UNAVAILABLE, f"cannot run {exe}: {exc}")
    if done.returncode == 0:
        return done.stdout
    text = done.stderr.decode("utf-8", "replace").strip()
    last = text.splitlines()[-1] if text else f"exit status {done.returncode}"
    lower = text.lower()
    if "permission denied" in lower:
        return Failure(Reason.PERMISSION_DENIED, f"{tool} cannot read {path}: {last}")
    if "not currently supported" in lower or ("decoder" in lower and "not found" in lower):
        return Failure(Reason.UNSUPPORTED_CODEC, f"{path.name} uses a codec ffmpeg cannot decode: {last}")
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        return Failure(Reason.CORRUPT_AUDIO, f"{tool} cannot decode {path.name}: {last}")
    return Failure(Reason.UNSUPPORTED_CODEC, f"{path.name} is not audio that {tool} recognises: {last}")
