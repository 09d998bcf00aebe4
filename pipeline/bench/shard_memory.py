"""`make bench-shards`: the driver's and a worker's peak memory on a Parquet shard that holds its
audio, as a Hugging Face dataset's shard does (the `audio` struct {bytes, path}, row groups of 100
rows), of at least --gb GB.

1. Write the shard from the project's real recordings (manifests/audio, repeated), no `id` column.
2. The driver: `annotate --dry-run` of the 8-row example manifest (the baseline: imports, tokenizer),
   then `annotate SHARD --dry-run` and `annotate SHARD --max-rows 256` (a first dispatch:
   Ray, the model worker on the tiny checkpoint, 256 rows decoded and annotated, exit 75), each in
   its own process (bench/rss.py: getrusage of the driver process alone, not of its Ray workers).
3. A worker's decode task: in its own process, the BatchPreparer a prepare task runs (read the
   cells by row group, decode, features) on the batches planning makes of 1,000 rows spread over
   the shard; its peak RSS.
Figures are printed and saved as JSON (--out).
"""

from __future__ import annotations

import json
import resource
from collections import Counter
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.testing.shards import AUDIO_STRUCT, HF_FEATURES, recordings

ROW_GROUP = 100


def write_shard(path: Path, gigabytes: float) -> Path:
    """A Hub-layout shard of about `gigabytes` GB of real recordings (written a row group at a time)."""
    if path.exists() and path.stat().st_size >= gigabytes * 1e9:
        return path
    path.unlink(missing_ok=True)
    clips = list(recordings(with_m4a=False).items())
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("speaker", pa.string()), ("audio", AUDIO_STRUCT)],
                       metadata={b"huggingface": json.dumps(HF_FEATURES).encode()})
    written, row = 0, 0
    # No dictionary for the audio: a real dataset's clips are all different, and a dictionary would
    # store these repeated recordings once (a "1 GB" shard of 80 MB on disk).
    with pq.ParquetWriter(path, schema, use_dictionary=["speaker"]) as writer:
        while written < gigabytes * 1e9:
            chosen = [clips[(row + i) % len(clips)] for i in range(ROW_GROUP)]
            writer.write_table(pa.table({
                "speaker": [f"speaker{(row + i) % 97}" for i in range(ROW_GROUP)],
                "audio": pa.array([{"bytes": data, "path": name} for name, data in chosen], AUDIO_STRUCT),
            }, schema=schema), row_group_size=ROW_GROUP)
            written += sum(len(data) for _, data in chosen)
            row += ROW_GROUP
    return path


def driver_peak(arguments: list[str], work: Path) -> dict:
    """Run `python -m pipeline ARGUMENTS` in its own process: exit code, wall time, driver peak RSS."""
    rss = work / f"rss-{time.monotonic_ns()}.txt"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.bench.rss", str(rss), *arguments],
                          capture_output=True, text=True)
    return {"exit": done.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "driver_peak_mb": round(int(rss.read_text()) / 2**20, 1) if rss.exists() else None,
            "tail": done.stdout[-400:] + done.stderr[-400:] if done.returncode not in (0, 75) else ""}


def worker_peak(shard: Path, model: str) -> dict:
    """Run the prepare task's work on 1,000 rows in its own process; its peak RSS."""
    code = ("import sys, json\nfrom pipeline.bench.shard_memory import _prepare\n"
            "print(json.dumps(_prepare(sys.argv[1], sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", code, str(shard), model], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _prepare(shard: str, model: str) -> dict:
    """In a process of its own: plan the shard's first 1,000 rows and every 10th row group's rows
    into batches as planning does, and prepare them as a decode task does."""
    from transformers import WhisperFeatureExtractor

    from pipeline.config import Config
    from pipeline.intake.manifest_set import read_manifests
    from pipeline.items import Item
    from pipeline.planning.batches import plan_batches
    from pipeline.run.worker import BatchPreparer

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    manifest = read_manifests(shard)
    refs_ = manifest.paths
    groups = len(refs_) // ROW_GROUP
    rows = [r for g in range(0, groups, max(1, groups // 10)) for r in range(g * ROW_GROUP, (g + 1) * ROW_GROUP)][:1000]
    items = [Item(r, manifest.ids[r], refs_[r], 0, 1, 0.0, 0.0, 0.0) for r in rows]
    config = Config()
    batches = plan_batches(items, config.batch_audio_s, config.batch_items)
    preparer = BatchPreparer(WhisperFeatureExtractor.from_pretrained(model), config.silence_dbfs, config.segment_search_s)
    planned = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, ok, failed = time.perf_counter(), 0, Counter()
    for batch in batches:
        prepared = preparer.prepare(batch)
        ok += len(prepared.ready)
        failed.update(r.error for r in prepared.failed)  # duration_mismatch: a 54 s clip, planned again in a run
        del prepared
    return {"rows": len(rows), "batches": len(batches), "ok": ok, "failed": dict(failed),
            "seconds": round(time.perf_counter() - started, 1),
            "peak_mb_before_reading": round(planned / 1024, 1),
            "worker_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "process_start_mb": round(before / 1024, 1)}


def run_shard_benchmark(args) -> int:
    work = Path(args.work_dir)
    shard = write_shard(work / "data" / "train-00000-of-00001.parquet", args.gb)
    size = shard.stat().st_size
    meta = pq.ParquetFile(shard).metadata
    print(f"shard: {shard} ({size / 1e9:.2f} GB, {meta.num_rows} rows in {meta.num_row_groups} row groups)")
    figures = {"shard_bytes": size, "rows": meta.num_rows, "row_groups": meta.num_row_groups}
    example = Path(__file__).resolve().parents[2] / "manifests" / "example.parquet"
    figures["baseline_dry_run"] = driver_peak(["annotate", str(example), "--model", args.model, "--quiet",
                                               "--out", str(work / "out-example"), "--dry-run"], work)
    print(f"driver, annotate --dry-run of the 8-row example manifest (the baseline): {figures['baseline_dry_run']}")
    common = ["annotate", str(shard), "--model", args.model, "--quiet", "--no-progress"]
    figures["dry_run"] = driver_peak([*common, "--out", str(work / "out-dry"), "--dry-run"], work)
    print(f"driver, annotate --dry-run: {figures['dry_run']}")
    figures["first_dispatch"] = driver_peak([*common, "--out", str(work / "out-run"), "--restart", "--max-rows", "256"],
                                            work)
    print(f"driver, annotate --max-rows 256: {figures['first_dispatch']}")
    figures["worker"] = worker_peak(shard, args.model)
    print(f"a worker's decode task, 1,000 rows in planned batches: {figures['worker']}")
    out = Path(args.out or "outputs/bench/shards.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(f"figures: {out}")
    return 0
