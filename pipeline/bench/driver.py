"""`make bench-driver`: the driver's own time and peak memory as manifests grow.

A backfill's manifest can hold tens of millions of rows, and a nightly job reruns the same command
on it. This measures what the driver costs per manifest row, apart from any model work:

1. Write FILES real audio files (a few hundred generated recordings, hard-linked FILES times over,
   in folders of 1,000) and, for each size N, a manifest of N rows over them (row i names file
   i % FILES, so files repeat; every tenth row has no duration_s, as when a manifest was built
   without reading headers).
2. For each size, run the command a user runs, each in its own process and a fresh OUT:
   `annotate --dry-run`; `annotate --max-rows 32` (the first dispatch: Ray, the model worker on
   the tiny checkpoint, 32 rows, exit 75); the same command again (a resume: exit 75, 64 rows
   committed in all).
3. Print each command's wall time and the driver's own peak RSS (getrusage of the driver process,
   not its Ray workers), and the slope between the smallest and the largest size: microseconds and
   bytes per manifest row. The figures go to a JSON file (BENCH_OUT).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

RATE = 16_000
RECORDINGS = 200  # distinct generated recordings the files are hard links to
PER_FOLDER = 1_000
UNKNOWN_EVERY = 10  # every tenth row has no duration_s
WRITE_ROWS = 1_000_000  # manifest rows written at a time (the bench's own memory)
COMMANDS = ("dry_run", "first_dispatch", "resume")


def write_files(folder: Path, files: int, seed: int = 0) -> np.ndarray:
    """FILES audio files under folder/audio/dNNN/fNNNNNN.wav, hard links to RECORDINGS generated
    recordings of 1-8 s; -> each file's duration in seconds. Reused when already there."""
    durations_file = folder / "durations.npy"
    if durations_file.exists() and len(np.load(durations_file)) == files:
        return np.load(durations_file)
    rng = np.random.default_rng(seed)
    sources = folder / "recordings"
    sources.mkdir(parents=True, exist_ok=True)
    lengths = []
    for index in range(min(RECORDINGS, files)):
        seconds = round(float(rng.uniform(1.0, 8.0)), 2)
        t = np.arange(round(seconds * RATE)) / RATE
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + 0.02 * rng.standard_normal(len(t))
        sf.write(sources / f"r{index:03d}.wav", tone.astype(np.float32), RATE, subtype="PCM_16")
        lengths.append(len(t) / RATE)
    durations = np.empty(files, np.float64)
    for index in range(files):
        target = folder / "audio" / f"d{index // PER_FOLDER:03d}" / f"f{index:06d}.wav"
        if index % PER_FOLDER == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
        source = index % len(lengths)
        if not target.exists():
            os.link(sources / f"r{source:03d}.wav", target)
        durations[index] = lengths[source]
    np.save(durations_file, durations)
    return durations


def write_manifest(path: Path, rows: int, durations: np.ndarray) -> Path:
    """rows rows over the files (relative paths, against the manifest's folder)."""
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    files = len(durations)
    schema = pa.schema([("id", pa.string()), ("audio", pa.string()), ("duration_s", pa.float64())])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, rows, WRITE_ROWS):
            index = np.arange(start, min(rows, start + WRITE_ROWS))
            file = index % files
            seconds = pa.array(durations[file], mask=(index % UNKNOWN_EVERY) == UNKNOWN_EVERY - 1)
            writer.write_table(pa.table({
                "id": pa.array([f"r{i:010d}" for i in index.tolist()]),
                "audio": pa.array([f"audio/d{f // PER_FOLDER:03d}/f{f:06d}.wav" for f in file.tolist()]),
                "duration_s": seconds,
            }, schema=schema), row_group_size=WRITE_ROWS)
    return path


def measured(arguments: list[str], log: Path) -> dict:
    """`python -m pipeline ARGUMENTS` in its own process: wall time, exit code and the driver's own
    peak RSS (pipeline.bench.rss runs the command and reports getrusage(RUSAGE_SELF))."""
    rss_file = log.with_suffix(".rss")
    command = [sys.executable, "-m", "pipeline.bench.rss", str(rss_file), *arguments]
    start = time.perf_counter()
    with open(log, "w") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    peak = int(rss_file.read_text()) if rss_file.exists() else None
    return {"exit": done.returncode, "wall_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20, 1) if peak else None,
            "log": str(log)}


def committed_rows(out: Path) -> int:
    runs = sorted((out / "runs").glob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in runs)


def measure_size(work: Path, rows: int, durations: np.ndarray, model_dir: Path, commands) -> dict:
    manifest = write_manifest(work / f"manifest-{rows}.parquet", rows, durations)
    figures: dict = {"rows": rows}
    base = ["annotate", str(manifest), "--tasks", "caption", "--model", str(model_dir), "--no-progress"]
    for name in commands:
        out = work / f"out-{rows}-{'dispatch' if name != 'dry_run' else 'dry'}"
        if name != "resume":
            subprocess.run(["rm", "-rf", str(out)], check=True)
        extra = ["--dry-run"] if name == "dry_run" else ["--max-rows", "32"]
        print(f"{rows:>10} rows: {name} ...", flush=True)
        figures[name] = measured([*base, "--out", str(out), *extra], work / f"log-{rows}-{name}.txt")
        if name != "dry_run":
            figures[name]["rows_committed_in_all"] = committed_rows(out)
        print(f"{'':>10}       {json.dumps(figures[name])}", flush=True)
    return figures


def slopes(sizes: list[dict], commands) -> dict:
    """Per manifest row, between the smallest and the largest size: microseconds and bytes."""
    small, large = sizes[0], sizes[-1]
    rows = large["rows"] - small["rows"]
    if rows <= 0:
        return {}
    found = {}
    for name in commands:
        a, b = small.get(name), large.get(name)
        if not a or not b or a["peak_rss_mb"] is None or b["peak_rss_mb"] is None:
            continue
        found[name] = {"us_per_row": round((b["wall_s"] - a["wall_s"]) / rows * 1e6, 2),
                       "bytes_per_row": round((b["peak_rss_mb"] - a["peak_rss_mb"]) * 2**20 / rows, 1)}
    return found


def table(sizes: list[dict], commands) -> str:
    header = f"{'rows':>10} " + " ".join(f"{name + ' s':>16} {'MB':>7} {'exit':>4}" for name in commands)
    lines = [header]
    for size in sizes:
        cells = []
        for name in commands:
            f = size.get(name, {})
            cells.append(f"{f.get('wall_s', float('nan')):>16.1f} {f.get('peak_rss_mb') or float('nan'):>7.0f} "
                         f"{f.get('exit', ''):>4}")
        lines.append(f"{size['rows']:>10} " + " ".join(cells))
    return "\n".join(lines)


def run_driver_benchmark(args) -> int:
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model)
    commands = [c for c in args.commands.split(",") if c]
    unknown = set(commands) - set(COMMANDS)
    if unknown:
        raise SystemExit(f"unknown commands {sorted(unknown)}; choose from {COMMANDS}")
    if any(c != "dry_run" for c in commands) and not (model_dir / "config.json").exists():
        raise SystemExit(f"no checkpoint in {model_dir}: run `make tiny-model` first")
    sizes = sorted(int(float(r)) for r in args.rows.split(","))
    print(f"writing {args.files} audio files under {work / 'audio'} ...", flush=True)
    durations = write_files(work, args.files)
    results = [measure_size(work, rows, durations, model_dir, commands) for rows in sizes]
    report = {"files": args.files, "unknown_duration_share": 1 / UNKNOWN_EVERY, "sizes": results,
              "slopes": slopes(results, commands), "cpus": os.cpu_count(),
              "load_average": os.getloadavg()}
    print(table(results, commands))
    for name, slope in report["slopes"].items():
        print(f"slope {name}: {slope['us_per_row']} us and {slope['bytes_per_row']} bytes per row")
    out = Path(args.out or os.environ.get("BENCH_OUT") or "outputs/bench/driver.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"figures saved to {out}")
    return 0
