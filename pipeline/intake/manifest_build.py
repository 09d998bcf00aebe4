"""`python -m pipeline manifest build DIR_OR_GLOB_OR_PREFIX -o out.parquet`: one manifest row per
audio file. The source may be a local folder, a local glob, or an s3:// prefix (listed and probed
with ranged reads); the output a local file or an s3:// object.

- id: the file's path relative to the folder (or to the glob's fixed prefix), POSIX style, without
  its extension: 'speakers/ann/001'. Files that differ only in extension ('a.wav', 'a.flac') keep
  it ('a.wav', 'a.flac'). Ids depend only on the set of files, never on listing order.
- audio: relative to the output manifest's folder (or prefix) when the file lies inside it, so the
  manifest moves together with its audio; absolute (a path or an s3:// URL) otherwise.
- duration_s: from headers (audio.probe), in a thread pool. A file that cannot be probed is still
  written, with a null duration, so the annotate run reports it as an error row with its reason
  code instead of losing it; the build's summary lists it as well.

Rows are sorted by id and the file is written atomically (storage.write_table: a temporary file,
fsync and rename locally, one upload on object storage).
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline import storage
from pipeline.intake import audio
from pipeline.intake.manifest_table import ManifestError
from pipeline.reasons import Failure
from pipeline.storage import Location, ObjectPath

_GLOB_MAGIC = re.compile(r"[*?[]")
_LISTED = 20  # unprobed files named in the summary


@dataclass(frozen=True)
class Unprobed:
    id: str
    path: str
    failure: Failure


@dataclass(frozen=True)
class BuildReport:
    output: Location
    rows: int
    total_duration_s: float
    unprobed: tuple[Unprobed, ...]
    ignored: int  # files found that have no audio extension
    unnamable: tuple[str, ...] = ()  # files whose names are not valid UTF-8 (left out)

    def summary(self) -> str:
        minutes = self.total_duration_s / 60
        lines = [f"wrote {self.rows} rows to {self.output} ({minutes:.1f} min of audio)"]
        if self.ignored:
            lines.append(f"ignored {self.ignored} file(s) without an audio extension")
        if self.unnamable:
            lines.append(f"left out {len(self.unnamable)} file(s) whose names are not valid UTF-8 (a manifest "
                         "holds text): rename them, e.g. with convmv, and build again:")
            lines += [f"  {name}" for name in self.unnamable[:_LISTED]]
        if self.unprobed:
            lines.append(f"{len(self.unprobed)} file(s) could not be read; their rows have a null "
                         f"duration_s and annotate will report them as errors:")
            lines += [f"  {u.path}: {u.failure}" for u in self.unprobed[:_LISTED]]
            if len(self.unprobed) > _LISTED:
                lines.append(f"  ... and {len(self.unprobed) - _LISTED} more")
        return "\n".join(lines)


def build_manifest(source: str | Path, output: str | Path, workers: int | None = None) -> BuildReport:
    try:
        output = storage.location(output)
        if storage.info(output).kind == "dir":
            raise ManifestError(f"{output} is a folder; name the manifest file, e.g. {output}/manifest.parquet")
        base, found = _find_files(str(source))
    except (storage.UnsupportedLocation, storage.StorageError) as exc:
        raise ManifestError(str(exc)) from None
    files = sorted(p for p in found if p.suffix.lower() in audio.AUDIO_EXTENSIONS)
    # A name that is not UTF-8 (bytes from another encoding, which Python carries as surrogates)
    # cannot be written to Parquet's text columns, nor named in a manifest at all.
    unnamable = tuple(ascii(str(p)) for p in files if not _utf8(str(p)))
    files = [p for p in files if _utf8(str(p))]
    if not files:
        raise ManifestError(f"no audio files in {source} (looked for "
                            f"{', '.join(sorted(audio.AUDIO_EXTENSIONS))}; {len(found)} other file(s) found)")
    ids = _unique_ids([p.relative_to(base) for p in files])
    out_dir = output.parent if isinstance(output, ObjectPath) else Path(os.path.abspath(output.parent))
    paths = [_stored_path(p, out_dir) for p in files]
    with ThreadPoolExecutor(workers or min(32, 4 * (os.cpu_count() or 1))) as pool:
        infos = list(pool.map(audio.probe, files))  # I/O-bound, and libsndfile releases the GIL
    durations = [None if isinstance(i, Failure) else i.duration_s for i in infos]
    order = sorted(range(len(files)), key=ids.__getitem__)
    table = pa.table({
        "id": pa.array([ids[i] for i in order], pa.string()),
        "audio": pa.array([paths[i] for i in order], pa.string()),
        "duration_s": pa.array([durations[i] for i in order], pa.float64()),
    })
    storage.write_table(output, table)  # a reader sees the old manifest or the new one, never half
    unprobed = tuple(Unprobed(ids[i], paths[i], infos[i]) for i in order if isinstance(infos[i], Failure))
    return BuildReport(output, len(files), sum(d for d in durations if d is not None), unprobed,
                       ignored=len(found) - len(files) - len(unnamable), unnamable=unnamable)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _find_files(source: str) -> tuple[Location, list[Location]]:
    """The folder ids are relative to, and every file under it (a folder or prefix) or matching (a glob)."""
    path = storage.location(source)
    if isinstance(path, ObjectPath):
        if _GLOB_MAGIC.search(path.key):
            raise ManifestError(f"{source}: globs are not supported on object storage; give a prefix "
                                "(every audio object under it is listed)")
        kind = storage.info(path).kind
        if kind == "dir":
            return path, storage.walk_files(path)
        if kind == "file":
            return path.parent, [path]
        raise ManifestError(f"{source} is neither an object nor a prefix with objects under it")
    if path.is_dir():
        return path, storage.walk_files(path)
    if _GLOB_MAGIC.search(source):
        fixed = []
        for part in path.parts:
            if _GLOB_MAGIC.search(part):
                break
            fixed.append(part)
        base = Path(*fixed) if fixed else Path(".")
        return base, [Path(p) for p in glob.glob(source, recursive=True) if os.path.isfile(p)]
    if path.is_file():
        return path.parent, [path]
    raise ManifestError(f"{source} is neither a folder, a file, nor a glob pattern such as 'data/**/*.flac'")


def _unique_ids(relative: list[Path]) -> list[str]:
    """Path without extension, or with it where that alone would collide."""
    ids = [p.with_suffix("").as_posix() for p in relative]
    while True:
        counts = Counter(ids)
        clashes = [i for i, id_ in enumerate(ids) if counts[id_] > 1]
        if not clashes:
            return ids
        for i in clashes:  # full relative paths are unique, so this ends
            ids[i] = relative[i].as_posix()


def _stored_path(path: Location, out_dir: Location) -> str:
    if isinstance(path, ObjectPath):
        return path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else str(path)
    absolute = Path(os.path.abspath(path))
    if isinstance(out_dir, ObjectPath):
        return str(absolute)
    try:
        return absolute.relative_to(out_dir).as_posix()
    except ValueError:
        return str(absolute)
