"""`annotate`: manifest -> plan -> (Ray workers: decode -> features -> model -> parse) -> sink.

A rerun of the same command resumes: committed keys are skipped, rows whose audio changed since
they were labelled are labelled again (intake/sources.py), and a finished run (its marker matching
this manifest and these settings, nothing changed) does no model work at all. Work budgets
(max_rows, max_hours, max_wall_minutes) stop a run early with everything finished committed: exit
75, and the next run continues. Each invocation's committed rows also go to OUT/runs/ (output/delta.py).

One run at a time per OUT (output/lock.py: a second one exits 2). SIGTERM and SIGINT stop
dispatch and commit what finished within 30 s (run/signals.py: exit 75 and 130). The error gate
(output/error_gate.py) makes a run whose rows mostly failed exit 3 without _SUCCESS.

This module orchestrates: what a run has to do comes from planning/, the Ray execution from run/,
the committing and the final tables from output/.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import exit_codes, storage
from pipeline.config import Config, ConfigError
from pipeline.errors import UserError
from pipeline.intake.manifest_set import read_manifests
from pipeline.intake.manifest_table import Manifest, duration_warnings
from pipeline.output import delta, error_gate, final
from pipeline.output.committer import Committer
from pipeline.output.console import Console, budget_line, start_line, stopped_lines, summary_lines, warn_unreadable
from pipeline.output.delta import DeltaWritten, write_run_delta
from pipeline.output.lock import OutLock
from pipeline.intake.durations import DurationCache
from pipeline.output.committed import CommittedIndex
from pipeline.output.milestones import Milestones
from pipeline.output.sink import OutputDir, Provenance
from pipeline.output.timeline import Timeline
from pipeline.planning.job import (annotation_columns, budget_option, check_passthrough, default_workers,
                                   describe_sources, output_folder, run_settings, settings_fingerprint)
from pipeline.planning.replanning import Replanner
from pipeline.planning.stream import WorkStream
from pipeline.planning.work import Planner, retry_errors, rows_left_after
from pipeline.run.signals import StopRequested, StopSignals
from pipeline.tasks.catalog import resolve_tasks


@dataclass
class RunSummary:
    out: storage.Location
    already_complete: bool = False
    run_info: dict = field(default_factory=dict)
    stopped_early: bool = False  # dispatch stopped before the end; rerun to continue (no final tables)
    stop_reason: str | None = None  # what stopped it, for the screen: "--max-rows 100", ...
    rows_committed: int = 0  # rows this invocation completed
    rows_left: int = 0  # rows still to do after it
    delta: storage.Location | None = None  # its runs/ file, when it completed any row
    gate: error_gate.GateResult | None = None  # the error gate's verdict on this invocation's rows
    report: storage.Location | None = None  # OUT/report.html, when it could be written

    @property
    def exit_code(self) -> int:
        if self.gate is not None and not self.gate.passed:
            return exit_codes.OVER_ERROR_THRESHOLD
        return exit_codes.STOPPED_EARLY if self.stopped_early else exit_codes.DONE

    @property
    def counts(self) -> dict:
        return self.run_info.get("counts", {})


def annotate(manifest_path, config: Config, out: str | Path | None = None, workers: int | None = None,
             restart: bool = False, progress: bool = True, model_factory=None,
             console: Console | None = None, read_faults=None) -> RunSummary:
    """manifest_path: a manifest file, a folder of them, a glob, or a list of those (intake/manifest_set.py).
    read_faults: tests inject storage faults into the workers' reads here (testing/faults.py).

    Raises KeyboardInterrupt after Ctrl-C (everything finished committed first), OutLocked (a
    UserError) when another run holds OUT."""
    started = time.time()
    milestones = Milestones()
    milestones.mark("annotate_called", started)
    console = console or Console(progress=progress)
    storage.configure(storage.Settings.from_config(config))
    manifest = read_manifests(manifest_path, id_column=config.id_column)
    for warning in duration_warnings(manifest):
        console.warning(warning)
    tasks = resolve_tasks(config)
    check_passthrough(manifest, columns=annotation_columns(tasks))
    check_reference_columns(config, manifest)
    out = output_folder(manifest_path, out)
    # Before anything touches OUT (and before Ray starts): a second driver is refused in seconds.
    with OutLock(out, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))) as lock, StopSignals() as signals:
        if lock.taken_over is not None:
            console.warning(f"took over the lock of a run that is gone ({lock.taken_over.describe(time.time())})")
        try:
            return _annotate(manifest_path, manifest, config, out, tasks, workers, restart, model_factory, console,
                             started, lock, read_faults, signals, milestones)
        except StopRequested as stop:  # before any work (Ray starting): nothing to commit
            if stop.signum == signal.SIGINT:
                raise KeyboardInterrupt from None
            return RunSummary(out=out, stopped_early=True, stop_reason=signal.Signals(stop.signum).name)


def _annotate(manifest_path, manifest: Manifest, config: Config, out, tasks, workers, restart, model_factory,
              console: Console, started: float, lock: OutLock, read_faults, signals: StopSignals,
              milestones: Milestones) -> RunSummary:
    from pipeline.model.model_plan import load_prompts, plan_model, split_lengths, with_slots_split
    from pipeline.output import run_info
    from pipeline.run import cluster, ray_address, runner
    from pipeline.run.actors import WorkerSpec

    # --max-wall counts from the start: loading and compiling are part of a scheduled window.
    deadline = time.monotonic() + config.max_wall_minutes * 60 if config.max_wall_minutes else None
    store = storage.current_settings()
    columns = annotation_columns(tasks)
    digest = manifest.digest
    worker_count = default_workers(config, workers)

    # Tokenising the prompts needs no cluster: it runs while Ray starts (seconds each), and so do
    # the imports of Ray's first serialization. Submitted before the session opens: ray.init
    # blocks until the node is up.
    ray_choice = ray_address.choose(config.ray_address)
    background = ThreadPoolExecutor(1)
    checkpoint = background.submit(load_prompts, config, tasks)
    background.submit(cluster.import_serializers)
    milestones.mark("ray_starting")
    with background, cluster.ray_session(worker_count, ray_choice) as ray_used:
        signals.install()  # again: Ray's start put its own SIGTERM handler (exit at once) in place
        milestones.mark("ray_started")
        npus = cluster.cluster_npus()
        device = config.device if config.device != "auto" else ("ascend" if npus else "cpu")
        if device == "ascend" and not npus:
            raise UserError("device is ascend but the Ray cluster has no NPU resources")
        try:
            plan = plan_model(config, tasks, device,
                              cluster.worker_memory_bytes(npus if device == "ascend" else worker_count,
                                                          device == "ascend", config.npu_memory_gb),
                              checkpoint.result())
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        milestones.mark("model_planned")
        settings = run_settings(plan, config, tasks)
        fingerprint = settings_fingerprint(settings)
        sink = OutputDir(out, guard=lock.check)
        committer: Committer | None = None
        stream: WorkStream | None = None
        stamp = None
        timeline = Timeline(started)
        folders = manifest_folders(manifest)

        def write_delta(outcome: str) -> DeltaWritten:
            wall = round(time.time() - started, 2)
            now = final.RowsNow(stream.planner.facts if stream else None, config.verify_content)
            return write_run_delta(sink, manifest, now, columns, list(plan.task_names), stamp, {
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "outcome": outcome,
                "wall_s": wall, "audio_s": committer.audio_ms_done / 1000 if committer else 0.0,
                # What the report shows for a run that stops early (it writes no run.json).
                "timeline": timeline.to_dict(wall), "generation": committer.stats_total if committer else {},
                "manifest_folders": folders})

        def rows_left() -> int:
            done = committer.rows_completed if committer is not None else 0
            return rows_left_after(stream.planner, stream.totals.rows_with_work, done) if stream is not None else 0

        try:
            sink.open(fingerprint, settings, restart)
            committed = CommittedIndex.read(sink, retry_errors(config))
            durations = DurationCache(sink.durations).load()
            planner = Planner(manifest, config, committed, durations)
            stream = WorkStream(planner, config, durations)
            head = stream.head()
            if not head and sink.completed_for(digest, fingerprint):
                console.summary([f"{out} is already complete for this manifest and settings; nothing to do."])
                return RunSummary(out=out, already_complete=True)

            stamp = delta.run_stamp(started, delta.written_stamps(sink), committed.runs())
            sink.record_provenance(Provenance(stamp))
            if head:
                sink.invalidate_final()
            milestones.mark("work_planned")
            use_npu = device == "ascend"
            workers_now = npus if use_npu else worker_count
            failures = [r for w in head for r in w.failures]
            warn_unreadable(console, failures)
            console.info(head_start_line(head, planner, manifest.num_rows, workers_now, use_npu, plan.dtype,
                                         plan.decoding.describe(), ray_used))
            changed = sum(w.rows_changed for w in head)
            if changed:
                console.info(f"{changed} of these rows are labelled again: their audio or its manifest "
                             "values changed since they were labelled")
            if planner.limited_by:
                taken = sum(w.rows_taken + len(w.failures) for w in head)
                console.info(budget_line(planner.limited_by, config, rows_left() - taken))
            report = runner.ExecutionReport()

            def past_deadline() -> bool:
                return deadline is not None and time.monotonic() >= deadline

            with signals.graceful():  # a signal here stops dispatch; what finished is committed below
                committer = Committer(sink, columns, [], console, config.commit_items, config.commit_seconds,
                                      Replanner(durations, planner.facts, sink, config), timeline)
                stream.committer = committer
                # Windows with error rows only are committed here; the first with items starts the workers.
                while not signals.stop_requested() and (head and not head[0].items or not head):
                    if head:
                        stream.feed(head.pop(0))
                    else:
                        window = stream.next_with_work()
                        if window is None:
                            break
                        head.append(window)
                if head and past_deadline():  # intake alone used the window: no workers at all
                    report.stopped = True
                elif head and not signals.stop_requested():
                    cluster.check_room_for_decoding(workers_now)
                    if config.short_slots:  # short decode slots for the short clips, sized from the first ones
                        plan = with_slots_split(plan, split_lengths(item for window in head for item in window.items))
                    spec = WorkerSpec(
                        plan=plan, tasks=tasks, moderation_labels=tuple(config.moderation_labels),
                        silence_dbfs=config.silence_dbfs, search_s=config.segment_search_s,
                        # Absolute: Ray workers need not share the driver's working directory.
                        compile_cache_root=str(Path(config.compile_cache_dir).resolve()) if config.compile_cache_dir else None,
                        cpu_threads=config.cpu_threads_per_worker or max(1, (os.cpu_count() or 1) // worker_count),
                        model_factory=model_factory, storage_settings=store, read_faults=read_faults,
                    )
                    try:
                        report = runner.execute(
                            stream.batches(head), spec, workers_now, use_npu, config.prefetch_batches,
                            config.max_attempts, committer,
                            stop=lambda: past_deadline() or signals.stop_requested(),
                            abandon=signals.abandon_in_flight, policy=runner.RunPolicy.from_config(config),
                            milestones=milestones)
                    except Exception:  # signals are _stopped_by_signal's; a crash (BaseException) is a crash
                        committer.close_after_failure()  # what finished is kept, whatever error ended the run
                        raise
                committer.close()
            signals.raise_if_requested()

            rows_done = committer.rows_completed
            if report.stopped or planner.limited_by:  # the tables describe a finished run only
                reason = (f"--max-wall {config.max_wall_minutes:g} min" if report.stopped and past_deadline()
                          else budget_option(planner.limited_by, config) if planner.limited_by else "a stop request")
                written = write_delta("stopped")
                return RunSummary(out=out, stopped_early=True, stop_reason=reason, rows_committed=rows_done,
                                  rows_left=rows_left(), delta=written.location,
                                  gate=error_gate.judge_counts(written.rows, written.failed, config.max_error_rate),
                                  report=write_report_safely(out, config, console, stopped=True))
            written = write_delta("finished")
            gate = error_gate.judge_counts(written.rows, written.failed, config.max_error_rate)

            totals = final.write_tables(sink, manifest, final.RowsNow(planner.facts, config.verify_content), columns,
                                        list(plan.task_names))
            milestones.mark("tables_written")
            info = run_info.build(
                plan=plan, config=config, settings=settings, fingerprint=fingerprint,
                manifest_path=describe_sources(manifest_path), manifest_digest=digest, out=out, totals=totals,
                part_stats=list(sink.part_stats()), report=report, started=started,
                audio_s_this_run=committer.audio_ms_done / 1000, items_this_run=committer.items_planned,
                timeline=timeline, manifest_folders=folders, milestones=milestones,
            )
            info["error_gate"] = gate.to_dict()
            sink.write_summary(info, {"manifest_digest": digest, "fingerprint": fingerprint,
                                      "finished": info["finished"]}, totals.transient_segments, success=gate.passed)
            return RunSummary(out=out, run_info=info, rows_committed=rows_done, delta=written.location, gate=gate,
                              report=write_report_safely(out, config, console, stopped=False))
        except (StopRequested, KeyboardInterrupt) as stop:
            return _stopped_by_signal(stop, signals, committer, rows_left, write_delta, console, out)


def head_start_line(head, planner, rows_total: int, workers: int, npu: bool, dtype: str, decoding: str,
                    ray_cluster: str | None = None) -> str:
    """The start line: what this run does, when planning already knows it (the manifest fits the
    first window, or the budgets were spent in it), else what the first window holds."""
    if planner.planned_until >= rows_total or planner.limited_by:
        rows = sum(w.rows_taken + len(w.failures) for w in head)
        audio_s = sum(i.end_s - i.start_s for w in head for i in w.items)
        return start_line(rows, rows_total, audio_s, workers, npu, dtype, decoding, ray_cluster,
                          unknown_rows=sum(w.unknown_taken for w in head))
    return start_line(sum(w.rows_todo for w in head), rows_total, sum(w.audio_todo_s for w in head), workers, npu,
                      dtype, decoding, ray_cluster, window=planner.window_rows,
                      unknown_rows=sum(w.unknown_rows for w in head))


# A run stopped by a signal writes its runs/ file only while it is this young, so that it exits
# within the 30 s a scheduler gives (the next run's file lists these rows otherwise).
DELTA_WITHIN_S = 20.0


def _stopped_by_signal(stop: BaseException, signals: StopSignals, committer, rows_left, write_delta, console: Console,
                       out) -> RunSummary:
    """SIGTERM or Ctrl-C: commit what is buffered, write this run's runs/ file when there is time,
    and say what is left. SIGTERM returns a stopped summary (exit 75); Ctrl-C re-raises
    KeyboardInterrupt (exit 130), as callers of annotate() have always seen it."""
    interrupted = isinstance(stop, KeyboardInterrupt) or getattr(stop, "signum", None) == signal.SIGINT
    written = DeltaWritten(None)
    if committer is not None:
        with signals.graceful():
            committer.close()
            if signals.seconds_since() < DELTA_WITHIN_S:
                try:  # best effort: the next run's runs/ file lists these rows if this one cannot
                    written = write_delta("interrupted" if interrupted else "stopped")
                except Exception:
                    pass
    done, total = (committer.rows_done, committer.total_rows) if committer is not None else (0, 0)
    if interrupted:
        console.error(f"interrupted: {done} of {total} rows of this run are committed; "
                      "rerun the same command to resume.")
        raise KeyboardInterrupt
    return RunSummary(out=out, stopped_early=True, stop_reason=signals.name or str(stop), rows_committed=done,
                      rows_left=rows_left(), delta=written.location)


def check_reference_columns(config: Config, manifest: Manifest) -> None:
    """The job's reference columns must come through from the manifest (before any work)."""
    missing = {t: c for t, c in config.references.items() if c not in manifest.passthrough_columns}
    if missing:
        raise ConfigError("references: " + ", ".join(f"{t}: column '{c}'" for t, c in missing.items())
                          + " not in the manifest (its pass-through columns: "
                          + (", ".join(manifest.passthrough_columns) or "none") + ")")


def manifest_folders(manifest: Manifest) -> list[str]:
    """The folders relative audio paths resolve in (each manifest file's own), absolute: the
    report links audio from OUT, whatever folder it is built from later."""
    files = manifest.files or (manifest.path,)
    folders = {os.path.abspath(f.parent) if isinstance(f, Path) else str(f.parent) for f in files}
    return sorted(folders)[:100]


def write_report_safely(out, config: Config, console: Console, stopped: bool):
    """OUT/report.html (and quality.json with references): a report that cannot be written is a
    warning, never a failed run; everything it describes is committed already."""
    from pipeline.report import write_report
    from pipeline.report.rows import COMMITTED, FINAL

    try:
        written = write_report(out, config.references, kind=COMMITTED if stopped else FINAL)
    except Exception as exc:  # noqa: BLE001 - the run's outcome must not depend on its report
        console.warning(f"the report could not be written: {type(exc).__name__}: {exc}")
        return None
    console.note(f"report written in {written.seconds:.2f} s ({written.page_bytes} bytes)")
    return written.page


def annotate_from_args(args, config: Config, out) -> int:
    """The annotate command (cli.py): the run with its log file in OUT, what the screen says, and its
    exit code. config: the job with the command line's overrides; out: OUT."""
    from pipeline.output.library_log import LibraryLog

    with ExitStack() as stack:
        try:
            log = stack.enter_context(LibraryLog(out / "logs", echo=args.verbose))
        except OSError as exc:  # a read-only or full OUT: say so, not a traceback
            raise UserError(f"cannot write the run's log in {out / 'logs'}: {exc.strerror or exc}") from None
        console = Console(log.terminal_out, log.terminal_err, quiet=args.quiet, progress=not args.no_progress,
                          log=log.write_line)
        with console_logging(console):
            try:
                summary = annotate(args.manifest, config, out=out, workers=args.workers, restart=args.restart,
                                   console=console)
            except KeyboardInterrupt:
                return exit_codes.INTERRUPTED
            except StopRequested as stop:  # a second signal while stopping: committed work is safe
                console.error(f"stopped by a second {signal.Signals(stop.signum).name}; committed work is kept, "
                              "rerun the same command to resume.")
                return exit_codes.INTERRUPTED if stop.signum == signal.SIGINT else exit_codes.STOPPED_EARLY
            except storage.StorageUnavailable as exc:  # the store kept failing: a scheduler retries (75)
                raise type(exc)(f"{exc}. Committed work is kept: rerun the same command later to resume "
                                f"(exit {exc.exit_code})") from None
            except storage.StorageError as exc:  # OUT (or the manifest) cannot be written or read
                raise type(exc)(f"{exc}. Committed work is kept: fix this and rerun the same command to resume.") from None
            except OSError as exc:  # the object store failing inside pyarrow (a dataset read), unclassified
                if not storage.is_transient(exc):
                    raise
                raise storage.StorageUnavailable(f"the object store kept failing: {exc}. Committed work is kept: "
                                                 "rerun the same command later to resume "
                                                 f"(exit {storage.StorageUnavailable.exit_code})") from None
            except UserError:
                raise
            except Exception:
                console.error(f"the run failed; the libraries' output is in {log.destination}")
                raise
        if summary.stopped_early:
            console.summary(stopped_lines(summary.stop_reason, summary.rows_committed, summary.rows_left,
                                          summary.delta, summary.out, log.destination, summary.report))
        elif not summary.already_complete:
            console.summary(summary_lines(summary.run_info, summary.out, log.destination, summary.delta,
                                          report=summary.report is not None))
        if summary.gate is not None and not summary.gate.passed:
            console.error(f"error gate: {summary.gate.describe()}; no _SUCCESS written, exit "
                          f"{exit_codes.OVER_ERROR_THRESHOLD}. Look at the errors by reason; rows that failed "
                          "transiently are retried by the next run, others with --retry-errors.")
    return summary.exit_code


@contextmanager
def console_logging(console: Console):
    """This package's log records in the driver go to the console (warnings on screen); the other
    libraries' go to stderr, which is the log file."""
    ours = logging.getLogger("pipeline")
    handler = console.logging_handler()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.propagate = True
