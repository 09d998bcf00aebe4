"""`python -m pipeline manifest build DIR_OR_GLOB -o out.parquet`: one manifest row per audio file.

- id: the file's path relative to the folder (or to the glob's fixed prefix), POSIX style, without
  its extension: 'speakers/ann/001'. Files that differ only in extension ('a.wav', 'a.flac') keep
  it ('a.wav', 'a.flac'). Ids depend only on the set of files, never on listing order.
- audio: relative to the output manifest's folder when the file lies inside it, so the manifest
  moves together with its audio; absolute otherwise.
- duration_s: from headers (audio.probe), in a thread pool. A file that cannot be probed is still
  written, with a null duration, so the annotate run reports it as an error row with its reason
  code instead of losing it; the build's summary lists it as well.

Rows are sorted by id and the file is written atomically (temporary file, fsync, rename).
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
import pyarrow.parquet as pq

from pipeline.intake import audio
from pipeline.intake.manifest import ManifestError
from pipeline.reasons import Failure

_GLOB_MAGIC = re.compile(r"[*?[]")
_LISTED = 20  # unprobed files named in the summary


@dataclass(frozen=True)
class Unprobed:
    id: str
    path: str
    failure: Failure


@dataclass(frozen=True)
class BuildReport:
    output: Path
    rows: int
    total_duration_s: float
    unprobed: tuple[Unprobed, ...]
    ignored: int  # files found that have no audio extension

    def summary(self) -> str:
        minutes = self.total_duration_s / 60
        lines = [f"wrote {self.rows} rows to {self.output} ({minutes:.1f} min of audio)"]
        if self.ignored:
            lines.append(f"ignored {self.ignored} file(s) without an audio extension")
        if self.unprobed:
            lines.append(f"{len(self.unprobed)} file(s) could not be read; their rows have a null "
                         f"duration_s and annotate will report them as errors:")
            lines += [f"  {u.path}: {u.failure}" for u in self.unprobed[:_LISTED]]
            if len(self.unprobed) > _LISTED:
                lines.append(f"  ... and {len(self.unprobed) - _LISTED} more")
        return "\n".join(lines)


def build_manifest(source: str | Path, output: str | Path, workers: int | None = None) -> BuildReport:
    output = Path(output)
    if output.is_dir():
        raise ManifestError(f"{output} is a folder; name the manifest file, e.g. {output}/manifest.parquet")
    base, found = _find_files(str(source))
    files = sorted(p for p in found if p.suffix.lower() in audio.AUDIO_EXTENSIONS)
    if not files:
        raise ManifestError(f"no audio files in {source} (looked for "
                            f"{', '.join(sorted(audio.AUDIO_EXTENSIONS))}; {len(found)} other file(s) found)")
    ids = _unique_ids([p.relative_to(base) for p in files])
    out_dir = Path(os.path.abspath(output.parent))
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
    _write_atomically(table, output)
    unprobed = tuple(Unprobed(ids[i], paths[i], infos[i]) for i in order if isinstance(infos[i], Failure))
    return BuildReport(output, len(files), sum(d for d in durations if d is not None), unprobed,
                       ignored=len(found) - len(files))


def _find_files(source: str) -> tuple[Path, list[Path]]:
    """The folder ids are relative to, and every file under it (a folder) or matching (a glob)."""
    path = Path(source)
    if path.is_dir():
        found = []
        # os.walk does not follow symlinked folders, so a link cycle cannot loop forever.
        for folder, _, names in os.walk(path):
            found += [Path(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
        return path, found
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


def _stored_path(path: Path, out_dir: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(out_dir).as_posix()
    except ValueError:
        return str(absolute)


def _write_atomically(table: pa.Table, output: Path) -> None:
    """A reader sees the old manifest or the new one, never half a file."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
