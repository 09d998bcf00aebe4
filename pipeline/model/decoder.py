"""Qwen2 text decoder with a static KV cache, for fixed-shape graphs.

Every call is an "extend": N rows each append C tokens at their own positions. Row i's tokens sit
in cache slots equal to their positions, so a row's valid keys are exactly the slots at or before
the query's position; slots past it may hold padding from an earlier chunk and are both masked and
overwritten before they become visible. Prefill (C = prompt length) and decode (C = 1) are the same
code at different shapes.
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

    def construct(self, x, cos, sin, slots, mask, k_cache, v_cache):
        n, c, _ = x.shape
        q = self.q_proj(x).reshape(n, c, self.heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(n, c, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(n, c, self.kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k_cache = ops.tensor_scatter_elements(k_cache, slots, k, axis=2)
        v_cache = ops.tensor_scatter_elements(v_cache, slots, v, axis=2)
        # Grouped-query attention without copying the cache: query heads that share a key/value
        # head are folded into the query-length axis (head h uses kv head h // groups).
        s = k_cache.shape[2]
        qg = q.reshape(n, self.kv_heads, self.groups * c, self.head_dim)
        scores = ops.matmul(qg, k_cache.transpose(0, 1, 3, 2)) * self.scaling
        scores = scores.astype(ms.float32).reshape(n, self.kv_heads, self.groups, c, s) + mask
        probs = ops.softmax(scores, -1).astype(x.dtype).reshape(n, self.kv_heads, self.groups * c, s)
        out = ops.matmul(probs, v_cache).reshape(n, self.heads, c, self.head_dim)
        out = out.transpose(0, 2, 1, 3).reshape(n, c, self.heads * self.head_dim)
        return self.o_proj(out), k_cache, v_cache


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
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k_cache, v_cache


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

    def construct(self, embeds, positions, k_caches, v_caches):
        n, c = positions.shape
        cos = ops.gather(self.cos_table, positions, 0).reshape(n, 1, c, self.head_dim)
        sin = ops.gather(self.sin_table, positions, 0).reshape(n, 1, c, self.head_dim)
        s = k_caches[0].shape[2]
        visible = ops.arange(0, s, 1, dtype=ms.int32).reshape(1, 1, s) <= positions.reshape(n, c, 1)
        mask = ops.select(visible, ops.zeros((n, c, s), ms.float32), ops.fill(ms.float32, (n, c, s), MASKED))
        # Broadcast once to the scores' shape (see AudioEncoder: per-layer broadcasting adds defeat
        # memory reuse on the CPU backend).
        mask = ops.broadcast_to(mask.reshape(n, 1, 1, c, s), (n, self.kv_heads, self.groups, c, s))
        slots = ops.broadcast_to(positions.reshape(n, 1, c, 1), (n, self.kv_heads, c, self.head_dim))
        x = embeds
        new_k = ()
        new_v = ()
        for i in range(len(self.layers)):
            x, k, v = self.layers[i](x, cos, sin, slots, mask, k_caches[i], v_caches[i])
            new_k = new_k + (k,)
            new_v = new_v + (v,)
        return self.norm(x), new_k, new_v


class LanguageModel(nn.Cell):
    def __init__(self, spec, dtype):
        super().__init__()
        self.model = TextModel(spec, dtype)
        self.lm_head = Linear(spec.hidden, spec.vocab, False, dtype)
