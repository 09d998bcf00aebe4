"""WebDataset tar shards as a manifest: one row per sample (tar_index.py finds them from the
headers, reading no audio). A row's `audio` is its audio member's reference (refs.TarMember, shown
as `shard.tar#KEY`), or the reason it has none (no_audio, ambiguous_audio, a KEY.json that cannot
be read); KEY.json's fields are pass-through columns, KEY.txt the `text` column.

Ids: an `id` field of KEY.json when the samples have one; else the job's `id_column` (a JSON
field); else the sample's key. Shards are named as manifests are (a file, a folder of them, a
glob), or by a brace range as WebDataset writes them: `shards/shard-{000000..000099}.tar`.
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from pipeline import storage
from pipeline.intake.embedded.parquet_shards import ShardError, absolute, with_ids
from pipeline.intake.embedded.refs import NoAudio
from pipeline.intake.embedded.tar_index import NotATar, Sample, read_samples
from pipeline.reasons import Failure, Reason
from pipeline.storage import Location

TEXT = "text"
_READERS = 8  # shards indexed at once (each a sequence of small reads)
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(text: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar (zero padding kept); `{x,y}` -> x, y.
    Text without braces is returned as it is."""
    match = _BRACE.search(text)
    if match is None:
        return [text]
    head, body, tail = text[:match.start()], match.group(1), text[match.end():]
    numbers = _RANGE.match(body)
    if numbers:
        lo, hi = numbers.groups()
        width = len(lo) if lo.lstrip("-").startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        choices = [f"{n:0{width}d}" for n in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        return [head + "{" + body + "}" + t for t in expand_braces(tail)]
    return [head + choice + rest for choice in choices for rest in expand_braces(tail)]


def is_tar(path) -> bool:
    return str(path).lower().endswith(".tar")


def shards_table(shards: list[Location], id_column: str | None = None) -> tuple[pa.Table, list[int], str]:
    """The samples of these shards as manifest rows, how many rows each shard gave, and a digest of
    the shards' versions. Raises ShardError naming a shard that is not a tar or cannot be read."""
    def index(shard: Location) -> tuple[list[Sample], str | None]:
        try:
            return read_samples(shard), storage.version(shard)
        except NotATar as exc:
            raise ShardError(f"{exc}; WebDataset shards must be plain (uncompressed) tar files") from None
        except OSError as exc:
            raise ShardError(f"cannot read the shard {shard}: {exc}") from None

    with ThreadPoolExecutor(_READERS) as pool:
        found = list(pool.map(index, shards))
    rows = [_row(absolute(shard), sample) for shard, (samples, _) in zip(shards, found) for sample in samples]
    table = _table(rows)
    table = with_ids(table, id_column, lambda: [r["__key__"] for r in rows]).drop_columns(["__key__"])
    digest = hashlib.sha256("\n".join(f"{s}\t{v}" for s, (_, v) in zip(shards, found)).encode()).hexdigest()
    return table, [len(samples) for samples, _ in found], digest


def _row(shard: Location, sample: Sample) -> dict:
    where = f"{shard}#{sample.key}"
    if sample.problem:
        audio = str(NoAudio(where, Failure(Reason.CORRUPT_SHARD, f"{shard.name}#{sample.key}: {sample.problem}")))
    elif not sample.audio:
        audio = str(NoAudio(where, Failure(Reason.NO_AUDIO, f"{shard.name}#{sample.key} has no audio member "
                                                            "(no member with an audio extension)")))
    elif len(sample.audio) > 1:
        names = ", ".join(m.member for m in sample.audio)
        audio = str(NoAudio(where, Failure(Reason.AMBIGUOUS_AUDIO, f"{shard.name}#{sample.key} has "
                                                                   f"{len(sample.audio)} audio members: {names}")))
    else:
        member = sample.audio[0]
        audio = str(type(member)(shard, member.member, member.offset, member.size))
    fields = {(f"json_{k}" if k in ("audio", "__key__") else k): v for k, v in (sample.metadata or {}).items()}
    row = {"__key__": sample.key, "audio": audio, **fields}
    if sample.text is not None:
        row[TEXT] = sample.text
    return row


def _table(rows: list[dict]) -> pa.Table:
    """Columns in order of first appearance; a JSON field whose values do not share one type (a
    number here, a string there) is kept as each value's JSON text."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
    if not rows:
        columns = {"__key__": pa.array([], pa.string()), "audio": pa.array([], pa.string())}
    return pa.table(columns)
