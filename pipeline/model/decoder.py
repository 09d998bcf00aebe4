"""Qwen2 text decoder for fixed-shape graphs, with key/value caches that are Parameters updated in
place. Measured on the CPU backend: `ops.scatter_update` (whole rows along axis 0) and
`ops.scatter_nd_add` touch only what they write, while `scatter_nd_update`, functional caches and
reshaping a Parameter copy the whole cache on every call.

Three forms of the same layers:
- `prefill`: packed rows of prompts (pipeline.model.packing.PrefillRow) with a tree mask; keys and
  values of every token are written to a staging cache, from which each task row's prompt is later
  copied into a decode slot.
- `step`: one new token for each decode slot; the slot's cache holds its whole prompt and the
  tokens generated so far at positions 0, 1, 2, ... (a slot's position is its cache index).
- `extend`: several new tokens for each of a few slots (a follow-up question after the answer its
  slot holds), written to the slot caches and attending to everything before them there.

Slot caches: one Parameter per layer for keys and one for values, [slots, kv_heads, span, head_dim],
the layout attention reads, one position longer than any row needs: a scratch position that idle
slots write to and no mask ever shows. An insert rewrites a whole slot (its prompt, then zeros); a
step adds each new key and value onto a zero position, which sets it exactly.
"""

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from pipeline.model.cpu_kernels import MASKED_ATTENTION_WIDTHS, RowWriter
from pipeline.model.layers import Embedding, Linear, RMSNorm, cast
from pipeline.model.packing import MASKED


def rotary_tables(head_dim: int, theta: float, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [max_positions, head_dim], computed in fp32 like the reference."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    freqs = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq[None, :].astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def rotation_matrix(head_dim: int) -> np.ndarray:
    """R with x @ R == rotate_half(x) == concat(-x[half:], x[:half]): one product instead of two
    slices, a negation and a concatenation (four kernel launches, each costly on the CPU backend).
    Exact: every output is one input times +-1, plus zeros."""
    half = head_dim // 2
    r = np.zeros((head_dim, head_dim), np.float32)
    r[np.arange(half) + half, np.arange(half)] = -1.0
    r[np.arange(half), np.arange(half) + half] = 1.0
    return r


def additive_mask(visible):
    """0 where visible, the dtype's minimum elsewhere (as the reference masks), in fp32."""
    return ops.select(visible, ops.zeros(visible.shape, ms.float32), ops.fill(ms.float32, visible.shape, MASKED))


class TextAttention(nn.Cell):
    def __init__(self, spec, dtype, kernels=None):
        """kernels: the compiled CPU kernels (model/cpu_kernels.py) for the rotary embedding, a
        step's attention (each slot's filled positions only), prefill's packed attention (where the
        head width suits it) and its staging writes; None: MindSpore's operations (a step's
        attention over the whole span, masked)."""
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.kv_heads, spec.head_dim
        self.groups = spec.heads // spec.kv_heads
        self.scaling = spec.head_dim**-0.5
        self.q_proj = Linear(spec.hidden, spec.heads * spec.head_dim, True, dtype, True)
        self.k_proj = Linear(spec.hidden, spec.kv_heads * spec.head_dim, True, dtype, True)
        self.v_proj = Linear(spec.hidden, spec.kv_heads * spec.head_dim, True, dtype, True)
        self.o_proj = Linear(spec.heads * spec.head_dim, spec.hidden, False, dtype, True)
        self.rotation = Tensor(rotation_matrix(spec.head_dim), dtype)
        self.write_rows = RowWriter(kernels)  # prefill's keys and values into the staging caches
        # The rotary embedding and a step's attention through the compiled kernels (any head width).
        self.native = kernels is not None
        # Prefill's packed rows through the compiled kernel where it has the head width.
        self.native_prefill = kernels is not None and spec.head_dim in MASKED_ATTENTION_WIDTHS
        if kernels is not None:
            self.step_kernel = kernels.op("StepAttention")
            self.prefill_kernel = kernels.op("MaskedAttention")
            self.rotary_kernel = kernels.op("Rotary")
            self.scale_input = Tensor(np.array([self.scaling], np.float32))
            self.unit_input = Tensor(np.array([1.0], np.float32))
            self.threads_input = Tensor(np.array([kernels.threads], np.int32))

    def prefill(self, x, cos, sin, mask, stage_rows, k_stage, v_stage, last=None):
        """x [r, l, hidden]; cos/sin [r, l, 1, d]; mask additive, [r, l, l] for the compiled kernel,
        else [r, kv, g, l, l] (TextModel.prefill); every token's key and value for head h go to
        row stage_rows[token] * kv + h of the staging caches ([rows * kv, d]: the rows of a token's
        heads are adjacent, as they come out of k_proj). last: None for every token's output
        [r, l, hidden]; else only the outputs of the tokens at the flat indices last [q]
        ([q, hidden]), and where the compiled kernel attends over one row, only their queries."""
        r, l, _ = x.shape
        kv, g, d = self.kv_heads, self.groups, self.head_dim
        k = self._rotate(self.k_proj(x).reshape(r, l, kv, d), cos, sin)
        v = self.v_proj(x).reshape(r, l, kv, d)
        written = self.write_rows(k_stage, stage_rows, k.reshape(r * l * kv, d))
        written = ops.depend(written, self.write_rows(v_stage, stage_rows, v.reshape(r * l * kv, d)))
        # Only the picked tokens' queries where the compiled kernel attends over a single row (the
        # prefill graph's shape): it takes fewer queries than keys, each with its mask row.
        # Otherwise every query attends and the picked outputs are gathered after.
        queries_picked = last is not None and self.native_prefill and r == 1
        if queries_picked:
            x = ops.gather(x.reshape(l, -1), last, 0).reshape(1, -1, x.shape[-1])
            cos = ops.gather(cos.reshape(l, 1, d), last, 0).reshape(1, -1, 1, d)
            sin = ops.gather(sin.reshape(l, 1, d), last, 0).reshape(1, -1, 1, d)
            mask = ops.gather(mask.reshape(l, l), last, 0).reshape(1, -1, l)
        m = x.shape[1]
        # Scaled before the product, on m x d values rather than the m x l scores (exact for the
        # power-of-two scales of 64- and 256-wide heads, within rounding otherwise).
        q = self._rotate(self.q_proj(x).reshape(r, m, self.heads, d), cos, sin, scaled=True)
        if self.native_prefill:  # only the scores each query's mask row shows, token-major: no transposes
            out = self.prefill_kernel(q, k, v, mask, self.threads_input)
        else:
            # Query heads that share a key/value head are folded into the query axis (head h uses
            # kv head h // g, as the reference's repeat_kv does), so keys are never copied per head.
            q = q.transpose(0, 2, 1, 3).reshape(r, kv, g * l, d)
            scores = cast(ops.BatchMatMul(transpose_b=True)(q, k.transpose(0, 2, 1, 3)), ms.float32)
            probs = cast(ops.softmax(scores.reshape(r, kv, g, l, l) + mask, -1), x.dtype).reshape(r, kv, g * l, l)
            out = ops.matmul(probs, v.transpose(0, 2, 1, 3)).reshape(r, self.heads, l, d).transpose(0, 2, 1, 3)
        if last is None:
            return ops.depend(self.o_proj(out.reshape(r, l, self.heads * d)), written)
        out = out.reshape(r * m, self.heads * d)
        if not queries_picked:
            out = ops.gather(out, last, 0)
        return ops.depend(self.o_proj(out), written)

    def step(self, x, cos, sin, write_at, visible, k_cache, v_cache):
        """x [n, hidden] one token per slot; its key and value go to cache index write_at [n, kv, 3]
        (slot, head, position; an idle slot writes to its scratch position); visible: what each
        slot sees (TextModel._step_cache_index)."""
        n, _ = x.shape
        q, k, v = self._step_qkv(x, cos, sin)
        written = ops.scatter_nd_add(k_cache, write_at, k)
        written = ops.depend(written, ops.scatter_nd_add(v_cache, write_at, v))
        out = self._attend_step(q, ops.depend(k_cache, written), ops.depend(v_cache, written), visible, x.dtype)
        return self.o_proj(out.reshape(n, self.heads * self.head_dim))

    def step_split(self, x, cos, sin, write_at, visible, k_cache, v_cache, short_at, short_visible, k_short,
                   v_short):
        """step() over long slots then short ones: the first rows of x are the long slots (write_at,
        visible and caches as in step()), the rest the short slots, whose keys and values go to
        short_at [s, kv, 3] of the short caches, which they see as short_visible says. Only the
        attention is per slot class; the projections run once over every row."""
        n, _ = x.shape
        long_n = write_at.shape[0]
        q, k, v = self._step_qkv(x, cos, sin)
        written = ops.scatter_nd_add(k_cache, write_at, k[:long_n])
        written = ops.depend(written, ops.scatter_nd_add(v_cache, write_at, v[:long_n]))
        written = ops.depend(written, ops.scatter_nd_add(k_short, short_at, k[long_n:]))
        written = ops.depend(written, ops.scatter_nd_add(v_short, short_at, v[long_n:]))
        out = ops.concat((
            self._attend_step(q[:long_n], ops.depend(k_cache, written), ops.depend(v_cache, written), visible,
                              x.dtype),
            self._attend_step(q[long_n:], ops.depend(k_short, written), ops.depend(v_short, written), short_visible,
                              x.dtype)), 0)
        return self.o_proj(out.reshape(n, self.heads * self.head_dim))

    def _rotate(self, x, cos, sin, scaled: bool = False):
        """Rotary embedding of x [tokens, ..., d] (cos/sin [tokens, ..., d], one row per token,
        broadcast over the heads), times the attention's scale where scaled: the compiled kernel in
        one pass where there is one, else a product with the rotation matrix and elementwise passes."""
        if self.native:
            return self.rotary_kernel(x, cos, sin, self.scale_input if scaled else self.unit_input)
        d = x.shape[-1]
        turned = ops.matmul(x.reshape(-1, d), self.rotation).reshape(x.shape)
        rotated = x * cos + turned * sin
        return rotated * self.scaling if scaled else rotated

    def _step_qkv(self, x, cos, sin):
        """One token per row -> rotated q [n, kv, g, d], rotated k [n, kv, d] and v [n, kv, d]."""
        n, _ = x.shape
        kv, g, d = self.kv_heads, self.groups, self.head_dim
        q = self._rotate(self.q_proj(x).reshape(n, kv, g, d), cos, sin)
        k = self._rotate(self.k_proj(x).reshape(n, kv, 1, d), cos, sin)
        return q, k.reshape(n, kv, d), self.v_proj(x).reshape(n, kv, d)

    def _attend_step(self, q, keys, values, visible, dtype):
        """q [n, kv, g, d] against caches [n, kv, span, d] -> [n, kv, g, d]. visible: each slot's
        position [n] for the compiled kernel, which reads positions up to it; for MindSpore's
        operations the additive mask [n, kv, g, span] over the whole span."""
        if self.native:
            return self.step_kernel(q, keys, values, visible, self.scale_input, self.threads_input)
        scores = cast(ops.BatchMatMul(transpose_b=True)(q, keys) * self.scaling, ms.float32) + visible
        return ops.matmul(cast(ops.softmax(scores, -1), dtype), values)

    def extend(self, x, cos, sin, write_at, slots, mask, k_cache, v_cache, last=None):
        """x [e, c, hidden]: c new tokens for each of the slots [e]; their keys and values go to
        cache index write_at [e, c, kv, 3] (slot, head, position; padding: the slot's scratch
        position); mask [e, kv, g * c, span] additive. Written first, then read with the rest of
        the slot, so each token sees the earlier new ones. last: as in prefill()."""
        e, c, _ = x.shape
        kv, g, d = self.kv_heads, self.groups, self.head_dim
        q = self.q_proj(x).reshape(e, c, self.heads, d)
        k = self.k_proj(x).reshape(e, c, kv, d)
        v = self.v_proj(x).reshape(e, c, kv, d)
        q = self._rotate(q, cos, sin)
        k = self._rotate(k, cos, sin)
        written = ops.scatter_nd_add(k_cache, write_at, k)
        written = ops.depend(written, ops.scatter_nd_add(v_cache, write_at, v))
        keys = ops.gather(ops.depend(k_cache, written), slots, 0)
        values = ops.gather(ops.depend(v_cache, written), slots, 0)
        q = q.transpose(0, 2, 1, 3).reshape(e, kv, g * c, d)  # grouped heads folded as in prefill
        scores = cast(ops.BatchMatMul(transpose_b=True)(q, keys) * self.scaling, ms.float32) + mask
        probs = cast(ops.softmax(scores, -1), x.dtype)
        out = ops.matmul(probs, values).reshape(e, self.heads, c, d).transpose(0, 2, 1, 3)
        if last is not None:
            return self.o_proj(ops.gather(out.reshape(e * c, self.heads * d), last, 0))
        return self.o_proj(out.reshape(e, c, self.heads * d))


class MLP(nn.Cell):
    def __init__(self, spec, dtype, kernels=None):
        """kernels: the compiled CPU kernels (model/cpu_kernels.py), which take SiLU and the product
        in one pass; None: MindSpore's two."""
        super().__init__()
        self.gate_proj = Linear(spec.hidden, spec.intermediate, False, dtype, True)
        self.up_proj = Linear(spec.hidden, spec.intermediate, False, dtype, True)
        self.down_proj = Linear(spec.intermediate, spec.hidden, False, dtype, True)
        self.native = kernels is not None
        if kernels is not None:
            self.silu_product = kernels.op("SiluProduct")

    def construct(self, x):
        if self.native:
            return self.down_proj(self.silu_product(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(ops.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Cell):
    def __init__(self, spec, dtype, kernels=None):
        super().__init__()
        self.self_attn = TextAttention(spec, dtype, kernels)
        self.mlp = MLP(spec, dtype, kernels)
        self.input_layernorm = RMSNorm(spec.hidden, dtype, spec.rms_eps, kernels)
        self.post_attention_layernorm = RMSNorm(spec.hidden, dtype, spec.rms_eps, kernels)

    def prefill(self, x, cos, sin, mask, stage_rows, k_stage, v_stage, last=None):
        """last: None for every token's output [r, l, hidden]; else only the tokens at the flat
        indices last [q] go past attention ([q, hidden]; their queries alone with the compiled
        kernel): every token's key and value is still written, and no later layer reads the
        others' outputs."""
        attended = self.self_attn.prefill(self.input_layernorm(x), cos, sin, mask, stage_rows, k_stage, v_stage, last)
        return self._residual_and_mlp(x, attended, last)

    def step(self, x, cos, sin, write_at, visible, k_cache, v_cache):
        attended = self.self_attn.step(self.input_layernorm(x), cos, sin, write_at, visible, k_cache, v_cache)
        return self._residual_and_mlp(x, attended)

    def step_split(self, x, cos, sin, write_at, visible, k_cache, v_cache, short_at, short_visible, k_short,
                   v_short):
        attended = self.self_attn.step_split(self.input_layernorm(x), cos, sin, write_at, visible, k_cache, v_cache,
                                             short_at, short_visible, k_short, v_short)
        return self._residual_and_mlp(x, attended)

    def extend(self, x, cos, sin, write_at, slots, mask, k_cache, v_cache, last=None):
        attended = self.self_attn.extend(self.input_layernorm(x), cos, sin, write_at, slots, mask, k_cache, v_cache,
                                         last)
        return self._residual_and_mlp(x, attended, last)

    def _residual_and_mlp(self, x, attended, last=None):
        """The layer after attention: the residual, then the MLP block. last: the flat token
        indices attention gave outputs for (None: every token), whose rows of x it adds to."""
        if last is not None:
            x = ops.gather(x.reshape(-1, x.shape[-1]), last, 0)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nn.Cell):
    def __init__(self, spec, dtype, kernels=None):
        super().__init__()
        self.embed_tokens = Embedding(spec.vocab, spec.hidden, dtype)
        self.layers = nn.CellList([DecoderLayer(spec, dtype, kernels) for _ in range(spec.layers)])
        self.norm = RMSNorm(spec.hidden, dtype, spec.rms_eps, kernels)
        cos, sin = rotary_tables(spec.head_dim, spec.rope_theta, spec.max_positions)
        self.cos_table = Tensor(cos, dtype)
        self.sin_table = Tensor(sin, dtype)
        self.kv_heads, self.head_dim = spec.kv_heads, spec.head_dim
        self.groups = spec.heads // spec.kv_heads

    def prefill(self, embeds, positions, mask, stage_rows, k_stages, v_stages, last):
        """embeds [r, l, hidden] at positions [r, l], mask [r, l, l] additive (packing.PrefillRow),
        keys and values of token j to staging row stage_rows[j] -> normed hidden states [q, hidden]
        of the tokens at the flat indices last [q]: only their logits are read, so the last layer
        takes only them past attention (output projection and MLP for q tokens instead of r * l;
        with the compiled kernel over one row, their queries and attention alone too; keys and
        values for every token), one layer's share of prefill's work."""
        r, l = positions.shape
        # Row stage_rows[j] of the [rows, kv * d] staging layout, as kv rows of [rows * kv, d].
        stage_rows = (stage_rows.reshape(-1, 1) * self.kv_heads
                      + ops.arange(0, self.kv_heads, 1, dtype=ms.int32).reshape(1, -1)).reshape(-1)
        cos = ops.gather(self.cos_table, positions, 0).reshape(r, l, 1, self.head_dim)
        sin = ops.gather(self.sin_table, positions, 0).reshape(r, l, 1, self.head_dim)
        # One copy per query head, made once for every layer: the CPU backend's Add broadcasting the
        # mask over heads took 1.5x the time of its mask add and softmax without (encoder.py). The
        # compiled kernel reads each query's row once for every head.
        if not self.layers[0].self_attn.native_prefill:
            mask = ops.tile(mask.reshape(r, 1, 1, l, l), (1, self.kv_heads, self.groups, 1, 1))
        x = embeds
        for i in range(len(self.layers) - 1):
            x = self.layers[i].prefill(x, cos, sin, mask, stage_rows, k_stages[i], v_stages[i])
        i = len(self.layers) - 1
        return self.norm(self.layers[i].prefill(x, cos, sin, mask, stage_rows, k_stages[i], v_stages[i], last))

    def step(self, embeds, positions, k_caches, v_caches):
        """embeds [n, hidden], each slot's new token at positions [n] (its cache length so far; an
        idle slot gives its scratch position, the last, which no row ever sees)."""
        n = positions.shape[0]
        cos, sin = self._step_rotary(positions)
        write_at, visible = self._step_cache_index(positions, k_caches[0].shape[2])
        x = embeds
        for i in range(len(self.layers)):
            x = self.layers[i].step(x, cos, sin, write_at, visible, k_caches[i], v_caches[i])
        return self.norm(x)

    def step_split(self, embeds, positions, k_caches, v_caches, k_shorts, v_shorts):
        """step() with the last slots short (graph_shapes.split_slots): positions [n] of the long
        slots (k_caches' first axis) then of the short ones (k_shorts'), each slot's scratch
        position its own cache's last."""
        long_n = k_caches[0].shape[0]
        cos, sin = self._step_rotary(positions)
        write_at, visible = self._step_cache_index(positions[:long_n], k_caches[0].shape[2])
        short_at, short_visible = self._step_cache_index(positions[long_n:], k_shorts[0].shape[2])
        x = embeds
        for i in range(len(self.layers)):
            x = self.layers[i].step_split(x, cos, sin, write_at, visible, k_caches[i], v_caches[i],
                                          short_at, short_visible, k_shorts[i], v_shorts[i])
        return self.norm(x)

    def _step_rotary(self, positions):
        n = positions.shape[0]
        cos = ops.gather(self.cos_table, positions, 0).reshape(n, 1, 1, self.head_dim)
        sin = ops.gather(self.sin_table, positions, 0).reshape(n, 1, 1, self.head_dim)
        return cos, sin

    def _step_cache_index(self, positions, span):
        """Slot j's new key and value at (j, head, positions[j]) of a cache of span positions, and
        what shows it positions up to its own: the positions themselves for the compiled kernel,
        else the additive mask [n, kv, g, span]."""
        n = positions.shape[0]
        slots = ops.broadcast_to(ops.arange(0, n, 1, dtype=ms.int32).reshape(n, 1, 1), (n, self.kv_heads, 1))
        heads = ops.broadcast_to(ops.arange(0, self.kv_heads, 1, dtype=ms.int32).reshape(1, -1, 1), (n, self.kv_heads, 1))
        at = ops.broadcast_to(positions.reshape(n, 1, 1), (n, self.kv_heads, 1))
        write_at = ops.concat((slots, heads, at), -1)
        if self.layers[0].self_attn.native:
            return write_at, positions
        visible = ops.arange(0, span, 1, dtype=ms.int32).reshape(1, span) <= positions.reshape(n, 1)
        return write_at, ops.broadcast_to(additive_mask(visible).reshape(n, 1, 1, span),
                                          (n, self.kv_heads, self.groups, span))

    def extend(self, embeds, positions, write_positions, slots, k_caches, v_caches, last):
        """embeds [e, c, hidden]: new tokens of the slots [e] at positions [e, c], written at
        write_positions [e, c] (a padding token: the scratch position, the last, which no row sees)
        -> normed hidden states [q, hidden] of the tokens at the flat indices last [q] (the last
        layer takes only those past attention, as in prefill())."""
        e, c = positions.shape
        kv, g, d = self.kv_heads, self.groups, self.head_dim
        span = k_caches[0].shape[2]
        cos = ops.gather(self.cos_table, positions, 0).reshape(e, c, 1, d)
        sin = ops.gather(self.sin_table, positions, 0).reshape(e, c, 1, d)
        at_slot = ops.broadcast_to(slots.reshape(e, 1, 1, 1), (e, c, kv, 1))
        heads = ops.broadcast_to(ops.arange(0, kv, 1, dtype=ms.int32).reshape(1, 1, kv, 1), (e, c, kv, 1))
        at = ops.broadcast_to(write_positions.reshape(e, c, 1, 1), (e, c, kv, 1))
        write_at = ops.concat((at_slot, heads, at), -1)
        visible = ops.arange(0, span, 1, dtype=ms.int32).reshape(1, 1, span) <= positions.reshape(e, c, 1)
        mask = ops.tile(additive_mask(visible).reshape(e, 1, 1, c, span), (1, kv, g, 1, 1)).reshape(e, kv, g * c, span)
        x = embeds
        for i in range(len(self.layers) - 1):
            x = self.layers[i].extend(x, cos, sin, write_at, slots, mask, k_caches[i], v_caches[i])
        i = len(self.layers) - 1
        return self.norm(self.layers[i].extend(x, cos, sin, write_at, slots, mask, k_caches[i], v_caches[i], last))


class LanguageModel(nn.Cell):
    def __init__(self, spec, dtype, kernels=None):
        """kernels: the compiled CPU kernels (model/cpu_kernels.py) for the norms; None: MindSpore's."""
        super().__init__()
        self.model = TextModel(spec, dtype, kernels)
        self.lm_head = Linear(spec.hidden, spec.vocab, False, dtype, True)
