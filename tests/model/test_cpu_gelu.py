"""The compiled exact GELU (model/cpu_gelu.py): built once per node, checked before use, equal to
MindSpore's GELU within rounding in a graph, and MindSpore's GELU wherever it cannot be had.
Greedy tokens against transformers with each GELU: tests/model/test_reference.py."""

import logging
import os

import numpy as np
import mindspore as ms
from mindspore import nn

from pipeline.model import cpu_gelu


class _Gelu(nn.Cell):
    def __init__(self, kernel):
        super().__init__()
        self.gelu = cpu_gelu.ExactGelu(kernel)

    def construct(self, x):
        return self.gelu(x)


def test_builds_once_per_folder_and_matches_mindspore_gelu_in_a_graph(tmp_path, mindspore_cpu):
    kernel = cpu_gelu.build(tmp_path)
    assert kernel is not None and kernel.library.parent == tmp_path
    built_at = kernel.library.stat().st_mtime_ns
    cpu_gelu.build.cache_clear()  # another process on the node: it finds the library and checks it
    again = cpu_gelu.build(tmp_path)
    assert again == kernel and kernel.library.stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == [kernel.library.name]  # no partial build left

    # Shapes as the encoder has them (a first convolution's [1, 192, F], a layer's [1, T, ffn]),
    # values from the tails to zero.
    rng = np.random.default_rng(0)
    for shape in ((1, 192, 3000), (1, 1500, 768)):
        x = ms.Tensor((rng.standard_normal(shape) * 4).astype(np.float32))
        native = _Gelu(kernel)(x).asnumpy()
        mindspore = _Gelu(None)(x).asnumpy()
        assert not np.array_equal(native, np.zeros_like(native))
        np.testing.assert_allclose(native, mindspore, rtol=0, atol=2e-6)


def test_a_node_without_a_compiler_gets_mindspores_gelu(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=cpu_gelu.__name__):
        assert cpu_gelu.build(tmp_path, compiler=str(tmp_path / "no-such-compiler")) is None
    assert "no C++ compiler" in caplog.text
    assert not list(tmp_path.iterdir())


def test_a_kernel_that_fails_its_check_is_not_used(tmp_path, caplog):
    # The same kernel with erf's argument off by a hair: a library that builds and runs, wrong.
    wrong = tmp_path / "wrong.cc"
    wrong.write_text(cpu_gelu.SOURCE.read_text().replace("0.70710678118654752440f", "0.7072f"))
    with caplog.at_level(logging.WARNING, logger=cpu_gelu.__name__):
        assert cpu_gelu.build(tmp_path / "kernels", source=wrong) is None
    assert "gives GELU(" in caplog.text


def test_a_library_that_does_not_build_is_not_used(tmp_path, caplog):
    broken = tmp_path / "broken.cc"
    broken.write_text(cpu_gelu.SOURCE.read_text().replace("return 0;", "return 0"))
    folder = tmp_path / "kernels"
    with caplog.at_level(logging.WARNING, logger=cpu_gelu.__name__):
        assert cpu_gelu.build(folder, source=broken) is None
    assert "failed" in caplog.text
    assert not list(folder.iterdir())  # the partial output removed


def test_the_kernel_folder_is_beside_the_compile_cache_or_the_users_temporary_one(tmp_path):
    assert cpu_gelu.kernel_folder(tmp_path) == tmp_path / "kernels"
    assert cpu_gelu.kernel_folder(None).name == f"qwen2-audio-kernels-{os.getuid()}"
