"""What the model says about each answer, as output columns: how sure it was, how long the answer
is, whether it hit its cap, whether it loops, and whether it was generated again. Each is a map
from task name to a value, in segments.parquet (per segment) and annotations.parquet (per row):

    logprob        map<string, double>  mean natural-log probability of the task's generated tokens,
                                        the end token included when one was generated, under the
                                        model's raw next-token distribution (before repetition
                                        penalty, temperature, top-k and top-p); a row cut into
                                        segments: the mean over all its segments' tokens
    answer_tokens  map<string, int32>   tokens generated, the end token excluded (a row: the sum)
    hit_cap        map<string, bool>    the answer stopped at its max_new_tokens cap, not at an end
                                        token: it may be cut short (a row: any segment did)
    looped         map<string, bool>    it hit its cap while repeating itself (model/loops.py; a
                                        row: any segment did)
    retried        map<string, string>  only tasks whose looping answer was generated again
                                        (retry_degenerate): the decoding the retry changed, e.g.
                                        "repetition_penalty=1.2"; the other columns describe the
                                        answer kept, the retry's

Committed parts hold `logprob_sum` instead of `logprob`: a row's mean over its segments needs the
sums and the token counts (answer_tokens, and one end token unless hit_cap), not the segments'
means. Null maps: an error row, or a model that cannot say (a task that did not run is absent).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

ANSWER_TOKENS, HIT_CAP, LOOPED, RETRIED = "answer_tokens", "hit_cap", "looped", "retried"
LOGPROB, LOGPROB_SUM = "logprob", "logprob_sum"


def _map(value: pa.DataType) -> pa.DataType:
    return pa.map_(pa.string(), value)


_SHARED = ((ANSWER_TOKENS, _map(pa.int32())), (HIT_CAP, _map(pa.bool_())), (LOOPED, _map(pa.bool_())),
           (RETRIED, _map(pa.string())))
# In committed parts.
PART_FIELDS = tuple(pa.field(name, kind) for name, kind in ((LOGPROB_SUM, _map(pa.float64())), *_SHARED))
# In segments.parquet and annotations.parquet.
OUTPUT_FIELDS = tuple(pa.field(name, kind) for name, kind in ((LOGPROB, _map(pa.float64())), *_SHARED))
OUTPUT_NAMES = tuple(f.name for f in OUTPUT_FIELDS)
PART_NAMES = tuple(f.name for f in PART_FIELDS)


def part_values(answers: dict, retried: dict[str, str]) -> dict:
    """A result's part columns. answers: task name -> model.interface.Answer ({} when the model
    cannot say: null maps)."""
    if not answers:
        return {name: None for name in PART_NAMES}
    return {
        LOGPROB_SUM: [(t, a.logprob_sum) for t, a in answers.items()],
        ANSWER_TOKENS: [(t, a.tokens) for t, a in answers.items()],
        HIT_CAP: [(t, not a.ended) for t, a in answers.items()],
        LOOPED: [(t, a.looped) for t, a in answers.items()],
        RETRIED: [(t, how) for t, how in retried.items() if t in answers],
    }


def _count(tokens: int, hit_cap: bool) -> int:
    """Tokens a log-probability sum covers: the answer's, and its end token unless it hit its cap."""
    return tokens + (0 if hit_cap else 1)


def segment_values(segment: dict) -> dict:
    """segments.parquet's answer columns from one part row (maps arrive as lists of pairs)."""
    if segment.get(LOGPROB_SUM) is None:
        return {name: None for name in OUTPUT_NAMES}
    sums, tokens, capped = (dict(segment[c]) for c in (LOGPROB_SUM, ANSWER_TOKENS, HIT_CAP))
    means = [(t, total / _count(tokens[t], capped[t]) if _count(tokens[t], capped[t]) else None)
             for t, total in sums.items()]
    return {LOGPROB: means, **{name: segment[name] for name, _ in _SHARED}}


def file_values(segments: Sequence[dict], tasks: Sequence[str]) -> dict:
    """annotations.parquet's answer columns from a row's successful segments (part rows, in order):
    log-probability sums and token counts added up before the mean; caps and loops: any segment."""
    known = [s for s in segments if s.get(LOGPROB_SUM) is not None]
    if not known:
        return {name: None for name in OUTPUT_NAMES}
    per_segment = [{c: dict(s[c] or []) for c in PART_NAMES} for s in known]
    values = {name: [] for name in OUTPUT_NAMES}
    for task in tasks:
        answered = [s for s in per_segment if task in s[LOGPROB_SUM]]
        if not answered:
            continue
        tokens = sum(s[ANSWER_TOKENS][task] for s in answered)
        count = sum(_count(s[ANSWER_TOKENS][task], s[HIT_CAP][task]) for s in answered)
        total = sum(s[LOGPROB_SUM][task] for s in answered)
        values[LOGPROB].append((task, total / count if count else None))
        values[ANSWER_TOKENS].append((task, tokens))
        values[HIT_CAP].append((task, any(s[HIT_CAP][task] for s in answered)))
        values[LOOPED].append((task, any(s[LOOPED][task] for s in answered)))
        retried = next((s[RETRIED][task] for s in answered if task in s[RETRIED]), None)
        if retried is not None:
            values[RETRIED].append((task, retried))
    return values
