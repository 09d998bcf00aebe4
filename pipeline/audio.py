"""Audio intake: resolve manifest paths safely, read headers, decode to 16 kHz mono float32.

Nothing here raises for bad input. Every problem with a path or a file comes back as a Failure
(a reason code and a detail naming the problem), so one bad file becomes one error row and never
takes its batch down. libsndfile (through soundfile) reads WAV, FLAC, OGG/Vorbis, Opus, MP3 and
AIFF; other containers (AAC/M4A, WMA, WebM...) go to ffmpeg when it is installed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from pipeline.reasons import Failure, Reason
from pipeline.shapes import SAMPLE_RATE

# Containers libsndfile reads itself: garbage under these names is a damaged file, not an unknown format.
SNDFILE_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".mp2",
    ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64",
})
# Containers only ffmpeg decodes.
FFMPEG_EXTENSIONS = frozenset({
    ".m4a", ".m4b", ".mp4", ".aac", ".wma", ".asf", ".webm", ".mka", ".amr", ".ac3", ".3gp",
})
AUDIO_EXTENSIONS = SNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BLOCK_FRAMES = 1 << 16  # decode in blocks so a long stereo 48 kHz file never sits in memory whole
_FFMPEG_TIMEOUT_S = 600  # a pathological file must not hang a worker forever
_OGG_MAX_PAGE = 27 + 255 + 255 * 255
# Encoder padding and rounding make a decode differ from the header by milliseconds; a file cut
# short misses far more. Shortfalls beyond this are reported as truncation.
_TRUNCATION_TOLERANCE_S = 0.1
_TRUNCATION_TOLERANCE_FRACTION = 0.01
_USE_FFMPEG = object()  # libsndfile cannot read the container; ffmpeg may


@dataclass(frozen=True)
class AudioInfo:
    """What the headers say, read without decoding the audio."""

    duration_s: float
    sample_rate: int
    channels: int
    frames: int
    format: str  # e.g. "WAV/PCM_16", "OGG/OPUS", or ffprobe's "mov,mp4,m4a,3gp,3g2,mj2/aac"


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, SAMPLE_RATE, finite
    source_rate: int
    source_channels: int
    start_s: float  # where in the file these samples start (0 for a whole-file decode)
    silent: bool  # peak below the silence threshold: flagged, still annotated

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def resolve_path(path: str, base_dir: Path, audio_root: Path | None) -> Path | Failure:
    """Turn a manifest path into an absolute, symlink-free path, or say why it cannot be used.

    Paths are data: no `~` or variable expansion, no shell, no URLs. Relative paths resolve against
    audio_root when given, else base_dir (the manifest's folder). With audio_root set, a path whose
    real location (after `..` and symlinks) lies outside it is rejected. Existence is checked later,
    by probe and decode.
    """
    if not isinstance(path, str) or not path.strip():
        return Failure(Reason.NOT_A_FILE, f"the audio path is empty: {path!r}")
    if "\x00" in path:
        return Failure(Reason.NOT_A_FILE, f"the audio path contains a NUL byte: {path!r}")
    if _URL.match(path):
        return Failure(Reason.NOT_A_FILE, f"{path} is a URL; only local files are read (download it first)")
    root = Path(audio_root if audio_root is not None else base_dir)
    candidate = Path(path) if Path(path).is_absolute() else root / path
    try:
        resolved = candidate.resolve()
        if audio_root is not None:
            real_root = Path(audio_root).resolve()
            if not resolved.is_relative_to(real_root):
                return Failure(Reason.OUTSIDE_AUDIO_ROOT,
                               f"{path} resolves to {resolved}, outside the audio root {real_root}")
    except (OSError, RuntimeError) as exc:  # symlink loops: RuntimeError on 3.11, OSError later
        return Failure(Reason.NOT_A_FILE, f"cannot resolve {path}: {exc}")
    return resolved


def probe(path: Path) -> AudioInfo | Failure:
    """Duration and format from headers only (no full decode): what manifest build and planning need."""
    path = Path(path)
    try:
        opened = _open(path)
        if opened is _USE_FFMPEG:
            return _probe_ffmpeg(path)
        if isinstance(opened, Failure):
            return opened
        with opened as f:
            problem = _length_problem(f, path)
            if problem:
                return problem
            if f.frames == 0:
                return Failure(Reason.EMPTY_AUDIO, f"{path.name} holds no samples")
            return AudioInfo(f.frames / f.samplerate, f.samplerate, f.channels, f.frames,
                             f"{f.format}/{f.subtype}")
    except Exception as exc:  # the boundary: one odd file becomes its own error, never a crash
        return _unexpected(path, exc)


def decode(path: Path, start_s: float = 0.0, end_s: float | None = None,
           silence_dbfs: float = -60.0) -> DecodedAudio | Failure:
    """Decode [start_s, end_s) of a file (the whole file by default) to 16 kHz mono float32.

    A region seeks instead of decoding the file from its start. Raises ValueError only for a
    negative or non-finite start (a caller's bug); every problem with the file is a Failure.
    """
    if not start_s >= 0 or (end_s is not None and not math.isfinite(end_s)):
        raise ValueError(f"bad region start_s={start_s!r} end_s={end_s!r}")
    path = Path(path)
    if end_s is not None and end_s <= start_s:
        return Failure(Reason.EMPTY_AUDIO, f"the region {start_s:.2f}-{end_s:.2f} s of {path.name} is empty")
    try:
        opened = _open(path)
        if opened is _USE_FFMPEG:
            result = _decode_ffmpeg(path, start_s, end_s)
        elif isinstance(opened, Failure):
            return opened
        else:
            with opened as f:
                result = _decode_sndfile(f, path, start_s, end_s)
        if isinstance(result, Failure):
            return result
        samples, rate, channels, actual_start = result
        if len(samples) == 0:
            return Failure(Reason.EMPTY_AUDIO, f"{path.name} decodes to no samples")
        if not np.isfinite(samples).all():
            return _non_finite(path, samples, SAMPLE_RATE, actual_start)
        peak = float(np.max(np.abs(samples)))
        peak_dbfs = 20 * math.log10(peak) if peak > 0 else -math.inf
        return DecodedAudio(np.ascontiguousarray(samples, dtype=np.float32), rate, channels,
                            actual_start, silent=peak_dbfs < silence_dbfs)
    except Exception as exc:  # the boundary: one odd file becomes its own error, never a crash
        return _unexpected(path, exc)


# --- path and container checks -------------------------------------------------------------------

def _read_head(path: Path) -> bytes | Failure:
    """Stat the path and read its first bytes: maps path problems precisely, and the bytes let us
    recognise containers that only ffmpeg reads."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return Failure(Reason.MISSING_FILE, f"{path} does not exist")
    except NotADirectoryError:
        return Failure(Reason.MISSING_FILE, f"{path} does not exist (a parent of it is a file)")
    except PermissionError:
        return Failure(Reason.PERMISSION_DENIED, f"no permission to reach {path}")
    except OSError as exc:
        return Failure(Reason.NOT_A_FILE, f"cannot read {path}: {exc.strerror or exc}")
    if stat.S_ISDIR(st.st_mode):
        return Failure(Reason.NOT_A_FILE, f"{path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device could block a worker forever
        return Failure(Reason.NOT_A_FILE, f"{path} is not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        return Failure(Reason.EMPTY_AUDIO, f"{path.name} is 0 bytes")
    try:
        with open(path, "rb") as fh:
            return fh.read(64)
    except PermissionError:
        return Failure(Reason.PERMISSION_DENIED, f"no permission to read {path}")
    except OSError as exc:
        return Failure(Reason.NOT_A_FILE, f"cannot read {path}: {exc.strerror or exc}")


def _ffmpeg_only(path: Path, head: bytes) -> bool:
    """By extension or by signature: an .m4a renamed to .wav still needs ffmpeg, not a 'corrupt' row."""
    return (
        path.suffix.lower() in FFMPEG_EXTENSIONS
        or head[4:8] == b"ftyp"  # MP4/M4A (AAC, ALAC)
        or head[:4] == b"\x30\x26\xb2\x75"  # ASF (WMA)
        or head[:4] == b"\x1a\x45\xdf\xa3"  # Matroska/WebM
        or head[:5] == b"#!AMR"
        or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0)  # ADTS AAC (MP3 has layer bits set)
    )


def _open(path: Path):
    """An open SoundFile, _USE_FFMPEG, or a Failure saying why neither can read the file."""
    head = _read_head(path)
    if isinstance(head, Failure):
        return head
    try:
        return sf.SoundFile(str(path))
    except Exception as exc:  # LibsndfileError for every container it does not understand
        message = (getattr(exc, "error_string", None) or str(exc)).rstrip(".")
    if _ffmpeg_only(path, head):
        return _USE_FFMPEG
    suffix = path.suffix.lower()
    if suffix in SNDFILE_EXTENSIONS:
        if "does not exist" in message:  # what libsndfile's MP3 reader says when it finds no frames
            message = "no audio frames found"
        return Failure(Reason.CORRUPT_AUDIO,
                       f"{path.name} is not a readable {suffix[1:].upper()} file ({message})")
    if shutil.which("ffmpeg"):  # ffmpeg knows many more containers; it has the last word
        return _USE_FFMPEG
    return Failure(Reason.UNSUPPORTED_CODEC,
                   f"{path.name} is not audio in a format libsndfile reads (WAV, FLAC, OGG, Opus, MP3, "
                   f"AIFF): {message}; installing ffmpeg adds AAC/M4A, WMA and others")


def _length_problem(f: sf.SoundFile, path: Path) -> Failure | None:
    """Truncation visible from the file's structure alone (cheap: no decode)."""
    if f.format in ("WAV", "WAVEX"):
        declared = _wav_declared_frames(path)  # byte-exact: no codec padding to allow for
        if declared is not None and declared - f.frames > _TRUNCATION_TOLERANCE_S * f.samplerate:
            return _truncated(path, f.samplerate, declared, f.frames)
    if f.format == "OGG" and not _ogg_ends_cleanly(path):
        return Failure(Reason.TRUNCATED_AUDIO,
                       f"{path.name} is truncated: its Ogg stream stops without the end-of-stream page")
    return None


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the WAV data chunk claims. libsndfile silently clips this to the bytes present, which
    would let a file cut in half pass as a shorter clip."""
    with open(path, "rb") as fh:
        riff = fh.read(12)
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            return None
        block_align = 0
        while len(header := fh.read(8)) == 8:
            chunk, size = header[:4], int.from_bytes(header[4:], "little")
            if chunk == b"data":
                # Streaming writers leave the size at 0 or 0xFFFFFFFF: no claim to check.
                return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
            if chunk == b"fmt ":
                block_align = int.from_bytes(fh.read(size + (size & 1))[12:14], "little")
            else:
                fh.seek(size + (size & 1), os.SEEK_CUR)
    return None


def _ogg_ends_cleanly(path: Path) -> bool:
    """True when the file ends with a complete Ogg page flagged end-of-stream. A cut Vorbis file
    otherwise reads as 0 frames (it would look empty) and a cut Opus file as a shorter clip."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _OGG_MAX_PAGE))
        tail = fh.read()
    pos = len(tail)
    # Walk back over "OggS" markers until one starts a page that ends exactly at the end of the file.
    while (pos := tail.rfind(b"OggS", 0, pos)) >= 0:
        if pos + 27 <= len(tail):
            lacing = tail[pos + 27: pos + 27 + tail[pos + 26]]
            if len(lacing) == tail[pos + 26] and pos + 27 + len(lacing) + sum(lacing) == len(tail):
                return bool(tail[pos + 5] & 0x04)
    return False


def _mp3_declares_length(path: Path) -> bool:
    """True when the first MP3 frame carries a Xing/Info/VBRI length tag; without one libsndfile's
    length is an estimate from the bitrate, and a short decode is no evidence of truncation."""
    with open(path, "rb") as fh:
        head = fh.read(10)
        offset = 0
        if head[:3] == b"ID3" and len(head) == 10:  # skip an ID3v2 tag (its size is "synchsafe")
            offset = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
        fh.seek(offset)
        frame = fh.read(4096)
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


# --- decoding --------------------------------------------------------------------------------------

def _decode_sndfile(f: sf.SoundFile, path: Path, start_s: float, end_s: float | None):
    problem = _length_problem(f, path)
    if problem:
        return problem
    rate = f.samplerate
    start = round(start_s * rate)
    stop = f.frames if end_s is None else min(f.frames, round(end_s * rate))
    if start >= stop:
        if f.frames == 0:
            return Failure(Reason.EMPTY_AUDIO, f"{path.name} holds no samples")
        return Failure(Reason.EMPTY_AUDIO, f"the region from {start_s:.2f} s starts after the end of "
                                           f"{path.name} ({f.frames / rate:.2f} s)")
    if start:
        f.seek(start)
    # Streaming resampler: the same samples as a one-shot resample, without holding the source.
    resampler = None
    if rate != SAMPLE_RATE:
        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    pieces, got, error = [], 0, None
    while got < stop - start:
        try:
            block = f.read(min(_BLOCK_FRAMES, stop - start - got), dtype="float32", always_2d=True)
        except Exception as exc:  # e.g. "flac decoder lost sync" where a cut file ends mid-frame
            error = exc
            break
        if len(block) == 0:
            break
        if not np.isfinite(block).all():
            return _non_finite(path, block, rate, (start + got) / rate)
        mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
        pieces.append(resampler.resample_chunk(mono) if resampler else mono)
        got += len(block)
    if got < (stop - start) - _tolerance(stop - start, rate) and not (
        f.format == "MP3" and not _mp3_declares_length(path)
    ):
        if got == 0:
            return Failure(Reason.CORRUPT_AUDIO,
                           f"{path.name}: no audio could be decoded ({error or 'no data'})")
        return _truncated(path, rate, f.frames, start + got, error)
    if resampler:
        pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return samples, rate, f.channels, start / rate


def _decode_ffmpeg(path: Path, start_s: float, end_s: float | None):
    info = _probe_ffmpeg(path)  # also names the problem precisely when the file is not audio
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


def _probe_ffmpeg(path: Path) -> AudioInfo | Failure:
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
    the file protocol, so a crafted container cannot make it open URLs or other files."""
    exe = shutil.which(tool)
    if exe is None:
        return Failure(Reason.DECODER_UNAVAILABLE,
                       f"{path.name} needs ffmpeg ({path.suffix or 'this container'} is not a format "
                       f"libsndfile reads) and {tool} is not on PATH; install ffmpeg (e.g. apt-get "
                       f"install ffmpeg) or convert the file to FLAC or WAV")
    log = ["-v", "error"] if tool == "ffprobe" else ["-nostdin", "-hide_banner", "-loglevel", "error"]
    try:
        done = subprocess.run([exe, *log, "-protocol_whitelist", "file", *args], capture_output=True,
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


# --- failures ----------------------------------------------------------------------------------------

def _tolerance(frames: int, rate: int) -> int:
    return max(round(_TRUNCATION_TOLERANCE_S * rate), round(frames * _TRUNCATION_TOLERANCE_FRACTION))


def _truncated(path: Path, rate: int, declared: int, present: int, error=None) -> Failure:
    why = f" ({error})" if error else ""
    return Failure(Reason.TRUNCATED_AUDIO,
                   f"{path.name} is truncated: its header declares {declared / rate:.2f} s "
                   f"({declared} frames) but only {present / rate:.2f} s ({present} frames) could be read"
                   f"{why}")


def _non_finite(path: Path, samples: np.ndarray, rate: int, offset_s: float) -> Failure:
    bad = ~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
    first = offset_s + int(np.argmax(bad)) / rate
    return Failure(Reason.NON_FINITE_SAMPLES,
                   f"{path.name} holds NaN or infinite sample values (first at {first:.3f} s)")


def _unexpected(path: Path, exc: Exception) -> Failure:
    return Failure(Reason.CORRUPT_AUDIO, f"unexpected error reading {path.name}: {type(exc).__name__}: {exc}")
