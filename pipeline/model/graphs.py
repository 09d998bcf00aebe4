"""The model, the state it keeps between calls, and the four graphs that run it.

State (MindSpore Parameters, updated in place, never rebuilt):
- audio arena [blocks * F/4 + 1, hidden]: the encoder writes each packed row's projected audio
  tokens to one block; prefill reads them by row index. The last row is a trash row.
- staging caches, per layer [(blocks * L + 1) * kv, d]: keys and values of every prefilled token,
  one row per token and key/value head; each block holds one prefill row. The last token's rows
  are a trash row.
- slot caches, per layer [slots, kv, span + 1, d]: each decode slot's prompt and generated tokens,
  and a scratch position for idle slots; with short slots (graph_shapes.split_slots), the long
  slots' here and the short slots' in short caches [short slots, kv, short span + 1, d].
- with the repetition penalty (decoding.GraphFeatures): presence [slots, V], above 0 for every
  token id in a slot's sequence (its prompt, written at insert; each token fed, added at its step),
  and prompt_presence [tasks, V], the ids of each task's prompt (a prompt's ids are those of its
  head, tail and suffix and the audio placeholder, whatever the clip), which the first token's
  penalty at prefill and each insert read.

Graphs (one compiled graph each; nothing but declared shapes ever reaches them):
- EncodeGraph: one packed row of clips' mel frames -> audio tokens in the arena.
- PrefillGraph: packed rows of prompts (audio from the arena) -> staging caches, and the first
  token of every task row (ScoredPrefillGraph, for scored questions: also the raw log-softmax of
  that first step at a few candidate ids, model/scoring.py).
- InsertGraph: copies task rows' prompts from the staging caches into decode slots (with short
  slots, a second InsertGraph for them).
- StepGraph: one decode step for every slot.
- ExtendGraph (only when a task follows another): a follow-up question's ids, all at once, into
  the slot that holds its conversation (the earlier turns are never prefilled again), and the
  follow-up's first answer token.
- ForkGraph (only when a task has several follow-ups): copies a slot's first positions into other
  slots, so that each follow-up continues the same conversation in its own slot.
The graphs never learn about manifests, clips or rows: they see indices.
"""

import mindspore as ms
from mindspore import ParameterTuple, nn, ops

from pipeline.model.decoder import LanguageModel
from pipeline.model.cpu_kernels import CpuKernels, RowWriter
from pipeline.model.decoding import GraphFeatures
from pipeline.model.encoder import AudioEncoder, Projector
from pipeline.model.layers import cast, zeros_parameter
from pipeline.model.token_choice import TokenChooser


class Qwen2Audio(nn.Cell):
    """Holds every weight, named as in the published checkpoints, and the compiled CPU kernels its
    layers and the graphs use (model/cpu_kernels.py; None: MindSpore's operations)."""

    def __init__(self, spec, dtype, kernels: CpuKernels | None = None):
        super().__init__()
        self.audio_tower = AudioEncoder(spec, dtype, kernels)
        self.multi_modal_projector = Projector(spec, dtype)
        self.language_model = LanguageModel(spec, dtype, kernels)
        self.kernels = kernels  # for the graphs' state writes and token choice


class ModelState(nn.Cell):
    """The in-place state shared by the graphs (see the module docstring)."""

    def __init__(self, spec, shapes, dtype, features: GraphFeatures = GraphFeatures()):
        super().__init__(auto_prefix=False)
        self.audio = zeros_parameter((shapes.audio_rows, spec.hidden), dtype, "state.audio")

        def per_layer(shape, name: str) -> ParameterTuple:
            return ParameterTuple(zeros_parameter(shape, dtype, f"state.{name}.{i}") for i in range(spec.layers))

        stage = (shapes.stage_rows * spec.kv_heads, spec.head_dim)
        self.k_stage, self.v_stage = per_layer(stage, "k_stage"), per_layer(stage, "v_stage")
        cache = (shapes.long_slots, spec.kv_heads, shapes.cache_span, spec.head_dim)
        self.k_cache, self.v_cache = per_layer(cache, "k_cache"), per_layer(cache, "v_cache")
        self.split = shapes.short_slots > 0
        if self.split:
            short = (shapes.short_slots, spec.kv_heads, shapes.short_cache_span, spec.head_dim)
            self.k_short, self.v_short = per_layer(short, "k_short"), per_layer(short, "v_short")
        # One column per vocabulary id; a 1-row placeholder when no graph reads them.
        rows, prompts = (shapes.slots, shapes.tasks) if features.penalty else (1, 1)
        self.presence = zeros_parameter((rows, spec.vocab), ms.float32, "state.presence")
        self.prompt_presence = zeros_parameter((prompts, spec.vocab), ms.float32, "state.prompt_presence")


class EncodeGraph(nn.Cell):
    """features [1, n_mels, F] and the row layout (packing.EncoderRow) -> the row's F/4 projected
    audio tokens written to arena rows [F/4]."""

    def __init__(self, model: Qwen2Audio, state: ModelState):
        super().__init__(auto_prefix=False)
        self.encoder = model.audio_tower
        self.projector = model.multi_modal_projector
        self.write_rows = RowWriter(model.kernels)
        self.state = state

    def construct(self, features, frame_keep, position_ids, mask, arena_rows):
        audio = self.projector(self.encoder(features, frame_keep, position_ids, mask))
        written = self.write_rows(self.state.audio, arena_rows, audio.reshape(-1, audio.shape[-1]))
        return ops.depend(arena_rows[:1], written)


class PrefillGraph(nn.Cell):
    """Packed prompt rows [r, l] (packing.PrefillRow) -> keys and values in the staging caches at
    stage_rows [r * l]; the next token, its raw log-probability and the logits at the flat token
    indices `last` [q], for rows of tasks `tasks` [q] with decoding `parameters` [q, 6]."""

    def __init__(self, model: Qwen2Audio, state: ModelState, features: GraphFeatures):
        super().__init__(auto_prefix=False)
        self.text = model.language_model.model
        self.lm_head = model.language_model.lm_head
        self.state = state
        self.penalty, self.sampling = features.penalty, features.sampling
        self.choose = TokenChooser(model.kernels, features.penalty, features.sampling)

    def construct(self, ids, audio_rows, is_audio, positions, mask, stage_rows, last, tasks, parameters):
        r, l = ids.shape
        audio = ops.gather(self.state.audio, audio_rows, 0)
        embeds = ops.select(is_audio.reshape(r, l, 1), audio, self.text.embed_tokens(ids))
        picked = self.text.prefill(embeds, positions, mask, stage_rows, self.state.k_stage, self.state.v_stage, last)
        logits = cast(self.lm_head(picked), ms.float32)
        presence = ops.gather(self.state.prompt_presence, tasks, 0) if self.penalty else logits
        tokens, logprobs = self.choose(logits, presence, parameters)
        return tokens, logprobs, logits


class ScoredPrefillGraph(PrefillGraph):
    """PrefillGraph with one more input, candidates [k] int32 ids, and one more output: the raw
    log-softmax of each first step at them [q, k] (before any penalty or sampling filter), which
    is what a scored question's P(yes) is read from. A separate graph, used only by runs with
    scored questions: every other run compiles exactly what it did."""

    def construct(self, ids, audio_rows, is_audio, positions, mask, stage_rows, last, tasks, parameters, candidates):
        tokens, logprobs, logits = super().construct(ids, audio_rows, is_audio, positions, mask, stage_rows, last,
                                                     tasks, parameters)
        top = logits.max(-1, keepdims=True)
        log_total = ops.log(ops.exp(logits - top).sum(-1, keepdims=True))
        return tokens, logprobs, logits, ops.gather(logits, candidates, 1) - top - log_total


class InsertGraph(nn.Cell):
    """Rewrites whole decode slots: slot slots[j] gets the staging rows src[j] ([i, span]: its prompt,
    then the staging trash row, which is all zeros, for the positions it will generate into), and,
    with the penalty, the presence of its task tasks[j]'s prompt. Padding entries repeat a real
    one, so a padded call writes nothing new. short: into the short slots (slots are numbered
    across both classes; the short ones come after the first_short long ones)."""

    def __init__(self, spec, state: ModelState, features: GraphFeatures, kernels: CpuKernels | None,
                 short: bool = False):
        super().__init__(auto_prefix=False)
        self.state = state
        self.write_rows = RowWriter(kernels)
        self.layers = spec.layers
        self.kv_heads, self.head_dim = spec.kv_heads, spec.head_dim
        self.penalty = features.penalty
        self.short = short
        self.first_short = state.k_cache[0].shape[0]

    def construct(self, src, slots, tasks):
        i, span = src.shape
        kv = self.kv_heads
        # Staging rows in the slot caches' [i, kv, span] order: the gather lays the values out as
        # the slots hold them, with no transpose (a third less time per insert, measured).
        flat = (src.reshape(i, 1, span) * kv + ops.arange(0, kv, 1, dtype=ms.int32).reshape(1, kv, 1)).reshape(-1)
        done = slots[:1]
        if self.penalty:
            prompt = ops.gather(self.state.prompt_presence, tasks, 0)
            done = ops.depend(done, ops.scatter_update(self.state.presence, slots, prompt))
        if self.short:
            in_class, k_caches, v_caches = slots - self.first_short, self.state.k_short, self.state.v_short
        else:
            in_class, k_caches, v_caches = slots, self.state.k_cache, self.state.v_cache
        for layer in range(self.layers):
            for stage, cache in ((self.state.k_stage[layer], k_caches[layer]),
                                 (self.state.v_stage[layer], v_caches[layer])):
                values = ops.gather(stage, flat, 0).reshape(i, kv, span, self.head_dim)
                done = ops.depend(done, self.write_rows(cache, in_class, values))
        return done


class ForkGraph(nn.Cell):
    """Copies slot src[j]'s first lengths[j] cache positions into slot dst[j] and clears the rest
    (the next step adds onto zeros); with the penalty, dst[j]'s presence becomes presence[j] (the
    ids of the conversation copied, built on the host: the source slot may hold a later turn's ids
    by now). src may equal dst (a slot taken over by a fork from it); every source is read before
    any slot is written. Padding entries repeat a real one."""

    def __init__(self, spec, state: ModelState, features: GraphFeatures):
        super().__init__(auto_prefix=False)
        self.state = state
        self.layers = spec.layers
        self.penalty = features.penalty

    def construct(self, src, dst, lengths, presence):
        span = self.state.k_cache[0].shape[2]
        keep = ops.arange(0, span, 1, dtype=ms.int32).reshape(1, 1, span, 1) < lengths.reshape(-1, 1, 1, 1)
        done = dst[:1]
        if self.penalty:
            done = ops.depend(done, ops.scatter_update(self.state.presence, dst, presence))
        for layer in range(self.layers):
            for cache in (self.state.k_cache[layer], self.state.v_cache[layer]):
                values = ops.gather(cache, src, 0)
                # A select, not a product: whatever the cleared positions hold never reaches the copy.
                values = ops.select(ops.broadcast_to(keep, values.shape), values, ops.zeros_like(values))
                done = ops.depend(done, ops.scatter_update(cache, dst, values))
        return done


class ExtendGraph(nn.Cell):
    """Follow-up questions: ids [e, c] at positions [e, c] of slots [e], written at
    write_positions [e, c] (padding: the scratch position) -> each row's first answer token and
    its raw log-probability, from the hidden state at the flat index last [e], with decoding
    parameters [e, 6]. With the penalty, each id with weight 1 (weights [e * c]; padding 0) joins
    its slot's presence first."""

    def __init__(self, model: Qwen2Audio, state: ModelState, features: GraphFeatures):
        super().__init__(auto_prefix=False)
        self.text = model.language_model.model
        self.lm_head = model.language_model.lm_head
        self.state = state
        self.penalty, self.sampling = features.penalty, features.sampling
        self.choose = TokenChooser(model.kernels, features.penalty, features.sampling)

    def construct(self, ids, positions, write_positions, slots, last, weights, parameters):
        e, c = ids.shape
        picked = self.text.extend(self.text.embed_tokens(ids), positions, write_positions, slots,
                                  self.state.k_cache, self.state.v_cache, last)
        logits = cast(self.lm_head(picked), ms.float32)
        if not self.penalty:
            return self.choose(logits, logits, parameters)
        at_slot = ops.broadcast_to(slots.reshape(e, 1), (e, c)).reshape(-1)
        at = ops.stack((at_slot, ids.reshape(-1)), -1)
        added = ops.scatter_nd_add(self.state.presence, at, weights)
        presence = ops.gather(ops.depend(self.state.presence, added), slots, 0)
        return self.choose(logits, presence, parameters)


class StepGraph(nn.Cell):
    """One decode step for every slot (long slots, then short ones): ids [n] at positions [n],
    decoding parameters [n, 6] -> next tokens [n] and their raw log-probabilities [n]. With the
    penalty, each fed id joins its slot's presence first (the penalty covers every token generated
    so far)."""

    def __init__(self, model: Qwen2Audio, state: ModelState, features: GraphFeatures):
        super().__init__(auto_prefix=False)
        self.text = model.language_model.model
        self.lm_head = model.language_model.lm_head
        self.state = state
        self.penalty, self.sampling = features.penalty, features.sampling
        self.choose = TokenChooser(model.kernels, features.penalty, features.sampling)

    def construct(self, ids, positions, parameters):
        embeds = self.text.embed_tokens(ids)
        if self.state.split:
            hidden = self.text.step_split(embeds, positions, self.state.k_cache, self.state.v_cache,
                                          self.state.k_short, self.state.v_short)
        else:
            hidden = self.text.step(embeds, positions, self.state.k_cache, self.state.v_cache)
        logits = cast(self.lm_head(hidden), ms.float32)
        if not self.penalty:
            return self.choose(logits, logits, parameters)
        n = ids.shape[0]
        at = ops.stack((ops.arange(0, n, 1, dtype=ms.int32), ids), -1)
        # Added, not set: a count above 0 is presence, and scatter_nd_add writes in place
        # (scatter_nd_update copies the whole state on the CPU backend).
        added = ops.scatter_nd_add(self.state.presence, at, ops.ones((n,), ms.float32))
        return self.choose(logits, ops.depend(self.state.presence, added), parameters)


def compiled_graph_count(graphs) -> int:
    """Graphs MindSpore actually compiled for these cells (one per distinct input signature)."""
    return sum(len(g.compile_cache) for g in graphs)
