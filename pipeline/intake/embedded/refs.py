"""Where a row's audio is when it is not a file of its own: a cell of a Parquet shard's `audio`
column, or a member of a tar shard (WebDataset). Planning hands these to the workers as text in
Item.path, beside plain resolved paths, so they travel wherever a path travels (batches, retries,
OUT's duration cache) and are parsed back once, by the worker that reads the audio.

The text forms cannot be mistaken for a resolved path, which is always absolute (`/...`) or an
`s3://` URL:

    parquet-row:<row>:<fallback>:<shard>         row: 0-based over the whole file
    tar-member:<offset>:<size>:<member>:<shard>  offset and size of the member's data, in bytes

`fallback` (percent-encoded, often empty) is the resolved location of the Hugging Face struct's
`path`, read when the cell's bytes are null; `member` (percent-encoded) is the member's name in
the tar. The shard comes last and is a resolved location (it may hold `:` itself).

What users see is the short form (`display`): `shard.parquet#17`, `shard.tar#KEY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote, unquote

from pipeline import storage
from pipeline.storage import Location

PARQUET_ROW, TAR_MEMBER = "parquet-row:", "tar-member:"


@dataclass(frozen=True)
class ParquetCell:
    """Row `row` of a Parquet shard's `audio` column (binary, or the Hugging Face struct
    {bytes, path}); `fallback`: the resolved struct path, read when the bytes are null."""

    shard: Location
    row: int
    fallback: str = ""

    @property
    def name(self) -> str:
        return f"{self.shard.name}#{self.row}"

    def __str__(self) -> str:
        return f"{self.shard}#{self.row}"

    @property
    def text(self) -> str:
        return f"{PARQUET_ROW}{self.row}:{quote(self.fallback, safe='/')}:{self.shard}"


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

    def __str__(self) -> str:
        return f"{self.shard}#{self.member}"

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.member).suffix

    @property
    def text(self) -> str:
        return f"{TAR_MEMBER}{self.offset}:{self.size}:{quote(self.member, safe='/')}:{self.shard}"


Ref = Location | ParquetCell | TarMember


def is_embedded(text: str) -> bool:
    return text.startswith((PARQUET_ROW, TAR_MEMBER))


def parse(text: str) -> Ref:
    """A resolved path, URL or embedded reference (any of the text forms above) as what it names.
    Raises ValueError for a malformed reference (a bug: planning writes them) and
    storage.UnsupportedLocation for a URL scheme the pipeline does not read."""
    if text.startswith(PARQUET_ROW):
        row, fallback, shard = text[len(PARQUET_ROW):].split(":", 2)
        return ParquetCell(storage.location(shard), int(row), unquote(fallback))
    if text.startswith(TAR_MEMBER):
        offset, size, member, shard = text[len(TAR_MEMBER):].split(":", 3)
        return TarMember(storage.location(shard), unquote(member), int(offset), int(size))
    return storage.location(text)
