"""The MindSpore model against transformers' PyTorch Qwen2-Audio on the same weights.

The claim under test: for every row of a batch that mixes clip lengths inside a bucket and across
buckets, greedy tokens are identical to the reference generating that clip alone, unpadded, at 30 s,
with the same prompt. Tolerances for continuous values: encoder outputs and first-step logits
within 1e-4 absolute (measured differences are about 1e-6 in fp32).
"""

import numpy as np
import pytest

import mindspore as ms

from pipeline import shapes
from pipeline.model.generate import Generator, encoder_key_mask
from pipeline.model.graph_shapes import declare_shapes
from pipeline.model.graphs import EncoderGraph, Qwen2Audio
from pipeline.model.model_plan import Sampling
from pipeline.model.prompts import build_prompt_plan, eos_token_ids, resolve_style
from pipeline.model.spec import ModelSpec
from pipeline.model.weights import load_weights
from tests.model.conftest import features_for, noise_clip

ATOL = 1e-4
QUESTIONS = ["Describe this audio in one sentence.", "List the sound events in this audio.", "Transcribe the speech."]
BUDGETS = [10, 16, 12]
BUCKETS = (5.0, 10.0, 30.0)
BATCH = {5.0: 3, 10.0: 2, 30.0: 2}
# Mixed lengths inside a bucket (the 5 s one holds a 1 s clip and one at its edge minus the
# margin), a half-empty batch (10 s), and a clip near 30 s beside a 12 s one.
CLIPS = {5.0: [1.0, 2.73, 4.9], 10.0: [7.31], 30.0: [29.9, 12.4]}


def load_model(model_dir):
    spec = ModelSpec.from_checkpoint(model_dir)
    model = Qwen2Audio(spec, ms.float32)
    load_weights(model, model_dir, spec.tie_embeddings)
    return spec, model


def make_generator(model_dir, ref, spec, model, questions, budgets, sampling=Sampling(), eos_extra=()):
    style = resolve_style("auto", model_dir)
    eos = eos_token_ids(model_dir, ref.processor.tokenizer, style) + tuple(eos_extra)
    plan = build_prompt_plan(ref.processor, style, questions, eos)
    declared = declare_shapes(BUCKETS, BATCH, plan, max(budgets), spec.max_positions)
    return Generator(model, spec, plan, declared, budgets, ms.float32, sampling), plan


def clips_for(bucket_s):
    return [noise_clip(seconds, seed=int(seconds * 100)) for seconds in CLIPS[bucket_s]]


@pytest.fixture(scope="module", params=["small-instruct", "odd-base"])
def setup(request, checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir(request.param)
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    return model_dir, ref, spec, model


def test_batched_greedy_tokens_equal_reference_alone(setup):
    model_dir, ref, spec, model = setup
    generator, plan = make_generator(model_dir, ref, spec, model, QUESTIONS, BUDGETS)
    for bucket_s in BUCKETS:
        clips = clips_for(bucket_s)
        features, valid = features_for(ref.processor.feature_extractor, clips, generator.declared[bucket_s].frames)
        result = generator.generate(bucket_s, features, valid, [f"clip{i}" for i in range(len(clips))],
                                    keep_first_logits=True)
        for i, clip in enumerate(clips):
            for t, text in enumerate(plan.texts):
                expected, logits = ref.generate(text, clip, BUDGETS[t], plan.eos_ids)
                assert result.tokens[i][t] == expected, (bucket_s, CLIPS[bucket_s][i], QUESTIONS[t])
                np.testing.assert_allclose(result.first_logits[i * len(QUESTIONS) + t], logits, atol=ATOL)


def test_compiles_one_graph_per_declared_shape(setup):
    model_dir, ref, spec, model = setup
    generator, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], BUDGETS[:2])
    assert generator.graphs_compiled == 0
    for round_ in range(2):  # a second pass over every bucket must compile nothing new
        for bucket_s in BUCKETS:
            clips = clips_for(bucket_s)[: 1 + round_]
            features, valid = features_for(ref.processor.feature_extractor, clips, generator.declared[bucket_s].frames)
            generator.generate(bucket_s, features, valid, [str(i) for i in range(len(clips))])
        assert generator.graphs_compiled == 3 * len(BUCKETS)


def test_encoder_matches_reference_for_valid_tokens(setup):
    model_dir, ref, spec, model = setup
    encoder = EncoderGraph(model)
    for seconds, bucket_s in [(3.0, 5.0), (4.37, 5.0), (4.37, 10.0), (9.9, 15.0), (29.97, 30.0)]:
        clip = noise_clip(seconds, seed=7)
        frames = shapes.bucket_frames_for_seconds(bucket_s)
        features, valid = features_for(ref.processor.feature_extractor, [clip], frames)
        out = encoder(ms.Tensor(features), ms.Tensor(encoder_key_mask(valid, frames))).asnumpy()[0]
        expected = ref.audio_features(clip)
        assert expected.shape[0] == shapes.audio_tokens(valid[0])
        np.testing.assert_allclose(out[: expected.shape[0]], expected, atol=ATOL)


def test_shared_prefix_equals_each_task_alone(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("small-instruct")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    shared, _ = make_generator(model_dir, ref, spec, model, QUESTIONS, BUDGETS)
    clips = clips_for(5.0)
    features, valid = features_for(ref.processor.feature_extractor, clips, shared.declared[5.0].frames)
    together = shared.generate(5.0, features, valid, ["a", "b", "c"]).tokens
    for t, question in enumerate(QUESTIONS):
        alone, plan = make_generator(model_dir, ref, spec, model, [question], [BUDGETS[t]])
        tokens = alone.generate(5.0, features, valid, ["a", "b", "c"]).tokens
        for i, clip in enumerate(clips):
            expected, _ = ref.generate(plan.texts[0], clip, BUDGETS[t], plan.eos_ids)
            assert tokens[i][0] == expected == together[i][t]


def test_rows_stop_at_end_of_sequence(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("odd-base")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    generator, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [16, 16])
    clips = clips_for(5.0)
    features, valid = features_for(ref.processor.feature_extractor, clips, generator.declared[5.0].frames)
    free = generator.generate(5.0, features, valid, ["a", "b", "c"]).tokens
    # Declare a token the model emits mid-answer as end-of-sequence: rows must stop right there.
    stop = free[0][0][3]
    stopping, plan = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [16, 16], eos_extra=(stop,))
    result = stopping.generate(5.0, features, valid, ["a", "b", "c"])
    assert len(result.tokens[0][0]) <= 3
    for i, clip in enumerate(clips):
        for t, text in enumerate(plan.texts):
            expected, _ = ref.generate(text, clip, 16, plan.eos_ids)
            assert stop not in result.tokens[i][t]
            assert result.tokens[i][t] == expected
    # When every row's first token is an end-of-sequence token, the batch runs no decode step.
    firsts = tuple({row[0] for clip in free for row in clip})
    immediate, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [16, 16], eos_extra=firsts)
    ended = immediate.generate(5.0, features, valid, ["a", "b", "c"])
    assert ended.tokens == [[[], []]] * 3 and ended.stats.decode_steps == 0


def test_sampling_is_reproducible_per_row(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("small-instruct")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    sampling = Sampling(temperature=1.5, top_p=0.9, seed=11)
    generator, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [12, 12], sampling=sampling)
    greedy, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [12, 12])
    clips = clips_for(5.0)
    frames = generator.declared[5.0].frames
    features, valid = features_for(ref.processor.feature_extractor, clips, frames)
    first = generator.generate(5.0, features, valid, ["a", "b", "c"]).tokens
    again = generator.generate(5.0, features, valid, ["a", "b", "c"]).tokens
    assert first == again
    # The same clip with the same key, alone and at another position in the batch: same draws.
    alone = generator.generate(5.0, features[1:2], valid[1:2], ["b"]).tokens
    assert alone[0] == first[1]
    assert greedy.generate(5.0, features, valid, ["a", "b", "c"]).tokens != first
    other_seed, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [12, 12],
                                   sampling=Sampling(temperature=1.5, top_p=0.9, seed=12))
    assert other_seed.generate(5.0, features, valid, ["a", "b", "c"]).tokens != first
