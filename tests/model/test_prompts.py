"""Prompts for both checkpoints, split at the audio so that tasks share a prefix.

The property that matters: the token ids the model sees (head + N audio tokens + tail + task suffix)
are exactly the ids of tokenising the whole prompt, and exactly what the transformers processor
feeds the reference model for the same clip.
"""

import copy

import numpy as np
import pytest
from transformers import AutoProcessor

from pipeline import shapes
from pipeline.model.prompts import (
    AUDIO_TOKEN,
    BASE_AUDIO_PREFIX,
    build_prompt_plan,
    eos_token_ids,
    render_prompt,
    resolve_style,
    text_decoder,
)

QUESTIONS = [
    "Describe this audio in one sentence.",
    "List the sound events, separated by commas.\nAnswer with tags only.",
    "Transcribe the speech. Keep accents: «ça va», 你好, ünïcödé — and emoji 🎧.",
    "  leading spaces, trailing newline\n",
]


@pytest.fixture(scope="module", params=["small-instruct", "odd-base"])
def checkpoint(request, checkpoint_dir):
    """(folder, processor, style) for the instruct and the base tiny checkpoints."""
    model_dir = checkpoint_dir(request.param)
    return model_dir, AutoProcessor.from_pretrained(model_dir), resolve_style("auto", model_dir)


def plan_for(model_dir, processor, style, questions):
    tokenizer = getattr(processor, "tokenizer", processor)
    return build_prompt_plan(processor, style, questions, eos_token_ids(model_dir, tokenizer, style))


def with_chat_template(processor, template: str):
    changed = copy.deepcopy(processor)
    changed.chat_template = template
    return changed


def test_auto_style_follows_the_chat_template(checkpoint_dir):
    assert resolve_style("auto", checkpoint_dir("small-instruct")) == "instruct"
    assert resolve_style("auto", checkpoint_dir("odd-base")) == "base"
    assert resolve_style("base", checkpoint_dir("small-instruct")) == "base"  # an explicit choice wins


def test_base_prompt_is_the_audio_markers_then_the_question(checkpoint_dir):
    processor = AutoProcessor.from_pretrained(checkpoint_dir("odd-base"))
    for question in QUESTIONS:
        assert render_prompt(processor, "base", question) == "<|audio_bos|><|AUDIO|><|audio_eos|>" + question
    assert BASE_AUDIO_PREFIX == "<|audio_bos|><|AUDIO|><|audio_eos|>"


def test_instruct_prompt_is_the_chat_template(checkpoint_dir):
    processor = AutoProcessor.from_pretrained(checkpoint_dir("small-instruct"))
    text = render_prompt(processor, "instruct", "What is this?")
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("audio_tokens", [1, 2, 37, 750])
def test_split_ids_equal_tokenising_the_whole_prompt(checkpoint, audio_tokens):
    model_dir, processor, style = checkpoint
    plan = plan_for(model_dir, processor, style, QUESTIONS)
    tokenizer = processor.tokenizer
    for text, suffix in zip(plan.texts, plan.suffixes):
        whole = tokenizer(text.replace(AUDIO_TOKEN, AUDIO_TOKEN * audio_tokens), add_special_tokens=False)["input_ids"]
        assert whole == [*plan.head, *[plan.audio_token_id] * audio_tokens, *plan.tail, *suffix]
        assert plan.prefix_len(audio_tokens) == len(whole) - len(suffix)


@pytest.mark.parametrize("seconds", [0.5, 4.37, 29.9])
def test_split_ids_equal_what_the_reference_processor_feeds_the_model(checkpoint, seconds):
    model_dir, processor, style = checkpoint
    plan = plan_for(model_dir, processor, style, QUESTIONS[:2])
    clip = np.zeros(round(seconds * shapes.SAMPLE_RATE), dtype=np.float32)
    for text, suffix in zip(plan.texts, plan.suffixes):
        inputs = processor(text=[text], audio=[clip], sampling_rate=shapes.SAMPLE_RATE, return_tensors="np")
        audio_tokens = shapes.audio_tokens(int(inputs["feature_attention_mask"][0].sum()))
        expected = [*plan.head, *[plan.audio_token_id] * audio_tokens, *plan.tail, *suffix]
        assert inputs["input_ids"][0].tolist() == expected


def test_tasks_share_the_head_and_differ_in_their_suffix(checkpoint):
    model_dir, processor, style = checkpoint
    plan = plan_for(model_dir, processor, style, QUESTIONS)
    alone = [plan_for(model_dir, processor, style, [q]) for q in QUESTIONS]
    assert all((p.head, p.tail, p.suffixes[0]) == (plan.head, plan.tail, s) for p, s in zip(alone, plan.suffixes))
    assert len(set(plan.suffixes)) == len(QUESTIONS)
    assert plan.suffix_len == max(len(s) for s in plan.suffixes)
    assert plan.tail == (processor.tokenizer.convert_tokens_to_ids("<|audio_eos|>"),)


def test_end_of_sequence_ids(checkpoint):
    model_dir, processor, style = checkpoint
    tokenizer = processor.tokenizer
    eos = plan_for(model_dir, processor, style, QUESTIONS[:1]).eos_ids
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") in eos
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (im_end in eos) == (style == "instruct")  # the chat model ends its turn with <|im_end|>
    assert len(set(eos)) == len(eos)


def test_prompt_with_two_audio_placeholders_is_refused(checkpoint):
    model_dir, processor, style = checkpoint
    with pytest.raises(ValueError, match=r"exactly one <\|AUDIO\|>"):
        plan_for(model_dir, processor, style, ["Compare with <|AUDIO|> please."])


def test_prompt_without_audio_placeholder_is_refused(checkpoint_dir):
    model_dir = checkpoint_dir("small-instruct")
    text_only = "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}" \
                "{% endif %}{% endfor %}{% endfor %}"
    processor = with_chat_template(AutoProcessor.from_pretrained(model_dir), text_only)
    with pytest.raises(ValueError, match=r"exactly one <\|AUDIO\|>"):
        plan_for(model_dir, processor, "instruct", QUESTIONS[:1])


def test_tasks_that_do_not_share_the_prefix_are_refused(checkpoint_dir):
    model_dir = checkpoint_dir("small-instruct")
    question_first = "{% for m in messages %}{{ m['content'][1]['text'] }}<|audio_bos|><|AUDIO|><|audio_eos|>" \
                     "answer:{% endfor %}"
    processor = with_chat_template(AutoProcessor.from_pretrained(model_dir), question_first)
    plan_for(model_dir, processor, "instruct", QUESTIONS[:1])  # one task alone is fine
    with pytest.raises(ValueError, match="must share the prompt up to the audio"):
        plan_for(model_dir, processor, "instruct", QUESTIONS[:2])


def test_prompt_with_nothing_after_the_audio_is_refused(checkpoint_dir):
    model_dir = checkpoint_dir("odd-base")
    processor = AutoProcessor.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="nothing after the audio"):
        plan_for(model_dir, processor, "base", [""])


def test_text_decoder_decodes_exactly_as_the_transformers_tokenizer(checkpoint):
    model_dir, processor, _ = checkpoint
    decode = text_decoder(model_dir)
    tokenizer = processor.tokenizer
    rng = np.random.default_rng(0)
    specials = tokenizer.all_special_ids + [tokenizer.convert_tokens_to_ids(t) for t in ("<|en|>", "<|AUDIO|>")]
    for length in (0, 1, 5, 40, 200):
        ids = rng.integers(0, len(tokenizer), length).tolist()
        if length:  # special tokens in the middle, and bytes of one character split by them
            ids[length // 2:length // 2] = rng.choice(specials, 3).tolist()
        assert decode(ids) == tokenizer.decode(ids, skip_special_tokens=False)
    text = "Transcribe: «ça va», 你好 🎧"
    assert decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_the_tokenizer_alone_renders_the_processors_prompts(checkpoint):
    model_dir, processor, style = checkpoint
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert plan_for(model_dir, tokenizer, style, QUESTIONS) == plan_for(model_dir, processor, style, QUESTIONS)
