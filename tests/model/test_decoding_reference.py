"""Decoding as the checkpoint configures it, against transformers' generate() reading the same
generation_config.json: greedy with a repetition penalty token for token, each answer's raw
log-probabilities, and sampling draw for draw (numpy fed the same uniforms over the reference's
logits), reproducible whatever else runs beside a row."""

import numpy as np
import pytest

from pipeline.model.decoding import Decoding, generation_config, resolve
from pipeline.model.generate import row_seed
from tests.model import numpy_choice
from tests.model.test_reference import QUESTIONS, clip_inputs, load_model, make_generator

LOGPROB_ATOL = 2e-3


def test_greedy_with_the_checkpoints_penalty_equals_reference(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("penalty-instruct")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    decoding = resolve(generation_config(model_dir), job={}, options={}).decoding
    assert decoding == Decoding(top_k=50, repetition_penalty=1.3)  # transformers' top_k default: unused when greedy
    budgets = [10, 16, 12]
    generator, plan = make_generator(model_dir, ref, spec, model, QUESTIONS, budgets, decoding=decoding)
    assert len(plan.eos_ids) == 2
    clips, inputs = clip_inputs(ref.processor.feature_extractor, [1.0, 2.73, 4.9, 12.4])
    jobs = generator.run_all(inputs)
    unpenalised_differs = 0
    for i, clip in enumerate(clips):
        for t, text in enumerate(plan.texts):
            expected, ended, logprobs = ref.generate_as_configured(text, clip, budgets[t])
            job = jobs[i]
            assert job.tokens[t] == expected and job.ended[t] == ended, (i, t)
            assert len(logprobs) == len(expected) + ended  # the end id counts when one was generated
            mean = job.logprob_sums[t] / len(logprobs)
            assert abs(mean - np.mean(logprobs)) < LOGPROB_ATOL, (i, t)
            unpenalised_differs += ref.generate_as_configured(text, clip, budgets[t], repetition_penalty=1.0)[0] != expected
    assert unpenalised_differs  # the penalty decides tokens here: the comparison can fail


def reference_logits(ref, text: str, audio: np.ndarray, tokens: list[int]):
    """The reference's raw logits for every position of a given answer (teacher-forced), and the
    prompt's ids as generate() sees them (audio placeholders expanded)."""
    import torch

    from pipeline import shapes

    inputs = ref.processor(text=[text], audio=[audio], sampling_rate=shapes.SAMPLE_RATE, return_tensors="pt")
    prompt = inputs["input_ids"][0].tolist()
    ids = torch.tensor([prompt + tokens])
    inputs["input_ids"], inputs["attention_mask"] = ids, torch.ones_like(ids)
    with torch.no_grad():
        logits = ref.model(**inputs).logits[0, len(prompt) - 1:].float().numpy()
    return logits, prompt


def test_sampling_follows_numpy_draws_and_ignores_the_batch(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("small-instruct")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    decoding = Decoding(do_sample=True, temperature=1.3, top_k=40, top_p=0.9, repetition_penalty=1.1, seed=7)
    budgets = [12, 12]
    generator, plan = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], budgets, decoding=decoding)
    clips, inputs = clip_inputs(ref.processor.feature_extractor, [1.0, 2.73, 4.9])
    jobs = generator.run_all(inputs)
    distinct = set()
    for i, clip in enumerate(clips):
        for t, text in enumerate(plan.texts):
            job = jobs[i]
            answer = job.tokens[t] + ([plan.eos_ids[0]] if job.ended[t] else [])
            logits, prompt = reference_logits(ref, text, clip, answer)
            random = np.random.default_rng(row_seed(inputs[i].key, t, decoding.seed)).random
            chosen = []
            for step, token in enumerate(answer):  # one draw per chosen token, the end id included
                expected = numpy_choice.choose(logits[step], prompt + chosen, decoding, 1.0 - random())
                if job.ended[t] and step == len(answer) - 1:
                    assert expected in plan.eos_ids, (i, t, step)
                else:
                    assert token == expected, (i, t, step)
                chosen.append(token)
            distinct.add(tuple(job.tokens[t]))
    assert len(distinct) > 1
    # Reruns, and the same clip (same key) alone or among other clips: the same tokens.
    first = [job.tokens for job in jobs]
    assert generator.generate(inputs) == first
    assert generator.generate(inputs[2:] + inputs[:1]) == [first[2], first[0]]
    _, others = clip_inputs(ref.processor.feature_extractor, [7.31, 0.3], prefix="other")
    assert generator.generate([others[0], inputs[1], others[1]])[1] == first[1]
    reseeded, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], budgets, slots=2,
                                 decoding=Decoding(**{**decoding.__dict__, "seed": 8}))
    assert reseeded.generate(inputs) != first


def test_looping_answers_are_flagged_and_retried_alone_with_the_retry_decoding(checkpoint_dir, reference,
                                                                                mindspore_cpu):
    """The engine flags answers that hit their cap repeating themselves; a retry asks for only those
    (clip, task) rows with its own decoding, in graphs shared with rows decoded the run's way."""
    from dataclasses import replace

    from pipeline.model.engine import answer

    model_dir = checkpoint_dir("small-instruct")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    retry = Decoding(repetition_penalty=1.3)
    budgets = [16, 16, 16]
    generator, plan = make_generator(model_dir, ref, spec, model, QUESTIONS, budgets, retry=retry)
    assert generator.graph_features.penalty
    clips, inputs = clip_inputs(ref.processor.feature_extractor, [1.0, 2.73, 4.9])
    jobs = generator.run_all(inputs)
    flagged = {(c, t) for c, job in enumerate(jobs) for t in range(3) if answer(job, t).looped}
    assert flagged and len(flagged) < 9  # the tiny random model loops on some answers, not all
    for c, job in enumerate(jobs):
        for t, text in enumerate(plan.texts):
            assert job.tokens[t] == ref.generate_as_configured(text, clips[c], budgets[t])[0]  # the run's own way
            if (c, t) in flagged:
                assert not job.ended[t] and len(job.tokens[t]) == budgets[t]
    again = [replace(inputs[c], tasks=tuple(t for t in range(3) if (c, t) in flagged), decoding=retry, attempt=1)
             for c in sorted({c for c, _ in flagged})]
    for request, job in zip(again, generator.run_all(again)):
        c = inputs.index(next(i for i in inputs if i.key == request.key))
        for t, text in enumerate(plan.texts):
            if t in request.tasks:
                expected, _, _ = ref.generate_as_configured(text, clips[c], budgets[t], repetition_penalty=1.3)
                assert job.tokens[t] == expected, (c, t)
            else:
                assert job.tokens[t] == []  # not asked for: not run
