"""The run report: OUT/report.html (one self-contained page) and, with reference columns,
OUT/quality.json. Written at the end of every run that finished or stopped at a budget
(annotate.py) and by `python -m pipeline report OUT`.

One pass over the output rows feeds both the page's figures (figures.py) and the quality
measures (quality.py), reading only the columns they need (rows.py); the page is rendered from
those, from run.json or the latest runs/ record, and from state.json (page.py). Its size does not
grow with the number of rows: counts, fixed bins, and samples of bounded size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline import storage
from pipeline.output.sink import OutputDir
from pipeline.report.audio_links import AudioLinks
from pipeline.report.figures import BASE_COLUMNS, LOGPROB_COLUMN, SCORES_COLUMN, Gatherer
from pipeline.report.page import PageInput, render
from pipeline.report.quality import QualityJudge, TextSimilarity, check_references, task_kind
from pipeline.report.rows import FINAL, read_rows, run_files
from pipeline.storage import Location
from pipeline.tasks.scoring import TASK_PREFIX

PAGE = "report.html"
QUALITY = "quality.json"


@dataclass
class ReportWritten:
    page: Location
    quality_file: Location | None
    quality: dict | None
    rows: int
    page_bytes: int
    seconds: float


def _read_json(where: Location) -> dict | None:
    try:
        return json.loads(storage.read_bytes(where) or b"{}")
    except FileNotFoundError:
        return None


def write_report(out, references: Mapping[str, str] | None = None, kind: str | None = None,
                 text_similarity: TextSimilarity | None = None) -> ReportWritten:
    """Write OUT/report.html, and OUT/quality.json when references ({task: column}) are given
    (None: the references of the run.json's job, if any). kind: rows.FINAL (annotations.parquet),
    rows.COMMITTED (the replay of runs/), or None to choose (rows.read_rows). Raises
    BadReference (a UserError) for a task or column the output does not have."""
    started = time.perf_counter()
    sink = OutputDir(out)
    runs = run_files(sink)
    rows = read_rows(sink, kind, runs)
    last_run_json = _read_json(sink.path / "run.json")
    run_info = last_run_json if rows.kind == FINAL else None  # a later run stopped: it describes other rows
    state = _read_json(sink.path / "state.json") or {}
    settings = state.get("settings", {})
    parsers = settings.get("parsers", {})
    ordered = [t["name"] for t in (run_info or {}).get("tasks", [])] or list(parsers)
    # Scored moderation asks one question per label (moderation:LABEL); together they fill `moderation`.
    ordered = list(dict.fromkeys("moderation" if t.startswith(TASK_PREFIX) else t for t in ordered))
    tasks = [t for t in ordered if t in rows.names]
    kinds = {t: task_kind(parsers.get(t), rows.schema.field(t).type) for t in tasks}
    if references is None:
        references = ((last_run_json or {}).get("config") or {}).get("references") or {}
    references = dict(references)
    if references:
        check_references(references, rows.schema, tasks)
    has_logprob = LOGPROB_COLUMN in rows.names
    has_scores = SCORES_COLUMN in rows.names
    gatherer = Gatherer(tasks, [t for t in tasks if kinds[t] == "list"], has_logprob, has_scores)
    judge = QualityJudge(references, kinds, text_similarity) if references else None
    columns = [*BASE_COLUMNS, *tasks, *([LOGPROB_COLUMN] if has_logprob else []),
               *([SCORES_COLUMN] if has_scores else []), *references.values()]
    for batch in rows.batches(list(dict.fromkeys(columns))):
        gatherer.add(batch)
        if judge is not None:
            judge.add(batch)
    quality, details = judge.result() if judge is not None else (None, None)
    quality_file = None
    if quality is not None:
        quality_file = sink.path / QUALITY
        storage.write_bytes(quality_file, json.dumps(quality, indent=2, sort_keys=True).encode())
    latest = runs[-1] if runs else None
    folders = ((run_info or {}).get("manifest") or {}).get("folders") or (latest.info.get("manifest_folders", [])
                                                                           if latest else [])
    page = PageInput(
        out=str(sink.path), generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), kind=rows.kind,
        figures=gatherer.finish(), tasks=tasks, kinds=kinds, run_info=run_info,
        latest=latest if rows.kind != FINAL else None, settings=state, runs=runs, quality=quality, details=details,
        audio_href=AudioLinks(sink.path, folders, settings.get("audio_root")))
    data = render(page).encode()
    storage.write_bytes(sink.path / PAGE, data)
    return ReportWritten(sink.path / PAGE, quality_file, quality, page.figures.rows, len(data),
                         time.perf_counter() - started)


def report_from_args(args) -> int:
    """`python -m pipeline report OUT [--reference TASK=COLUMN ...]`."""
    from pipeline.report.quality import parse_reference_options

    references = parse_reference_options(args.reference) if args.reference else None
    written = write_report(args.out, references)
    print(f"wrote {written.page} ({written.page_bytes / 1024:.0f} KB, {written.rows} rows, "
          f"{written.seconds:.2f} s)")
    if written.quality_file is not None:
        print(f"wrote {written.quality_file}: " + "; ".join(_quality_line(task, q) for task, q in written.quality.items()))
    return 0


def _quality_line(task: str, figures: dict) -> str:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if isinstance(v, float))
    return f"{task}: {figures['rows']} rows" + (f", {shown}" if shown else "")


__all__: Sequence[str] = ("PAGE", "QUALITY", "ReportWritten", "report_from_args", "write_report")
