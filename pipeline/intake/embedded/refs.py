"""Where a row's audio is when it is not a file of its own: a cell of a Parquet shard's `audio`
column, or a member of a tar shard (WebDataset). The manifest's `audio` value of such a row is one
of the text forms below; planning resolves it (audio.resolve_path) and hands it to the workers in
Item.path, beside plain resolved paths, so it travels wherever a path travels (batches, retries,
OUT's duration cache, the committed source) and is parsed back by the worker that reads the audio.

The text forms cannot be mistaken for a resolved path (absolute, or an `s3://` URL) nor for a
relative path a user would write:

    parquet-row:<group>:<row>:<fallback>:<shard>   row: 0-based over the whole file, in row group <group>
    tar-member:<offset>:<size>:<member>:<shard>    offset and size of the member's data, in bytes
    no-audio:<reason>:<display>:<detail>           a row known at intake to have no usable audio

`fallback` (percent-encoded, often empty) is the Hugging Face struct's `path`, read when the cell's
bytes are null: as written in the manifest, then resolved by planning (a resolution that failed is
kept as `!<reason>:<detail>`, so the worker reports it). `member`, `display` and `detail` are
percent-encoded; the shard comes last and is an absolute location (it may hold `:` itself).

What users see in the output's `audio` column is `display`: `shard.parquet#17`, `shard.tar#KEY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote, unquote

from pipeline import storage
from pipeline.reasons import Failure, Reason
from pipeline.storage import Location

PARQUET_ROW, TAR_MEMBER, NO_AUDIO = "parquet-row:", "tar-member:", "no-audio:"
_PREFIXES = (PARQUET_ROW, TAR_MEMBER, NO_AUDIO)


def _q(text: str) -> str:
    return quote(text, safe="/")


@dataclass(frozen=True)
class ParquetCell:
    """Row `row` (of row group `group`) of a Parquet shard's `audio` column: binary, or the
    Hugging Face struct {bytes, path}; `fallback`: the struct's path, read when the bytes are null."""

    shard: Location
    row: int
    group: int = 0
    fallback: str = ""

    @property
    def name(self) -> str:
        return f"{self.shard.name}#{self.row}"

    @property
    def display(self) -> str:
        return f"{self.shard}#{self.row}"

    @property
    def fallback_failure(self) -> Failure | None:
        """Why the fallback path could not be resolved, when planning found it unusable."""
        if not self.fallback.startswith("!"):
            return None
        reason, _, detail = self.fallback[1:].partition(":")
        return Failure(Reason(reason), detail)

    def __str__(self) -> str:
        return f"{PARQUET_ROW}{self.group}:{self.row}:{_q(self.fallback)}:{self.shard}"


@dataclass(frozen=True)
class TarMember:
    """One member of a tar shard: its name and where its data lies in the shard (read in place,
    by range, never extracted)."""

    shard: Location
    member: str
    offset: int
    size: int

    @property
    def name(self) -> str:
        """For messages: the shard and the member, `shard-000001.tar#a/sample7.flac`."""
        return f"{self.shard.name}#{self.member}"

    @property
    def display(self) -> str:
        """The sample, as WebDataset names it: `shard-000001.tar#a/sample7`."""
        return f"{self.shard}#{split_key(self.member)[0]}"

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.member).suffix

    def __str__(self) -> str:
        return f"{TAR_MEMBER}{self.offset}:{self.size}:{_q(self.member)}:{self.shard}"


@dataclass(frozen=True)
class NoAudio:
    """A row found at intake to have no usable audio (a WebDataset sample without an audio member
    or with two, a null struct in a row group without bytes): it becomes an error row."""

    display: str
    failure: Failure

    def __str__(self) -> str:
        return f"{NO_AUDIO}{self.failure.reason}:{_q(self.display)}:{_q(self.failure.detail)}"


Ref = Location | ParquetCell | TarMember | NoAudio


def split_key(name: str) -> tuple[str, str]:
    """(key, field) of a tar member's name, as WebDataset splits it: the key is the name up to the
    first dot of its base name, folders included (`a/b/x7.seg1.flac` -> `a/b/x7`, `seg1.flac`)."""
    folder, _, base = name.rpartition("/")
    stem, dot, rest = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (rest if dot else "")


def is_embedded(text) -> bool:
    return isinstance(text, str) and text.startswith(_PREFIXES)


def parse(text: str) -> Ref:
    """A resolved path, URL or embedded reference (any of the text forms above) as what it names.
    Raises ValueError for a malformed reference (planning writes them) and
    storage.UnsupportedLocation for a URL scheme the pipeline does not read."""
    if text.startswith(PARQUET_ROW):
        group, row, fallback, shard = text[len(PARQUET_ROW):].split(":", 3)
        return ParquetCell(storage.location(shard), int(row), int(group), unquote(fallback))
    if text.startswith(TAR_MEMBER):
        offset, size, member, shard = text[len(TAR_MEMBER):].split(":", 3)
        return TarMember(storage.location(shard), unquote(member), int(offset), int(size))
    if text.startswith(NO_AUDIO):
        reason, display, detail = text[len(NO_AUDIO):].split(":", 2)
        return NoAudio(unquote(display), Failure(Reason(reason), unquote(detail)))
    return storage.location(text)


def display(text: str | None) -> str | None:
    """What the output's `audio` column says for a manifest audio value: where the audio came from
    (the path as written, `shard#row`, `shard.tar#key`), never the reference's internals."""
    if not is_embedded(text):
        return text
    return parse(text).display


def audio_kinds(values) -> dict[str, int]:
    """How many manifest audio values are of each kind (what `manifest validate` reports): paths,
    Parquet cells, tar members, and rows without usable audio by reason."""
    counts: dict[str, int] = {}
    for value in values:
        if not is_embedded(value):
            kind = "paths"
        elif value.startswith(PARQUET_ROW):
            kind = "embedded in Parquet"
        elif value.startswith(TAR_MEMBER):
            kind = "tar members"
        else:
            kind = value[len(NO_AUDIO):].split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts
