"""Exact GELU on MindSpore's CPU backend as a compiled kernel, where the node can build one.

MindSpore's CPU GELU evaluates erf one value at a time: a fifth of an encoder row's time on the
bench (docs/performance.md). cpu_gelu.cc computes the same function with glibc's vectorised erff
as an AOT custom op (`ops.Custom`, func_type "aot"); this module compiles it with the node's C++
compiler (`$CXX`, else g++) into a shared library named by a hash of its source, compiler and
flags, kept beside the compile cache so a node builds it once, and checks it against float64 GELU
before any graph uses it. Where it cannot be built or fails the check (no compiler, not x86-64
Linux, a glibc older than 2.35, fp16 graphs), the encoder uses MindSpore's `ops.gelu` and the
worker's log says why: the same outputs within rounding, slower. On Ascend the encoder always uses
`ops.gelu`, which CANN fuses; nothing here carries over to an NPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mindspore import nn, ops

SOURCE = Path(__file__).with_name("cpu_gelu.cc")
ENTRY = "ExactGelu"
# -fopenmp-simd: the loop's `omp simd` and erff's vector variants, without OpenMP threads.
# -z defs: a glibc without libmvec's erff fails here, not when MindSpore first calls the kernel.
FLAGS = ("-O2", "-fopenmp-simd", "-shared", "-fPIC", "-Wl,-z,defs")
LIBRARIES = ("-lmvec", "-lm")
# Against float64 GELU: float32 rounding of erf and of the products, a few units in the last place.
TOLERANCE = 1e-6

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeluKernel:
    library: Path

    @property
    def tag(self) -> str:
        """Identifies the library (its file name holds the hash): part of the compile cache's key,
        because a cached graph names the library it calls."""
        return self.library.stem


def kernel_folder(compile_cache_root: str | Path | None) -> Path:
    """Beside the compile cache, so a node's workers share one build; the user's temporary folder
    when the cache is off."""
    if compile_cache_root:
        return Path(compile_cache_root) / "kernels"
    return Path(tempfile.gettempdir()) / f"qwen2-audio-kernels-{os.getuid()}"


@functools.cache
def build(folder: Path, source: Path = SOURCE, compiler: str | None = None) -> GeluKernel | None:
    """The checked kernel, built into folder unless an earlier build is there; None (with a
    warning saying why) where this node cannot have it."""
    compiler = compiler or os.environ.get("CXX") or "g++"
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return _without(f"built for x86-64 Linux only, this is {platform.system()} {platform.machine()}")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return _without(f"no C++ compiler ({compiler}: {exc})")
    digest = hashlib.sha256("\0".join([source.read_text(), version, *FLAGS, *LIBRARIES]).encode()).hexdigest()
    library = folder / f"gelu-{digest[:16]}.so"
    if ":" in str(library):  # MindSpore reads "path:function"
        return _without(f"the kernel folder's path has a colon: {folder}")
    if not library.exists():
        folder.mkdir(parents=True, exist_ok=True)
        # Workers of a node may build at once: each into its own file, then one atomic rename.
        partial = folder / f".{library.name}.{os.getpid()}"
        done = subprocess.run([compiler, *FLAGS, str(source), "-o", str(partial), *LIBRARIES],
                              capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            return _without(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, library)
    problem = check(library)
    if problem is not None:
        return _without(problem)
    return GeluKernel(library)


def _without(reason: str) -> None:
    log.warning("the encoder uses MindSpore's GELU, not the compiled kernel: %s", reason)
    return None


def check(library: Path) -> str | None:
    """Run the library's kernel on values across GELU's range, the tails and zeros included, against
    float64 GELU. -> what is wrong, or None."""
    try:
        function = getattr(ctypes.CDLL(str(library)), ENTRY)
    except (OSError, AttributeError) as exc:
        return f"{library} does not load: {exc}"
    x = np.concatenate([np.linspace(-12, 12, 24001), [0.0, -0.0, 1e-30, -1e-30, 1e-8, 40.0, -40.0, 1e30, -1e30]])
    x = x.astype(np.float32)
    y = np.full_like(x, np.nan)
    size = (ctypes.c_int64 * 1)(len(x))
    status = function(2, (ctypes.c_void_p * 2)(x.ctypes.data, y.ctypes.data), (ctypes.c_int * 2)(1, 1),
                      (ctypes.POINTER(ctypes.c_int64) * 2)(size, size), (ctypes.c_char_p * 2)(b"float32", b"float32"),
                      None, None)
    if status != 0:
        return f"{library} returned {status}"
    expected = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])
    error = np.abs(y - expected) / np.maximum(1.0, np.abs(expected))
    if not np.all(error <= TOLERANCE):
        worst = int(np.nanargmax(np.where(np.isnan(error), np.inf, error)))
        return f"{library} gives GELU({x[worst]}) = {y[worst]}, not {expected[worst]}"
    return None


class ExactGelu(nn.Cell):
    """GELU with the exact erf (the reference's): the compiled kernel where there is one, else
    MindSpore's."""

    def __init__(self, kernel: GeluKernel | None):
        super().__init__()
        self.native = kernel is not None
        if kernel is not None:
            self.kernel = ops.Custom(f"{kernel.library}:{ENTRY}", out_shape=lambda x: x, out_dtype=lambda x: x,
                                     func_type="aot")

    def construct(self, x):
        if self.native:
            return self.kernel(x)
        return ops.gelu(x, approximate="none")
