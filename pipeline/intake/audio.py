"""Audio intake: resolve manifest paths safely, read headers, decode to 16 kHz mono float32.

Nothing here raises for bad input. Every problem with a path or a file comes back as a Failure
(a reason code and a detail naming the problem), so one bad file becomes one error row and never
takes its batch down. libsndfile (through soundfile) reads WAV, FLAC, OGG/Vorbis, Opus, MP3 and
AIFF; other containers (AAC/M4A, WMA, WebM...) go to ffmpeg when it is installed, and so does a
file libsndfile refuses before it is called corrupt (Speex in Ogg, an unusual WAV codec): only
when ffmpeg cannot decode it either is it corrupt_audio. formats holds the container and length
checks, ffmpeg the ffmpeg fallback.

Paths are local files or s3:// objects (pipeline.storage). libsndfile reads objects through
ranged reads, so a segment of a long file downloads little more than the segment; ffmpeg gets a
local copy from storage's bounded cache. Audio embedded in other files (intake/embedded: a Parquet
cell's bytes, a tar member read in place) goes through the same checks and decoders. A missing object is missing_file, a denied read
permission_denied, and an object store that keeps failing after retries storage_unavailable;
a local or network file system failing a read (EIO, ESTALE, a timeout) is read_error. Both are
transient (reasons.Kind): retried, never reported as a content reason such as corrupt_audio.
"""

from __future__ import annotations

import errno
import math
import shutil
import stat
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from pipeline import storage
from pipeline.intake.embedded.files import AudioBytes, Source, local_file, member_head, open_source, read_error
from pipeline.intake.embedded import refs
from pipeline.intake.embedded.refs import TarMember
from pipeline.intake.ffmpeg import decode_ffmpeg, probe_ffmpeg
from pipeline.intake.formats import (  # the extension sets and AudioInfo are part of this module's API
    AUDIO_EXTENSIONS,
    FFMPEG_EXTENSIONS,
    SNDFILE_EXTENSIONS,
    AudioInfo,
    ffmpeg_only,
    length_problem,
    mp3_declares_length,
    truncated,
    truncation_tolerance,
)
from pipeline.reasons import Failure, Reason
from pipeline.shapes import SAMPLE_RATE
from pipeline.storage import Location, ObjectPath

__all__ = [
    "AUDIO_EXTENSIONS", "FFMPEG_EXTENSIONS", "SNDFILE_EXTENSIONS", "AudioInfo", "DecodedAudio",
    "decode", "probe", "resolve_path",
]

_BLOCK_FRAMES = 1 << 16  # decode in blocks so a long stereo 48 kHz file never sits in memory whole
_USE_FFMPEG = object()  # libsndfile cannot read the container; ffmpeg may
# Errors of the storage under a file, not of the file: a disk or NFS server failing (EIO), a stale
# NFS handle after a server restart (ESTALE), a network file system timing out. Transient.
_TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR,
                               errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.EHOSTUNREACH,
                               errno.ENETUNREACH, errno.EREMOTEIO, errno.ENOLINK, errno.EBUSY})


@dataclass(frozen=True)
class _TryFfmpeg:
    """libsndfile refused the file but ffmpeg is installed and may decode it (Speex in Ogg, an odd
    WAV codec...): ffmpeg is tried, and when it cannot decode the file either, libsndfile's reason
    stands (corrupt_audio for a file with an audio extension)."""

    otherwise: Failure


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


def resolve_path(path: str, base_dir: Location, audio_root: Location | None) -> refs.Ref | Failure:
    """Turn a manifest path into an absolute, symlink-free path or an s3:// object, or say why it
    cannot be used.

    Paths are data: no `~` or variable expansion, no shell, no URL but s3://. Relative paths resolve
    against audio_root when given, else base_dir (the manifest's folder); either may be a local
    folder or an s3:// prefix. With audio_root set, a path whose real location (after `..` and
    symlinks) lies outside it is rejected. Existence is checked later, by probe and decode.
    """
    if refs.is_embedded(path):
        return _resolve_embedded(path, base_dir, audio_root)
    if not isinstance(path, str) or not path.strip():
        return Failure(Reason.NOT_A_FILE, f"the audio path is empty: {path!r}")
    if "\x00" in path:
        return Failure(Reason.NOT_A_FILE, f"the audio path contains a NUL byte: {path!r}")
    root = audio_root if audio_root is not None else base_dir
    if storage.is_url(path) or (isinstance(root, ObjectPath) and not path.startswith("/")):
        return _resolve_object(path, root, audio_root)
    if isinstance(audio_root, ObjectPath):
        return Failure(Reason.OUTSIDE_AUDIO_ROOT, f"{path} is a local path, outside the audio root {audio_root}")
    candidate = Path(path) if Path(path).is_absolute() else Path(root) / path
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


def _resolve_embedded(text: str, base_dir: Location, audio_root: Location | None) -> refs.Ref | Failure:
    """A shard's row (intake/embedded/refs.py): its shard is already absolute; a Hugging Face
    struct's path, read when the row's bytes are null, resolves as a manifest path does (a failure
    is kept in the reference for the worker to report, since the bytes may make it moot)."""
    ref = refs.parse(text)
    if isinstance(ref, refs.NoAudio):
        return ref.failure
    if isinstance(ref, refs.ParquetCell) and ref.fallback and not ref.fallback.startswith("!"):
        found = resolve_path(ref.fallback, base_dir, audio_root)
        kept = f"!{found.reason}:{found.detail}" if isinstance(found, Failure) else str(found)
        return replace(ref, fallback=kept)
    return ref


def _resolve_object(path: str, root: Location, audio_root: Location | None) -> ObjectPath | Failure:
    """An s3:// URL, or a relative path under an s3:// prefix; prefixes are folders, so `..`
    climbs out of them and the audio root check is a prefix check."""
    if storage.is_url(path):
        try:
            target = storage.location(path)
        except storage.UnsupportedLocation as exc:
            return Failure(Reason.NOT_A_FILE, str(exc))
    else:
        target = root.joined(path)
        if target is None:
            where = "outside the audio root" if audio_root is not None else "above its bucket's root"
            reason = Reason.OUTSIDE_AUDIO_ROOT if audio_root is not None else Reason.NOT_A_FILE
            return Failure(reason, f"{path} resolves {where} ({root})")
    if audio_root is not None and not target.is_relative_to(audio_root):
        return Failure(Reason.OUTSIDE_AUDIO_ROOT, f"{path} resolves to {target}, outside the audio root {audio_root}")
    return target


def probe(path: Source | str) -> AudioInfo | Failure:
    """Duration and format from headers only (no full decode): what manifest build and planning need."""
    path = _locate(path)
    if isinstance(path, Failure):
        return path
    try:
        opened = _open(path)
        if opened is _USE_FFMPEG or isinstance(opened, _TryFfmpeg):
            with local_file(path) as local:
                return _named(_or_otherwise(probe_ffmpeg(local), opened), local, path)
        if isinstance(opened, Failure):
            return opened
        with _closing_source(opened), opened as f:
            result = _probe_sndfile(f, path)
            return _read_failure(f.name, path) or result
    except Exception as exc:  # the boundary: one odd file becomes its own error, never a crash
        return _unexpected(path, exc)


def _or_otherwise(result, opened):
    """ffmpeg's answer, or libsndfile's reason where ffmpeg was only a second opinion and failed too
    (except that ffmpeg naming a codec nobody decodes is the more precise answer)."""
    if isinstance(opened, _TryFfmpeg) and isinstance(result, Failure) and result.reason != Reason.UNSUPPORTED_CODEC:
        return opened.otherwise
    return result


def _named(result, local, path: Source):
    """ffmpeg's messages name the temporary file embedded audio was written to: name the source."""
    if isinstance(result, Failure) and isinstance(path, (AudioBytes, TarMember)):
        detail = result.detail.replace(f"file:{local.absolute()}", path.name).replace(str(local.absolute()), path.name)
        return Failure(result.reason, detail.replace(local.name, path.name))
    return result


def _probe_sndfile(f: sf.SoundFile, path: Source) -> AudioInfo | Failure:
    problem = length_problem(f, path)
    if problem:
        return problem
    if f.frames == 0:
        return Failure(Reason.EMPTY_AUDIO, f"{path.name} holds no samples")
    return AudioInfo(f.frames / f.samplerate, f.samplerate, f.channels, f.frames, f"{f.format}/{f.subtype}")


def decode(path: Source | str, start_s: float = 0.0, end_s: float | None = None,
           silence_dbfs: float = -60.0) -> DecodedAudio | Failure:
    """Decode [start_s, end_s) of a file (the whole file by default) to 16 kHz mono float32.

    A region seeks instead of decoding the file from its start. Raises ValueError only for a
    negative or non-finite start (a caller's bug); every problem with the file is a Failure.
    """
    if not start_s >= 0 or (end_s is not None and not math.isfinite(end_s)):
        raise ValueError(f"bad region start_s={start_s!r} end_s={end_s!r}")
    path = _locate(path)
    if isinstance(path, Failure):
        return path
    if end_s is not None and end_s <= start_s:
        return Failure(Reason.EMPTY_AUDIO, f"the region {start_s:.2f}-{end_s:.2f} s of {path.name} is empty")
    try:
        opened = _open(path)
        if opened is _USE_FFMPEG or isinstance(opened, _TryFfmpeg):
            with local_file(path) as local:
                result = _named(_or_otherwise(decode_ffmpeg(local, start_s, end_s), opened), local, path)
        elif isinstance(opened, Failure):
            return opened
        else:
            with _closing_source(opened), opened as f:
                result = _decode_sndfile(f, path, start_s, end_s)
                result = _read_failure(f.name, path) or result
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


# --- path checks and choosing a reader -----------------------------------------------------------

def _locate(path: Source | str) -> Source | Failure:
    if isinstance(path, (AudioBytes, TarMember)):
        return path
    try:
        return storage.location(path)
    except storage.UnsupportedLocation as exc:
        return Failure(Reason.NOT_A_FILE, str(exc))


def _read_head(path: Source) -> bytes | Failure:
    """Stat the path and read its first bytes: maps path problems precisely, and the bytes let us
    recognise containers that only ffmpeg reads."""
    if isinstance(path, AudioBytes):
        return path.data[:64] if path.data else Failure(Reason.EMPTY_AUDIO, f"{path.name} holds 0 bytes")
    if isinstance(path, TarMember):
        try:
            return member_head(path)
        except OSError as exc:  # StorageErrors included
            return io_failure(path, exc)
    if isinstance(path, ObjectPath):
        return _read_object_head(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return Failure(Reason.MISSING_FILE, f"{path} does not exist")
    except NotADirectoryError:
        return Failure(Reason.MISSING_FILE, f"{path} does not exist (a parent of it is a file)")
    except PermissionError:
        return Failure(Reason.PERMISSION_DENIED, f"no permission to reach {path}")
    except OSError as exc:
        return io_failure(path, exc)
    if stat.S_ISDIR(st.st_mode):
        return Failure(Reason.NOT_A_FILE, f"{path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device could block a worker forever
        return Failure(Reason.NOT_A_FILE, f"{path} is not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        return Failure(Reason.EMPTY_AUDIO, f"{path.name} is 0 bytes")
    try:
        with storage.open_input(path) as fh:
            return fh.read(64)
    except PermissionError:
        return Failure(Reason.PERMISSION_DENIED, f"no permission to read {path}")
    except OSError as exc:
        return io_failure(path, exc)


def _read_object_head(path: ObjectPath) -> bytes | Failure:
    try:
        found = storage.info(path)
        if found.kind == "missing":
            return Failure(Reason.MISSING_FILE, storage.missing_detail(path))
        if found.kind == "dir":
            return Failure(Reason.NOT_A_FILE, f"{path} is a prefix (a folder of objects), not an object")
        if found.size == 0:
            return Failure(Reason.EMPTY_AUDIO, f"{path.name} is 0 bytes")
        with storage.open_input(path) as fh:
            return fh.read(64)
    except storage.StorageError as exc:
        return _storage_failure(path, exc)


def _open(path: Source):
    """An open SoundFile, _USE_FFMPEG, or a Failure saying why neither can read the file."""
    head = _read_head(path)
    if isinstance(head, Failure):
        return head
    # Through Python file objects, local files and objects alike, quiet because libsndfile's read
    # callbacks cannot raise: a failed read (an object store failing, EIO or ESTALE from a disk or
    # NFS) is kept and checked after, so it is reported as what it is, not as a damaged file.
    source = open_source(path, quiet=True)
    try:
        return sf.SoundFile(source)
    except Exception as exc:  # LibsndfileError for every container it does not understand
        message = (getattr(exc, "error_string", None) or str(exc)).rstrip(".")
        source.close()
        failed = _read_failure(source, path)
        if failed:  # the storage failed mid-header: not the file's fault
            return failed
    if ffmpeg_only(path, head):
        return _USE_FFMPEG
    suffix = path.suffix.lower()
    if suffix in SNDFILE_EXTENSIONS:
        if "does not exist" in message:  # what libsndfile's MP3 reader says when it finds no frames
            message = "no audio frames found"
        failure = Failure(Reason.CORRUPT_AUDIO, f"{path.name} is not a readable {suffix[1:].upper()} file ({message})")
        return _TryFfmpeg(failure) if shutil.which("ffmpeg") else failure
    if shutil.which("ffmpeg"):  # ffmpeg knows many more containers; it has the last word
        return _USE_FFMPEG
    return Failure(Reason.UNSUPPORTED_CODEC,
                   f"{path.name} is not audio in a format libsndfile reads (WAV, FLAC, OGG, Opus, MP3, "
                   f"AIFF): {message}; installing ffmpeg adds AAC/M4A, WMA and others")


# --- decoding --------------------------------------------------------------------------------------

@contextmanager
def _closing_source(f: sf.SoundFile):
    """SoundFile closes files it opened by name, never a file object it was given."""
    try:
        yield
    finally:
        if not isinstance(f.name, str):
            f.name.close()


def _decode_sndfile(f: sf.SoundFile, path: Source, start_s: float, end_s: float | None):
    problem = length_problem(f, path)
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
    if got < (stop - start) - truncation_tolerance(stop - start, rate) and not (
        f.format == "MP3" and not mp3_declares_length(path)
    ):
        if got == 0:
            return Failure(Reason.CORRUPT_AUDIO,
                           f"{path.name}: no audio could be decoded ({error or 'no data'})")
        return truncated(path, rate, f.frames, start + got, error)
    if resampler:
        pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return samples, rate, f.channels, start / rate


# --- failures ----------------------------------------------------------------------------------------

def _non_finite(path: Source, samples: np.ndarray, rate: int, offset_s: float) -> Failure:
    bad = ~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
    first = offset_s + int(np.argmax(bad)) / rate
    return Failure(Reason.NON_FINITE_SAMPLES,
                   f"{path.name} holds NaN or infinite sample values (first at {first:.3f} s)")


def io_failure(path: Source, exc: OSError) -> Failure:
    """A local file system's error (or a StorageError): transient when it is the storage failing,
    else the path's problem."""
    if isinstance(exc, storage.StorageError):
        return _storage_failure(path, exc)
    if isinstance(exc, PermissionError):
        return Failure(Reason.PERMISSION_DENIED, f"no permission to read {path}")
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return Failure(Reason.MISSING_FILE, f"{path} does not exist")
    if exc.errno in _TRANSIENT_ERRNOS:
        return Failure(Reason.READ_ERROR, f"reading {path} failed: {exc.strerror or exc} "
                                          f"({errno.errorcode.get(exc.errno, exc.errno)}); retried")
    return Failure(Reason.NOT_A_FILE, f"cannot read {path}: {exc.strerror or exc}")


def _storage_failure(path: Source, exc: storage.StorageError) -> Failure:
    if isinstance(exc, storage.ObjectNotFound):
        return Failure(Reason.MISSING_FILE, str(exc))
    if isinstance(exc, storage.AccessDenied):
        return Failure(Reason.PERMISSION_DENIED, str(exc))
    if isinstance(exc, storage.StorageUnavailable):
        return Failure(Reason.STORAGE_UNAVAILABLE, str(exc))
    return Failure(Reason.NOT_A_FILE, f"cannot read {path}: {exc}")


def _read_failure(source, path: Source) -> Failure | None:
    """The reason a read failed inside libsndfile, which saw only an early end of file."""
    error = read_error(source)
    return io_failure(path, error) if error is not None else None


def _unexpected(path: Source, exc: Exception) -> Failure:
    if isinstance(exc, storage.StorageError):  # e.g. from the header checks or a local copy
        return _storage_failure(path, exc)
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:  # e.g. EIO in a header check
        return io_failure(path, exc)
    return Failure(Reason.CORRUPT_AUDIO, f"unexpected error reading {path.name}: {type(exc).__name__}: {exc}")
