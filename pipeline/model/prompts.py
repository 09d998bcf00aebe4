"""Prompt text for both Qwen2-Audio checkpoints, split at the audio so that tasks share a prefix.

Every first question's prompt is "<shared prefix ending with the audio> <task suffix>": the base
checkpoint's `<|audio_bos|><|AUDIO|><|audio_eos|>` followed by the task text, or the instruct
checkpoint's chat template around the user's question. The prefix is tokenised once and prefilled
once per clip; each task continues from it. Splitting is checked against tokenising the whole
prompt, so the token ids are exactly those the reference would see.

A follow-up question (a task that follows another, instruct style only) is the next user turn of
the same conversation, defined on token ids: the earlier turn's prompt, its answer as generated
(without its end token), `<|im_end|>`, then the chat template's next user turn and assistant prompt.
Its "suffix" is that joining part, from `<|im_end|>` on: the template is rendered for the whole
conversation with a marker for each answer, and the text after the last marker is tokenised (the
template's `\n` after `<|im_end|>` included, as Qwen2-Audio's emits it). Every earlier rendering
must be a prefix of the next, so the joins are what the template itself would produce.
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


IM_END = "<|im_end|>"
# Stands for an answer while the template renders a conversation; never tokenised.
ANSWER_MARK = "\x00answer\x00"


@dataclass(frozen=True)
class PromptPlan:
    style: str
    # Per task: the exact prompt with one <|AUDIO|> placeholder; for a follow-up, its joining text
    # (from <|im_end|> after its parent's answer to its own assistant prompt).
    texts: tuple[str, ...]
    head: tuple[int, ...]  # shared prefix tokens before the audio tokens
    tail: tuple[int, ...]  # shared prefix tokens after the audio tokens
    # Per task: the ids it adds before its answer: after the shared prefix (a first question), or
    # after its parent's answer (a follow-up: <|im_end|>, the next user turn, the assistant prompt).
    suffixes: tuple[tuple[int, ...], ...]
    eos_ids: tuple[int, ...]
    audio_token_id: int
    parents: tuple[int | None, ...] = ()  # per task: the task it follows, None for a first question (empty: none follow)

    def prefix_len(self, audio_tokens: int) -> int:
        return len(self.head) + audio_tokens + len(self.tail)

    def parent(self, task: int) -> int | None:
        return self.parents[task] if self.parents else None

    @property
    def roots(self) -> tuple[int, ...]:
        """Tasks asked first, whose prompts are prefilled with the clip."""
        return tuple(t for t in range(len(self.suffixes)) if self.parent(t) is None)

    def children(self, task: int) -> tuple[int, ...]:
        """Tasks that follow this one, in task order."""
        return tuple(t for t in range(len(self.suffixes)) if self.parent(t) == task)

    @property
    def branches(self) -> bool:
        """Whether a task has several follow-ups (a conversation forks: its cache is copied)."""
        return any(len(self.children(t)) > 1 for t in range(len(self.suffixes)))

    def root(self, task: int) -> int:
        return self.chain(task)[0]

    def chain(self, task: int) -> tuple[int, ...]:
        """The task's conversation, first question first."""
        turns = [task]
        while self.parent(turns[-1]) is not None:
            turns.append(self.parent(turns[-1]))
            if turns[-1] in turns[:-1]:
                raise ValueError(f"task {task} follows itself: {list(reversed(turns))}")
        return tuple(reversed(turns))

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
    return render_conversation(processor, [question])


def render_conversation(processor, questions: list[str]) -> str:
    """The chat template over a conversation about one clip: the first question with the audio,
    each later one as the next user turn after an answer (ANSWER_MARK), ending with the assistant
    prompt."""
    conversation = [{"role": "user", "content": [
        {"type": "audio", "audio_url": "clip"},
        {"type": "text", "text": questions[0]},
    ]}]
    for question in questions[1:]:
        conversation += [{"role": "assistant", "content": ANSWER_MARK},
                         {"role": "user", "content": [{"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def follow_up_text(processor, questions: list[str]) -> str:
    """The text joining the answer to questions[-2] to the answer to questions[-1]: <|im_end|>, the
    next user turn, the assistant prompt, exactly as the chat template renders the conversation."""
    before = render_conversation(processor, questions[:-1])
    whole = render_conversation(processor, questions)
    if not whole.startswith(before + ANSWER_MARK):
        raise ValueError("the chat template does not render a follow-up question as a continuation of the "
                         f"conversation before it: {whole!r}")
    join = whole[len(before) + len(ANSWER_MARK):]
    if not join.startswith(IM_END) or ANSWER_MARK in join:
        raise ValueError(f"the chat template does not end an answer with {IM_END}: {join!r}")
    return join


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


def build_prompt_plan(processor, style: str, questions: list[str], eos_ids: tuple[int, ...],
                      parents: list[int | None] | None = None) -> PromptPlan:
    """processor: the checkpoint's processor, or its tokenizer when that holds the chat template.
    parents: per task, the index of the task it follows (None: a first question); follow-ups need
    the instruct style (a chat template)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    parents = tuple(parents) if parents and any(p is not None for p in parents) else ()
    if parents and style != "instruct":
        raise ValueError("follow-up questions need the instruct prompt style (a chat template to continue)")
    texts, heads, tails, suffixes = [], [], [], []
    joins: dict[int, tuple[str, tuple[int, ...]]] = {}
    for task, question in enumerate(questions):
        if parents and parents[task] is not None:
            chain = PromptPlan("", (), (), (), (), (), 0, parents).chain(task)
            text = follow_up_text(processor, [questions[t] for t in chain])
            joins[task] = (text, tuple(_ids(tokenizer, text)))
            continue
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
    for task, (text, ids) in sorted(joins.items()):
        texts.insert(task, text)
        suffixes.insert(task, ids)
    return PromptPlan(style=style, texts=tuple(texts), head=heads[0], tail=tails[0], suffixes=tuple(suffixes),
                      eos_ids=eos_ids, audio_token_id=audio_token_id, parents=parents)


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
