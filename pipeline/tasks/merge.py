"""How the answers for the segments of a long file combine into that file's row."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from pipeline.tasks.catalog import OUTPUT_COLUMNS
from pipeline.tasks.parsers import squash
from pipeline.tasks.scoring import max_scores

def _union(lists: Sequence[Sequence[str]], key=str.casefold) -> list[str]:
    seen: set[str] = set()
    merged = []
    for value in (v for values in lists for v in values):
        if key(value) not in seen:
            seen.add(key(value))
            merged.append(value)
    return merged


def _join_captions(captions: Sequence[str]) -> str:
    # Two captions that differ only in case, spacing or the final full stop are the same caption.
    distinct = _union([[c] for c in captions if c], key=lambda c: squash(c.casefold()).rstrip(".!?"))
    if len(distinct) == 1:
        return distinct[0]
    return " ".join(c if c[-1] in ".!?" else c + "." for c in distinct)


def aggregate(column: str, values: Sequence[object], kind: str | None = None) -> object:
    """Combine one column over a file's segments, given in segment order (None = no value).

    - transcript: the segments' transcripts joined with single spaces.
    - language: the most frequent language among segments; ties go to the earliest; None if none.
    - caption: the distinct captions in order, joined as sentences. A long recording's segments
      often get the same caption ("A man speaks."), which repeated reads like a bug; different
      captions in order read as a short account of the recording.
    - events, moderation: the union of the segments' lists, in first-seen order.
    - moderation_scores (kind "scores"): each label's highest P(yes) over the segments (a label
      present in any segment is present; tasks/scoring.py).
    - custom columns (kind "string" or "list", as output_columns gives): text joined with
      newlines, one line per segment that answered; lists as a union in first-seen order.
    """
    present = [v for v in values if v is not None]
    kind = OUTPUT_COLUMNS.get(column, kind)
    if column == "language":
        counts = Counter(present)
        return max(dict.fromkeys(present), key=counts.__getitem__) if present else None
    if column == "caption":
        return _join_captions([str(v).strip() for v in present])
    if kind == "scores":
        return max_scores(present)
    if kind == "list":
        return _union(present)
    if kind != "string":
        raise ValueError(f"aggregate: column {column!r} needs kind 'string' or 'list', got {kind!r}")
    texts = [str(v).strip() for v in present if str(v).strip()]
    return (" " if column == "transcript" else "\n").join(texts)


def aggregate_row(segments: Sequence[Mapping[str, object]], columns: Mapping[str, str]) -> dict[str, object]:
    """One row's columns from its segments' parsed outputs (in segment order)."""
    return {c: aggregate(c, [s.get(c) for s in segments], kind) for c, kind in columns.items()}
