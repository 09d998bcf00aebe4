"""The compiled CPU kernels (model/cpu_kernels.py): built once per node, checked before use, equal
within rounding in graphs to what MindSpore runs otherwise (GELU, RMSNorm, LayerNorm, the rotary
embedding, the MLP's SiLU and product, a step's and packed rows' attention), and MindSpore's operations wherever the kernels cannot
be had. Greedy tokens against transformers both ways: tests/model/test_reference.py."""

import logging
import os
from types import SimpleNamespace

import numpy as np

import mindspore as ms
from mindspore import Parameter, nn, ops

from pipeline.model import cpu_kernels, token_choice
from pipeline.model.decoder import MLP, TextAttention, rotary_tables
from pipeline.model.encoder import EncoderAttention
from pipeline.model.layers import LayerNorm, RMSNorm
from pipeline.model.packing import MASKED


class _Gelu(nn.Cell):
    def __init__(self, kernels):
        super().__init__()
        self.gelu = cpu_kernels.ExactGelu(kernels)

    def construct(self, x):
        return self.gelu(x)


def test_builds_once_per_folder_and_matches_mindspore_in_a_graph(tmp_path, mindspore_cpu):
    kernels = cpu_kernels.build(tmp_path)
    assert kernels is not None and kernels.library.parent == tmp_path
    built_at = kernels.library.stat().st_mtime_ns
    cpu_kernels.build.cache_clear()  # another process on the node: it finds the library and checks it
    again = cpu_kernels.build(tmp_path)
    assert again == kernels and kernels.library.stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == [kernels.library.name]  # no partial build left

    rng = np.random.default_rng(0)
    # GELU on the encoder's shapes (a first convolution's [1, 192, F], a layer's [1, T, ffn]).
    for shape in ((1, 192, 3000), (1, 1500, 768)):
        x = ms.Tensor((rng.standard_normal(shape) * 4).astype(np.float32))
        compiled, mindspore = _Gelu(kernels)(x).asnumpy(), _Gelu(None)(x).asnumpy()
        assert np.abs(compiled).max() > 1
        np.testing.assert_allclose(compiled, mindspore, rtol=0, atol=2e-6)
    # RMSNorm on a prefill row's and a decode step's shapes, the same weights both ways.
    weight = ms.Tensor(rng.uniform(-2, 2, 384).astype(np.float32))
    for shape in ((1, 832, 384), (32, 384)):
        x = ms.Tensor((rng.standard_normal(shape) * 3).astype(np.float32))
        outputs = []
        for with_kernels in (kernels, None):
            norm = RMSNorm(384, ms.float32, 1e-6, with_kernels)
            norm.weight.set_data(weight)
            outputs.append(norm(x).asnumpy())
        assert outputs[0].shape == shape and np.abs(outputs[0]).max() > 1
        np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    # LayerNorm on an encoder row's [1, 1500, 192], rows away from zero, weights and bias both ways.
    weight, bias = (ms.Tensor(rng.uniform(-2, 2, 192).astype(np.float32)) for _ in range(2))
    x = ms.Tensor((rng.standard_normal((1, 1500, 192)) * 3 + 5).astype(np.float32))
    outputs = []
    for with_kernels in (kernels, None):
        norm = LayerNorm(192, ms.float32, kernels=with_kernels)
        norm.weight.set_data(weight)
        norm.bias.set_data(bias)
        outputs.append(norm(x).asnumpy())
    assert np.abs(outputs[0]).max() > 1
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    # The MLP's SiLU and product on a prefill row's [1, 832, intermediate], with MindSpore's MLP.
    mlps = [MLP(SimpleNamespace(hidden=64, intermediate=1024), ms.float32, k) for k in (kernels, None)]
    for mlp in mlps:
        for parameter in mlp.get_parameters():
            weights = np.random.default_rng(len(parameter.name))
            parameter.set_data(ms.Tensor(weights.standard_normal(parameter.shape).astype(np.float32) * 0.3))
    x = ms.Tensor(rng.standard_normal((1, 832, 64)).astype(np.float32))
    compiled, mindspore = (mlp(x).asnumpy() for mlp in mlps)
    assert mlps[0].native and np.abs(compiled).max() > 1
    np.testing.assert_allclose(compiled, mindspore, rtol=0, atol=1e-5 * np.abs(mindspore).max())


class _Rotate(nn.Cell):
    def __init__(self, attention, scaled):
        super().__init__()
        self.attention, self.scaled = attention, scaled

    def construct(self, x, cos, sin):
        return self.attention._rotate(x, cos, sin, self.scaled)


def test_rotary_matches_mindspores_in_a_graph(tmp_path, mindspore_cpu):
    # A prefill row's queries (scaled) and a step's keys, at positions across the table.
    kernels = cpu_kernels.build(tmp_path)
    assert kernels is not None and TextAttention(SimpleNamespace(hidden=8, heads=1, kv_heads=1, head_dim=8),
                                                 ms.float32, kernels).native
    spec = SimpleNamespace(hidden=384, heads=6, kv_heads=2, head_dim=64)
    cos_table, sin_table = rotary_tables(64, 1000000.0, 2048)
    rng = np.random.default_rng(7)
    for shape, angles, scaled in (((1, 832, 6, 64), (1, 832, 1, 64), True), ((32, 2, 1, 64), (32, 1, 1, 64), False)):
        positions = rng.integers(0, 2048, int(np.prod(angles[:-1])))
        cos, sin = (ms.Tensor(t[positions].reshape(angles)) for t in (cos_table, sin_table))
        x = ms.Tensor((rng.standard_normal(shape) * 3).astype(np.float32))
        compiled, mindspore = (_Rotate(TextAttention(spec, ms.float32, k), scaled)(x, cos, sin).asnumpy()
                               for k in (kernels, None))
        assert np.abs(compiled).max() > 1
        np.testing.assert_allclose(compiled, mindspore, rtol=0, atol=1e-5)


class _StepAttention(nn.Cell):
    """A decode step's attention over caches held as Parameters, as the step graph reads them."""

    def __init__(self, spec, kernels, keys, values):
        super().__init__()
        self.attention = TextAttention(spec, ms.float32, kernels)
        self.keys = Parameter(ms.Tensor(keys), requires_grad=False)
        self.values = Parameter(ms.Tensor(values), requires_grad=False)

    def construct(self, q, visible):
        return self.attention._attend_step(q, self.keys, self.values, visible, ms.float32)


def test_step_attention_matches_mindspores_masked_one_in_a_graph(tmp_path, mindspore_cpu):
    rng = np.random.default_rng(1)
    # Heads of the vector form (64) and of the plain one (12), grouped queries, an idle slot.
    for head_dim in (64, 12):
        slots, kv, groups, span = 6, 2, 3, 41
        spec = SimpleNamespace(heads=kv * groups, kv_heads=kv, head_dim=head_dim, hidden=kv * groups * head_dim)
        keys = rng.standard_normal((slots, kv, span, head_dim)).astype(np.float32)
        values = rng.standard_normal((slots, kv, span, head_dim)).astype(np.float32)
        q = ms.Tensor(rng.standard_normal((slots, kv, groups, head_dim)).astype(np.float32) * 3)
        positions = np.array([0, 1, 20, span - 2, 7, span - 1], np.int32)  # the last: the scratch one
        mask = np.where(np.arange(span)[None, :] <= positions[:, None], 0.0, MASKED).astype(np.float32)
        mask = np.broadcast_to(mask[:, None, None, :], (slots, kv, groups, span)).copy()
        kernels = cpu_kernels.CpuKernels(cpu_kernels.build(tmp_path).library, threads=2)
        compiled = _StepAttention(spec, kernels, keys, values)(q, ms.Tensor(positions)).asnumpy()
        mindspore = _StepAttention(spec, None, keys, values)(q, ms.Tensor(mask)).asnumpy()
        assert np.abs(compiled[:-1]).max() > 0.1
        np.testing.assert_allclose(compiled[:-1], mindspore[:-1], rtol=1e-5, atol=2e-6)
        assert not compiled[-1].any()  # idle: nothing read, nothing any row uses


def _clips_mask(length: int, clips: list[int]) -> np.ndarray:
    """An encoder row's additive mask: each clip sees its own block, the padding after them itself."""
    mask = np.full((length, length), MASKED, np.float32)
    np.fill_diagonal(mask, 0.0)
    start = 0
    for n in clips:
        mask[start:start + n, start:start + n] = 0.0
        start += n
    return mask


def test_masked_attention_matches_mindspores_in_the_encoders_graph(tmp_path, mindspore_cpu):
    rng = np.random.default_rng(2)
    kernels = cpu_kernels.CpuKernels(cpu_kernels.build(tmp_path).library, threads=2)
    # Heads of 64 (the real encoder's) and 16; rows of two clips and padding, a length no multiple
    # of the kernel's blocks.
    for dim, heads in ((192, 3), (48, 3)):
        length = 203
        mask = np.stack([_clips_mask(length, [90, 100]), _clips_mask(length, [203])])
        x = ms.Tensor(rng.standard_normal((2, length, dim)).astype(np.float32))
        outputs = []
        for with_kernels, mask_input in ((kernels, mask), (None, np.repeat(mask[:, None], heads, 1))):
            attention = EncoderAttention(dim, heads, ms.float32, with_kernels)
            assert attention.native == (with_kernels is not None)
            weights = np.random.default_rng(3)  # the same weights both ways
            for parameter in attention.get_parameters():
                parameter.set_data(ms.Tensor(weights.standard_normal(parameter.shape).astype(np.float32) * 0.2))
            outputs.append(attention(x, ms.Tensor(mask_input)).asnumpy())
        scale = np.abs(outputs[1]).max()
        assert scale > 0.1
        np.testing.assert_allclose(outputs[0], outputs[1], rtol=0, atol=5e-6 * scale)  # float32 rounding


class _Rows(nn.Cell):
    """A graph state of [6, 2, 3] rows, written by one graph and read by another, as the model's
    graphs write their caches and read them in the next call."""

    def __init__(self, kernels):
        super().__init__()
        self.state = Parameter(ms.Tensor(np.arange(36, dtype=np.float32).reshape(6, 2, 3)), requires_grad=False)
        self.write = cpu_kernels.RowWriter(kernels)

    def construct(self, rows, values):
        return self.write(self.state, rows, values) * 1


class _ReadRows(nn.Cell):
    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def construct(self, at):
        return ops.gather(self.rows.state, at, 0)


def test_row_writes_land_in_the_graphs_state_as_scatter_updates_do(tmp_path, mindspore_cpu):
    # The kernel writes into the Parameter MindSpore hands it: this holds the MindSpore version
    # the project pins to doing so (a copy would lose every cache write, and the texts with them).
    kernels = cpu_kernels.CpuKernels(cpu_kernels.build(tmp_path).library)
    rows = ms.Tensor(np.array([4, 1, 4], np.int32))
    values = ms.Tensor(-np.arange(1, 19, dtype=np.float32).reshape(3, 2, 3))
    states, reads = [], []
    for with_kernels in (kernels, None):
        graph = _Rows(with_kernels)
        assert graph.write.native == (with_kernels is not None)
        np.testing.assert_array_equal(graph(rows, values).asnumpy(), [4, 1, 4])
        states.append(graph.state.asnumpy())
        reads.append(_ReadRows(graph)(ms.Tensor(np.array([4, 0, 1], np.int32))).asnumpy())
    expected = np.arange(36, dtype=np.float32).reshape(6, 2, 3)
    expected[[1, 4]] = values.asnumpy()[[1, 2]]
    np.testing.assert_array_equal(states[0], expected)
    np.testing.assert_array_equal(states[0], states[1])
    np.testing.assert_array_equal(reads[0], expected[[4, 0, 1]])
    np.testing.assert_array_equal(reads[0], reads[1])


def test_greedy_choice_matches_mindspores_in_a_graph(tmp_path, mindspore_cpu):
    # A decode step's logits [32, 8192]: ties at the top (the first wins), and with the penalty
    # rows of 1.0 (none), 1.1 and 1.5 over a presence of a fifth of the ids.
    kernels = cpu_kernels.CpuKernels(cpu_kernels.build(tmp_path).library, threads=2)
    rng = np.random.default_rng(8)
    logits = (rng.standard_normal((32, 8192)) * 3).astype(np.float32)
    logits[5, [100, 7000]] = logits[5].max() + 0.5
    presence = (rng.uniform(size=logits.shape) < 0.2).astype(np.float32)
    presence[5, [100, 7000]] = 0.0  # the tie stays one under the penalty
    parameters = np.zeros((32, 6), np.float32)
    parameters[:, token_choice.PENALTY] = np.resize([1.0, 1.1, 1.5], 32)
    inputs = [ms.Tensor(x) for x in (logits, presence, parameters)]
    for penalty in (False, True):
        chosen = []
        for with_kernels in (kernels, None):
            chooser = token_choice.TokenChooser(with_kernels, penalty, False)
            assert chooser.native == (with_kernels is not None)
            chosen.append([x.asnumpy() for x in chooser(*inputs)])
        np.testing.assert_array_equal(chosen[0][0], chosen[1][0])
        assert chosen[0][0].dtype == np.int32 and chosen[0][0][5] == 100
        np.testing.assert_allclose(chosen[0][1], chosen[1][1], rtol=1e-6, atol=1e-6)
    assert (chosen[0][0] != np.argmax(logits, -1)).any()  # the penalty changed some tokens
    # Sampling graphs keep MindSpore's operations.
    assert not token_choice.TokenChooser(kernels, True, True).native


def test_a_node_without_a_compiler_gets_mindspores_operations(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.build(tmp_path, compiler=str(tmp_path / "no-such-compiler")) is None
    assert "no C++ compiler" in caplog.text
    assert not list(tmp_path.iterdir())


def test_kernels_that_fail_their_check_are_not_used(tmp_path, caplog):
    # Libraries that build and run, each with one kernel off by a hair: erf's argument, the mean
    # square, the layer norm's mean, the rotary embedding's second half, SiLU's exponent, the positions a slot sees (one short), the last key a packed row's query sees
    # (dropped), a written row's last value (not copied), the greedy log-probability's sum, the
    # greedy token's search (past the first largest logit).
    for name, wrong in (("GELU", ("0.70710678118654752440f", "0.7072f")),
                        ("RMSNorm", ("squares / static_cast<float>(width) + eps",
                                     "squares / static_cast<float>(width + 1) + eps")),
                        ("LayerNorm", ("const float mean = sum / static_cast<float>(width);",
                                       "const float mean = sum / static_cast<float>(width + 1);")),
                        ("rotary", ("out[i] = (in[i] * c[i] + in[i - half] * s[i]) * scale;",
                                    "out[i] = (in[i] * c[i] + in[i - half] * s[i]) * scale * 1.0001f;")),
                        ("SiLU product", ("g / (1.0f + expf(-g))", "g / (1.0f + expf(-1.0001f * g))")),
                        ("step attention", ("const int64_t length = position + 1;",
                                            "const int64_t length = position > 0 ? position : 1;")),
                        ("masked attention", ("while (hi > lo && m[hi - 1] != 0.0f) --hi;",
                                              "while (hi > lo && m[hi - 1] != 0.0f) --hi;\n        hi -= hi - lo > 1;")),
                        ("row writes", ("values + j * width, sizeof(float) * width);",
                                        "values + j * width, sizeof(float) * (width - 1));")),
                        ("greedy log-probabilities", ("out[1] = (x[best] - top) - std::log(total);",
                                                      "out[1] = (x[best] - top) - std::log(total * 1.0001f);")),
                        ("greedy tokens", ("    if (found) break;\n", "\n"))):
        assert cpu_kernels.SOURCE.read_text().count(wrong[0]) == 1
        source = tmp_path / f"wrong-{name}.cc"
        source.write_text(cpu_kernels.SOURCE.read_text().replace(*wrong))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
            assert cpu_kernels.build(tmp_path / name, source=source) is None
        assert f"gives {name} " in caplog.text


def test_a_library_that_does_not_build_is_not_used(tmp_path, caplog):
    broken = tmp_path / "broken.cc"
    broken.write_text(cpu_kernels.SOURCE.read_text().replace("return 0;", "return 0"))
    folder = tmp_path / "kernels"
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.build(folder, source=broken) is None
    assert "failed" in caplog.text
    assert not list(folder.iterdir())  # the partial output removed


def test_the_kernel_folder_is_beside_the_compile_cache_or_the_users_temporary_one(tmp_path):
    assert cpu_kernels.kernel_folder(tmp_path) == tmp_path / "kernels"
    assert cpu_kernels.kernel_folder(None).name == f"qwen2-audio-kernels-{os.getuid()}"


def test_only_fp32_graphs_on_cpu_get_the_kernels(tmp_path):
    # NPU graphs and fp16 ones keep MindSpore's operations, and nothing is built for them.
    assert cpu_kernels.for_graphs("ascend", "bf16", tmp_path) is None
    assert cpu_kernels.for_graphs("cpu", "fp16", tmp_path) is None
    assert not list(tmp_path.iterdir())
    kernels = cpu_kernels.for_graphs("cpu", "fp32", tmp_path)
    assert kernels is not None and kernels.library.parent == tmp_path / "kernels"
    assert kernels.threads == os.cpu_count()
    # The worker's threads are the step attention's, and part of the compile cache's key.
    three = cpu_kernels.for_graphs("cpu", "fp32", tmp_path, 3)
    assert three.threads == 3 and three.library == kernels.library and three.tag != kernels.tag
