"""Decode slots of two spans (graph_shapes.split_slots) against transformers on the same weights:
rows decoded in short slots and long ones, side by side in one step graph, get exactly the
reference's greedy tokens, with and without the checkpoint's repetition penalty."""

from dataclasses import replace

import numpy as np

from pipeline import shapes
from pipeline.model.decoding import generation_config, resolve
from pipeline.model.graph_shapes import split_slots
from tests.model.test_reference import QUESTIONS, clip_inputs, load_model, make_generator

# Short clips that fit the short slots, and clips of 12 s and the full window that need long ones.
SECONDS = [1.0, 29.99, 2.73, 4.9, 12.4, 0.3, 30.0, 3.3, 7.31]
BUDGETS = [10, 16, 12]


def run_split(checkpoint_dir, reference, name: str, checkpoint_decoding: bool):
    """The SECONDS clips through a generator whose 8 slots split_slots splits, checking where each
    row went -> (reference, prompt plan, clips, jobs)."""
    model_dir = checkpoint_dir(name)
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    decoding = resolve(generation_config(model_dir), job={}, options={}).decoding if checkpoint_decoding else None
    assert decoding is None or decoding.repetition_penalty != 1.0  # the penalty decides tokens in one of the tests
    generator, plan = make_generator(model_dir, ref, spec, model, QUESTIONS, BUDGETS, slots=8, decoding=decoding)
    tokens = [shapes.audio_tokens(shapes.frames_for_seconds(s)) for s in SECONDS]
    shape = split_slots(generator.shape, plan, BUDGETS, tokens)
    assert shape.short_slots and shape.long_slots  # this mix is worth a split
    generator, plan = make_generator(model_dir, ref, spec, model, QUESTIONS, BUDGETS, slots=8, decoding=decoding,
                                     shape=shape)
    inserted = []
    insert = generator._insert
    generator._insert = lambda action: (inserted.append(action), insert(action))
    clips, inputs = clip_inputs(ref.processor.feature_extractor, SECONDS)
    jobs = generator.run_all(inputs)
    placed = [(row, slot) for action in inserted for row, slot in zip(action.rows, action.slots)]
    short = [row for row, slot in placed if slot >= shape.long_slots]
    long = [row for row, slot in placed if slot < shape.long_slots]
    assert short and long
    assert all(len(row.src) + row.budget <= shape.short_span for row in short)
    assert any(len(row.src) + row.budget > shape.short_span for row in long)
    return ref, plan, clips, jobs


def test_short_and_long_slots_decode_the_reference_tokens(checkpoint_dir, reference, mindspore_cpu):
    ref, plan, clips, jobs = run_split(checkpoint_dir, reference, "small-instruct", checkpoint_decoding=False)
    for i, clip in enumerate(clips):
        for t, text in enumerate(plan.texts):
            expected, _ = ref.generate(text, clip, BUDGETS[t], plan.eos_ids)
            assert jobs[i].tokens[t] == expected, (SECONDS[i], QUESTIONS[t])
            assert abs(jobs[i].logprob_sums[t] - sum(ref.last_logprobs)) < 2e-3 * len(ref.last_logprobs)


def test_short_slots_with_the_checkpoints_penalty_equal_reference(checkpoint_dir, reference, mindspore_cpu):
    ref, plan, clips, jobs = run_split(checkpoint_dir, reference, "penalty-instruct", checkpoint_decoding=True)
    for i, clip in enumerate(clips):
        for t, text in enumerate(plan.texts):
            expected, ended, logprobs = ref.generate_as_configured(text, clip, BUDGETS[t])
            assert jobs[i].tokens[t] == expected and jobs[i].ended[t] == ended, (SECONDS[i], QUESTIONS[t])
            assert abs(jobs[i].logprob_sums[t] / len(logprobs) - np.mean(logprobs)) < 2e-3
