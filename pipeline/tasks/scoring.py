"""Scored moderation (`moderation_mode: scored`): one yes/no question per label, scored by the
model's first answer token instead of parsed from a generated answer.

Each label is its own task (`moderation:LABEL`, catalog.resolve_tasks), asked after the clip's
shared prefix with a one-token cap, so it costs a prompt suffix in the clip's prefill and no decode
step. The engine reads the raw log-softmax of that first step at the tokenizer's "yes" and "no" ids
(model/scoring.py) and reports P(yes) = mass(yes ids) / (mass(yes ids) + mass(no ids)): the
repetition penalty, temperature and top-k/top-p of the run's decoding never touch it.

Columns: `moderation_scores` maps every label to its P(yes); `moderation` lists the labels whose
score reaches their threshold (`moderation_thresholds`, else `moderation_threshold`), in label
order, so that code reading the generated mode's list keeps working. A file cut into segments takes
each label's highest score over its segments (a label present anywhere is present), which is the
same as the union of the segments' lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SCORED_PARSER = "moderation_score"
TASK_PREFIX = "moderation:"
LABEL_PLACEHOLDER = "{label}"
# Base prompts follow the pre-training phrasing ("...:" then the answer); instruct prompts ask for
# the bare word, so that the first token is the verdict.
BASE_QUESTION = f"Does the speech in this audio contain {LABEL_PLACEHOLDER}? Answer yes or no:"
INSTRUCT_QUESTION = f"Does this recording contain {LABEL_PLACEHOLDER}? Answer yes or no."


def task_name(label: str) -> str:
    return TASK_PREFIX + label


def text_score(text: str | None) -> float:
    """P(yes) from the answer's text, for a model that reports no distribution (the test fake):
    1.0 for an answer that starts with yes, else 0.0."""
    return 1.0 if (text or "").strip().casefold().startswith("yes") else 0.0


def scored_columns(labels: Sequence[str], thresholds: Sequence[float], scores: Mapping[str, float]) -> dict:
    """The moderation columns from each label's P(yes): scores as (label, P) pairs in label order,
    and the labels at or over their threshold."""
    return {
        "moderation_scores": [(label, float(scores[label])) for label in labels],
        "moderation": [label for label, threshold in zip(labels, thresholds) if scores[label] >= threshold],
    }


def max_scores(values: Sequence[object]) -> list[tuple[str, float]] | None:
    """A file's scores from its segments' (maps as dicts or (label, P) pairs; None: no scores):
    each label's highest, in first-seen order; None when no segment has scores."""
    best: dict[str, float] = {}
    for value in values:
        if value is None:
            continue
        for label, score in (value.items() if isinstance(value, Mapping) else value):
            best[label] = max(score, best.get(label, score))
    return list(best.items()) if best else None
