"""The next token of every row, inside the graphs, as transformers' logits processors choose it.

transformers' generate() (5.x, `_get_logits_processor`) applies, in this order:
1. RepetitionPenaltyLogitsProcessor, greedy or not: every token id present in the sequence so far
   (prompt, audio placeholders and answer alike, each id once) has its logit divided by the penalty
   when positive and multiplied by it when negative;
2. when sampling, TemperatureLogitsWarper (divide by the temperature), TopKLogitsWarper (drop
   scores below the k-th largest: ties with it are kept) and TopPLogitsWarper (sort ascending,
   softmax, cumulative sum; drop tokens whose cumulative probability is at most 1 - top_p, never the
   most likely one: min_tokens_to_keep 1), then a draw from the softmax of what is left.
Greedy decoding takes the argmax after step 1.

Here the same arithmetic runs on fixed shapes, every row with its own values (a row of
`parameters`, laid out by model/decoding.py's row_parameters), so rows of a retry with other
settings share the graphs with the run's rows. The draw is an inverse CDF over token ids with the
row's uniform u in (0, 1], which makes it reproducible from the row's seeded stream alone and
checkable against numpy (tests/model/test_token_choice.py).

Where a row holds tokens tied exactly at the top-p boundary, all of them are kept: transformers
keeps as many as its (unstable) sort order puts above the boundary, which no other implementation
can reproduce; with float logits such ties are practically only tokens whose logits are identical.

Every chosen token also gets its log-probability under the model's raw distribution (before the
penalty, temperature, top-k or top-p): the `logprob` output column.
"""

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from pipeline.model.decoding import DRAW, PENALTY, SAMPLE, TEMPERATURE, TOP_K, TOP_P_LIMIT

NEG_INF = float("-inf")


def _column(parameters, index: int):
    return parameters[:, index:index + 1]


def penalise(logits, presence, penalty):
    """logits [n, V]; presence [n, V], above 0 where the row's sequence holds the id; penalty [n, 1]."""
    penalised = ops.where(logits < 0, logits * penalty, logits / penalty)
    return ops.where(presence > 0, penalised, logits)


def sampling_filter(scores, temperature, top_k, top_p_limit):
    """Temperature, top-k and top-p. top_k [n, 1] int32 (the vocabulary size keeps every token);
    top_p_limit [n, 1]: 1 - top_p, or -1 when top_p is 1 (no top-p, as transformers skips it).
    -> (scores / temperature, kept [n, V] bool)."""
    vocab = scores.shape[-1]
    scaled = scores / temperature
    ascending = ops.sort(scaled, -1)[0]
    kth = ops.gather_elements(ascending, 1, vocab - top_k)
    below_k = ascending < kth
    probs = ops.softmax(ops.masked_fill(ascending, below_k, NEG_INF), -1)
    # Dropped tokens form a prefix of the ascending order: the top-k cut, then the top-p one.
    dropped = ops.logical_or(ops.cumsum(probs, -1) <= top_p_limit, below_k)
    first_kept = ops.minimum(dropped.astype(ms.int32).sum(-1, keepdims=True),
                             ops.fill(ms.int32, kth.shape, vocab - 1))
    threshold = ops.gather_elements(ascending, 1, first_kept)
    return scaled, scaled >= threshold


def draw(scaled, kept, u):
    """The token whose span of the kept tokens' renormalised probabilities, laid out in token-id
    order, holds u [n, 1] in (0, 1]."""
    vocab = scaled.shape[-1]
    cdf = ops.cumsum(ops.softmax(ops.masked_fill(scaled, ops.logical_not(kept), NEG_INF), -1), -1)
    index = (cdf < u * cdf[:, -1:]).astype(ms.int32).sum(-1)
    return ops.minimum(index, ops.fill(ms.int32, index.shape, vocab - 1))


def log_probability(logits, tokens, argmax: bool = False):
    """log_softmax(logits)[row, tokens[row]]: the raw distribution's log-probability of each token.
    argmax: the tokens are the logits' argmax, whose logit is the maximum: no gather needed (the
    plain greedy step, where every kernel counts)."""
    top = logits.max(-1, keepdims=True)
    log_total = ops.log(ops.exp(logits - top).sum(-1, keepdims=True))
    if argmax:
        return -log_total.reshape(-1)
    return (ops.gather_elements(logits, 1, tokens.reshape(-1, 1)) - top - log_total).reshape(-1)


def choose(logits, presence, parameters, penalty: bool, sampling: bool):
    """logits [n, V] float32 -> (next tokens [n] int32, their raw log-probabilities [n] float32).
    penalty and sampling are the graph's features (decoding.GraphFeatures), fixed when it compiles:
    without them this is the argmax alone, and presence and parameters are not read."""
    scores = penalise(logits, presence, _column(parameters, PENALTY)) if penalty else logits
    tokens = ops.argmax(scores, -1).astype(ms.int32)
    if sampling:
        scaled, kept = sampling_filter(scores, _column(parameters, TEMPERATURE),
                                       _column(parameters, TOP_K).astype(ms.int32),
                                       _column(parameters, TOP_P_LIMIT))
        drawn = draw(scaled, kept, _column(parameters, DRAW))
        tokens = ops.where(parameters[:, SAMPLE] > 0, drawn, tokens)
    return tokens, log_probability(logits, tokens, argmax=not (penalty or sampling))


class TokenChooser(nn.Cell):
    """choose() in a graph: greedy graphs (with or without the penalty) through the compiled CPU
    kernel where there is one (model/cpu_kernels.py: two passes a row where MindSpore takes six to
    ten kernels), sampling graphs and the rest through MindSpore's operations above."""

    def __init__(self, kernels, penalty: bool, sampling: bool):
        super().__init__()
        self.penalty, self.sampling = penalty, sampling
        self.native = kernels is not None and not sampling
        if self.native:
            self.kernel = kernels.op("GreedyChoice", shape=lambda logits, *_: [logits[0], 2])
            self.threads_input = Tensor(np.array([kernels.threads], np.int32))
            self.no_penalty = Tensor(np.array([1.0], np.float32))

    def construct(self, logits, presence, parameters):
        """As choose(logits, presence, parameters, penalty, sampling)."""
        if self.native:
            penalty = _column(parameters, PENALTY) if self.penalty else self.no_penalty
            picked = self.kernel(logits, presence, penalty, self.threads_input)
            return picked[:, 0].astype(ms.int32), picked[:, 1]
        return choose(logits, presence, parameters, self.penalty, self.sampling)
