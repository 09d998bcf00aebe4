"""Command line: `python -m pipeline COMMAND --help`.

Handlers import their modules lazily so that `--help` and manifest commands never load MindSpore.
"""

from __future__ import annotations

import argparse
import atexit
from collections import Counter
import os
import sys
import threading


def _cmd_manifest_build(args) -> int:
    from pipeline.intake.manifest_build import build_manifest

    report = build_manifest(args.source, args.output)
    print(report.summary())
    return 0


def _cmd_manifest_validate(args) -> int:
    from pipeline.intake.embedded.refs import audio_kinds
    from pipeline.intake.manifest_set import read_manifests
    from pipeline.intake.manifest_table import duration_warnings

    manifest = read_manifests(args.manifest, id_column=args.id_column)
    for warning in duration_warnings(manifest):
        print(f"warning: {warning}", file=sys.stderr)
    # Streamed, batch by batch: a manifest of millions of rows is never held whole.
    known, kinds = 0, Counter()
    for batch in manifest.batches(["audio", "duration_s"]):
        known += batch.table.num_rows - batch.table.column("duration_s").null_count
        kinds.update(audio_kinds(batch.table.column("audio").to_pylist()))
    extra = ", ".join(manifest.passthrough_columns) or "none"
    files = f" in {len(manifest.files)} files" if len(manifest.files) > 1 else ""
    audio = "" if set(kinds) <= {"paths"} else "; audio: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    print(f"{' '.join(args.manifest)}: {manifest.num_rows} rows{files}, valid ({known} with duration_s; "
          f"pass-through columns: {extra}{audio})")
    return 0


def _cmd_tiny_model(args) -> int:
    from pipeline.testing.tiny_model import write_tiny_checkpoint

    path = write_tiny_checkpoint(args.out_dir, seed=args.seed, flavour=args.flavour, size=args.size)
    print(f"wrote tiny {args.flavour} checkpoint ({args.size}) to {path}")
    return 0


def _cmd_annotate(args) -> int:
    from pipeline.planning.job import output_folder

    config = job_config(args)
    out = output_folder(args.manifest, args.out)
    if args.dry_run:  # writes nothing, so no log file in OUT either: the libraries print where they are
        from pipeline.dry_run import dry_run
        from pipeline.output.console import Console

        return dry_run(args.manifest, config, out=out, workers=args.workers, restart=args.restart,
                       console=Console(quiet=args.quiet, progress=False))
    from pipeline.annotate import annotate_from_args

    return annotate_from_args(args, config, out)


def job_config(args):
    """The job file (--job, else the defaults) with the command line's overrides."""
    from dataclasses import asdict

    from pipeline.config import load

    config = load(args.job)
    overrides = {
        "model": args.model, "audio_root": args.audio_root, "id_column": args.id_column, "device": args.device, "dtype": args.dtype,
        "tasks": [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
        "max_rows": args.max_rows, "max_hours": args.max_hours, "max_wall_minutes": args.max_wall,
        "verify_content": True if args.verify_content else None,
        "max_error_rate": args.max_error_rate, "ray_address": args.ray_address,
        **{key: getattr(args, key) for key in ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                                               "seed")},
        "retry_errors": [r.strip() for r in args.retry_errors.split(",") if r.strip()] if args.retry_errors else None,
    }
    if args.custom_task:
        overrides["custom_tasks"] = [asdict(t) for t in config.custom_tasks] + \
                                    [asdict(parse_custom_task(t)) for t in args.custom_task]
    if args.follows:
        overrides["follows"] = {**config.follows, **dict(parse_follows(text) for text in args.follows)}
    return config.with_overrides(**overrides)


def parse_follows(text: str) -> tuple[str, str]:
    """--follows TASK=EARLIER: TASK's question is asked after EARLIER's answer, in its conversation."""
    from pipeline.config import ConfigError

    task, sep, parent = (part.strip() for part in text.partition("="))
    if not sep or not task or not parent:
        raise ConfigError(f"--follows {text!r}: expected TASK=EARLIER, e.g. 'speakers=transcript'")
    return task, parent


def parse_custom_task(text: str):
    from pipeline.config import ConfigError, CustomTask

    parts = text.split("|", 3)
    if len(parts) != 4 or not parts[2].strip().isdigit():
        raise ConfigError(f"--custom-task {text!r}: expected NAME|PARSER|MAX_TOKENS|PROMPT, e.g. "
                          "'speakers|text|16|How many people speak?'")
    name, parser, max_tokens, prompt = (p.strip() for p in parts)
    return CustomTask(name=name, prompt=prompt, max_new_tokens=int(max_tokens), parser=parser)


def _cmd_report(args) -> int:
    from pipeline.report import report_from_args

    return report_from_args(args)


def _cmd_bench(args) -> int:
    if args.mode == "shards":
        from pipeline.bench.shard_memory import run_shard_benchmark

        return run_shard_benchmark(args)
    if args.mode == "driver":
        from pipeline.bench.driver import run_driver_benchmark

        return run_driver_benchmark(args)
    if args.mode == "chained":
        from pipeline.bench.realistic import run_chained_benchmark

        return run_chained_benchmark(args)
    from pipeline.bench.realistic import run_benchmark

    return run_benchmark(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Batch audio annotation with Qwen2-Audio (MindSpore graph mode, Ray, Parquet).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    annotate = commands.add_parser(
        "annotate", help="annotate every row of a manifest and write Parquet",
        description="Annotate every row of a manifest; rerun the same command to resume.",
    )
    annotate.add_argument("manifest", nargs="+",
                          help="Parquet manifest (columns: id, audio, optional duration_s, language), a folder of "
                               "them, or a glob such as 'incoming/date=*/' (quote it); several are read as one")
    annotate.add_argument("--job", help="YAML job file (see jobs/default.yaml); options below override it")
    annotate.add_argument("--model", help="checkpoint folder or hub id")
    annotate.add_argument("--out", help="output folder (default outputs/<manifest name>/)")
    annotate.add_argument("--tasks", help="comma-separated task names, e.g. caption,events,transcript")
    annotate.add_argument(
        "--custom-task", action="append", default=[], metavar="NAME|PARSER|MAX_TOKENS|PROMPT",
        help="add a task: name, parser (text or list), max new tokens, question; repeatable",
    )
    annotate.add_argument("--follows", action="append", default=[], metavar="TASK=EARLIER",
                          help="ask TASK as a follow-up question after EARLIER's answer, in the same conversation "
                               "(instruct checkpoints); repeatable; job key follows")
    annotate.add_argument("--workers", type=int, help="CPU workers when there are no NPUs")
    annotate.add_argument("--ray-address", metavar="HOST:PORT",
                          help="Ray cluster to join (its head's GCS port, or auto: the one `ray start` left on this "
                               "node); default: RAY_ADDRESS when set, else a private local Ray for this run "
                               "(local forces that); job key ray_address")
    annotate.add_argument("--audio-root", help="resolve relative paths here and reject paths outside it")
    annotate.add_argument("--id-column", help="shards without an `id` column (Hub Parquet, WebDataset): the "
                                              "column or KEY.json field of ids (default: <shard>/<row>, or the key)")
    annotate.add_argument("--device", choices=("auto", "ascend", "cpu"))
    annotate.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"))
    decoding = annotate.add_argument_group(
        "decoding", "each overrides the job file, which overrides the checkpoint's generation_config.json")
    sample_or_not = decoding.add_mutually_exclusive_group()
    sample_or_not.add_argument("--greedy", dest="do_sample", action="store_const", const=False,
                               help="greedy decoding, whatever the checkpoint and the job say (do_sample false)")
    sample_or_not.add_argument("--do-sample", dest="do_sample", action="store_const", const=True,
                               help="sample (temperature, top-k, top-p), seeded per row and task")
    decoding.add_argument("--temperature", type=float)
    decoding.add_argument("--top-k", type=int, help="0: no top-k")
    decoding.add_argument("--top-p", type=float)
    decoding.add_argument("--repetition-penalty", type=float, help="1: none")
    decoding.add_argument("--seed", type=int, help="seeds each row's sampling draws")
    annotate.add_argument("--restart", action="store_true",
                          help="discard committed work in --out from a run with other settings")
    annotate.add_argument("--dry-run", action="store_true",
                          help="print what a run would do (rows, audio, batches, shapes, time) and exit; "
                               "loads no model, starts no worker, writes nothing")
    annotate.add_argument("--max-rows", type=int, metavar="N",
                          help="send at most N rows to the model, then stop (exit 75; the next run continues)")
    annotate.add_argument("--max-hours", type=float, metavar="H",
                          help="send at most H hours of audio to the model, then stop (exit 75)")
    annotate.add_argument("--max-wall", type=float, metavar="MINUTES",
                          help="stop dispatching MINUTES after the start; dispatched batches finish (exit 75)")
    annotate.add_argument("--max-error-rate", type=float, metavar="FRACTION",
                          help="error gate: when more than this share of the run's rows fail, write no _SUCCESS and "
                               "exit 3 (default 0.5; job key max_error_rate)")
    annotate.add_argument("--retry-errors", nargs="?", const="all", metavar="REASON,...",
                          help="try committed error rows again (all of them, or only these reason codes, e.g. "
                               "model_error,worker_lost); ok rows are not touched. Put it after MANIFEST, or write "
                               "--retry-errors=REASONS")
    annotate.add_argument("--verify-content", action="store_true",
                          help="tell changed audio by a SHA-256 of its content, not its size and modification time "
                               "(reads every file each run)")
    annotate.add_argument("--no-progress", action="store_true",
                          help="no progress bar (it shows only on a terminal anyway)")
    loudness = annotate.add_mutually_exclusive_group()
    loudness.add_argument("--verbose", action="store_true",
                          help="also show the libraries' output (MindSpore, Ray, transformers), which always goes "
                               "to OUT/logs/")
    loudness.add_argument("--quiet", action="store_true", help="print only errors and the summary (for cron)")
    annotate.set_defaults(handler=_cmd_annotate)

    report = commands.add_parser(
        "report", help="write OUT/report.html (and quality.json against reference columns)",
        description="Write OUT/report.html, a self-contained page about the run (annotate writes it at the end of "
                    "every run), and with --reference, OUT/quality.json: the labels against reference columns "
                    "carried through from the manifest.",
    )
    report.add_argument("out", help="an output folder or s3:// prefix that annotate wrote")
    report.add_argument("--reference", action="append", default=[], metavar="TASK=COLUMN",
                        help="compare TASK's labels with this pass-through column, e.g. transcript=ref_text or "
                             "events=ref_tags; repeatable (default: the job's `references`)")
    report.set_defaults(handler=_cmd_report)

    manifest = commands.add_parser("manifest", help="build or validate manifests")
    manifest_commands = manifest.add_subparsers(dest="manifest_command", required=True, metavar="ACTION")
    build = manifest_commands.add_parser(
        "build", help="write a manifest from a folder or glob of audio files",
        description="Write a manifest from a folder or glob of audio files; durations come from headers.",
    )
    build.add_argument("source", help="a folder (searched recursively) or a glob such as 'data/**/*.flac'")
    build.add_argument("-o", "--output", required=True, help="manifest to write (.parquet)")
    build.set_defaults(handler=_cmd_manifest_build)
    validate = manifest_commands.add_parser("validate", help="check a manifest without running anything")
    validate.add_argument("manifest", nargs="+", help="a manifest, a folder of them or a glob; several are one; "
                                                      "Parquet shards holding their audio and WebDataset tars too")
    validate.add_argument("--id-column", help="shards without an `id` column: the column or KEY.json field of ids")
    validate.set_defaults(handler=_cmd_manifest_validate)

    tiny = commands.add_parser(
        "tiny-model", help="write a tiny random Qwen2-Audio checkpoint for tests",
        description="Write a randomly initialised Qwen2-Audio checkpoint in the Hugging Face layout.",
    )
    tiny.add_argument("out_dir", nargs="?", default="models/tiny-qwen2-audio")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--flavour", choices=("base", "instruct"), default="instruct")
    tiny.add_argument("--size", choices=("small", "odd"), default="small",
                      help="small: even sizes; odd: grouped-query attention with odd sizes")
    tiny.set_defaults(handler=_cmd_tiny_model)

    bench = commands.add_parser(
        "bench", help="the pipeline against transformers on a realistic workload, side by side",
        description="realistic (default): write a podcast-like mix and a checkpoint with the real model's "
                    "proportions, run `annotate` (cold and warm compile cache) and transformers' batched generate "
                    "on the same audio, check the texts are identical, print a table and save JSON (BENCH_OUT). "
                    "driver: the driver's own time and peak memory for --dry-run, a first dispatch under "
                    "--max-rows 32 and a resume, on manifests of --rows rows over --files real files. "
                    "shards: the driver's and a decode task's peak memory on a generated Hub-layout Parquet "
                    "shard of --gb GB (--work-dir, --model). chained: only realistic's chained workload (three "
                    "questions per clip in one conversation against a chat-API user re-running each "
                    "conversation; --clips).",
    )
    bench.add_argument("mode", nargs="?", choices=("realistic", "driver", "shards", "chained"), default="realistic")
    bench.add_argument("--clips", type=int, default=80, help="chained: clips of the workload asked three questions")
    bench.add_argument("--out", help="JSON to write (default $BENCH_OUT or outputs/bench/bench.json)")
    bench.add_argument("--short", type=int, default=60, help="clips of 1-10 s")
    bench.add_argument("--medium", type=int, default=20, help="clips of 10-29.5 s")
    bench.add_argument("--long", type=int, default=3, help="files of 2-4 minutes")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--dims", choices=("proportions", "tiny"), default="proportions",
                       help="checkpoint size (proportions: the 7B's shape, ~20M parameters)")
    bench.add_argument("--quick", action="store_true", help="a few clips on the tiny checkpoint (what CI runs)")
    bench.add_argument("--rows", default="1000000,2000000,10000000",
                       help="driver: manifest sizes, comma-separated")
    bench.add_argument("--files", type=int, default=100_000, help="driver: real audio files the rows name")
    bench.add_argument("--commands", default="dry_run,first_dispatch,resume",
                       help="driver: which commands to measure, comma-separated")
    bench.add_argument("--work-dir", default="outputs/bench/driver", help="driver: where files, manifests and OUTs go")
    bench.add_argument("--model", default="models/tiny-qwen2-audio",
                       help="driver: the checkpoint the first dispatch loads (make tiny-model)")
    bench.add_argument("--gb", type=float, default=1.0, help="shards: the generated Hub-layout shard's size")
    bench.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline import exit_codes
    from pipeline.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def run() -> None:
    """The command's process (`python -m pipeline`, the `qwen2-audio-annotate` script): main(),
    then exit at once when nothing is left to wait for.

    Once main() returns, every file is closed, OUT's lock released and Ray shut down, and the
    interpreter's own teardown still took 0.2 s (measured after a run: Ray's and gRPC's native
    destructors, some 1,100 modules), on every command. atexit handlers run first (logging's
    flush among them); where a thread that the normal exit would join is still alive, the normal
    exit runs instead. Tests call main(), which never exits the process."""
    code = main()
    live = any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread())
    if live or not isinstance(code, int):  # SystemExit also says what a code that is not a number means
        raise SystemExit(code)
    atexit._run_exitfuncs()  # what the normal exit would run; the rest of the teardown frees memory only
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: what the normal exit would have failed to write too
        pass
    os._exit(code)
