"""The graphs' token choice (pipeline/model/token_choice.py) against transformers' own logits
processors, as its generate() builds them for a decoding, on the same logits; and its draws
against a numpy implementation fed the same uniforms."""

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from pipeline.model import token_choice
from pipeline.model.decoding import PENALTY, TEMPERATURE, TOP_K, TOP_P_LIMIT, Decoding, row_parameters
from tests.model import numpy_choice

VOCAB = 300
# One row each, all in one graph call: each row its own decoding (as a retry's rows beside the run's).
DECODINGS = [
    Decoding(repetition_penalty=1.3),  # greedy: the penalty alone
    Decoding(do_sample=True, temperature=0.7, top_k=20, top_p=0.5, repetition_penalty=1.1),  # Qwen2-Audio's
    Decoding(do_sample=True, temperature=1.0, top_k=0, top_p=0.9),
    Decoding(do_sample=True, temperature=1.5, top_k=5, top_p=1.0, repetition_penalty=0.8),
    Decoding(do_sample=True, temperature=0.3, top_k=50, top_p=0.01),  # top-p below the top token: it alone
    Decoding(do_sample=True, temperature=2.0, top_k=12, top_p=1.0, repetition_penalty=1.2),  # ties at the k-th
    Decoding(do_sample=True, temperature=1.0, top_k=VOCAB + 7, top_p=0.7),  # k above the vocabulary
]


class Filtered(nn.Cell):
    """Penalty, temperature, top-k and top-p as the graphs run them -> renormalised probabilities."""

    def construct(self, logits, presence, parameters):
        scores = token_choice.penalise(logits, presence, parameters[:, PENALTY:PENALTY + 1])
        scaled, kept = token_choice.sampling_filter(
            scores, parameters[:, TEMPERATURE:TEMPERATURE + 1],
            parameters[:, TOP_K:TOP_K + 1].astype(ms.int32), parameters[:, TOP_P_LIMIT:TOP_P_LIMIT + 1])
        return ops.softmax(ops.masked_fill(scaled, ops.logical_not(kept), float("-inf")), -1), kept


class Choose(nn.Cell):
    def construct(self, logits, presence, parameters):
        return token_choice.choose(logits, presence, parameters, True, True)


def rows(seed: int):
    """Logits with both signs, each row's sequence of ids (repeats included: the penalty applies
    once per id), its presence mask, and the row that ties at its top-k boundary."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((len(DECODINGS), VOCAB)) * 3).astype(np.float32)
    tied = logits[5]
    order = np.argsort(-tied)
    tied[order[10:16]] = tied[order[10]]  # the 11th to 16th largest equal: top-12 keeps all six
    sequences = [rng.integers(0, VOCAB, size=40).tolist() for _ in DECODINGS]
    presence = np.zeros((len(DECODINGS), VOCAB), np.float32)
    for row, ids in enumerate(sequences):
        np.add.at(presence[row], ids, 1.0)
    return logits, sequences, presence


def transformers_processed(reference, logits: np.ndarray, ids: list[int], decoding: Decoding) -> np.ndarray:
    """The scores transformers' generate() samples from (or takes the argmax of) for this decoding."""
    import torch

    model = reference.model
    config, _ = model._prepare_generation_config(
        None, do_sample=decoding.do_sample, temperature=decoding.temperature, top_k=decoding.top_k,
        top_p=decoding.top_p, repetition_penalty=decoding.repetition_penalty)
    processors = model._get_logits_processor(config, input_ids_seq_length=len(ids), device="cpu", model_kwargs={})
    return processors(torch.tensor([ids]), torch.tensor(logits[None])).numpy()[0]


@pytest.fixture(scope="module")
def reference_model(checkpoint_dir, reference, mindspore_cpu):
    return reference(checkpoint_dir("small-instruct"))


def test_kept_tokens_and_probabilities_equal_transformers_processors(reference_model):
    logits, sequences, presence = rows(seed=1)
    parameters = np.asarray([row_parameters(d, 1.0, VOCAB) for d in DECODINGS], np.float32)
    probs, kept = Filtered()(Tensor(logits), Tensor(presence), Tensor(parameters))
    probs, kept = probs.asnumpy(), kept.asnumpy()
    for row, decoding in enumerate(DECODINGS):
        expected = transformers_processed(reference_model, logits[row], sequences[row], decoding)
        if decoding.greedy:  # no warpers: the penalised scores themselves, and their argmax
            np.testing.assert_allclose(logits_after_penalty(logits[row], presence[row], decoding), expected, rtol=1e-6)
            continue
        assert np.array_equal(kept[row], np.isfinite(expected)), (row, decoding)
        finite = np.isfinite(expected)
        reference_probs = np.exp(expected[finite] - expected[finite].max())
        np.testing.assert_allclose(probs[row][finite], reference_probs / reference_probs.sum(), rtol=1e-5, atol=1e-7)
        assert np.all(probs[row][~finite] == 0)
    assert kept[5].sum() > 12  # every token tied with the 12th largest is kept, as transformers keeps them
    assert kept[4].sum() == 1  # top_p 0.01: only the most likely token


def test_tokens_tied_at_the_top_p_boundary_are_all_kept(reference_model):
    """transformers keeps as many of them as its unstable sort puts above the boundary; all of them
    are kept here (the documented difference, token_choice's docstring), and nothing else differs."""
    logits, sequences, presence = rows(seed=1)
    decoding = Decoding(do_sample=True, temperature=2.0, top_k=12, top_p=0.95, repetition_penalty=1.2)
    parameters = np.asarray([row_parameters(decoding, 1.0, VOCAB)] * len(DECODINGS), np.float32)
    _, kept = Filtered()(Tensor(logits), Tensor(presence), Tensor(parameters))
    kept = kept.asnumpy()[5]
    expected = np.isfinite(transformers_processed(reference_model, logits[5], sequences[5], decoding))
    scores = numpy_choice.penalise(logits[5], sequences[5], decoding.repetition_penalty)
    extra = kept & ~expected
    assert not (expected & ~kept).any() and extra.any()
    assert len(set(scores[extra]) | {scores[expected].min()}) == 1  # only ties of the lowest kept score


def logits_after_penalty(logits, presence, decoding):
    scores = logits.copy()
    seen = presence > 0
    scores[seen] = np.where(scores[seen] < 0, scores[seen] * np.float32(decoding.repetition_penalty),
                            scores[seen] / np.float32(decoding.repetition_penalty))
    return scores


def test_draws_equal_numpy_fed_the_same_uniforms(mindspore_cpu):
    choose = Choose()
    chosen = 0
    for seed in range(6):
        logits, sequences, presence = rows(seed)
        uniforms = 1.0 - np.random.default_rng(100 + seed).random(len(DECODINGS))
        parameters = np.asarray([row_parameters(d, u, VOCAB) for d, u in zip(DECODINGS, uniforms)], np.float32)
        tokens, logprobs = choose(Tensor(logits), Tensor(presence), Tensor(parameters))
        tokens = tokens.asnumpy()
        for row, decoding in enumerate(DECODINGS):
            assert tokens[row] == numpy_choice.choose(logits[row], sequences[row], decoding, uniforms[row]), (seed, row)
        # Log-probabilities under the raw logits, whatever the penalty and the warpers did.
        shifted = logits - logits.max(-1, keepdims=True)
        raw = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        np.testing.assert_allclose(logprobs.asnumpy(), raw[np.arange(len(DECODINGS)), tokens], atol=1e-5)
        chosen += len(set(tokens.tolist()))
    assert chosen > len(DECODINGS)  # the draws do vary with the logits and the uniforms
