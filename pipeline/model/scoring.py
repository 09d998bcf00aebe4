"""P(yes) from a question's first answer token (scored moderation, tasks/scoring.py); no MindSpore.

Which ids count as "yes" and "no": the spellings in VARIANTS that the tokenizer holds as one token
each ("yes", "Yes", " yes", " Yes" and the same for no; common words, which a 151k-token BPE such as
Qwen2's is expected to hold whole, not checked here without its files). A word with
no single-token spelling (small test tokenizers) counts the first id of each spelling instead, and
an id both words would count (a bare space) counts for neither. run.json records the ids and the
text of each (settings `moderation_scoring`).

The prefill graph gathers the raw log-softmax of the first step at a fixed vector of CANDIDATES
ids (yes ids, then no ids, padded), so that the graph's shapes do not depend on the tokenizer;
P(yes) = sum(exp(yes)) / (sum(exp(yes)) + sum(exp(no))), computed as a logistic of the two
log-sum-exps (exact however small both masses are).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORDS = ("yes", "no")
VARIANTS = {word: (word, word.capitalize(), " " + word, " " + word.capitalize()) for word in WORDS}
CANDIDATES = 8  # yes and no ids together, at most: the graph's fixed width


@dataclass(frozen=True)
class YesNo:
    """The ids a scored question's first token is read at, and which tasks are scored."""

    yes_ids: tuple[int, ...]
    no_ids: tuple[int, ...]
    tasks: tuple[int, ...]  # task indices whose first token is scored
    yes_tokens: tuple[str, ...] = ()  # each id's text, for run.json
    no_tokens: tuple[str, ...] = ()

    def candidates(self) -> np.ndarray:
        """[CANDIDATES] int32: yes ids, no ids, then the first yes id again as padding."""
        ids = [*self.yes_ids, *self.no_ids]
        return np.asarray(ids + [ids[0]] * (CANDIDATES - len(ids)), np.int32)

    def p_yes(self, logprobs: np.ndarray) -> np.ndarray:
        """logprobs [q, CANDIDATES] (the raw log-softmax at candidates()) -> P(yes) [q]."""
        logprobs = np.asarray(logprobs, np.float64)
        yes = _logsumexp(logprobs[:, : len(self.yes_ids)])
        no = _logsumexp(logprobs[:, len(self.yes_ids): len(self.yes_ids) + len(self.no_ids)])
        return 1.0 / (1.0 + np.exp(no - yes))

    def settings(self) -> dict:
        return {"yes": dict(zip(self.yes_tokens, self.yes_ids)), "no": dict(zip(self.no_tokens, self.no_ids)),
                "score": "P(yes) = mass of the yes ids / mass of the yes and no ids, raw first-step log-softmax"}


def _logsumexp(values: np.ndarray) -> np.ndarray:
    top = values.max(-1, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(-1, keepdims=True))).reshape(-1)


def yes_no_ids(tokenizer, tasks: tuple[int, ...]) -> YesNo:
    """The yes and no ids of this tokenizer (called like a transformers tokenizer)."""
    found: dict[str, dict[int, str]] = {}
    for word in WORDS:
        encoded = {text: tokenizer(text, add_special_tokens=False)["input_ids"] for text in VARIANTS[word]}
        single = {ids[0]: text for text, ids in encoded.items() if len(ids) == 1}
        found[word] = single or {ids[0]: text for text, ids in encoded.items() if ids}
    shared = set(found["yes"]) & set(found["no"])
    for word in WORDS:
        found[word] = {i: text for i, text in found[word].items() if i not in shared}
        if not found[word]:
            raise ValueError(f"moderation_mode scored: the tokenizer has no token that starts only {word!r}")
    if len(found["yes"]) + len(found["no"]) > CANDIDATES:
        raise ValueError(f"moderation_mode scored: more than {CANDIDATES} yes/no ids")
    return YesNo(tuple(found["yes"]), tuple(found["no"]), tuple(tasks), tuple(found["yes"].values()),
                 tuple(found["no"].values()))
