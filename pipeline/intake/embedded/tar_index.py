"""WebDataset tar shards: the samples a shard holds, found by reading its headers in place.

A tar is a sequence of 512-byte headers, each followed by its member's data. The index reads the
headers only, seeking past audio data (on object storage: ranged reads, never the whole shard,
never extracted), and reads the small `KEY.json` and `KEY.txt` members it needs on the way. What
it records of an audio member is where its data lies (refs.TarMember), which a worker later reads
by range.

Samples follow WebDataset's rule: a member's key is its name up to the first dot of its base name,
folders included (`a/b/x7.seg1.flac` -> key `a/b/x7`, field `seg1.flac`); the members of one key
form a sample. Its audio is the member with an audio extension: a sample with none, or with more
than one, is kept so that it becomes an error row (no_audio, ambiguous_audio), never dropped. A
member whose data runs past the end of the shard (a cut file) is marked truncated.

A file that is not a tar, or a tar whose headers are damaged part way, raises NotATar naming the
shard: its samples cannot be known, so the run stops before any work rather than silently losing
them.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from pipeline import storage
from pipeline.intake.embedded.refs import TarMember, split_key
from pipeline.intake.formats import AUDIO_EXTENSIONS
from pipeline.storage import Location

JSON_FIELD, TEXT_FIELD = "json", "txt"
MAX_METADATA_BYTES = 16 << 20  # a KEY.json or KEY.txt larger than this is not metadata


__all__ = ["NotATar", "Sample", "is_audio_member", "read_samples", "split_key"]


class NotATar(ValueError):
    """The shard is not a readable tar; the message names it."""


@dataclass
class Sample:
    """One WebDataset sample: its key, its audio member(s) and its metadata."""

    key: str
    audio: list[TarMember] = field(default_factory=list)
    metadata: dict | None = None  # KEY.json's object
    text: str | None = None  # KEY.txt
    problem: str | None = None  # why its metadata could not be read (the sample is still listed)
    truncated: bool = False  # its audio member runs past the end of the shard


def is_audio_member(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in AUDIO_EXTENSIONS


def read_samples(shard: Location) -> list[Sample]:
    """Every sample of a tar shard, in the order its keys first appear. Raises NotATar for a file
    that is not a tar or a damaged one, and OSError (StorageError) when it cannot be read."""
    samples: dict[str, Sample] = {}
    with storage.open_input(shard) as raw:
        size = raw.seek(0, 2)
        raw.seek(0)
        try:
            tar = tarfile.open(fileobj=raw, mode="r:")
        except tarfile.ReadError as exc:
            raise NotATar(f"{shard} is not a tar file ({exc})") from None
        with tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.ReadError as exc:
                    if "unexpected end of data" in str(exc):  # the last member's data is cut
                        break
                    raise NotATar(f"{shard} is a damaged tar file ({exc})") from None
                tar.members.clear()  # nothing here looks members up again: keep memory flat
                if member is None:
                    _check_clean_end(raw, tar.offset, size, shard)
                    break
                if member.isfile():
                    _add(samples, shard, member, raw, size)
    return list(samples.values())


def _add(samples: dict[str, Sample], shard: Location, member: tarfile.TarInfo, raw, size: int) -> None:
    key, name_field = split_key(member.name)
    sample = samples.setdefault(key, Sample(key))
    cut = member.offset_data + member.size > size
    if is_audio_member(member.name):
        sample.audio.append(TarMember(shard, member.name, member.offset_data, member.size))
        sample.truncated = sample.truncated or cut
    elif name_field.lower() in (JSON_FIELD, TEXT_FIELD):
        if cut or member.size > MAX_METADATA_BYTES:
            sample.problem = (f"{member.name} is cut short" if cut
                              else f"{member.name} is {member.size} bytes, too large for metadata")
            return
        raw.seek(member.offset_data)
        data = raw.read(member.size)
        try:
            if name_field.lower() == TEXT_FIELD:
                sample.text = data.decode("utf-8")
            else:
                value = json.loads(data)
                if not isinstance(value, dict):
                    raise ValueError(f"it holds a JSON {type(value).__name__}, not an object")
                sample.metadata = value
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            sample.problem = f"{member.name} cannot be read: {exc}"


def _check_clean_end(raw, offset: int, size: int, shard: Location) -> None:
    """tarfile stops quietly at a header it cannot parse after the first: a tar ends with zero
    blocks (or just ends), anything else is damage that hides the samples after it."""
    raw.seek(offset)
    rest = raw.read(512)
    if rest.strip(b"\0"):
        raise NotATar(f"{shard} is a damaged tar file: the header at byte {offset} of {size} cannot be read, "
                      "so the samples after it cannot be found")
