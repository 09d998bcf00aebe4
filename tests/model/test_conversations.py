"""Follow-up questions against transformers' generate() on the conversation defined on token ids:
the first question's prompt as the processor builds it (audio placeholders expanded), each earlier
answer as generated (without its end id), then the follow-up's joining ids (<|im_end|>, the chat
template's next user turn, the assistant prompt). Every turn's tokens must be identical, whatever
shares the slots, with nothing prefilled or encoded twice.

The tasks form a 3-turn chain (0 -> 1 -> 2), a branch (1 and 3 both follow 0: a fork copies the
cache), and a first question capped at one token (4), whose follow-up (5) starts from its prompt
in staging. Two slots for four clips: forks wait for slots and pinned slots are taken over.
"""

import numpy as np
import pytest

from pipeline import shapes
from pipeline.model.decoding import Decoding, generation_config, resolve
from tests.model.test_reference import clip_inputs, load_model, make_generator

QUESTIONS = ["Describe this audio in one sentence.", "Is anyone speaking?", "What language is it?",
             "List the sound events.", "Transcribe the speech.", "Say that again."]
PARENTS = [None, 0, 1, 0, None, 4]
BUDGETS = [7, 5, 6, 4, 1, 5]
# Clips whose answers hold no <|AUDIO|> id: the random model emits it now and then, and
# transformers then takes it for one more audio placeholder (its generate() refuses such ids).
SECONDS = [1.0, 2.73, 12.4, 7.31]


def reference_turn(ref, text: str, audio: np.ndarray, after_prompt: list[int], budget: int, **decoding):
    """transformers' generate() on prompt ids + after_prompt, the clip's audio features; -> (ids
    without the end id, the prompt's length)."""
    import torch

    inputs = ref.processor(text=[text], audio=[audio], sampling_rate=shapes.SAMPLE_RATE, return_tensors="pt")
    prompt = inputs["input_ids"][0].tolist()
    ids = torch.tensor([prompt + list(after_prompt)])
    inputs["input_ids"], inputs["attention_mask"] = ids, torch.ones_like(ids)
    with torch.no_grad():
        out = ref.model.generate(**inputs, max_new_tokens=budget, **decoding)
    tokens = out[0, ids.shape[1]:].tolist()
    eos = ref.model.generation_config.eos_token_id
    if tokens and tokens[-1] in (eos if isinstance(eos, list) else [eos]):
        tokens = tokens[:-1]
    return tokens, len(prompt)


def reference_conversations(ref, plan, audio, skipped=(), **decoding):
    """Every task's answer by the definition on ids; a skipped turn is left out of the
    conversation (its follow-ups are asked after the turn it followed). -> (answers, the tokens each
    follow-up's conversation held before its question)."""
    answers, after, context = {}, {}, {}
    prompt_len = None
    for task in sorted(range(len(plan.suffixes)), key=lambda t: len(plan.chain(t))):
        parent = plan.parent(task)
        while parent in skipped:
            parent = plan.parent(parent)
        if task in skipped:
            continue
        root = plan.root(task)
        after[task] = [] if parent is None else after[parent] + answers[parent] + list(plan.suffixes[task])
        answers[task], prompt_len = reference_turn(ref, plan.texts[root], audio, after[task], BUDGETS[task], **decoding)
        if parent is not None:
            context[task] = prompt_len + len(after[parent]) + len(answers[parent])
    return answers, context


@pytest.mark.parametrize("name", ["small-instruct", "penalty-instruct"])
def test_every_turn_equals_generate_on_the_conversation_ids(name, checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir(name)
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    decoding = resolve(generation_config(model_dir), job={}, options={}).decoding
    assert decoding.penalised == (name == "penalty-instruct")
    generator, plan = make_generator(model_dir, ref, spec, model, QUESTIONS, BUDGETS, slots=2, decoding=decoding,
                                     parents=PARENTS)
    assert generator.shape.fork_rows and generator.shape.extend_rows and len(generator.shape.graph_names()) == 6
    # The conversation's joins are what the chat template emits between turns: <|im_end|>, "\n", ...
    im_end = ref.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = ref.processor.tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert all(plan.suffixes[t][:1 + len(newline)] == (im_end, *newline) for t in (1, 2, 3, 5))
    # Clip 1 skips task 1: its task 2 is asked right after task 0's answer.
    generator.admit = lambda job, task: "rule" if (job.key, task) == ("clip1", 1) else None
    clips, inputs = clip_inputs(ref.processor.feature_extractor, SECONDS)
    jobs = generator.run_all(inputs)
    greedy = {} if decoding.penalised else {"do_sample": False}
    saved = 0
    for i, (job, clip) in enumerate(zip(jobs, clips)):
        skipped = {1} if i == 1 else set()
        expected, context = reference_conversations(ref, plan, clip, skipped, **greedy)
        assert job.skipped == {1: "rule"} if skipped else not job.skipped
        for task in range(len(QUESTIONS)):
            assert job.tokens[task] == expected.get(task, []), (SECONDS[i], task)
        saved += sum(context.values())
    stats = generator.stats
    # Each clip encoded once; only first questions prefilled; the follow-ups continued from caches
    # holding exactly the conversations a re-run from the start would prefill again.
    assert stats.clips_encoded == len(clips)
    first_questions = sum(len(plan.suffixes[t]) for t in plan.roots)
    assert stats.prefilled_tokens == sum(plan.prefix_len(shapes.audio_tokens(c.valid_frames)) + first_questions
                                         for c in inputs)
    assert stats.prefill_tokens_saved == saved
    assert stats.follow_up_rows == 4 * len(clips) - 1 and stats.follow_ups_skipped == 1
    assert stats.forked_rows >= len(clips) - 1  # the branch from task 0 forks (one clip skipped task 1)
    assert generator.graphs_compiled == 6


def test_sampled_follow_ups_do_not_depend_on_what_runs_beside_them(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("small-instruct")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    decoding = Decoding(do_sample=True, temperature=1.3, top_k=40, top_p=0.9, repetition_penalty=1.1, seed=3)
    generator, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:4], BUDGETS[:4], slots=3,
                                  decoding=decoding, parents=PARENTS[:4])
    _, inputs = clip_inputs(ref.processor.feature_extractor, SECONDS)
    together = generator.generate(inputs)
    assert generator.generate(inputs[2:3]) == together[2:3]
    assert generator.generate(inputs[::-1]) == together[::-1]
