"""Scored moderation questions on the engine against transformers' PyTorch Qwen2-Audio.

The claim: each label's P(yes) is what the reference's first-step logits give for the same prompt
on the same clip (softmax mass of the yes ids over that of the yes and no ids), whatever the run's
decoding does to the chosen token; and the other tasks sharing the clip's prefix are unchanged.
"""

import numpy as np
import pytest
import torch

import mindspore as ms

from pipeline.config import Config
from pipeline.model.decoding import Decoding
from pipeline.model.generate import Generator
from pipeline.model.graph_shapes import declare_shape
from pipeline.model.prompts import build_prompt_plan, eos_token_ids, resolve_style
from pipeline.model.scoring import yes_no_ids
from pipeline.tasks.catalog import resolve_tasks
from pipeline.tasks.scoring import SCORED_PARSER
from tests.model.test_reference import clip_inputs, load_model

LABELS = ("violence", "hate speech", "profanity")


@pytest.mark.parametrize("name", ["small-instruct", "odd-base"])
def test_scores_equal_reference_first_step(name, checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir(name)
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    tasks = resolve_tasks(Config(tasks=("caption", "moderation"), moderation_mode="scored", moderation_labels=LABELS,
                                 max_new_tokens={"caption": 6}))
    assert [t.name for t in tasks] == ["caption", *(f"moderation:{label}" for label in LABELS)]
    assert [t.max_new_tokens for t in tasks] == [6, 1, 1, 1]
    style = resolve_style("auto", model_dir)
    eos = eos_token_ids(model_dir, ref.processor.tokenizer, style)
    plan = build_prompt_plan(ref.processor, style, [t.prompt(style) for t in tasks], eos)
    budgets = [t.max_new_tokens for t in tasks]
    scored = tuple(i for i, t in enumerate(tasks) if t.parser == SCORED_PARSER)
    yes_no = yes_no_ids(ref.processor.tokenizer, scored)
    shape = declare_shape(plan, budgets, 3, spec.max_positions, spec.n_mels)
    # A repetition penalty changes the chosen tokens, never the scores (read from the raw logits).
    generator = Generator(model, spec, plan, shape, budgets, ms.float32, Decoding(repetition_penalty=1.3),
                          yes_no=yes_no)
    clips, inputs = clip_inputs(ref.processor.feature_extractor, [1.0, 7.31])
    jobs = generator.run_all(inputs)
    # Scores that differ between labels and clips: the prompt and the audio both reach them.
    assert len({round(p, 6) for job in jobs for p in job.p_yes.values()}) == len(scored) * len(clips)
    for i, clip in enumerate(clips):
        assert set(jobs[i].p_yes) == set(scored)
        for t in scored:
            _, logits = ref.generate(plan.texts[t], clip, 1, plan.eos_ids)
            probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()
            yes, no = probs[list(yes_no.yes_ids)].sum(), probs[list(yes_no.no_ids)].sum()
            assert abs(jobs[i].p_yes[t] - yes / (yes + no)) < 1e-3, (name, i, tasks[t].label)
            assert len(jobs[i].tokens[t]) <= 1  # one token per question: the scores need no more
        # The caption shares the prefix and is not scored.
        assert 0 not in jobs[i].p_yes
    assert generator.stats.decode_steps <= 6 * len(clips)  # only the caption decodes


def test_yes_no_ids_of_the_tiny_tokenizer(checkpoint_dir, reference):
    """The tiny tokenizer has no single-token yes or no: the first id of each spelling counts, a
    bare space (shared by ' yes' and ' no') for neither."""
    tokenizer = reference(checkpoint_dir("small-instruct")).processor.tokenizer
    yes_no = yes_no_ids(tokenizer, (1,))
    first = {w: {tokenizer(v, add_special_tokens=False)["input_ids"][0] for v in (w, w.capitalize())}
             for w in ("yes", "no")}
    assert set(yes_no.yes_ids) == first["yes"] and set(yes_no.no_ids) == first["no"]
    assert tokenizer(" ", add_special_tokens=False)["input_ids"][0] not in yes_no.yes_ids + yes_no.no_ids
    logprobs = np.log(np.full((1, 8), 0.01))
    logprobs[0, 0] = np.log(0.3)  # a yes id
    assert yes_no.p_yes(logprobs)[0] == pytest.approx((0.3 + 0.01 * (len(yes_no.yes_ids) - 1))
                                                      / (0.3 + 0.01 * (len(yes_no.yes_ids) + len(yes_no.no_ids) - 1)))
