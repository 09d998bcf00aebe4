"""The page's sections on the labels: languages, tags, confidence, quality against references, and
the rows themselves (a stratified sample, and per task its lowest-confidence rows)."""

from __future__ import annotations

from pipeline.report import markup as m
from pipeline.report import svg
from pipeline.report.figures import SAMPLE_ROWS
from pipeline.report.svg import text

TOP = 25


def languages(page) -> str:
    found = page.figures.languages
    if not found:
        return ""
    items = sorted(((k if k is not None else "(none detected)", v) for k, v in found.items()),
                   key=lambda kv: (-kv[1], kv[0]))
    rows = [[f"<code>{text(k)}</code>", m.fig(f"language:{k}", m.n(v))] for k, v in items[:TOP]]
    return ('<h2 id="languages">Languages</h2><p class="muted">Detected with the transcript, over rows with labels '
            '(ok and partial).</p><div class="grid">' + svg.bar_chart(items[:TOP], "rows by detected language")
            + m.table(["language", "rows"], rows, {1}) + "</div>")


def tags(page) -> str:
    parts = []
    for column, counts in page.figures.tags.items():
        if not counts:
            parts.append(f'<h3>{text(column)}</h3><p class="muted">No tag in any row.</p>')
            continue
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
        parts.append(f'<h3>{text(column)}: the {len(top)} most frequent of {len(counts)} tags '
                     f'({m.fig(f"rows_with_tags:{column}", m.n(page.figures.rows_with_tags[column]))} rows have any)</h3>'
                     + svg.bar_chart(top, f"most frequent {column}", label_chars=26))
    return '<h2 id="tags">Event tags and moderation labels</h2>' + "".join(parts) if parts else ""


def scores(page) -> str:
    """Scored moderation: per label, rows by tenth of P(yes) (where a threshold would cut)."""
    found = page.figures.scores
    if not found:
        return ""
    parts = ['<h2 id="scores">Moderation scores: P(yes) per label</h2><p class="muted">Rows by tenth of P(yes) '
             '(a long file: its highest score over its segments); a label is flagged at or over its threshold '
             '(run.json: settings, moderation_scoring).</p><div class="grid">']
    for label in found:
        parts.append(f'<div><h3>{text(label)}</h3>'
                     + svg.histogram(page.figures.score_bins(label), f"{label} P(yes)", width=420, height=150)
                     + "</div>")
    return "".join(parts) + "</div>"


def confidence(page) -> str:
    """The logprob column's distribution per task (mean log-probability per generated token)."""
    found = page.figures.logprob
    if not found:
        return ""
    parts = ['<h2 id="confidence">Confidence: mean log-probability per token</h2><div class="grid">']
    for task, figures in found.items():
        parts.append(f'<div><h3>{text(task)}: {m.fig(f"logprob_rows:{task}", m.n(figures.rows))} rows, mean '
                     f'{m.fig(f"logprob_mean:{task}", m.fixed(figures.mean, 3))}</h3>'
                     + svg.histogram(figures.bins(), f"{task} mean log-probability", width=420, height=150) + "</div>")
    return "".join(parts) + "</div>"


def quality(page) -> str:
    if page.quality is None:
        return ""
    details = page.details
    parts = ['<h2 id="quality">Label quality against references</h2><p class="muted">Over ok rows whose reference is '
             'not null; written to quality.json. Transcripts: corpus-level WER and CER after lower-casing, punctuation '
             'and symbols to spaces, whitespace collapsed. Lists: micro precision, recall and F1 over rows, tags '
             'compared as sets.</p>']
    for task, figures in page.quality.items():
        column = details.references.get(task, "") if details else ""
        parts.append(f'<h3>{text(task)} against <code>{text(column)}</code>: '
                     f'{m.fig(f"quality:{task}:rows", m.n(figures["rows"]))} rows</h3>')
        if "wer" in figures:
            parts.append(_transcript(task, figures))
        elif "precision" in figures:
            parts.append(_list(task, figures, details.tags.get(task, []) if details else []))
        else:
            extra = {k: v for k, v in figures.items() if k != "rows"}
            parts.append(m.table(["figure", "value"], [[text(k), m.fig(f"quality:{task}:{k}", m.fixed(v))]
                                                       for k, v in extra.items()], {1}) if extra else
                         '<p class="muted">No text-similarity score is configured for text tasks; the rows compared '
                         'are counted.</p>')
        worst = details.worst.get(task, []) if details else []
        if worst:
            parts.append(f"<details open><summary>worst rows ({len(worst)})</summary>{_worst(page, task, worst)}</details>")
    return "".join(parts)


def _percent(value) -> str:
    return "" if value is None else f" ({100 * value:.2f} %)"


def _transcript(task: str, figures: dict) -> str:
    rows = [["all", m.n(figures["rows"]),
             m.fig(f"quality:{task}:wer", m.fixed(figures["wer"])) + _percent(figures["wer"]),
             m.fig(f"quality:{task}:cer", m.fixed(figures["cer"])) + _percent(figures["cer"])]]
    for language, found in figures.get("by_language", {}).items():
        key = f"quality:{task}:by_language:{language}"
        rows.append([f"<code>{text(language)}</code>", m.fig(f"{key}:rows", m.n(found["rows"])),
                     m.fig(f"{key}:wer", m.fixed(found["wer"])) + _percent(found["wer"]),
                     m.fig(f"{key}:cer", m.fixed(found["cer"])) + _percent(found["cer"])])
    return m.table(["language", "rows", "WER", "CER"], rows, {1, 2, 3})


def _list(task: str, figures: dict, tag_table: list[dict]) -> str:
    overall = m.table(["precision", "recall", "F1"], [[m.fig(f"quality:{task}:{k}", m.fixed(figures[k]))
                                                       for k in ("precision", "recall", "f1")]], {0, 1, 2})
    if not tag_table:
        return overall
    rows = [[text(t["tag"]), m.n(t["references"]), m.n(t["labels"]), m.fixed(t["precision"], 3),
             m.fixed(t["recall"], 3), m.fixed(t["f1"], 3)] for t in tag_table]
    return overall + ("<details><summary>per tag (the most frequent in the references)</summary>"
                      + m.table(["tag", "in references", "in labels", "precision", "recall", "F1"], rows,
                                {1, 2, 3, 4, 5}) + "</details>")


def _worst(page, task: str, worst: list[dict]) -> str:
    rows = []
    for row in worst:
        audio = m.audio(row["audio"], page.audio_href(row["audio"]) if page.audio_href and row["audio"] else None)
        if "wer" in row:
            rows.append([f'<code>{text(row["id"])}</code>', audio, text(row["language"]), m.fixed(row["wer"], 3),
                         m.clip(row["reference"]), m.label(row["label"])])
        else:
            rows.append([f'<code>{text(row["id"])}</code>', audio, text(", ".join(row["missing"])),
                         text(", ".join(row["extra"])), m.label(row["reference"]), m.label(row["label"])])
    if "wer" in worst[0]:
        return m.table(["id", "audio", "language", "WER", "reference", "label"], rows, {3})
    return m.table(["id", "audio", "missing", "extra", "reference", "label"], rows)


def _row_cells(page, row: dict, tasks: list[str], logprob: bool) -> list[str]:
    status = text(row["status"]) + (f'<div><code>{text(row["error"])}</code></div>' if row.get("error") else "")
    cells = [f'<code>{text(row["id"])}</code>', status, m.fixed(row.get("duration_s"), 1),
             text(row.get("language") or ""),
             m.audio(row.get("audio"), page.audio_href(row["audio"]) if page.audio_href and row.get("audio") else None)]
    for task in tasks:
        value = m.label(row.get(task)) if row["status"] != "error" else m.clip(row.get("error_detail"))
        if logprob and row.get("logprob") is not None:
            score = dict(row["logprob"]) if isinstance(row["logprob"], list) else row["logprob"]
            if score.get(task) is not None:
                value += f' <span class="muted">({score[task]:.2f})</span>'
        cells.append(value)
    return cells


def samples(page) -> str:
    f, tasks = page.figures, [t for t in page.tasks if t != "language"]
    if not f.rows:
        return ""
    logprob = bool(f.logprob)
    headers = ["id", "status", "duration s", "language", "audio", *tasks]
    parts = [f'<h2 id="sample">Rows</h2><h3>A sample of {len(f.sample)} rows, stratified by status</h3>'
             f'<p class="muted">Up to {SAMPLE_ROWS} rows: every status gets a few, the rest in proportion; a random '
             'choice, the same on every rebuild. Audio plays where the page can reach the file (a relative link); '
             'object storage shows the path.' + (" Mean log-probability per token in brackets." if logprob else "")
             + "</p>", m.table(headers, [_row_cells(page, row, tasks, logprob) for row in f.sample], {2})]
    for task, rows in f.lowest.items():
        parts.append(f"<details open><summary>{text(task)}: the {len(rows)} lowest-confidence rows</summary>"
                     + m.table(headers, [_row_cells(page, row, tasks, logprob) for row in rows], {2}) + "</details>")
    return "".join(parts)
