"""report.html: one self-contained page (inline CSS, inline SVG charts, no script, no external
resource), rendered from the figures, run.json or the latest runs/ record, state.json's settings
and quality.json.

Figures a test compares with run.json and quality.json carry a `data-figure` attribute naming them
(`rows`, `status:ok`, `reason:missing_file`, `quality:transcript:wer`, ...); the text shown is the
same number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.report import label_sections, run_sections
from pipeline.report.figures import Figures
from pipeline.report.quality import QualityDetails
from pipeline.report.rows import RunFile
from pipeline.report.svg import text

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:14px;margin:14px 0 6px}.muted{color:#666}.status{padding:8px 12px;border-radius:4px;margin:8px 0}
.finished{background:#e7f5ea}.stopped{background:#fff4dc}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:19px}.grid{display:flex;flex-wrap:wrap;gap:8px 32px;align-items:flex-start}
table{border-collapse:collapse;background:#fff;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.t{max-width:360px;word-break:break-word}code{font-size:12px}audio{height:28px;width:210px;display:block}
.path{font-size:11px;color:#555;word-break:break-all;max-width:240px}details{margin:6px 0}
summary{cursor:pointer;font-weight:600}pre{white-space:pre-wrap;font-size:12px;background:#fff;border:1px solid #ddd;padding:6px}
"""


@dataclass
class PageInput:
    out: str
    generated: str
    kind: str  # rows.FINAL or rows.COMMITTED
    figures: Figures
    tasks: list[str]
    kinds: dict[str, str]  # task -> transcript | list | text
    run_info: dict | None = None  # run.json, when it describes these rows
    latest: RunFile | None = None  # the latest runs/ file, when the rows are the committed ones
    settings: dict = field(default_factory=dict)  # state.json
    runs: list[RunFile] = field(default_factory=list)
    quality: dict | None = None
    details: QualityDetails | None = None
    audio_href: Callable[[str], str | None] | None = None  # audio value -> relative link, None: unreachable


SECTIONS = (run_sections.status, run_sections.durations, run_sections.throughput, run_sections.efficiency,
            label_sections.languages, label_sections.tags, label_sections.scores,
            label_sections.confidence, label_sections.quality,
            label_sections.samples, run_sections.settings, run_sections.runs)
NAVIGATION = (("status", "status"), ("durations", "durations"), ("throughput", "throughput"),
              ("efficiency", "efficiency"), ("languages", "languages"), ("tags", "tags"), ("scores", "scores"),
              ("confidence", "confidence"), ("quality", "quality"), ("sample", "rows"), ("settings", "settings"),
              ("runs", "runs"))


def render(page: PageInput) -> str:
    body = [section(page) for section in SECTIONS]
    shown = "".join(body)
    links = " \u00b7 ".join(f'<a href="#{anchor}">{name}</a>' for anchor, name in NAVIGATION if f'id="{anchor}"' in shown)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Annotation report: {text(page.out)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>Annotation report</h1><div class=\"muted\"><code>{text(page.out)}</code> \u00b7 built "
            f"{text(page.generated)}</div><nav>{links}</nav>{run_sections.summary(page)}{shown}</main></body></html>\n")


