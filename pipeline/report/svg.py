"""Charts as inline SVG, drawn here in Python: the page needs no script, no library and no network.

Why server-side SVG rather than a JavaScript charting library inlined into the page: a report is
opened from a laptop's disk, an object store's console or a mail attachment, often where scripts
are blocked; a chart that is markup renders everywhere, prints, and cannot raise a script error.
The page stays small (a charting library alone is 200 KB and more), and its output is text that
tests can read. Tooltips are SVG <title> elements (the browser's own, no script).

Every chart is an <svg class="chart"> with a <title>; bars are <rect>s, lines <polyline>s.
"""

from __future__ import annotations

import html
import re

PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5",
           "#9c6b4e", "#9498a0")
STATUS_COLOURS = {"ok": "#3ca951", "partial": "#efb118", "error": "#ff725c"}
FONT = 12
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def text(value) -> str:
    """Escaped for HTML and SVG, with control characters (not allowed in either) shown as U+FFFD."""
    return html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True)


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{text(title)}"><title>{text(title)}</title>'
            + "".join(body) + "</svg>")


def _legend(entries: list[tuple[str, str]], top: float, width: int) -> tuple[list[str], float]:
    """Legend entries (colour, text) laid out left to right, wrapping; -> (markup, height)."""
    body, x, y = [], 0.0, top
    for colour, label in entries:
        span = 18 + len(label) * 6.4 + 16
        if x and x + span > width:
            x, y = 0.0, y + 18
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="10" height="10" fill="{colour}"/>'
                    f'<text x="{x + 14:.1f}" y="{y + 9:.1f}" font-size="{FONT - 1}">{text(label)}</text>')
        x += span
    return body, y + 18 - top


def _clip(label: str, limit: int) -> str:
    label = str(label)
    return label if len(label) <= limit else label[:limit - 1] + "\u2026"


def bar_chart(items: list[tuple[str, float]], title: str, colours: dict[str, str] | None = None,
              width: int = 560, label_chars: int = 28, unit: str = "") -> str:
    """Horizontal bars, one per (label, value), in the given order, the value written beside each."""
    if not items:
        return ""
    row, label_w, value_w = 20, min(label_chars, max(len(str(k)) for k, _ in items)) * 7.5 + 10, 70
    plot = width - label_w - value_w
    top = max(v for _, v in items) or 1
    body = []
    for i, (label, value) in enumerate(items):
        y = i * row
        length = max(1.0, plot * value / top) if value else 0.0
        colour = (colours or {}).get(label, PALETTE[0])
        body.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" font-size="{FONT}">'
                    f'{text(_clip(label, label_chars))}</text>'
                    f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="{row - 6}" fill="{colour}">'
                    f'<title>{text(label)}: {_number(value)}{unit}</title></rect>'
                    f'<text x="{label_w + length + 4:.1f}" y="{y + 14}" font-size="{FONT}">{_number(value)}{unit}</text>')
    return _svg(width, row * len(items) + 4, title, body)


def histogram(bins: list[tuple[str, float]], title: str, width: int = 640, height: int = 180,
              colour: str = PALETTE[0], unit: str = "rows") -> str:
    """Vertical bars over ordered bins (label, count); labels under every bar that has room."""
    if not bins:
        return ""
    left, bottom, top_pad = 44, 34, 14
    plot_w, plot_h = width - left - 8, height - bottom - top_pad
    peak = max(v for _, v in bins) or 1
    step = plot_w / len(bins)
    every = max(1, int(round(len(bins) * 46 / plot_w)))  # a label per ~46 px
    body = [f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - 8}" y2="{top_pad + plot_h}" stroke="#888"/>',
            f'<text x="{left - 4}" y="{top_pad + 4}" text-anchor="end" font-size="{FONT - 2}">{_number(peak)}</text>',
            f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end" font-size="{FONT - 2}">0</text>']
    for i, (label, value) in enumerate(bins):
        h = plot_h * value / peak
        if value:
            h = max(h, 1.0)
        x = left + i * step
        body.append(f'<rect x="{x + 1:.1f}" y="{top_pad + plot_h - h:.1f}" width="{max(step - 2, 1):.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{text(label)}: {_number(value)} {unit}</title></rect>')
        if i % every == 0:
            body.append(f'<text x="{x + step / 2:.1f}" y="{top_pad + plot_h + 14}" text-anchor="middle" '
                        f'font-size="{FONT - 2}">{text(label)}</text>')
    return _svg(width, height, title, body)


def line_chart(series: dict[str, list[float]], x_step: float, title: str, y_unit: str, width: int = 560,
               height: int = 200) -> str:
    """One polyline per series over x = 0, x_step, 2 x_step, ... (seconds), with a legend."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return ""
    left, bottom, top_pad = 44, 30, 12
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    points = max(len(v) for v in series.values())
    peak = max(max(v) for v in series.values()) or 1
    span = points * x_step
    body = [f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#888"/>',
            f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="#888"/>',
            f'<text x="{left - 4}" y="{top_pad + 8}" text-anchor="end" font-size="{FONT - 2}">{_number(peak)}</text>',
            f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end" font-size="{FONT - 2}">0</text>',
            f'<text x="{left + plot_w}" y="{top_pad + plot_h + 14}" text-anchor="end" font-size="{FONT - 2}">'
            f'{_number(span)} s</text>',
            f'<text x="{left}" y="{top_pad + plot_h + 14}" font-size="{FONT - 2}">0 s ({text(y_unit)}, '
            f'{_number(x_step)} s buckets)</text>']
    for n, (label, values) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        # Each bucket's value drawn across its bucket: steps show where a worker idled.
        coords = []
        for i, v in enumerate(values):
            y = top_pad + plot_h - plot_h * v / peak
            coords += [(left + plot_w * i / points, y), (left + plot_w * (i + 1) / points, y)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.6">'
                    f'<title>{text(label)}</title></polyline>')
    legend, legend_h = _legend([(PALETTE[n % len(PALETTE)], _clip(label, 32)) for n, label in enumerate(series)],
                               height + 4, width)
    return _svg(width, int(height + legend_h + 6), title, body + legend)


def ratio_bars(items: list[tuple[str, float | None, str]], title: str, width: int = 560) -> str:
    """Bars of fractions 0..1 on a grey track: (label, fraction or None, note)."""
    items = [i for i in items if i[1] is not None]
    if not items:
        return ""
    row, label_w = 22, 190
    plot = width - label_w - 130
    body = []
    for i, (label, value, note) in enumerate(items):
        y = i * row
        body.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="{FONT}">{text(label)}</text>'
                    f'<rect x="{label_w}" y="{y + 4}" width="{plot}" height="{row - 8}" fill="#e6e6e6"/>'
                    f'<rect x="{label_w}" y="{y + 4}" width="{max(plot * min(value, 1.0), 1):.1f}" height="{row - 8}" '
                    f'fill="{PALETTE[3]}"><title>{text(label)}: {value:.4f} {text(note)}</title></rect>'
                    f'<text x="{label_w + plot + 6}" y="{y + 15}" font-size="{FONT}">{value:.3f}</text>')
    return _svg(width, row * len(items) + 4, title, body)


def stacked_bar(parts: list[tuple[str, float]], title: str, unit: str = "s", width: int = 560) -> str:
    """One bar split into parts (label, amount), with a legend giving each amount."""
    parts = [(k, v) for k, v in parts if v and v > 0]
    if not parts:
        return ""
    total = sum(v for _, v in parts)
    body, x = [], 0.0
    for n, (label, value) in enumerate(parts):
        w = width * value / total
        body.append(f'<rect x="{x:.1f}" y="0" width="{max(w, 1):.1f}" height="22" fill="{PALETTE[n % len(PALETTE)]}">'
                    f'<title>{text(label)}: {value:,.2f} {unit}</title></rect>')
        x += w
    legend, legend_h = _legend([(PALETTE[n % len(PALETTE)], f"{label} {value:,.2f} {unit} ({100 * value / total:.0f}%)")
                                for n, (label, value) in enumerate(parts)], 30, width)
    return _svg(width, int(30 + legend_h), title, body + legend)
