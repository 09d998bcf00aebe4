"""The MindSpore engine against transformers' PyTorch Qwen2-Audio on the same weights.

The claim under test: whatever shares an encoder row, a prefill row or the decode slots with a
clip, each of its task rows gets exactly the greedy tokens the reference generates for that clip
alone, unpadded, at 30 s, with the same prompt. Tolerances for continuous values: encoder outputs
and first-step logits within 1e-4 absolute (measured differences are about 1e-6 in fp32).
"""

import numpy as np
import pytest

import mindspore as ms

from pipeline import shapes
from pipeline.intake.features import clip_features
from pipeline.model import cpu_kernels
from pipeline.model.generate import Generator
from pipeline.model.graph_shapes import declare_shape
from pipeline.model.graphs import Qwen2Audio
from pipeline.model.interface import ClipInput
from pipeline.model.decoding import Decoding
from pipeline.model.packing import pack_encoder_row
from pipeline.model.prompts import build_prompt_plan, eos_token_ids, resolve_style
from pipeline.model.spec import ModelSpec
from pipeline.model.weights import load_weights
from tests.model.conftest import noise_clip

ATOL = 1e-4
QUESTIONS = ["Describe this audio in one sentence.", "List the sound events in this audio.", "Transcribe the speech."]
BUDGETS = [10, 16, 12]
# Lengths from a fraction of a second to the full window: short clips share encoder and prefill
# rows, a 29.99 s clip nearly fills one alone, 30 s fills it to the last frame.
SECONDS = [1.0, 2.73, 4.9, 7.31, 29.99, 12.4, 0.3, 30.0, 3.3]


def load_model(model_dir, compiled_kernels: bool = True):
    """The model as a CPU worker builds it: GELU, RMSNorm, the MLP's SiLU and attention the compiled
    kernels (model/cpu_kernels.py), or MindSpore's where compiled_kernels is False (what a node that
    cannot build them runs)."""
    spec = ModelSpec.from_checkpoint(model_dir)
    kernels = cpu_kernels.for_graphs("cpu", "fp32", None) if compiled_kernels else None
    assert kernels is not None or not compiled_kernels, "the CPU kernels did not build (see the warning)"
    model = Qwen2Audio(spec, ms.float32, kernels)
    load_weights(model, model_dir, spec.tie_embeddings)
    return spec, model


def make_generator(model_dir, ref, spec, model, questions, budgets, slots=5, decoding=Decoding(), eos_extra=(),
                   retry=None, parents=None, shape=None):
    style = resolve_style("auto", model_dir)
    eos = eos_token_ids(model_dir, ref.processor.tokenizer, style) + tuple(eos_extra)
    plan = build_prompt_plan(ref.processor, style, questions, eos, parents)
    shape = shape or declare_shape(plan, budgets, slots, spec.max_positions, spec.n_mels)
    return Generator(model, spec, plan, shape, budgets, ms.float32, decoding or Decoding(), retry), plan


def clip_inputs(extractor, seconds, prefix="clip"):
    clips = [noise_clip(s, seed=int(s * 100)) for s in seconds]
    inputs = []
    for i, clip in enumerate(clips):
        features, valid = clip_features(extractor, clip)
        inputs.append(ClipInput(f"{prefix}{i}", features, valid))
    return clips, inputs


# Both ways against the reference: the compiled kernels on one checkpoint, MindSpore's operations
# on the other.
@pytest.fixture(scope="module", params=[("small-instruct", True), ("odd-base", False)],
                ids=["small-instruct-compiled-kernels", "odd-base-mindspore-ops"])
def setup(request, checkpoint_dir, reference, mindspore_cpu):
    name, compiled_kernels = request.param
    model_dir = checkpoint_dir(name)
    ref = reference(model_dir)
    spec, model = load_model(model_dir, compiled_kernels)
    return model_dir, ref, spec, model


def test_greedy_tokens_equal_reference_alone(setup):
    model_dir, ref, spec, model = setup
    # Five slots for 27 rows: rows are refilled as others end, and prefill rows hold several clips.
    generator, plan = make_generator(model_dir, ref, spec, model, QUESTIONS, BUDGETS)
    generator.keep_first_logits = True
    clips, inputs = clip_inputs(ref.processor.feature_extractor, SECONDS)
    jobs = generator.run_all(inputs)
    assert generator.stats.encoder_rows < len(clips) and generator.stats.prefill_rows < len(clips)
    for i, clip in enumerate(clips):
        for t, text in enumerate(plan.texts):
            expected, logits = ref.generate(text, clip, BUDGETS[t], plan.eos_ids)
            assert jobs[i].tokens[t] == expected, (SECONDS[i], QUESTIONS[t])
            np.testing.assert_allclose(generator.first_logits[(f"clip{i}", t)], logits, atol=ATOL)
            # The raw log-probabilities of the answer and its end id, summed (the logprob column's numerator).
            assert abs(jobs[i].logprob_sums[t] - sum(ref.last_logprobs)) < 2e-3 * len(ref.last_logprobs)


def test_packed_encoder_rows_match_the_reference_for_valid_tokens(setup):
    model_dir, ref, spec, model = setup
    generator, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:1], BUDGETS[:1], slots=1)
    for seconds in ([3.0, 4.37, 9.9, 0.05, 7.3], [29.97], [30.0], [0.01, 0.03, 28.8]):
        clips, inputs = clip_inputs(ref.processor.feature_extractor, seconds)
        row = pack_encoder_row([c.features for c in inputs], [c.valid_frames for c in inputs],
                               generator.shape.row_frames, spec.n_mels)
        generator.encode_graph(*generator.encode_inputs(row, block=0))
        audio = generator.state.audio.asnumpy()
        for c, clip in enumerate(clips):
            expected = ref.audio_features(clip)
            assert row.token_counts[c] == expected.shape[0] == shapes.audio_tokens(inputs[c].valid_frames)
            start = row.token_offsets[c]
            np.testing.assert_allclose(audio[start:start + row.token_counts[c]], expected, atol=ATOL)


def test_shared_prefix_equals_each_task_alone(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("small-instruct")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    shared, _ = make_generator(model_dir, ref, spec, model, QUESTIONS, BUDGETS)
    clips, inputs = clip_inputs(ref.processor.feature_extractor, [1.0, 4.9, 12.4])
    together = shared.generate(inputs)
    for t, question in enumerate(QUESTIONS):
        alone, plan = make_generator(model_dir, ref, spec, model, [question], [BUDGETS[t]])
        tokens = alone.generate(inputs)
        for i, clip in enumerate(clips):
            expected, _ = ref.generate(plan.texts[0], clip, BUDGETS[t], plan.eos_ids)
            assert tokens[i][0] == expected == together[i][t]


def test_clips_submitted_while_others_decode_are_exact(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("odd-base")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    generator, plan = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [16, 16], slots=3)
    first_clips, first = clip_inputs(ref.processor.feature_extractor, [5.5, 20.0], prefix="a")
    later_clips, later = clip_inputs(ref.processor.feature_extractor, [1.5, 9.0], prefix="b")
    early_jobs = generator.submit(first)
    for _ in range(12):  # into decoding, slots busy
        generator.run_once()
    assert generator.scheduler.active
    late_jobs = generator.submit(later)
    while generator.run_once() is not None:
        pass
    for jobs, clips in ((early_jobs, first_clips), (late_jobs, later_clips)):
        for job, clip in zip(jobs, clips):
            for t, text in enumerate(plan.texts):
                assert job.tokens[t] == ref.generate(text, clip, 16, plan.eos_ids)[0]


def test_rows_stop_at_end_of_sequence(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("odd-base")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    generator, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [16, 16])
    clips, inputs = clip_inputs(ref.processor.feature_extractor, [1.0, 2.73, 4.9])
    free = generator.generate(inputs)
    # Declare a token the model emits mid-answer as end-of-sequence: rows must stop right there.
    stop = free[0][0][3]
    stopping, plan = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [16, 16], eos_extra=(stop,))
    tokens = stopping.generate(inputs)
    assert len(tokens[0][0]) <= 3
    for i, clip in enumerate(clips):
        for t, text in enumerate(plan.texts):
            expected, _ = ref.generate(text, clip, 16, plan.eos_ids)
            assert stop not in tokens[i][t]
            assert tokens[i][t] == expected
    # When every row's first token is an end-of-sequence token, no row is ever inserted or decoded.
    firsts = tuple({row[0] for clip in free for row in clip})
    immediate, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], [16, 16], eos_extra=firsts)
    assert immediate.generate(inputs) == [[[], []]] * 3
    assert immediate.stats.decode_steps == 0 and immediate.stats.inserted_rows == 0


def test_compiles_each_declared_graph_once(setup):
    model_dir, ref, spec, model = setup
    generator, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], BUDGETS[:2])
    assert generator.graphs_compiled == 0
    generator.precompile()
    assert generator.graphs_compiled == len(generator.shape.graph_names()) == 4
    _, inputs = clip_inputs(ref.processor.feature_extractor, [1.0, 29.0, 6.0])
    generator.generate(inputs)
    assert generator.graphs_compiled == 4
