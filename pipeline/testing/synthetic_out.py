"""A synthetic OUT of any size, written without running anything: annotations.parquet, run.json,
state.json and a runs/ file shaped as annotate writes them, with reference columns and, on
request, a logprob column. For the report's tests (0 ok rows, only errors, 100k rows) and for
measuring the report on a large OUT:

    python -m pipeline.testing.synthetic_out outputs/synthetic-1m --rows 1000000 --logprob
    python -m pipeline report outputs/synthetic-1m --reference transcript=ref_text --reference events=ref_tags

Columns are built with numpy and Arrow (no Python object per row), so a million rows take seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

WORDS = tuple(f"word{i}" for i in range(200)) + ("hello", "world", "good", "morning", "the", "a", "is")
TAGS = ("speech", "music", "dog barking", "rain", "car horn", "laughter", "applause", "wind", "footsteps",
        "birds", "siren", "typing", "door", "crowd", "engine", "water", "bell", "silence", "phone", "baby crying")
LABELS = ("hate speech", "harassment", "violence", "sexual content", "self-harm", "profanity")
LANGUAGES = ("en", "de", "fr", "zh", "es")
REASONS = ("missing_file", "corrupt_audio", "truncated_audio", "empty_audio", "model_error")
TASKS = ("caption", "events", "transcript", "moderation")


def _strings(values: tuple[str, ...], index: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(index))


def _lists(values: tuple[str, ...], lengths: np.ndarray, rng: np.random.Generator, valid=None) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = _strings(values, rng.integers(0, len(values), int(offsets[-1])))
    mask = None if valid is None else pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=mask)


def _texts(lengths: np.ndarray, rng: np.random.Generator, valid=None) -> pa.Array:
    return pc.binary_join(_lists(WORDS, lengths, rng, valid), " ")


def annotations(rows: int, seed: int = 0, ok_share: float = 0.85, logprob: bool = False) -> pa.Table:
    """rows output rows: ok_share of them ok, the rest error or partial with reason codes."""
    rng = np.random.default_rng(seed)
    draw = rng.random(rows)
    status = np.where(draw < ok_share, "ok", np.where(draw < ok_share + (1 - ok_share) * 0.8, "error", "partial"))
    labelled = status != "error"
    failed = ~(status == "ok")
    reason = rng.integers(0, len(REASONS), rows)
    duration = np.clip(rng.lognormal(1.8, 0.9, rows), 0.2, 900.0)
    word_count = rng.integers(3, 25, rows)
    transcript = _texts(np.where(labelled, word_count, 0), rng, labelled)
    ids = pc.binary_join_element_wise(pa.array(["row-"] * rows, pa.string()), pa.array(np.arange(rows)).cast(pa.string()), "")
    audio = pc.binary_join_element_wise(pa.array(["audio/clip-"] * rows, pa.string()), pc.cast(pa.array(np.arange(rows) % 997),
                                                                                   pa.string()), pa.array([".wav"] * rows, pa.string()), "")
    has_ref = rng.random(rows) < 0.3
    # References: the transcript (random words on error rows) with about one word in eight replaced.
    base = pc.if_else(pa.array(labelled), pc.split_pattern(transcript, " "), _lists(WORDS, word_count, rng))
    base = pa.concat_arrays(base.chunks) if isinstance(base, pa.ChunkedArray) else base
    words = pc.list_flatten(base)
    replaced = pc.if_else(pa.array(rng.random(len(words)) < 0.125), _strings(WORDS, rng.integers(0, len(WORDS), len(words))),
                          words)
    ref_text = pc.binary_join(pa.ListArray.from_arrays(base.offsets, replaced, mask=pa.array(~has_ref)), " ")
    event_counts = rng.integers(1, 4, rows)
    moderation_counts = (rng.random(rows) < 0.05).astype(np.int64)
    columns = {
        "id": ids, "audio": audio, "status": pa.array(status),
        "error": pa.array(np.where(failed, np.array(REASONS, object)[reason], None), pa.string()),
        "error_detail": pa.array(np.where(failed, "the file could not be read", None), pa.string()),
        "duration_s": pa.array(duration), "n_segments": pa.array(np.ceil(duration / 30).astype(np.int32)),
        "silent": pa.array(np.where(labelled, False, None), pa.bool_()),
        "caption": pc.binary_join_element_wise(pa.array(["A recording of "] * rows, pa.string()),
                                               _strings(TAGS, rng.integers(0, len(TAGS), rows)), pa.array(["."] * rows, pa.string()), ""),
        "events": _lists(TAGS, np.where(labelled, event_counts, 0), rng, labelled),
        "transcript": transcript,
        "language": pa.array(np.where(labelled & (rng.random(rows) < 0.95),
                                      np.array(LANGUAGES, object)[rng.integers(0, len(LANGUAGES), rows)], None), pa.string()),
        "moderation": _lists(LABELS, np.where(labelled, moderation_counts, 0), rng, labelled),
        "raw": pa.nulls(rows, pa.map_(pa.string(), pa.string())),
        "manifest_language": pa.nulls(rows, pa.string()),
    }
    columns["caption"] = pc.if_else(pa.array(labelled), columns["caption"], pa.scalar(None, pa.string()))
    if logprob:
        values = -np.abs(rng.normal(0.6, 0.7, rows * len(TASKS)))
        keys = pa.array(list(TASKS) * rows)
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * len(TASKS))
        columns["logprob"] = pa.MapArray.from_arrays(offsets, keys, pa.array(values), mask=pa.array(~labelled))
    columns["ref_text"] = ref_text
    columns["ref_tags"] = _lists(TAGS, np.where(has_ref, event_counts, 0), rng, has_ref)
    return pa.table(columns)


def write_out(out: Path, table: pa.Table, runs: bool = True, started: str = "2026-01-02T03:04:05Z") -> dict:
    """annotations.parquet, run.json (counts from the table), state.json and one runs/ file."""
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "annotations.parquet", compression="zstd")
    statuses = Counter(dict((v["values"], v["counts"]) for v in pc.value_counts(table.column("status")).to_pylist()))
    errors = Counter(dict((v["values"], v["counts"]) for v in pc.value_counts(table.column("error").drop_null()).to_pylist()))
    ok = pc.equal(table.column("status"), "ok")
    ok_s = pc.sum(table.column("duration_s").filter(ok)).as_py() or 0.0
    wall = 60.0 + table.num_rows / 50
    buckets = 40
    run_info = {
        "manifest": {"path": "synthetic.parquet", "digest": "0" * 20, "folders": []},
        "out": str(out), "fingerprint": "f" * 16,
        "model": {"path": "synthetic-model", "revision": None, "style": "instruct", "dtype": "fp32", "device": "cpu"},
        "tasks": [{"name": t, "prompt": f"Do {t}.", "max_new_tokens": 32} for t in TASKS],
        "config": {"references": {}},
        "counts": {"rows": table.num_rows, "rows_by_status": dict(statuses), "rows_by_error": dict(errors),
                   "segments": table.num_rows, "segments_by_status": dict(statuses)},
        "audio_hours_annotated": round(ok_s / 3600, 4),
        "this_run": {"items": table.num_rows, "audio_hours": round(ok_s / 3600, 4), "wall_s": wall,
                     "throughput_audio_s_per_s": round(ok_s / wall, 4),
                     "workers": [{"pid": 100 + i, "npu": str(i), "node": "node0", "load_s": 5.0, "busy_s": wall - 10,
                                  "active_s": wall - 8, "peak_rss_mb": 2048.0} for i in range(2)],
                     "timeline": {"bucket_s": wall / buckets, "phases": {"startup_s": 8.0, "annotating_s": wall - 10,
                                                                          "finishing_s": 2.0},
                                  "workers": {f"w{i}": {"pid": 100 + i, "npu": str(i), "node": "node0"} for i in range(2)},
                                  "audio_s": {f"w{i}": [round(ok_s / 2 / buckets * (0.8 + 0.4 * ((b * (i + 3)) % 7) / 7), 3)
                                                        for b in range(buckets)] for i in range(2)}}},
        "padding_efficiency": {"frames": 0.91, "tokens": 0.88, "decode_row_steps": 0.93},
        "generation": {"valid_frames": 910, "computed_frames": 1000, "valid_tokens": 880, "computed_tokens": 1000,
                       "row_steps": 1000, "useful_row_steps": 930, "encode_s": 10.0, "prefill_s": 12.0,
                       "insert_s": 2.0, "steps_s": 20.0},
        "error_gate": {"rows": table.num_rows, "failed": table.num_rows - statuses["ok"], "max_error_rate": 0.5,
                       "passed": True, "rate": 0.0},
        "started": started, "finished": started,
    }
    (out / "run.json").write_text(json.dumps(run_info, indent=2, sort_keys=True))
    state = {"fingerprint": "f" * 16, "settings": {
        "model": "synthetic-model", "prompt_style": "instruct", "dtype": "fp32", "device": "cpu",
        "parsers": {t: t for t in TASKS}, "prompts": {t: f"Do {t}." for t in TASKS},
        "max_new_tokens": {t: 32 for t in TASKS}, "decoding": {"temperature": 0.0}, "audio_root": None}}
    (out / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    if runs:
        (out / "runs").mkdir(exist_ok=True)
        meta = {"started": started, "outcome": "finished", "wall_s": wall, "audio_s": ok_s, "rows": table.num_rows}
        pq.write_table(table.replace_schema_metadata({b"pipeline.run": json.dumps(meta).encode()}),
                       out / "runs" / "20260102T030405Z.parquet", compression="zstd")
    return run_info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--ok-share", type=float, default=0.85)
    parser.add_argument("--logprob", action="store_true", help="add a logprob column (task -> mean log-probability)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    table = annotations(args.rows, ok_share=args.ok_share, logprob=args.logprob)
    write_out(args.out, table)
    size = (args.out / "annotations.parquet").stat().st_size
    print(f"wrote {args.out}: {args.rows} rows, annotations.parquet {size / 2**20:.1f} MiB, "
          f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
