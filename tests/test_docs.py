"""The documentation's shape, read as text (no model, nothing imported): README.md stays short, every
docs/ page is linked from it, and every relative link (markdown links and images) in README.md,
docs/*.md and manifests/README.md names a file that exists, and a heading that exists when the link
has a `#fragment`.

Links inside code (fenced blocks, `inline code`) are not links; a heading's fragment is GitHub's:
lower case, punctuation other than `-` and `_` dropped, spaces to `-`, a repeated one suffixed -1, -2.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# What a newcomer reads in two minutes; the rest lives in docs/.
README_MAX_BYTES = 12_500

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target up to whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "manifests" / "README.md"]


def prose(text: str) -> str:
    """The text without code: fenced blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text()))


def slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The fragments GitHub gives the headings of a markdown file."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    return broken


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README) if not t.startswith("#")}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert list(DOCS.glob("*.md")), "no docs pages"
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


@pytest.mark.parametrize("path", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert not broken_links(path)


def test_the_checks_can_fail(tmp_path):
    """The link reader itself: a broken file link, a missing heading and a link in code."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## Exit codes: `0`, 2\n\n```bash\n# not a heading\n```\n")
    page.write_text(
        "[ok](other.md#exit-codes-0-2) [gone](missing.md) [bad](other.md#not-a-heading)\n"
        "`[code](missing.md)`\n\n```md\n[fenced](missing.md)\n```\n![img](other.md)\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#not-a-heading: no heading #not-a-heading in other.md",
    ]


def test_every_reason_code_is_documented_with_its_kind():
    """The table in docs/guarantees.md names every reason code pipeline/reasons.py has, in the row
    of its kind (permanent, transient, processing)."""
    from pipeline.reasons import KIND

    rows = {}
    for line in (DOCS / "guarantees.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1].split(" ")[0] in {"permanent", "transient", "processing"}:
            rows[cells[1].split(" ")[0]] = cells[2]
    wrong = [f"{reason} ({kind})" for reason, kind in KIND.items()
             if f"`{reason.value}`" not in rows.get(kind.value, "")]
    assert not wrong, f"reason codes missing from their kind's row in docs/guarantees.md: {wrong}"


def test_the_architecture_page_names_modules_that_exist():
    """Each module or folder docs/architecture.md's table names under a folder of pipeline/ exists
    there: a module moved or renamed shows here, not in a newcomer's first read."""
    missing = []
    for line in (DOCS / "architecture.md").read_text().splitlines():
        cells = line.split("|")
        if not line.startswith("| `") or len(cells) < 4:
            continue
        folder = re.findall(r"`([^`]+)`", cells[1])[0]
        base = ROOT / "pipeline" / (folder if folder.endswith("/") else "")
        for name in re.findall(r"`(\w+\.py|\w+/)`", cells[2]) + re.findall(r"`(\w+\.py)`", cells[1]):
            # `runs/` in a role is OUT's folder of that name, not a package's.
            if name != "runs/" and not (base / name).exists() and not (ROOT / "pipeline" / name).exists():
                missing.append(f"{folder} {name}")
    assert not missing, f"docs/architecture.md names what pipeline/ does not have: {missing}"


def test_every_annotate_option_is_in_the_options_table():
    """docs/running.md's table lists every option `annotate` takes (the parser is built, nothing runs)."""
    from pipeline.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.choices and "annotate" in a.choices)
    options = {s for a in commands.choices["annotate"]._actions for s in a.option_strings} - {"-h", "--help"}
    table = "\n".join(line for line in (DOCS / "running.md").read_text().splitlines() if line.startswith("|"))
    missing = sorted(o for o in options if f"`{o}" not in table)
    assert not missing, f"annotate options missing from docs/running.md's table: {missing}"
