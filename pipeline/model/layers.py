"""Small MindSpore building blocks whose parameter names match the Hugging Face checkpoint
(`weight`, `bias`), so a checkpoint loads by name with no translation table.

Parameters start as zeros: the real values always come from a checkpoint, and random
initialisation of 7B parameters would only cost time. Every block compiles on the CPU backend
in graph mode (the fused `ops.layer_norm` does not, so LayerNorm uses the older primitive).
"""

import numpy as np

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Zero



def cast(x, dtype):
    """x as dtype, and x itself when it already is: MindSpore's CPU backend runs a cast to the same
    dtype as a full copy (measured: the encoder's two casts of its [3, 1500, 1500] attention scores
    in fp32 were 30% of its time). The comparison is resolved when the graph compiles."""
    if x.dtype == dtype:
        return x
    return x.astype(dtype)


def zeros_parameter(shape, dtype, name: str | None = None) -> Parameter:
    """Zeros that MindSpore fills when a graph first uses them, not here: a weight's place until
    load_weights replaces it is never filled, and the graphs' state is filled once instead of
    filled and copied (together 0.4 s of a worker's start on the bench's checkpoint, measured)."""
    return Parameter(ms.Tensor(shape=shape, dtype=dtype, init=Zero()), name=name, requires_grad=False)


_matmul_transposed = ops.MatMul(transpose_b=True)


class Linear(nn.Cell):
    """y = x W^T + b. With stored_transposed the weight is kept as W^T ([in, out]): MindSpore's CPU
    matmul is about twice as fast that way for the few rows of a decode step (measured at 16-64
    rows), and within 10% slower for prefill-sized inputs. load_weights transposes it on load.

    Always one 2-D product, then BiasAdd: on the CPU backend a broadcasting Add of the bias ran at
    half BiasAdd's speed, and ops.dense (product and bias in one call) slower than the two (an
    encoder layer's six projections over a 3000-frame row: 34 ms as dense, 23 ms so; bit-identical)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype, stored_transposed: bool = False):
        super().__init__()
        shape = (in_features, out_features) if stored_transposed else (out_features, in_features)
        self.weight = zeros_parameter(shape, dtype)
        self.weight.stored_transposed = stored_transposed
        self.bias = zeros_parameter((out_features,), dtype) if bias else None
        self.stored_transposed = stored_transposed

    def construct(self, x):
        # As one 2-D product: a 3-D input would run as a broadcast batched product, about 2x
        # slower on the CPU backend (measured in the prefill graph).
        rows = x.reshape(-1, x.shape[-1])
        if self.stored_transposed:
            y = ops.matmul(rows, self.weight)
            out_features = self.weight.shape[1]
        else:
            y = _matmul_transposed(rows, self.weight)
            out_features = self.weight.shape[0]
        if self.bias is not None:
            y = ops.bias_add(y, self.bias)
        return y.reshape(x.shape[:-1] + (out_features,))


class LayerNorm(nn.Cell):
    """kernels: the compiled CPU kernels (model/cpu_kernels.py), one pass a row; None: MindSpore's."""

    def __init__(self, dim: int, dtype, eps: float = 1e-5, kernels=None):
        super().__init__()
        self.weight = zeros_parameter((dim,), dtype)
        self.bias = zeros_parameter((dim,), dtype)
        self.native = kernels is not None
        if kernels is not None:
            self.kernel = kernels.op("LayerNorm")
            self.eps_input = ms.Tensor(np.array([eps], np.float32))
        else:
            self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        if self.native:
            return self.kernel(x, self.weight, self.bias, self.eps_input)
        return self.norm(x, self.weight, self.bias)[0]


class RMSNorm(nn.Cell):
    """Qwen2's RMSNorm: normalise in fp32, cast back, then scale (the reference's order). kernels:
    the compiled CPU kernels (model/cpu_kernels.py), which do it in one pass; None: MindSpore's."""

    def __init__(self, dim: int, dtype, eps: float, kernels=None):
        super().__init__()
        self.weight = zeros_parameter((dim,), dtype)
        self.eps = eps
        self.native = kernels is not None
        if kernels is not None:
            self.kernel = kernels.op("RmsNorm")
            self.eps_input = ms.Tensor(np.array([eps], np.float32))
        else:
            # The mean of squares as a product with a column of 1/dim: the CPU backend's ReduceMean
            # over the last axis took ~0.7 ms for one prefill row's [832, 384], the product a fraction.
            self.averager = ms.Tensor(np.full((dim, 1), 1.0 / dim, np.float32))

    def construct(self, x):
        if self.native:
            return self.kernel(x, self.weight, self.eps_input)
        x32 = cast(x, ms.float32)
        squares = x32 * x32
        variance = ops.matmul(squares.reshape(-1, squares.shape[-1]), self.averager).reshape(x.shape[:-1] + (1,))
        return self.weight * cast(x32 * ops.rsqrt(variance + self.eps), x.dtype)


class Conv1d(nn.Cell):
    """A 1-D convolution as one matmul over shifted, strided slices of the padded input.

    Same result as ops.conv1d (within fp32 rounding), about 100x faster on MindSpore's CPU backend,
    where ops.conv1d took 4.7 s for the encoder's first convolution on a batch of four 30 s clips.
    The weight keeps the checkpoint's [out, in, kernel] layout.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, dtype):
        super().__init__()
        self.weight = zeros_parameter((out_channels, in_channels, kernel_size), dtype)
        self.bias = zeros_parameter((out_channels,), dtype)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def construct(self, x):
        b, c, t = x.shape
        # Zero padding by concatenation: the CPU backend's Pad kernel took ~4 ms for one row's
        # [128, 3000] input, concatenation a fraction of that.
        edge = ops.zeros((b, c, self.padding), x.dtype)
        x = ops.concat((edge, x, edge), 2)
        t_out = (t + 2 * self.padding - self.kernel_size) // self.stride + 1
        span = self.stride * (t_out - 1) + 1
        # [B, kernel * in, T_out]: tap k of input channel i sits at row k * in + i.
        taps = ops.concat([x[:, :, k: k + span: self.stride] for k in range(self.kernel_size)], 1)
        weight = self.weight.transpose(0, 2, 1).reshape(self.weight.shape[0], -1)
        return ops.bias_add(ops.matmul(weight, taps), self.bias)  # along axis 1, the channels (see Linear)


class Embedding(nn.Cell):
    def __init__(self, num: int, dim: int, dtype):
        super().__init__()
        self.weight = zeros_parameter((num, dim), dtype)

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)
