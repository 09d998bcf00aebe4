"""What a person sees while `annotate` runs: one line on what will run, the progress bar, warnings
about their data or settings, errors, and a summary at the end.

What the libraries print goes to the run's log file instead (output/library_log.py). Every line
written here, except the bar, is copied to that log too, so the log alone tells what happened.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable

from tqdm import tqdm

TOP_REASONS = 5  # error reasons named in the summary; the rest are counted together


class Console:
    """quiet: errors and the summary only (for cron). progress: the bar, shown only on a terminal."""

    def __init__(self, out=None, err=None, quiet: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None):
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.quiet = quiet
        self.progress = progress and not quiet
        self.log = log

    def _write(self, text: str, stream, show: bool) -> None:
        if self.log is not None:
            self.log(text)
        if show:
            tqdm.write(text, file=stream)  # clears the bar first and redraws it below

    def info(self, text: str) -> None:
        self._write(text, self.out, not self.quiet)

    def warning(self, text: str) -> None:
        self._write(f"warning: {text}", self.err, not self.quiet)

    def error(self, text: str) -> None:
        self._write(f"error: {text}", self.err, True)

    def summary(self, lines: list[str]) -> None:
        for line in lines:
            self._write(line, self.out, True)

    def note(self, text: str) -> None:
        """For the log only."""
        if self.log is not None:
            self.log(text)

    def progress_bar(self, total_ms: int) -> tqdm:
        """Audio seconds done, counted in whole milliseconds (see output/committer.py). tqdm's
        disable=None hides it when the stream is not a terminal: in a file it is only noise."""
        return tqdm(total=total_ms, unit="audio-s", unit_scale=0.001, file=self.err,
                    disable=None if self.progress else True, dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio-s [{elapsed}<{remaining}, {rate_fmt}]"
                               "{postfix}")

    def logging_handler(self) -> logging.Handler:
        """For this package's logger in the driver: warnings on screen, the rest in the log."""
        return _ConsoleHandler(self)


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console):
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self.console.error(text)
        elif record.levelno >= logging.WARNING:
            self.console.warning(text)
        else:
            self.console.note(text)


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def counts_text(counts: dict[str, int], limit: int | None = None) -> str:
    """'ok 53, error 2', largest first; past `limit` entries the rest are summed."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ordered if limit is None else ordered[:limit]
    text = ", ".join(f"{name} {count}" for name, count in shown)
    rest = ordered[len(shown):]
    if rest:
        text += f", {len(rest)} other reasons {sum(c for _, c in rest)}"
    return text


def audio_text(audio_s: float, unknown_rows: int = 0) -> str:
    """How much audio: the known lengths, and the rows whose length is known only once decoded
    (audio inside Parquet without duration_s), which the known figure leaves out."""
    if not unknown_rows:
        return f"{duration_text(audio_s)} of audio"
    unknown = f"{unknown_rows} row{'s' * (unknown_rows != 1)} of a length known once decoded"
    return unknown if audio_s == 0 else f"{duration_text(audio_s)} of audio and {unknown}"


def start_line(rows_todo: int, rows_total: int, audio_s: float, workers: int, npu: bool, dtype: str,
               decoding: str | None = None, ray_cluster: str | None = None, window: int | None = None,
               unknown_rows: int = 0) -> str:
    """decoding: the decoding in effect with where each value came from (ResolvedDecoding.describe);
    ray_cluster: which Ray the run uses (run/ray_address.describe). window: the manifest is planned
    this many rows at a time and the figures are the first window's (the rest is planned as the
    workers go). unknown_rows: rows of those whose length is known only once decoded."""
    where = f"{workers} worker{'s' * (workers != 1)} on {'Ascend NPUs' if npu else 'CPU'}, {dtype}"
    audio = audio_text(audio_s, unknown_rows)
    if window is not None:
        return (f"annotating {rows_total} rows, planned {window} at a time as the workers go (the first "
                f"{window}: {rows_todo} rows left, {audio}) with {where}" +
                (f"; Ray: {ray_cluster}" if ray_cluster else "") + (f"; decoding: {decoding}" if decoding else ""))
    if rows_todo == 0:
        return f"all {rows_total} rows were annotated by an earlier run; writing the outputs"
    rows = f"{rows_todo} rows" if rows_todo == rows_total else f"{rows_todo} of {rows_total} rows left"
    return f"annotating {rows} ({audio}) with {where}" + \
        (f"; Ray: {ray_cluster}" if ray_cluster else "") + (f"; decoding: {decoding}" if decoding else "")


def budget_line(limited_by: str, config, rows_later: int) -> str:
    """Said at the start when a work budget leaves rows for later runs."""
    budget = (f"--max-rows {config.max_rows}" if limited_by == "max_rows"
              else f"--max-hours {config.max_hours:g} ({duration_text(config.max_hours * 3600)} of audio)")
    return f"{budget}: {rows_later} more rows are left for the next runs"


def warn_unreadable(console: Console, failures: list, reasons: Counter | None = None) -> None:
    """Rows that fail before any model work (bad paths, unreadable headers; their ItemResults), said
    at the start: a wrong audio root shows in seconds, not in the summary hours later. reasons: the
    count by reason when failures holds only the first ones."""
    if failures:
        first = failures[0]
        reasons = reasons if reasons is not None else Counter(r.error for r in failures)
        console.warning(f"{sum(reasons.values())} rows cannot be read and become error rows "
                        f"({counts_text(reasons, TOP_REASONS)}); "
                        f"first: {first.item.id}: {first.error_detail}")


def stopped_lines(reason: str, rows_committed: int, rows_left: int, delta, out, log_path, report=None) -> list[str]:
    """The end of a run a budget (or a stop request) ended early: what it did, what is left
    (report: the page written for what is committed, if any)."""
    lines = [f"stopped early ({reason}): {rows_committed} rows committed, {rows_left} left; "
             "run the same command again to continue"]
    if delta is not None:
        lines.append(f"this run's rows: {delta}")
    lines.append(f"committed results: {out}/parts/ (the final tables are written when a run finishes)")
    if report is not None:
        lines.append(f"report: {report}")
    if log_path is not None:
        lines.append(f"log: {log_path}")
    return lines


def summary_lines(run_info: dict, out, log_path, delta=None, report: bool = False) -> list[str]:
    """The end of a run: rows by status and the top error reasons (for all of OUT), then this
    invocation's audio, wall time and throughput, then where everything is (report: whether
    report.html was written)."""
    counts, this_run = run_info["counts"], run_info["this_run"]
    lines = [f"done: {counts['rows']} rows ({counts_text(counts['rows_by_status'])})"]
    if counts["rows_by_error"]:
        lines.append(f"errors by reason: {counts_text(counts['rows_by_error'], TOP_REASONS)}")
    rate = this_run["throughput_audio_s_per_s"]
    lines.append(f"this run: {duration_text(this_run['audio_hours'] * 3600)} of audio in "
                 f"{duration_text(this_run['wall_s'])}" + (f" ({rate:.2f} audio-s/s)" if rate else ""))
    lines.append(f"outputs: {out}/annotations.parquet, segments.parquet, run.json" + (", report.html" if report else ""))
    if delta is not None:
        lines.append(f"this run's rows: {delta}")
    if log_path is not None:
        lines.append(f"log: {log_path}")
    return lines
