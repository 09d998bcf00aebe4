"""Prompt text for both Qwen2-Audio checkpoints, split at the audio so that tasks share a prefix.

Every task's prompt is "<shared prefix ending with the audio> <task suffix>": the base checkpoint's
`<|audio_bos|><|AUDIO|><|audio_eos|>` followed by the task text, or the instruct checkpoint's chat
template around the user's question. The prefix is tokenised once and prefilled once per clip;
each task continues from it. Splitting is checked against tokenising the whole prompt, so the
token ids are exactly those the reference would see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.model.decoding import end_of_sequence, generation_config

AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
BASE_AUDIO_PREFIX = f"{AUDIO_BOS}{AUDIO_TOKEN}{AUDIO_EOS}"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class PromptPlan:
    style: str
    texts: tuple[str, ...]  # per task: the exact prompt, with one <|AUDIO|> placeholder
    head: tuple[int, ...]  # shared prefix tokens before the audio tokens
    tail: tuple[int, ...]  # shared prefix tokens after the audio tokens
    suffixes: tuple[tuple[int, ...], ...]  # per task: tokens after the shared prefix
    eos_ids: tuple[int, ...]
    audio_token_id: int

    def prefix_len(self, audio_tokens: int) -> int:
        return len(self.head) + audio_tokens + len(self.tail)

    @property
    def suffix_len(self) -> int:
        return max(len(s) for s in self.suffixes)


def has_chat_template(model_dir: Path) -> bool:
    if any((model_dir / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    config = model_dir / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def resolve_style(requested: str, model_dir: Path) -> str:
    """auto: the instruct style when the checkpoint ships a chat template (only the instruct one does)."""
    if requested != "auto":
        return requested
    return "instruct" if has_chat_template(model_dir) else "base"


def render_prompt(processor, style: str, question: str) -> str:
    if style == "base":
        return BASE_AUDIO_PREFIX + question
    conversation = [{"role": "user", "content": [
        {"type": "audio", "audio_url": "clip"},
        {"type": "text", "text": question},
    ]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def eos_token_ids(model_dir: Path, tokenizer, style: str) -> tuple[int, ...]:
    """End-of-sequence ids as transformers' generate() uses them: the checkpoint's
    generation_config.json eos_token_id (model/decoding.py); for a checkpoint without one, the
    tokenizer's, plus <|im_end|> for chat prompts (the instruct model ends its turn with it)."""
    return end_of_sequence(generation_config(model_dir), tokenizer_eos_ids(tokenizer, style))[0]


def tokenizer_eos_ids(tokenizer, style: str) -> tuple[int, ...]:
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if style == "instruct":
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            ids.append(im_end)
    return tuple(dict.fromkeys(ids))


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def build_prompt_plan(processor, style: str, questions: list[str], eos_ids: tuple[int, ...]) -> PromptPlan:
    """processor: the checkpoint's processor, or its tokenizer when that holds the chat template."""
    tokenizer = getattr(processor, "tokenizer", processor)
    audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    texts, heads, tails, suffixes = [], [], [], []
    for question in questions:
        text = render_prompt(processor, style, question)
        before, sep, after = text.partition(AUDIO_TOKEN)
        if not sep or AUDIO_TOKEN in after:
            raise ValueError(f"a prompt must hold exactly one {AUDIO_TOKEN}: {text!r}")
        tail_text = AUDIO_EOS if after.startswith(AUDIO_EOS) else ""
        head, tail, suffix = _ids(tokenizer, before), _ids(tokenizer, tail_text), _ids(tokenizer, after[len(tail_text):])
        if not suffix:
            raise ValueError(f"the prompt for {question!r} has nothing after the audio")
        whole = _ids(tokenizer, text.replace(AUDIO_TOKEN, AUDIO_TOKEN * 3))
        if whole != head + [audio_token_id] * 3 + tail + suffix:
            raise ValueError(f"splitting the prompt at the audio changes its tokens: {text!r}")
        texts.append(text)
        heads.append(tuple(head))
        tails.append(tuple(tail))
        suffixes.append(tuple(suffix))
    if len(set(heads)) != 1 or len(set(tails)) != 1:
        raise ValueError("all tasks must share the prompt up to the audio (same system prompt and style)")
    return PromptPlan(style=style, texts=tuple(texts), head=heads[0], tail=tails[0], suffixes=tuple(suffixes),
                      eos_ids=eos_ids, audio_token_id=audio_token_id)


def text_decoder(model_dir: Path):
    """ids -> text, special tokens kept, exactly as the checkpoint's transformers tokenizer decodes.

    With a tokenizer.json that is the `tokenizers` library's own decode (what transformers' fast
    tokenizer calls; it skips its clean-up for byte-level BPE such as Qwen2's), without importing
    transformers, which imports torch where it is installed: seconds at every worker's start.
    """
    path = model_dir / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)
    from transformers import AutoTokenizer

    fallback = AutoTokenizer.from_pretrained(str(model_dir))
    return lambda ids: fallback.decode(list(ids), skip_special_tokens=False)
