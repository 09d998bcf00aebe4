"""Audio containers: which ones libsndfile reads and which need ffmpeg, what a file's headers say
(AudioInfo), and whether a file holds as much audio as its headers declare.

Nothing here decodes audio: the answers come from a file's name, its headers and at most its
last Ogg page, so a mislabelled or cut file gets a precise reason rather than a vague decode error.
Files are local paths or s3:// objects, read through pipeline.storage (byte ranges for objects), or
audio embedded in a Parquet cell or a tar member (intake/embedded).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import soundfile as sf

from pipeline.reasons import Failure, Reason
from pipeline.intake.embedded.files import Source, open_source

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
_OGG_MAX_PAGE = 27 + 255 + 255 * 255
# Encoder padding and rounding make a decode differ from the header by milliseconds; a file cut
# short misses far more. Shortfalls beyond this are reported as truncation.
_TRUNCATION_TOLERANCE_S = 0.1
_TRUNCATION_TOLERANCE_FRACTION = 0.01


@dataclass(frozen=True)
class AudioInfo:
    """What the headers say, read without decoding the audio."""

    duration_s: float
    sample_rate: int
    channels: int
    frames: int
    format: str  # e.g. "WAV/PCM_16", "OGG/OPUS", or ffprobe's "mov,mp4,m4a,3gp,3g2,mj2/aac"


def ffmpeg_only(path: Source, head: bytes) -> bool:
    """By extension or by signature: an .m4a renamed to .wav still needs ffmpeg, not a 'corrupt' row."""
    return (
        path.suffix.lower() in FFMPEG_EXTENSIONS
        or head[4:8] == b"ftyp"  # MP4/M4A (AAC, ALAC)
        or head[:4] == b"\x30\x26\xb2\x75"  # ASF (WMA)
        or head[:4] == b"\x1a\x45\xdf\xa3"  # Matroska/WebM
        or head[:5] == b"#!AMR"
        or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0)  # ADTS AAC (MP3 has layer bits set)
    )


def length_problem(f: sf.SoundFile, path: Source) -> Failure | None:
    """Truncation visible from the file's structure alone (cheap: no decode)."""
    if f.format in ("WAV", "WAVEX"):
        declared = _wav_declared_frames(path)  # byte-exact: no codec padding to allow for
        if declared is not None and declared - f.frames > _TRUNCATION_TOLERANCE_S * f.samplerate:
            return truncated(path, f.samplerate, declared, f.frames)
    if f.format == "OGG" and not _ogg_ends_cleanly(path):
        return Failure(Reason.TRUNCATED_AUDIO,
                       f"{path.name} is truncated: its Ogg stream stops without the end-of-stream page")
    return None


def _wav_declared_frames(path: Source) -> int | None:
    """Frames the WAV data chunk claims. libsndfile silently clips this to the bytes present, which
    would let a file cut in half pass as a shorter clip."""
    with open_source(path) as fh:
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


def _ogg_ends_cleanly(path: Source) -> bool:
    """True when the file ends with a complete Ogg page flagged end-of-stream. A cut Vorbis file
    otherwise reads as 0 frames (it would look empty) and a cut Opus file as a shorter clip."""
    with open_source(path) as fh:
        size = fh.seek(0, os.SEEK_END)
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


def mp3_declares_length(path: Source) -> bool:
    """True when the first MP3 frame carries a Xing/Info/VBRI length tag; without one libsndfile's
    length is an estimate from the bitrate, and a short decode is no evidence of truncation."""
    with open_source(path) as fh:
        head = fh.read(10)
        offset = 0
        if head[:3] == b"ID3" and len(head) == 10:  # skip an ID3v2 tag (its size is "synchsafe")
            offset = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
        fh.seek(offset)
        frame = fh.read(4096)
    return any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


def truncation_tolerance(frames: int, rate: int) -> int:
    """How many of `frames` frames a decode may miss before the file counts as truncated."""
    return max(round(_TRUNCATION_TOLERANCE_S * rate), round(frames * _TRUNCATION_TOLERANCE_FRACTION))


def truncated(path: Source, rate: int, declared: int, present: int, error=None) -> Failure:
    why = f" ({error})" if error else ""
    return Failure(Reason.TRUNCATED_AUDIO,
                   f"{path.name} is truncated: its header declares {declared / rate:.2f} s "
                   f"({declared} frames) but only {present / rate:.2f} s ({present} frames) could be read"
                   f"{why}")

