"""The closed set of shapes a worker compiles, derived from the prompts, the token caps and the
decode slots; and the memory they take.

Pure arithmetic (no MindSpore): the driver declares the shapes and sizes the slots before any model
loads, and every worker compiles exactly these graphs: four, a fifth (extend) when a task follows
another, and a sixth (fork) when a task has several follow-ups, or a fifth (insert into short
slots) when the slots are split by the clips' lengths (split_slots; model/graphs.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pipeline import shapes
from pipeline.model.prompts import PromptPlan
from pipeline.model.spec import ModelSpec

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# Token rows are padded to a multiple of this: a handful of graph shapes cover any prompt set.
TOKEN_QUANTUM = 64
# Encoder rows are the model's 30 s window: any clip fits one, and short clips share it.
ROW_FRAMES = shapes.WINDOW_FRAMES
ROW_TOKENS = shapes.audio_tokens(ROW_FRAMES)
# Arena blocks: rows encoded ahead of the prefill that reads them, and prefill rows staged ahead of
# the slots they are copied into. Two would do for a strict pipeline; a third lets the packers look
# ahead (first fit), which is what fills rows.
AUDIO_BLOCKS = 3
STAGE_BLOCKS = 3
# Most clips one prefill row holds (bounds the first-token outputs); short clips' prompts are ~100
# tokens, so a 1024-token row rarely holds more.
MAX_CLIPS_PER_ROW = 12
# Task rows copied into slots per insert call: small, because a padded entry costs a real copy.
INSERT_ROWS = 4
# Follow-up questions fed per extend call, and their ids padded to a multiple of this.
EXTEND_ROWS = 4
EXTEND_QUANTUM = 16


def _round_up(value: int, quantum: int) -> int:
    return -(-value // quantum) * quantum


@dataclass(frozen=True)
class EngineShape:
    n_mels: int
    tasks: int
    row_frames: int  # mel frames per encoder row
    prefill_len: int  # tokens per prefill row
    first_tokens: int  # first-token outputs per prefill call
    slots: int  # decode slots
    span: int  # cache positions per slot: the longest conversation (prompts, follow-ups and their caps)
    insert_rows: int
    fork_rows: int = 0  # slots copied per fork call; 0: no task has several follow-ups, no fork graph
    extend_rows: int = 0  # follow-up questions per extend call; 0: no task follows another, no extend graph
    extend_len: int = 0  # ids per follow-up question, at most (the parent's capped last id, then the join)
    # The last short_slots of the slots hold only rows whose prompt and cap fit short_span positions
    # (a clip of a few seconds), so a step reads their shorter caches (split_slots); 0: all long.
    short_slots: int = 0
    short_span: int = 0

    @classmethod
    def from_record(cls, record: dict) -> EngineShape:
        """The shape as run.json records it (its fields, and its graph names) -> the EngineShape."""
        return cls(**{k: v for k, v in record.items() if k != "graphs"})

    @property
    def cache_span(self) -> int:
        """Positions a slot's cache holds: the span and one scratch position for idle slots."""
        return self.span + 1

    @property
    def long_slots(self) -> int:
        return self.slots - self.short_slots

    @property
    def short_cache_span(self) -> int:
        return self.short_span + 1

    @property
    def step_cache_positions(self) -> int:
        """Cache positions a decode step reads: every slot's whole cache, long and short."""
        return self.long_slots * self.cache_span + self.short_slots * self.short_cache_span

    @property
    def row_tokens(self) -> int:
        return shapes.audio_tokens(self.row_frames)

    @property
    def audio_rows(self) -> int:
        """Arena rows: AUDIO_BLOCKS blocks of one encoder row's tokens, and a trash row."""
        return AUDIO_BLOCKS * self.row_frames // 4 + 1

    @property
    def stage_rows(self) -> int:
        """Staging rows: STAGE_BLOCKS blocks of one prefill row each, and a trash row."""
        return STAGE_BLOCKS * self.prefill_len + 1

    def graph_names(self) -> tuple[str, ...]:
        names = (
            f"encode[F={self.row_frames}]",
            f"prefill[L={self.prefill_len},Q={self.first_tokens}]",
            f"insert[I={self.insert_rows},S={self.span}]",
        )
        if self.short_slots:
            names += (f"insert[I={self.insert_rows},S={self.short_span}]",
                      f"step[N={self.long_slots}+{self.short_slots},S={self.span}/{self.short_span}]")
        else:
            names += (f"step[N={self.slots},S={self.span}]",)
        if self.extend_rows:
            names += (f"extend[E={self.extend_rows},C={self.extend_len},S={self.span}]",)
        return names + ((f"fork[I={self.fork_rows},S={self.span}]",) if self.fork_rows else ())


def conversation_len(prompts: PromptPlan, max_new_tokens: list[int], task: int, prefix: int) -> int:
    """Cache positions a task's whole conversation may take: the prefix, then every turn of its
    chain, each turn's question ids and its cap (a skipped turn only shortens it)."""
    return prefix + sum(len(prompts.suffixes[t]) + max_new_tokens[t] for t in prompts.chain(task))


def declare_shape(prompts: PromptPlan, max_new_tokens: list[int], slots: int, max_positions: int,
                  n_mels: int = shapes.N_MELS) -> EngineShape:
    """The one engine shape for these prompts and caps (one cap per task, in the prompts' order).
    Only first questions are prefilled; a follow-up's question is fed to its slot by decode steps,
    after the earlier turns, so the slots' span holds the longest conversation."""
    longest_prefix = prompts.prefix_len(ROW_TOKENS)
    clip_tokens = longest_prefix + sum(len(prompts.suffixes[t]) for t in prompts.roots)
    span = max(conversation_len(prompts, max_new_tokens, t, longest_prefix) for t in range(len(prompts.suffixes)))
    if span + 1 > max_positions:  # the scratch position too (its rotary table row)
        raise ValueError(f"a 30 s clip with its longest conversation needs {span} positions but the model has "
                         f"{max_positions}")
    if slots < 1:
        raise ValueError("at least one decode slot is needed")
    # A follow-up's question: its parent's last id when a cap ended the parent (never in the cache
    # then), <|im_end|>, the next user turn and the assistant prompt.
    questions = [1 + len(prompts.suffixes[t]) for t in range(len(prompts.suffixes)) if prompts.parent(t) is not None]
    return EngineShape(
        n_mels=n_mels, tasks=len(prompts.suffixes), row_frames=ROW_FRAMES,
        prefill_len=_round_up(clip_tokens, TOKEN_QUANTUM),
        first_tokens=MAX_CLIPS_PER_ROW * len(prompts.roots),
        slots=slots, span=span, insert_rows=INSERT_ROWS, fork_rows=INSERT_ROWS if prompts.branches else 0,
        extend_rows=EXTEND_ROWS if questions else 0,
        extend_len=_round_up(max(questions), EXTEND_QUANTUM) if questions else 0,
    )


# Short slots come in steps of this many (and at least this many slots stay long): a handful of
# step shapes cover any length mix, so a nightly job's manifests hit the compile cache.
SLOT_STEP = 4
# A split is worth a second cache and insert graph only if a step reads this much less.
SPLIT_MIN_SAVING = 0.15
# At least this share of the slots stays long, whatever the first clips' mix: the split is sized
# from the run's first items, and a manifest whose later rows are longer (sorted by length, a folder
# of short clips before one of podcasts) must not decode those a few slots at a time. Measured on the
# bench's mix sorted by length, the split sized from its first half: 4 long slots took the steps
# from 13.2 s to 34.6 s, the run from 39 s to 67 s; half the slots bound that at about 1.7x on a
# tail of long rows alone, and cost the unsorted 55-clip mix 4% of its steps (16 + 16 against 12 + 20).
LONG_SLOTS_MIN_SHARE = 0.5


def split_slots(shape: EngineShape, prompts: PromptPlan, max_new_tokens: list[int],
                audio_tokens: list[int]) -> EngineShape:
    """The slots split into long ones and short ones, from the length mix of the clips about to
    run (audio_tokens: each clip's or segment's audio tokens). A decode step reads every slot's
    whole cache, so it is memory-bound on them: a row that can never pass short_span positions
    (its prompt and cap) reads no more in a short slot. Chosen to read the fewest cache positions
    per step, with as many long slots as the rows that need one (rounded up to SLOT_STEP; at least
    LONG_SLOTS_MIN_SHARE of them) and a short span of two to five eighths of the span; unchanged
    when that saves less than SPLIT_MIN_SAVING, and in runs with follow-up questions (a
    conversation outgrows its prompt)."""
    if shape.extend_rows or shape.fork_rows or shape.slots < 2 * SLOT_STEP or not audio_tokens:
        return shape
    needs = [prompts.prefix_len(tokens) + len(prompts.suffixes[task]) + max_new_tokens[task]
             for tokens in audio_tokens for task in prompts.roots]
    best = shape
    for eighths in range(2, 6):
        short_span = _round_up(shape.span * eighths // 8, TOKEN_QUANTUM)
        if short_span >= shape.span:
            continue
        longer = sum(need > short_span for need in needs) / len(needs)
        # At least SLOT_STEP: at least half of at least 2 * SLOT_STEP slots stay long.
        long_slots = _round_up(math.ceil(shape.slots * max(longer, LONG_SLOTS_MIN_SHARE)), SLOT_STEP)
        if long_slots >= shape.slots:
            continue
        split = replace(shape, short_slots=shape.slots - long_slots, short_span=short_span)
        if split.step_cache_positions < best.step_cache_positions:
            best = split
    return best if best.step_cache_positions <= (1 - SPLIT_MIN_SAVING) * shape.step_cache_positions else shape


def slot_bytes(spec: ModelSpec, shape_span: int, dtype: str, penalty: bool = False) -> int:
    """One decode slot's keys and values across layers, and its presence row (float32 per
    vocabulary id) when the graphs apply a repetition penalty."""
    presence = spec.vocab * 4 if penalty else 0
    return 2 * spec.layers * spec.kv_heads * spec.head_dim * shape_span * DTYPE_BYTES[dtype] + presence


def weight_bytes(spec: ModelSpec, dtype: str) -> int:
    """The checkpoint's weights as the model holds them (projections, embeddings, output head)."""
    audio = (spec.n_mels * spec.audio_dim * 3 + spec.audio_dim**2 * 3 + spec.max_source_positions * spec.audio_dim
             + spec.audio_layers * (4 * spec.audio_dim**2 + 2 * spec.audio_dim * spec.audio_ffn)
             + spec.audio_dim * spec.hidden)
    kv_width = spec.kv_heads * spec.head_dim
    layer = 2 * spec.hidden * spec.heads * spec.head_dim + 2 * spec.hidden * kv_width + 3 * spec.hidden * spec.intermediate
    text = spec.layers * layer + 2 * spec.vocab * spec.hidden
    return (audio + text) * DTYPE_BYTES[dtype]


def state_bytes(spec: ModelSpec, shape: EngineShape, dtype: str, penalty: bool = False) -> int:
    """The engine's Parameters: audio arena, staging caches and slot caches (and, with the
    repetition penalty, each slot's and each task prompt's presence)."""
    size = DTYPE_BYTES[dtype]
    kv_width = spec.kv_heads * spec.head_dim
    arena = shape.audio_rows * spec.hidden * size
    staging = 2 * spec.layers * shape.stage_rows * kv_width * size
    prompts = shape.tasks * spec.vocab * 4 if penalty else 0
    return (arena + staging + prompts + shape.long_slots * slot_bytes(spec, shape.cache_span, dtype, penalty)
            + shape.short_slots * slot_bytes(spec, shape.short_cache_span, dtype, penalty))


def working_bytes(spec: ModelSpec, shape: EngineShape, dtype: str, reuses_layer_memory: bool) -> int:
    """Rough peak of the largest graph's intermediates. Attention dominates: a layer holds about
    three score-sized fp32 tensors (scores, masked scores, probabilities). MindSpore's CPU backend
    measurably keeps most of every layer's intermediates until the graph ends; Ascend's graph
    compiler plans memory reuse across layers (from MindSpore's documentation, not measured here),
    so one layer's worth counts there. Both graphs also hold their mask copied per head (one
    score-sized tensor, made once for all layers)."""
    size = DTYPE_BYTES[dtype]
    positions = shapes.encoder_positions(shape.row_frames)
    encoder_layer = (3 * spec.audio_heads * positions**2 * 4
                     + positions * (spec.audio_dim * 8 + spec.audio_ffn * 2) * size)
    length = shape.prefill_len
    prefill_layer = 3 * spec.heads * length**2 * 4 + length * (spec.hidden * 12 + spec.intermediate * 3) * size
    encoder = encoder_layer * (1 if reuses_layer_memory else spec.audio_layers) + spec.audio_heads * positions**2 * 4
    prefill = prefill_layer * (1 if reuses_layer_memory else spec.layers) + 2 * spec.heads * length**2 * 4
    return max(encoder, prefill)


def graph_flops(spec: ModelSpec, shape: EngineShape) -> dict[str, float]:
    """The multiply-adds (as 2 FLOPs each) every call of each declared graph computes, padding and
    masked-out attention scores included: what the hardware does, for the bench's roofline (achieved
    FLOP/s against the machine's peak). Elementwise work is left out."""
    d, inner = spec.audio_dim, spec.heads * spec.head_dim
    kv = spec.kv_heads * spec.head_dim
    positions = shapes.encoder_positions(shape.row_frames)
    encode = (2 * shape.row_frames * spec.n_mels * 3 * d + 2 * positions * 3 * d * d
              + spec.audio_layers * (2 * positions * (4 * d * d + 2 * d * spec.audio_ffn) + 4 * positions**2 * d)
              + 2 * (positions // 2) * d * spec.hidden)

    def text_layer(tokens: int, keys_per_token: float, queries: int | None = None) -> float:
        """One decoder layer: keys and values for every token, the rest for `queries` of them (every
        token by default; prefill's last layer: the first tokens alone, decoder.TextModel.prefill)."""
        queries = tokens if queries is None else queries
        key_values = 2 * tokens * (2 * spec.hidden * kv + spec.kv_heads * spec.head_dim**2)  # with k's rotation
        linear = 2 * queries * (2 * spec.hidden * inner + 3 * spec.hidden * spec.intermediate)
        rotary = 2 * queries * spec.heads * spec.head_dim**2  # the rotate-half product
        attention = 4 * queries * keys_per_token * inner
        return key_values + linear + rotary + attention

    head = 2 * spec.hidden * spec.vocab
    length, first = shape.prefill_len, shape.first_tokens
    prefill = ((spec.layers - 1) * text_layer(length, length) + text_layer(length, length, first)
               + first * head)
    step = spec.layers * text_layer(shape.slots, shape.step_cache_positions / shape.slots) + shape.slots * head
    return {
        "encode": float(encode),
        "prefill": float(prefill),
        "insert": 0.0,
        "step": float(step),
    }
