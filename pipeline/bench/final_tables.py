"""The driver's cost of OUT at scale: reading resume state and writing the final tables over a
million committed results, with time and peak memory printed and saved.

    python -m pipeline.bench.final_tables --rows 1000000 --out outputs/bench/final_tables.json

It writes a synthetic OUT the way runs commit it (parts of `commit_items` results with their commit
records, realistic texts, long files in several segments, keys retried after a transient failure,
results for audio that changed since), then measures each phase in a fresh process, so that each
peak is that phase's own: `progress` (what every run reads to plan: OutputDir.progress) and
`final` (annotations.parquet and segments.parquet: output/final.write_tables). `baseline` is what
the driver holds before either (the manifest and every row's source), included in both peaks.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.intake.manifest_table import Manifest
from pipeline.intake.sources import CurrentSources, Source
from pipeline.output.sink import OutputDir, atomic_write_bytes, atomic_write_table, segment_schema
from pipeline.storage import location
from pipeline.tasks.catalog import OUTPUT_COLUMNS

COMMIT_ITEMS = 512  # config.commit_items' default: results per part
LONG_SHARE = 0.05  # rows that are long files, each in LONG_SEGMENTS segments
LONG_SEGMENTS = 3
RETRIED_SHARE = 0.01  # keys with an earlier transient result (storage_unavailable) and a later lasting one
STALE_SHARE = 0.01  # keys with an earlier result for audio that has changed since (not current)
VERSION, STALE_VERSION = "1000:1700000000", "999:1600000000"
STALE_CAPTION = "a result for audio that has changed since"  # must never reach the final tables
TASKS = ["caption", "events", "transcript", "moderation"]
_WORDS = ("the quick brown fox jumps over a lazy dog while music plays softly in the background and "
          "people talk about the weather tomorrow morning").split()


def _layout(rows: int) -> np.ndarray:
    """Each manifest row's segment count, for `rows` results in all (one per segment)."""
    segments = np.where(np.random.default_rng(0).random(rows) < LONG_SHARE, LONG_SEGMENTS, 1)
    return segments[:int(np.searchsorted(np.cumsum(segments), rows)) + 1]


def _text(rng: np.random.Generator, n: int, words: int) -> list[str]:
    picks = rng.integers(0, len(_WORDS), size=(n, words))
    return [" ".join(_WORDS[i] for i in row) for row in picks]


def _manifest(n: int) -> Manifest:
    return Manifest.from_table(location("/bench/manifest.parquet"), pa.table({
        "id": [f"clip-{i:08d}" for i in range(n)], "audio": [f"audio/clip-{i:08d}.wav" for i in range(n)],
        "duration_s": pa.array(np.full(n, 10.0)), "language": pa.nulls(n, pa.string()),
        "source": [f"src-{i % 97}" for i in range(n)]}))


def _sources(manifest: Manifest, segments: np.ndarray) -> CurrentSources:
    return CurrentSources.of(manifest.ids, [Source(a, 10.0, VERSION) for a in manifest.paths], False,
                             dict(zip(manifest.ids, (segments * 10.0).tolist())))


def write_out(out: Path, rows: int) -> None:
    """A synthetic OUT of `rows` committed results (module docstring)."""
    segments = _layout(rows)
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(len(segments)), segments)
    segment = np.concatenate([np.arange(n) for n in segments])
    draw = rng.random(len(ids))
    sink = OutputDir(out)
    sink.open("bench", {}, restart=False)
    schema = segment_schema(OUTPUT_COLUMNS)
    # Earlier runs' results first (transient failures, audio since changed), then every key's lasting one:
    # (result index, run, error, version).
    order = [(i, "20260101T000000Z", "storage_unavailable", VERSION) for i in np.flatnonzero(draw < RETRIED_SHARE)]
    order += [(i, "20260101T000000Z", None, STALE_VERSION) for i in np.flatnonzero(draw > 1 - STALE_SHARE)]
    order += [(i, "20260102T000000Z", None, VERSION) for i in range(len(ids))]
    for start in range(0, len(order), COMMIT_ITEMS):
        chunk = order[start:start + COMMIT_ITEMS]
        index = np.array([c[0] for c in chunk])
        errors = [c[2] for c in chunk]
        ok = [e is None for e in errors]
        n = len(chunk)
        captions, transcripts = _text(rng, n, 8), _text(rng, n, 30)
        captions = [STALE_CAPTION if c[3] == STALE_VERSION else text for c, text in zip(chunk, captions)]
        row_ids = [f"clip-{i:08d}" for i in ids[index]]
        columns = {
            "key": [f"{r}#{s}" for r, s in zip(row_ids, segment[index])], "id": row_ids,
            "row": ids[index], "segment": pa.array(segment[index], pa.int32()),
            "n_segments": pa.array(segments[ids[index]], pa.int32()),
            "start_s": segment[index] * 10.0, "end_s": segment[index] * 10.0 + 10.0,
            "status": ["ok" if k else "error" for k in ok], "error": errors,
            "error_detail": [None if k else "the object store kept failing" for k in ok],
            "silent": [False if k else None for k in ok],
            "raw": [[("caption", c), ("events", "speech, music"), ("transcript", "<|en|>" + t),
                     ("moderation", "none")] if k else None for c, t, k in zip(captions, transcripts, ok)],
            "caption": [c if k else None for c, k in zip(captions, ok)],
            "events": [["speech", "music"] if k else None for k in ok],
            "transcript": [t if k else None for t, k in zip(transcripts, ok)],
            "language": ["en" if k else None for k in ok],
            "moderation": [[] if k else None for k in ok],
            "run": [c[1] for c in chunk], "planned_s": segments[ids[index]] * 10.0,
            "source_audio": [f"audio/{r}.wav" for r in row_ids], "source_duration_s": np.full(n, 10.0),
            "source_version": [c[3] for c in chunk], "source_sha256": pa.nulls(n, pa.string()),
        }
        # Columns this synthetic OUT leaves empty (what the model said about each answer).
        columns.update({f.name: pa.nulls(n, f.type) for f in schema if f.name not in columns})
        table = pa.table(columns, schema=schema)
        name = f"part-{start:020x}-{0:012x}.parquet"
        atomic_write_table(sink.parts / name, table)
        atomic_write_bytes(sink.commits / (name + ".json"), json.dumps({"part": name, "rows": n}).encode())


def _cpu_s() -> float:
    """This process's CPU time, threads included (on a shared machine, steadier than wall time)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(out: Path, rows: int, phase: str) -> dict:
    """One phase in this process: -> seconds, peak RSS before it (baseline) and at its end."""
    from pipeline.output import final

    segments = _layout(rows)
    manifest = _manifest(len(segments))
    current = _sources(manifest, segments)
    planned = [current.planned[i] for i in manifest.ids]
    baseline = _peak_mb()
    sink = OutputDir(out)
    cpu = _cpu_s()
    started = time.perf_counter()
    if phase == "progress":
        found = sink.progress(current)
        detail = {"done_ids": len(found.done_ids), "changed_ids": len(found.changed_ids)}
    else:
        totals = final.write_tables(sink, manifest, final.RowsNow(sources=current, planned=planned), OUTPUT_COLUMNS,
                                    TASKS)
        detail = {"rows": totals.rows, "segments": totals.segments}
    seconds = time.perf_counter() - started
    return {"phase": phase, "seconds": round(seconds, 2), "cpu_s": round(_cpu_s() - cpu, 2),
            "baseline_rss_mb": round(baseline),
            "peak_rss_mb": round(_peak_mb()), **detail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="committed results")
    parser.add_argument("--out", default="outputs/bench/final_tables.json", help="JSON to write")
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # internal: measure one phase here
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(measure(Path(args.dir), args.rows, args.phase)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-final-") as scratch:
        out = Path(scratch) / "out"
        started = time.perf_counter()
        write_out(out, args.rows)
        print(f"wrote {args.rows} committed results in {time.perf_counter() - started:.0f} s", flush=True)
        figures = {"rows": args.rows, "phases": []}
        for phase in ("progress", "final"):
            done = subprocess.run([sys.executable, "-m", "pipeline.bench.final_tables", "--rows", str(args.rows),
                                   "--phase", phase, "--dir", str(out)], check=True, stdout=subprocess.PIPE, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            figures["phases"].append(result)
            print(f"{phase:>8}: {result['seconds']:.1f} s ({result['cpu_s']:.1f} s of CPU), driver peak RSS {result['peak_rss_mb']} MB "
                  f"(baseline {result['baseline_rss_mb']} MB: manifest and sources)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
