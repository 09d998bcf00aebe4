"""The page's sections on what happened: the status line and cards, rows by status and reason,
durations, throughput and time, padding and decode efficiency, the settings, the runs."""

from __future__ import annotations

import json

from pipeline.report import markup as m
from pipeline.report import svg
from pipeline.report.rows import FINAL
from pipeline.report.svg import text

TOP = 25  # reasons charted
RUNS_SHOWN = 30


def summary(page) -> str:
    f, info = page.figures, page.run_info
    if page.kind == FINAL and info:
        gate = info.get("error_gate") or {}
        verdict = "" if not gate else (" Error gate passed." if gate.get("passed") else
                                       f" Error gate failed: {gate.get('failed')} of {gate.get('rows')} rows of the run "
                                       f"failed (limit {gate.get('max_error_rate')}); no _SUCCESS.")
        line = (f'<div class="status finished">Finished {text(info.get("finished", ""))} (started '
                f'{text(info.get("started", ""))}).{text(verdict)}</div>')
    elif page.kind == FINAL:
        line = '<div class="status finished">annotations.parquet (no run.json beside it).</div>'
    else:
        latest = page.latest
        what = (f'The latest run ({text(latest.stamp)}) ended {text(latest.info.get("outcome", "early"))}'
                if latest else "No run has finished")
        line = (f'<div class="status stopped">{what}: this page shows every row committed so far '
                f'(the replay of runs/); annotations.parquet and run.json are written when a run finishes.</div>')
    cards = [("rows", m.fig("rows", m.n(f.rows)))]
    order = {"ok": 0, "partial": 1, "error": 2}
    cards += [(status, m.fig(f"status:{status}", m.n(count)))
              for status, count in sorted(f.by_status.items(), key=lambda kv: (order.get(kv[0], 3), kv[0]))]
    cards.append(("audio in these rows", m.fig("audio_hours_rows", f"{f.audio_s / 3600:.4f} h")))
    if info and page.kind == FINAL:
        this_run = info.get("this_run", {})
        cards.append(("audio annotated (run.json)", m.fig("audio_hours_annotated", f'{info.get("audio_hours_annotated")} h')))
        cards.append(("this run's wall time", m.fig("wall_s", f'{this_run.get("wall_s")} s')))
        cards.append(("throughput", m.fig("throughput", f'{this_run.get("throughput_audio_s_per_s")} audio-s/s')))
    elif page.latest:
        run = page.latest.info
        cards.append(("the latest run's wall time", m.fig("wall_s", f'{run.get("wall_s")} s')))
        if run.get("audio_s") and run.get("wall_s"):
            cards.append(("throughput", m.fig("throughput", f'{run["audio_s"] / run["wall_s"]:.4f} audio-s/s')))
    body = "".join(f'<div class="card">{text(name)}<b>{value}</b></div>' for name, value in cards)
    return line + f'<div class="cards">{body}</div>'


def status(page) -> str:
    f = page.figures
    if not f.rows:
        return '<h2 id="status">Rows by status and reason</h2><p class="muted">No rows yet.</p>'
    statuses = sorted(f.by_status.items(), key=lambda kv: (-kv[1], kv[0]))
    parts = ['<h2 id="status">Rows by status and reason</h2><div class="grid">',
             svg.bar_chart(statuses, "rows by status", svg.STATUS_COLOURS)]
    reasons = sorted(f.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    if reasons:
        parts.append(svg.bar_chart(reasons[:TOP], "rows by error reason", {r: svg.STATUS_COLOURS["error"] for r, _ in reasons}))
    parts.append("</div>")
    if reasons:
        rows = []
        for reason, count in reasons:
            examples = "".join(f'<div><code>{text(e["id"])}</code> {text(e["audio"] or "")}: '
                               f'<span class="muted">{m.clip(e["error_detail"])}</span></div>'
                               for e in f.reason_examples.get(reason, []))
            rows.append([f"<code>{text(reason)}</code>", m.fig(f"reason:{reason}", m.n(count)), examples])
        parts.append(m.table(["reason", "rows", "examples (id, audio: detail)"], rows, {1}))
    else:
        parts.append('<p class="muted">No row has an error.</p>')
    return "".join(parts)


def durations(page) -> str:
    f = page.figures
    chart = svg.histogram(f.duration_bins(), "rows by duration") if f.rows else ""
    return (f'<h2 id="durations">Durations</h2><p>{m.fig("audio_s_rows", f"{f.audio_s:.1f}")} s of audio in these rows '
            f'({f.audio_s / 3600:.4f} h), {f.ok_audio_s / 3600:.4f} h in ok rows.</p>{chart}')


def _timeline(page) -> tuple[dict | None, list[dict]]:
    if page.kind == FINAL and page.run_info:
        this_run = page.run_info.get("this_run", {})
        return this_run.get("timeline"), this_run.get("workers", [])
    if page.latest:
        return page.latest.info.get("timeline"), []
    return None, []


def throughput(page) -> str:
    timeline, workers = _timeline(page)
    parts = ['<h2 id="throughput">Throughput and time</h2>']
    if not timeline or not timeline.get("audio_s"):
        parts.append('<p class="muted">No worker returned results in the run this page describes (or it ran before '
                     'timelines were recorded).</p>')
    else:
        width = timeline["bucket_s"]
        series = {}
        for label, values in timeline["audio_s"].items():
            who = timeline.get("workers", {}).get(label, {})
            name = f'{label} pid {who.get("pid")}' + (f' NPU {who["npu"]}' if who.get("npu") not in (None, "") else "")
            series[name] = [v / width for v in values]
        parts.append(svg.line_chart(series, width, "audio seconds per second, per worker", "audio-s/s"))
    phases = (timeline or {}).get("phases") or {}
    if phases:
        parts.append("<h3>The run's wall time</h3>" + svg.stacked_bar(
            [("start-up (to the first result)", phases.get("startup_s")),
             ("annotating", phases.get("annotating_s")), ("finishing", phases.get("finishing_s"))], "wall time by phase"))
    generation = _generation(page)
    if generation:
        parts.append("<h3>Model time by phase (summed over workers)</h3>" + svg.stacked_bar(
            [(name, generation.get(f"{name}_s")) for name in ("encode", "prefill", "insert", "steps")],
            "model time by phase"))
    if workers:
        rows = [[text(w.get("pid")), text(w.get("npu") or ""), text(str(w.get("node", ""))[:12]), m.n(w.get("load_s")),
                 m.n(w.get("busy_s")), m.n(w.get("active_s")), m.n(w.get("peak_rss_mb"))] for w in workers]
        parts.append(m.table(["pid", "NPU", "node", "load s", "busy s", "active s", "peak RSS MB"], rows, {3, 4, 5, 6}))
    return "".join(parts)


def _generation(page) -> dict:
    if page.kind == FINAL and page.run_info:
        return page.run_info.get("generation") or {}
    return (page.latest.info.get("generation") if page.latest else None) or {}


def _ratio(a, b):
    return a / b if b else None


def efficiency(page) -> str:
    g = _generation(page)
    if not g:
        return ""
    where = "run.json (every committed part)" if page.kind == FINAL else "the latest run"
    items = [("mel frames: valid / computed", _ratio(g.get("valid_frames", 0), g.get("computed_frames", 0)),
              f'{g.get("valid_frames")} of {g.get("computed_frames")}'),
             ("tokens: valid / computed", _ratio(g.get("valid_tokens", 0), g.get("computed_tokens", 0)),
              f'{g.get("valid_tokens")} of {g.get("computed_tokens")}'),
             ("decode row-steps useful", _ratio(g.get("useful_row_steps", 0), g.get("row_steps", 0)),
              f'{g.get("useful_row_steps")} of {g.get("row_steps")}')]
    rows = [[text(k), m.fig(f"generation:{k}", m.n(v))] for k, v in sorted(g.items())]
    padding = (page.run_info or {}).get("padding_efficiency", {}) if page.kind == FINAL else {}
    shown = " ".join(f'{text(k)} {m.fig(f"padding:{k}", m.n(v))}' for k, v in padding.items())
    return (f'<h2 id="efficiency">Padding and decode efficiency</h2><p class="muted">From {where}. '
            f'{shown}</p>{svg.ratio_bars(items, "padding and decode efficiency")}'
            f'<details><summary>generation counts</summary>{m.table(["figure", "value"], rows, {1})}</details>')


def settings(page) -> str:
    """What made the labels: the model and every setting that identifies the output (state.json),
    with run.json's view of the run where it describes these rows."""
    state, info = page.settings or {}, page.run_info if page.kind == FINAL else None
    values = state.get("settings", {})
    rows = [["fingerprint", f'<code>{text(state.get("fingerprint", ""))}</code>']]
    for key in ("model", "revision", "prompt_style", "dtype", "device", "decoding", "audio_root",
                "segment_search_s", "silence_dbfs", "moderation_labels"):
        if key in values:
            rows.append([text(key), f"<code>{text(_compact(values[key]))}</code>"])
    if info:
        rows.append(["manifest", f'<code>{text(info.get("manifest", {}).get("path", ""))}</code> digest '
                                 f'<code>{text(info.get("manifest", {}).get("digest", ""))}</code>'])
        rows.append(["graphs", f'<code>{text(", ".join(info.get("shape", {}).get("graphs", [])))}</code>'])
        rows.append(["versions", f'<code>{text(_compact(info.get("versions", {})))}</code>'])
    tasks = []
    prompts, caps, parsers = values.get("prompts", {}), values.get("max_new_tokens", {}), values.get("parsers", {})
    for task in page.tasks:
        tasks.append([f"<code>{text(task)}</code>", text(parsers.get(task, "")), m.n(caps.get(task)),
                      m.clip(prompts.get(task, ""))])
    dims = values.get("dims")
    return ('<h2 id="settings">Settings and model</h2>' + m.table(["setting", "value"], rows)
            + (m.table(["task", "parser", "max new tokens", "prompt"], tasks, {2}) if tasks else "")
            + (f'<details><summary>model dimensions</summary><pre>{text(json.dumps(dims, indent=1))}</pre></details>'
               if dims else ""))


def _compact(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def runs(page) -> str:
    """The invocations that committed rows (runs/ files), latest first."""
    found = page.runs
    if not found:
        return '<h2 id="runs">Runs</h2><p class="muted">No runs/ file: no invocation recorded its rows.</p>'
    rows = []
    for run in reversed(found[-RUNS_SHOWN:]):
        info = run.info
        rate = info["audio_s"] / info["wall_s"] if info.get("audio_s") and info.get("wall_s") else None
        rows.append([f"<code>{text(run.stamp)}</code>", text(info.get("outcome", "")), m.n(run.num_rows),
                     m.n(info.get("wall_s")), m.fixed(info["audio_s"] / 3600 if info.get("audio_s") else 0.0),
                     m.fixed(rate, 3)])
    more = (f'<p class="muted">The latest {RUNS_SHOWN} of {len(found)} runs.</p>' if len(found) > RUNS_SHOWN else "")
    return ('<h2 id="runs">Runs that contributed</h2>' + more +
            m.table(["runs/ file", "outcome", "rows", "wall s", "audio h", "audio-s/s"], rows, {2, 3, 4, 5}))
