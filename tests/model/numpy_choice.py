"""The token choice written plainly in numpy, from transformers' documented processors: what the
graphs' choice (pipeline/model/token_choice.py) is checked against, fed the same uniforms."""

import numpy as np

from pipeline.model.decoding import Decoding


def penalise(logits: np.ndarray, seen_ids, penalty: float) -> np.ndarray:
    scores = logits.astype(np.float32).copy()
    ids = np.unique(np.asarray(list(seen_ids), np.int64))
    picked = scores[ids]
    scores[ids] = np.where(picked < 0, picked * np.float32(penalty), picked / np.float32(penalty))
    return scores


def kept_probabilities(scores: np.ndarray, decoding: Decoding) -> np.ndarray:
    """Temperature, top-k (ties with the k-th kept), top-p (ascending cumulative probability above
    1 - top_p, the top token always kept; ties at the boundary all kept) -> renormalised probabilities."""
    scaled = scores.astype(np.float32) / np.float32(decoding.temperature)
    keep = np.ones(scaled.shape, bool)
    if decoding.top_k:
        kth = np.sort(scaled)[-min(decoding.top_k, scaled.size)]
        keep &= scaled >= kth
    if decoding.top_p < 1:
        ascending = np.sort(np.where(keep, scaled, -np.inf))
        probs = np.exp(ascending - ascending[-1])
        cumulative = np.cumsum(probs / probs.sum())
        dropped = min(int((cumulative <= 1 - decoding.top_p).sum()), scaled.size - 1)
        keep &= scaled >= ascending[dropped]
    probs = np.where(keep, np.exp(scaled - scaled[keep].max()), 0.0)
    return probs / probs.sum()


def choose(logits: np.ndarray, seen_ids, decoding: Decoding, u: float) -> int:
    """The next token: argmax of the penalised scores, or the token whose span of the kept
    probabilities, laid out in token-id order, holds u in (0, 1]."""
    scores = penalise(logits, seen_ids, decoding.repetition_penalty)
    if decoding.greedy:
        return int(np.argmax(scores))
    cdf = np.cumsum(kept_probabilities(scores, decoding))
    return min(int((cdf < u * cdf[-1]).sum()), cdf.size - 1)
