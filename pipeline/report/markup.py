"""Small pieces of the page's markup: escaped text, numbers, tables, figures tests can find."""

from __future__ import annotations

from pipeline.report.svg import text

TEXT_CHARS = 240  # a label longer than this is cut on the page (the Parquet file has it whole)


def n(value) -> str:
    return "" if value is None else str(value)


def fixed(value, digits: int = 4) -> str:
    return "\u2013" if value is None else f"{value:.{digits}f}"


def seconds(value) -> str:
    if value is None:
        return "\u2013"
    return f"{value:.1f} s" if value < 90 else f"{value / 60:.1f} min" if value < 5400 else f"{value / 3600:.2f} h"


def fig(name: str, shown: str) -> str:
    return f'<span data-figure="{text(name)}">{shown}</span>'


def table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="{"n" if i in numeric else "t"}">{c}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def clip(value) -> str:
    value = "" if value is None else str(value)
    return text(value if len(value) <= TEXT_CHARS else value[:TEXT_CHARS] + "\u2026")


def label(value) -> str:
    if value is None:
        return '<span class="muted">null</span>'
    if isinstance(value, list):
        return text(", ".join(map(str, value))) if value else '<span class="muted">(none)</span>'
    return clip(value)


def audio(where: str | None, href: str | None) -> str:
    """The audio's path, with a player when the page can reach the file (href: a relative link)."""
    if where is None:
        return ""
    player = f'<audio controls preload="none" src="{text(href)}"></audio>' if href else ""
    return f'{player}<div class="path">{text(where)}</div>'


