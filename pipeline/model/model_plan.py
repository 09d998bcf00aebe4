"""Everything about the model a run needs before any weights load: checkpoint, prompt token ids,
declared shapes and batch sizes, and the fingerprint that names the run's outputs.

No MindSpore here: the driver builds the plan (reading only config.json and the tokenizer), sizes
batches from it, and ships it to every worker, so all of them compile the same closed set of shapes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path

from pipeline import shapes
from pipeline.model.checkpoint import checkpoint_files, has_weights, is_hub_id, resolve_checkpoint
from pipeline.model.graph_shapes import (EngineShape, declare_shape, slot_bytes, split_slots, state_bytes, weight_bytes,
                                       working_bytes)
from pipeline.model.decoding import (DecodingError, GraphFeatures, ResolvedDecoding, end_of_sequence, generation_config,
                                     pad_token, resolve)
from pipeline.model.prompts import PromptPlan, build_prompt_plan, resolve_style, tokenizer_eos_ids
from pipeline.model.scoring import YesNo, yes_no_ids
from pipeline.model.spec import ModelSpec
from pipeline.model.tokenizer_files import CheckpointTokenizer
from pipeline.tasks.scoring import SCORED_PARSER


@dataclass(frozen=True)
class ModelPlan:
    model_dir: str
    revision: str | None
    spec: ModelSpec
    prompts: PromptPlan
    task_names: tuple[str, ...]
    max_new_tokens: tuple[int, ...]
    device: str  # "ascend" or "cpu"
    dtype: str  # "bf16", "fp16" or "fp32"
    decoding: ResolvedDecoding
    shape: EngineShape
    memory_budget_bytes: int = 0  # per worker, besides the weights
    # How a node other than the driver's finds the same checkpoint (model/checkpoint.py): the hub id
    # of a hub snapshot (None: a folder, at model_dir on every node), and its files' names and sizes.
    hub_id: str | None = None
    checkpoint_files: tuple[tuple[str, int], ...] = ()
    # Per task: the rule that decides whether a follow-up is asked (tasks.conditions.Condition), or
    # None (empty: no task has one).
    conditions: tuple = ()
    # Scored questions (moderation_mode scored): the yes/no ids and the tasks whose first token is
    # scored; None: no task is (the prefill graph then has no scores output).
    yes_no: YesNo | None = None

    @property
    def graph_features(self) -> GraphFeatures:
        return GraphFeatures.needed(self.decoding.decoding, self.decoding.retry)

    @property
    def style(self) -> str:
        return self.prompts.style


    def checkpoint_identity(self) -> dict:
        """What identifies the weights without hashing gigabytes: file names, sizes and revision."""
        files = dict(self.checkpoint_files) if self.checkpoint_files else checkpoint_files(Path(self.model_dir))
        return {"revision": self.revision, "files": files}

    def compile_cache_key(self, mindspore_version: str, kernel: str | None = None) -> str:
        """kernel: the compiled library the graphs call (model/cpu_kernels.py), if any: a cached graph
        names it, and MindSpore's cache does not look inside graphs (runtime.configure)."""
        payload = [self.spec.fingerprint(), asdict(self.shape), self.dtype,
                   self.device, self.graph_features.key(), mindspore_version]
        if self.yes_no is not None:  # another prefill graph; every other run's key stays what it was
            payload.append("scored")
        if kernel is not None:
            payload.append(kernel)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def resolve_dtype(requested: str, device: str) -> str:
    if requested != "auto":
        if requested == "bf16" and device == "cpu":
            raise ValueError("bf16 graphs do not run on MindSpore's CPU backend; use fp32 or fp16 on CPU")
        return requested
    return "bf16" if device == "ascend" else "fp32"


def decode_slots(config, spec: ModelSpec, probe: EngineShape, dtype: str, budget_bytes: int, device: str,
                 penalty: bool = False) -> int:
    """Decode slots: the configured number, or as many as the memory budget holds beside the
    engine's arenas and the largest graph's working memory, at most MAX_AUTO_SLOTS (more slots read
    the weights fewer times per token, but a run's last rows then decode with more slots idle)."""
    if config.decode_slots:
        return config.decode_slots
    fixed = state_bytes(spec, probe, dtype, penalty) + working_bytes(spec, probe, dtype,
                                                                     reuses_layer_memory=device == "ascend")
    per_slot = slot_bytes(spec, probe.cache_span, dtype, penalty)
    return max(1, min(MAX_AUTO_SLOTS, int((budget_bytes - fixed) // per_slot)))


MAX_AUTO_SLOTS = 32


@dataclass(frozen=True)
class CheckpointPrompts:
    """What a plan needs from the checkpoint and the tokenizer, before any device is known."""

    model_dir: Path
    revision: str | None
    spec: ModelSpec
    prompts: PromptPlan
    decoding: ResolvedDecoding
    hub_id: str | None = None  # the model was given as a hub id
    # False only for a dry run's hub snapshot fetched without its weights: the checkpoint's identity
    # (and so the run's fingerprint) is not known before they are downloaded.
    has_weights: bool = True
    yes_no: YesNo | None = None  # scored questions' ids (model/scoring.py); None: none


def load_prompts(config, tasks, weights: bool = True) -> CheckpointPrompts:
    """Resolve the checkpoint, read its dims, tokenise the task prompts (no Ray, no MindSpore: the
    driver does this while Ray starts). weights=False (a dry run): a hub snapshot that is not local
    is fetched without its weights."""
    model_dir, revision = resolve_checkpoint(config.model, config.revision, weights=weights)
    spec = ModelSpec.from_checkpoint(model_dir)
    style = resolve_style(config.prompt_style, model_dir)
    # The checkpoint's files read without transformers (model/tokenizer_files.py: importing it
    # imports torch, seconds of the driver's start); transformers itself only for a checkpoint
    # without tokenizer.json.
    tokenizer = CheckpointTokenizer.load(model_dir)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # The tokenizer renders the chat template when it holds one (the processor renders the same
    # text, tested). The processor only when it does not: even importing AutoProcessor costs about
    # 4 s of the driver's start (its audio and image classes, measured), which Ray's start does
    # not hide.
    if style == "base" or tokenizer.chat_template:
        renderer = tokenizer
    else:
        from transformers import AutoProcessor

        renderer = AutoProcessor.from_pretrained(str(model_dir))
    defaults = generation_config(model_dir)
    eos_ids, eos_source = end_of_sequence(defaults, tokenizer_eos_ids(tokenizer, style))
    names = [t.name for t in tasks]
    parents = [names.index(t.follows) if getattr(t, "follows", None) else None for t in tasks]
    following = [f"'{t.name}' follows '{t.follows}'" for t in tasks if getattr(t, "follows", None)]
    if following and style != "instruct":
        raise ValueError(f"follows: {', '.join(following)}, but the prompt style is {style} (no chat template to "
                         "continue a conversation); follow-up questions need the instruct style")
    prompts = build_prompt_plan(renderer, style, [t.prompt(style) for t in tasks], eos_ids, parents)
    try:
        decoding = resolve(defaults, config.decoding_keys("job"), config.decoding_keys("option"),
                           config.retry_degenerate)
    except DecodingError as exc:
        raise ValueError(str(exc)) from None
    decoding = replace(decoding, eos_source=eos_source, pad_token_id=pad_token(defaults, eos_ids))
    scored = tuple(i for i, t in enumerate(tasks) if getattr(t, "parser", None) == SCORED_PARSER)
    yes_no = yes_no_ids(tokenizer, scored) if scored else None
    return CheckpointPrompts(model_dir, revision, spec, prompts, decoding,
                             config.model if is_hub_id(config.model) else None, has_weights(model_dir), yes_no)


def plan_model(config, tasks, device: str, worker_memory_bytes: int,
               checkpoint: CheckpointPrompts | None = None) -> ModelPlan:
    """Build the plan for a resolved device. worker_memory_bytes is what one worker may use in all;
    the budget beside the weights is config.memory_budget_gb when set, else that less the weights."""
    checkpoint = checkpoint or load_prompts(config, tasks)
    spec, prompts = checkpoint.spec, checkpoint.prompts
    dtype = resolve_dtype(config.dtype, device)
    max_new_tokens = tuple(t.max_new_tokens for t in tasks)
    if config.memory_budget_gb:
        budget_bytes = int(config.memory_budget_gb * 2**30)
    else:
        budget_bytes = max(0, worker_memory_bytes - weight_bytes(spec, dtype))
    probe = declare_shape(prompts, list(max_new_tokens), 1, spec.max_positions, spec.n_mels)
    penalty = GraphFeatures.needed(checkpoint.decoding.decoding, checkpoint.decoding.retry).penalty
    slots = decode_slots(config, spec, probe, dtype, budget_bytes, device, penalty)
    shape = declare_shape(prompts, list(max_new_tokens), slots, spec.max_positions, spec.n_mels)
    return ModelPlan(
        model_dir=str(checkpoint.model_dir), revision=checkpoint.revision, spec=spec, prompts=prompts,
        task_names=tuple(t.name for t in tasks), max_new_tokens=max_new_tokens, device=device, dtype=dtype,
        decoding=checkpoint.decoding, shape=shape,
        memory_budget_bytes=budget_bytes, hub_id=checkpoint.hub_id,
        checkpoint_files=tuple(checkpoint_files(checkpoint.model_dir).items()),
        conditions=tuple(getattr(t, "when", None) for t in tasks) if any(getattr(t, "when", None) for t in tasks)
        else (),
        yes_no=checkpoint.yes_no,
    )


# Items the slot split is sized from: the first of the run's, plenty for a length mix.
SPLIT_SAMPLE_ITEMS = 10_000


def with_slots_split(plan: ModelPlan, lengths: Iterable[float]) -> ModelPlan:
    """The plan with its decode slots split into long and short ones for the length mix of the
    run's first items (their split_seconds, in run order: graph_shapes.split_slots)."""
    tokens = [shapes.audio_tokens(min(shapes.frames_for_seconds(seconds), shapes.WINDOW_FRAMES))
              for seconds in islice(lengths, SPLIT_SAMPLE_ITEMS)]
    return replace(plan, shape=split_slots(plan.shape, plan.prompts, list(plan.max_new_tokens), tokens))


def split_lengths(items) -> Iterator[float]:
    """Planning Items' lengths (the run's head, in run order) as the slot split counts them."""
    return (split_seconds(item.end_s - item.start_s, item.n_segments > 1) for item in items)


def split_seconds(seconds: float, segment: bool) -> float:
    """An item's length as the slot split counts it: a segment of a longer file (cut at a pause
    only once decoded) or a row whose length is not known yet counts as a whole window."""
    return seconds if seconds > 0 and not segment else float(shapes.WINDOW_S)
