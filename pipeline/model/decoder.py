"""Qwen2 text decoder with static KV caches, for fixed-shape graphs.

Every call is an "extend": N rows each append C tokens to their own cache. A row's keys are visible
up to the query's own slot; slots past it may hold padding from an earlier chunk and are both
masked and overwritten before they become visible. Prefill (C = prompt length) and decode (C = 1)
are the same code at different shapes.

Two forms: `construct` attends within one cache (the shared prompt prefix, prefilled once per
clip), `with_prefix` attends over a clip's prefix cache plus the row's own cache (task suffix and
generated tokens). The task rows of a clip read its prefix cache in place (they are folded into
the query axis), so the prefix is stored once per clip, not once per task.
"""

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from pipeline.model.layers import Embedding, Linear, RMSNorm

MASKED = float(np.finfo(np.float32).min)


def rotary_tables(head_dim: int, theta: float, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [max_positions, head_dim], computed in fp32 like the reference."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    freqs = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq[None, :].astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return ops.concat((-x[..., half:], x[..., :half]), -1)


class TextAttention(nn.Cell):
    def __init__(self, spec, dtype):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.kv_heads, spec.head_dim
        self.groups = spec.heads // spec.kv_heads
        self.scaling = spec.head_dim**-0.5
        self.q_proj = Linear(spec.hidden, spec.heads * spec.head_dim, True, dtype)
        self.k_proj = Linear(spec.hidden, spec.kv_heads * spec.head_dim, True, dtype)
        self.v_proj = Linear(spec.hidden, spec.kv_heads * spec.head_dim, True, dtype)
        self.o_proj = Linear(spec.heads * spec.head_dim, spec.hidden, False, dtype)

    def _extend(self, x, cos, sin, slots, k_cache, v_cache):
        """Queries [n, heads, c, d] and the caches with this chunk's keys and values written."""
        n, c, _ = x.shape
        q = self.q_proj(x).reshape(n, c, self.heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(n, c, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(n, c, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k_cache = ops.tensor_scatter_elements(k_cache, slots, k, axis=2)
        v_cache = ops.tensor_scatter_elements(v_cache, slots, v, axis=2)
        return q, k_cache, v_cache

    def _scores(self, q, keys):
        """Grouped-query scores without copying the cache: query heads that share a key/value head
        are folded into the query axis (head h uses kv head h // groups). -> [n, kv, g*c, s] fp32."""
        n, _, c, _ = q.shape
        qg = q.reshape(n, self.kv_heads, self.groups * c, self.head_dim)
        return (ops.matmul(qg, keys.transpose(0, 1, 3, 2)) * self.scaling).astype(ms.float32)

    def _output(self, out, n, c):
        """[n, kv, g*c, d] -> [n, c, hidden]"""
        out = out.reshape(n, self.heads, c, self.head_dim).transpose(0, 2, 1, 3)
        return self.o_proj(out.reshape(n, c, self.heads * self.head_dim))

    def construct(self, x, cos, sin, slots, mask, k_cache, v_cache):
        n, c, _ = x.shape
        q, k_cache, v_cache = self._extend(x, cos, sin, slots, k_cache, v_cache)
        s = k_cache.shape[2]
        scores = self._scores(q, k_cache).reshape(n, self.kv_heads, self.groups, c, s) + mask
        probs = ops.softmax(scores, -1).astype(x.dtype).reshape(n, self.kv_heads, self.groups * c, s)
        return self._output(ops.matmul(probs, v_cache), n, c), k_cache, v_cache

    def with_prefix(self, x, cos, sin, slots, own_mask, k_own, v_own, prefix_mask, k_prefix, v_prefix):
        n, c, _ = x.shape
        q, k_own, v_own = self._extend(x, cos, sin, slots, k_own, v_own)
        b, _, p, _ = k_prefix.shape
        t, kv, g, d = k_own.shape[2], self.kv_heads, self.groups, self.head_dim
        tasks = n // b  # rows are clip-major: row = clip * tasks + task
        # The task rows of a clip share its prefix cache: fold them into the query axis and read
        # the cache in place, [b, kv, tasks*g*c, d] x [b, kv, p, d].
        q_clip = q.reshape(b, tasks, kv, g * c, d).transpose(0, 2, 1, 3, 4).reshape(b, kv, tasks * g * c, d)
        prefix_scores = (ops.matmul(q_clip, k_prefix.transpose(0, 1, 3, 2)) * self.scaling).astype(ms.float32)
        prefix_scores = prefix_scores.reshape(b, kv, tasks, g, c, p).transpose(0, 2, 1, 3, 4, 5)
        prefix_scores = prefix_scores.reshape(n, kv, g, c, p) + prefix_mask
        own_scores = self._scores(q, k_own).reshape(n, kv, g, c, t) + own_mask
        # One softmax over prefix and own keys together: exactly attention over the whole row.
        probs = ops.softmax(ops.concat((prefix_scores, own_scores), -1), -1).astype(x.dtype)
        prefix_probs = probs[..., :p].reshape(b, tasks, kv, g * c, p).transpose(0, 2, 1, 3, 4)
        from_prefix = ops.matmul(prefix_probs.reshape(b, kv, tasks * g * c, p), v_prefix)
        from_prefix = from_prefix.reshape(b, kv, tasks, g * c, d).transpose(0, 2, 1, 3, 4).reshape(n, kv, g * c, d)
        from_own = ops.matmul(probs[..., p:].reshape(n, kv, g * c, t), v_own)
        return self._output(from_prefix + from_own, n, c), k_own, v_own


class MLP(nn.Cell):
    def __init__(self, spec, dtype):
        super().__init__()
        self.gate_proj = Linear(spec.hidden, spec.intermediate, False, dtype)
        self.up_proj = Linear(spec.hidden, spec.intermediate, False, dtype)
        self.down_proj = Linear(spec.intermediate, spec.hidden, False, dtype)

    def construct(self, x):
        return self.down_proj(ops.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Cell):
    def __init__(self, spec, dtype):
        super().__init__()
        self.self_attn = TextAttention(spec, dtype)
        self.mlp = MLP(spec, dtype)
        self.input_layernorm = RMSNorm(spec.hidden, dtype, spec.rms_eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden, dtype, spec.rms_eps)

    def construct(self, x, cos, sin, slots, mask, k_cache, v_cache):
        attn, k_cache, v_cache = self.self_attn(self.input_layernorm(x), cos, sin, slots, mask, k_cache, v_cache)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), k_cache, v_cache

    def with_prefix(self, x, cos, sin, slots, own_mask, k_own, v_own, prefix_mask, k_prefix, v_prefix):
        attn, k_own, v_own = self.self_attn.with_prefix(self.input_layernorm(x), cos, sin, slots, own_mask, k_own,
                                                        v_own, prefix_mask, k_prefix, v_prefix)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), k_own, v_own


class TextModel(nn.Cell):
    """embeds [N, C, H] at positions [N, C] -> normed hidden states [N, C, H] and updated caches."""

    def __init__(self, spec, dtype):
        super().__init__()
        self.embed_tokens = Embedding(spec.vocab, spec.hidden, dtype)
        self.layers = nn.CellList([DecoderLayer(spec, dtype) for _ in range(spec.layers)])
        self.norm = RMSNorm(spec.hidden, dtype, spec.rms_eps)
        cos, sin = rotary_tables(spec.head_dim, spec.rope_theta, spec.max_positions)
        self.cos_table = Tensor(cos, dtype)
        self.sin_table = Tensor(sin, dtype)
        self.kv_heads, self.head_dim = spec.kv_heads, spec.head_dim
        self.groups = spec.heads // spec.kv_heads

    def _rotary(self, positions):
        n, c = positions.shape
        cos = ops.gather(self.cos_table, positions, 0).reshape(n, 1, c, self.head_dim)
        sin = ops.gather(self.sin_table, positions, 0).reshape(n, 1, c, self.head_dim)
        return cos, sin

    def _mask(self, visible, n, c, length):
        """Additive mask broadcast once to the scores' shape [n, kv, g, c, length]: on the CPU
        backend a broadcasting add inside every layer defeats memory reuse (see AudioEncoder)."""
        mask = ops.select(visible, ops.zeros((n, c, length), ms.float32), ops.fill(ms.float32, (n, c, length), MASKED))
        return ops.broadcast_to(mask.reshape(n, 1, 1, c, length), (n, self.kv_heads, self.groups, c, length))

    def _slot_index(self, slots):
        n, c = slots.shape
        return ops.broadcast_to(slots.reshape(n, 1, c, 1), (n, self.kv_heads, c, self.head_dim))

    def construct(self, embeds, positions, k_caches, v_caches):
        """Within one cache whose slots are the positions (the shared prefix)."""
        n, c = positions.shape
        cos, sin = self._rotary(positions)
        s = k_caches[0].shape[2]
        visible = ops.arange(0, s, 1, dtype=ms.int32).reshape(1, 1, s) <= positions.reshape(n, c, 1)
        mask = self._mask(visible, n, c, s)
        slots = self._slot_index(positions)
        x = embeds
        new_k = ()
        new_v = ()
        for i in range(len(self.layers)):
            x, k, v = self.layers[i](x, cos, sin, slots, mask, k_caches[i], v_caches[i])
            new_k = new_k + (k,)
            new_v = new_v + (v,)
        return self.norm(x), new_k, new_v

    def with_prefix(self, embeds, positions, own_slots, k_own, v_own, prefix_lens, k_prefix, v_prefix):
        """Task rows: positions [n, c] for rotary embeddings, own_slots [n, c] in the row's own
        cache, prefix_lens [n] valid slots of the row's clip prefix (prefix caches are per clip)."""
        n, c = positions.shape
        cos, sin = self._rotary(positions)
        t, p = k_own[0].shape[2], k_prefix[0].shape[2]
        own_visible = ops.arange(0, t, 1, dtype=ms.int32).reshape(1, 1, t) <= own_slots.reshape(n, c, 1)
        prefix_visible = ops.arange(0, p, 1, dtype=ms.int32).reshape(1, 1, p) < prefix_lens.reshape(n, 1, 1)
        own_mask = self._mask(own_visible, n, c, t)
        prefix_mask = self._mask(ops.broadcast_to(prefix_visible, (n, c, p)), n, c, p)
        slots = self._slot_index(own_slots)
        x = embeds
        new_k = ()
        new_v = ()
        for i in range(len(self.layers)):
            x, k, v = self.layers[i].with_prefix(x, cos, sin, slots, own_mask, k_own[i], v_own[i], prefix_mask,
                                                 k_prefix[i], v_prefix[i])
            new_k = new_k + (k,)
            new_v = new_v + (v,)
        return self.norm(x), new_k, new_v


class LanguageModel(nn.Cell):
    def __init__(self, spec, dtype):
        super().__init__()
        self.model = TextModel(spec, dtype)
        self.lm_head = Linear(spec.hidden, spec.vocab, False, dtype)
