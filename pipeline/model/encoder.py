"""Qwen2-Audio's audio encoder (Whisper-style) and projector, over packed rows of clips.

The reference always runs 3000 mel frames (30 s) per clip, most of them padding. Here several clips
share a row (pipeline.model.packing): each clip's valid audio tokens match the 30 s reference, and
the padding the encoder computes is a few frames per clip.
"""

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from pipeline.model.cpu_kernels import MASKED_ATTENTION_WIDTHS, CpuKernels, ExactGelu
from pipeline.model.layers import Conv1d, Embedding, LayerNorm, Linear, cast


class EncoderAttention(nn.Cell):
    def __init__(self, dim: int, heads: int, dtype, kernels: CpuKernels | None = None):
        """kernels: the compiled CPU kernels, whose masked attention computes only the scores of
        each clip's own block, where the head width suits it; None: MindSpore's, over the row."""
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scaling = self.head_dim**-0.5
        self.native = kernels is not None and self.head_dim in MASKED_ATTENTION_WIDTHS
        if self.native:
            self.kernel = kernels.op("MaskedAttention")
            self.threads_input = ms.Tensor(np.array([kernels.threads], np.int32))
        self.q_proj = Linear(dim, dim, True, dtype)
        self.k_proj = Linear(dim, dim, False, dtype)  # Whisper's key projection has no bias
        self.v_proj = Linear(dim, dim, True, dtype)
        self.out_proj = Linear(dim, dim, True, dtype)

    def construct(self, x, mask):
        """mask: additive, [b, t, t] for the compiled kernel, else one copy per head [b, heads, t, t]."""
        b, t, _ = x.shape
        # Scale q before the product, as the reference does (it matters for its numerics).
        q = (self.q_proj(x) * self.scaling).reshape(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.heads, self.head_dim)
        if self.native:  # token-major in and out: no transposes
            out = self.kernel(q, k, v, mask, self.threads_input)
        else:
            q, k, v = (y.transpose(0, 2, 1, 3) for y in (q, k, v))
            scores = cast(ops.BatchMatMul(transpose_b=True)(q, k), ms.float32) + mask
            out = ops.matmul(cast(ops.softmax(scores, -1), x.dtype), v).transpose(0, 2, 1, 3)
        return self.out_proj(out.reshape(b, t, -1))


class EncoderLayer(nn.Cell):
    def __init__(self, dim: int, heads: int, ffn: int, dtype, kernels: CpuKernels | None = None):
        super().__init__()
        self.self_attn = EncoderAttention(dim, heads, dtype, kernels)
        self.self_attn_layer_norm = LayerNorm(dim, dtype, kernels=kernels)
        self.fc1 = Linear(dim, ffn, True, dtype)
        self.fc2 = Linear(ffn, dim, True, dtype)
        self.final_layer_norm = LayerNorm(dim, dtype, kernels=kernels)
        self.gelu = ExactGelu(kernels)

    def construct(self, x, mask):
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        h = self.gelu(self.fc1(self.final_layer_norm(x)))
        return x + self.fc2(h)


class AudioEncoder(nn.Cell):
    """Packed rows of clips (pipeline.model.packing.EncoderRow) -> [E, F/4, audio_dim].

    features [E, n_mels, F]; frame_keep [E, 1, F] zeroes the first convolution's output outside each
    clip; position_ids [E, F/2] restart at each clip; mask [E, F/2, F/2] is additive (a position
    attends to its own clip's valid positions). kernels: the compiled CPU kernels, for the exact
    GELU, the layer norms and the attention (model/cpu_kernels.py); None: MindSpore's.
    """

    def __init__(self, spec, dtype, kernels: CpuKernels | None = None):
        super().__init__()
        dim = spec.audio_dim
        self.conv1 = Conv1d(spec.n_mels, dim, kernel_size=3, stride=1, padding=1, dtype=dtype)
        self.conv2 = Conv1d(dim, dim, kernel_size=3, stride=2, padding=1, dtype=dtype)
        self.embed_positions = Embedding(spec.max_source_positions, dim, dtype)
        self.layers = nn.CellList(
            [EncoderLayer(dim, spec.audio_heads, spec.audio_ffn, dtype, kernels) for _ in range(spec.audio_layers)]
        )
        self.layer_norm = LayerNorm(dim, dtype, kernels=kernels)
        self.heads = spec.audio_heads
        self.gelu = ExactGelu(kernels)

    def construct(self, features, frame_keep, position_ids, mask):
        x = self.gelu(self.conv1(features)) * frame_keep
        x = self.gelu(self.conv2(x))
        x = x.transpose(0, 2, 1)
        b, t, d = x.shape
        x = x + self.embed_positions(position_ids)
        # One copy per head, made once for every layer: MindSpore's CPU Add broadcasting a
        # [1, 1, t, t] mask over the heads took twice as long as the same add without broadcasting
        # (measured: 28 ms against 20 ms, copy included, per layer's mask add and softmax on a
        # 1500-position row). Tile, not broadcast_to: BroadcastTo's copy was as slow as the add.
        if not self.layers[0].self_attn.native:  # the compiled kernel reads each row once for all heads
            mask = ops.tile(mask.reshape(b, 1, t, t), (1, self.heads, 1, 1))
        for layer in self.layers:
            x = layer(x, mask)
        # AvgPool1d(kernel 2, stride 2) over time.
        x = x.reshape(b, t // 2, 2, d).mean(2)
        return self.layer_norm(x)


class Projector(nn.Cell):
    def __init__(self, spec, dtype):
        super().__init__()
        self.linear = Linear(spec.audio_dim, spec.hidden, True, dtype)

    def construct(self, x):
        return self.linear(x)
