"""Compiled kernels for MindSpore's CPU backend, where the node can build them.

Some operations are much slower on MindSpore's CPU backend than the arithmetic they need: the
exact GELU (erf evaluated one value at a time: a fifth of an encoder row's time on the bench),
RMSNorm (five kernels where one pass would do: an eighth of a prefill call), the encoder's
LayerNorm (about 1 ms for a row's [1500, 192] where one pass takes a tenth), the rotary
embedding (a product with a rotation matrix and four elementwise passes), the MLP's SiLU and
product (two), attention (every score of a packed row computed and most masked away; every
slot's whole span read in a decode step, where a real mix's slots have filled a third of theirs),
writing rows of the graphs' state (ScatterUpdate copies at about 1.9 GB/s), and greedy decoding's
choice of a token (six to ten kernels over the whole vocabulary a step).
cpu_kernels.cc computes them, as the reference does, as AOT custom ops (`ops.Custom`, func_type
"aot"); this module compiles it with the node's C++ compiler (`$CXX`, else g++) into a shared
library named by a hash of its source, compiler, C library and flags, kept beside the compile cache
so a node builds it once, and checks each kernel against float64 before any graph uses it. Where the library cannot be
built or fails a check (no compiler, not x86-64 Linux, a glibc older than 2.35, fp16 graphs),
the graphs use MindSpore's own operations and the worker's log says why: the same outputs within
rounding, slower. On Ascend the graphs always use MindSpore's operations, which CANN fuses;
nothing here carries over to an NPU.
"""

from __future__ import annotations

import ctypes
import dataclasses
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

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
# -fopenmp-simd: the loops' `omp simd` and erff's vector variants, without OpenMP threads.
# -z defs: a glibc without libmvec's erff fails here, not when MindSpore first calls a kernel.
FLAGS = ("-O2", "-fopenmp-simd", "-shared", "-fPIC", "-Wl,-z,defs")
LIBRARIES = ("-lmvec", "-lm")
# Head widths MaskedAttention is built for (cpu_kernels.cc): multiples of 16, in registers.
MASKED_ATTENTION_WIDTHS = (16, 32, 48, 64, 128)
# Against float64: float32 rounding of erf, of a row's sum of squares and of the products.
TOLERANCE = 1e-6
NORM_TOLERANCE = 1e-5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuKernels:
    library: Path
    threads: int = 1  # for the attention kernels: the worker's CPU threads, as MindSpore's kernels get

    @property
    def tag(self) -> str:
        """Identifies the library (its file name holds the hash) and the threads the graphs give
        it: part of the compile cache's key, because a cached graph holds both."""
        return f"{self.library.stem}-threads{self.threads}"

    def op(self, entry: str, like: int = 0, shape=None):
        """The library's function `entry` as a graph operation whose output has the shape and dtype
        of its input number `like` (the first by default); shape: a function of the inputs' shapes
        giving the output's instead."""
        return ops.Custom(f"{self.library}:{entry}", out_shape=shape or (lambda *x: x[like]),
                          out_dtype=lambda *x: x[like], func_type="aot")


def for_graphs(device: str, dtype: str, compile_cache_root: str | Path | None,
               threads: int = 0) -> CpuKernels | None:
    """The kernels a model's graphs use: built and checked on a CPU node with fp32 graphs (the only
    dtype they are built for), else None: MindSpore's operations. threads: the worker's CPU threads
    (0: every core)."""
    if device != "cpu" or dtype != "fp32":
        return None
    kernels = build(kernel_folder(compile_cache_root))
    return kernels and dataclasses.replace(kernels, threads=threads if threads > 0 else (os.cpu_count() or 1))


def kernel_folder(compile_cache_root: str | Path | None) -> Path:
    """Beside the compile cache, so a node's workers share one build; the user's temporary folder
    when the cache is off."""
    if compile_cache_root:
        return Path(compile_cache_root) / "kernels"
    return Path(tempfile.gettempdir()) / f"qwen2-audio-kernels-{os.getuid()}"


@functools.cache
def build(folder: Path, source: Path = SOURCE, compiler: str | None = None) -> CpuKernels | None:
    """The checked kernels, built into folder unless an earlier build is there; None (with a
    warning saying why) where this node cannot have them."""
    compiler = compiler or os.environ.get("CXX") or "g++"
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return _without(f"built for x86-64 Linux only, this is {platform.system()} {platform.machine()}")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return _without(f"no C++ compiler ({compiler}: {exc})")
    # The C library too: a compile cache on a shared disk may serve nodes of other systems.
    identity = [source.read_text(), version, " ".join(platform.libc_ver()), *FLAGS, *LIBRARIES]
    digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()
    library = folder / f"kernels-{digest[:16]}.so"
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
    return CpuKernels(library)


def _without(reason: str) -> None:
    log.warning("the graphs use MindSpore's operations, not the compiled kernels: %s", reason)
    return None


def _call(function, *arrays: np.ndarray) -> int:
    """A kernel called as MindSpore calls it: every array's pointer, rank, shape and dtype (each
    array C-contiguous, as MindSpore hands them over)."""
    if not all(a.flags["C_CONTIGUOUS"] for a in arrays):
        raise ValueError("kernels read and write C-contiguous arrays only")
    shapes = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
    return function(len(arrays), (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays)),
                    (ctypes.c_int * len(arrays))(*(a.ndim for a in arrays)),
                    (ctypes.POINTER(ctypes.c_int64) * len(arrays))(*shapes),
                    (ctypes.c_char_p * len(arrays))(*(str(a.dtype).encode() for a in arrays)), None, None)


def check(library: Path) -> str | None:
    """Run each kernel on values across its range, tails and zeros included, against float64.
    -> what is wrong, or None."""
    try:
        loaded = ctypes.CDLL(str(library))
        gelu, norm, attention, layer_norm = loaded.ExactGelu, loaded.RmsNorm, loaded.StepAttention, loaded.LayerNorm
        rotary = loaded.Rotary
        masked, silu_product, write_rows = loaded.MaskedAttention, loaded.SiluProduct, loaded.WriteRows
        greedy = loaded.GreedyChoice
    except (OSError, AttributeError) as exc:
        return f"{library} does not load: {exc}"

    x = np.concatenate([np.linspace(-12, 12, 24001), [0.0, -0.0, 1e-30, -1e-30, 1e-8, 40.0, -40.0, 1e30, -1e30]])
    x = x.astype(np.float32)
    y = np.full_like(x, np.nan)
    if (status := _call(gelu, x, y)) != 0:
        return f"{library}: ExactGelu returned {status}"
    expected = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])
    if problem := _compare("GELU", x, y, expected, TOLERANCE, library):
        return problem

    # Rows as a decoder has them (a width that is no multiple of a vector), a zero row, a tiny one.
    rows = np.random.default_rng(0).standard_normal((6, 389)).astype(np.float32) * np.float32(8.0)
    rows[1], rows[2] = 0.0, rows[2] * np.float32(1e-6)
    weight = np.random.default_rng(1).uniform(-2, 2, 389).astype(np.float32)
    eps = np.array([1e-6], np.float32)
    out = np.full_like(rows, np.nan)
    if (status := _call(norm, rows, weight, eps, out)) != 0:
        return f"{library}: RmsNorm returned {status}"
    wide = rows.astype(np.float64)
    expected = weight * wide / np.sqrt((wide * wide).mean(-1, keepdims=True) + float(eps[0]))
    if problem := _compare("RMSNorm", rows, out, expected, NORM_TOLERANCE, library):
        return problem
    # Rows far from zero (the mean must come off before the squares) and a constant row (no
    # variance: eps alone).
    rows = np.random.default_rng(5).standard_normal((6, 389)).astype(np.float32) * np.float32(8.0) + np.float32(40.0)
    rows[3] = 7.0
    bias = np.random.default_rng(4).uniform(-1, 1, 389).astype(np.float32)
    eps = np.array([1e-5], np.float32)
    out = np.full_like(rows, np.nan)
    if (status := _call(layer_norm, rows, weight, bias, eps, out)) != 0:
        return f"{library}: LayerNorm returned {status}"
    wide = rows.astype(np.float64)
    deviations = wide - wide.mean(-1, keepdims=True)
    expected = weight * deviations / np.sqrt((deviations * deviations).mean(-1, keepdims=True) + float(eps[0])) + bias
    if problem := _compare("LayerNorm", rows, out, expected, NORM_TOLERANCE, library):
        return problem

    if problem := _check_rotary(rotary, library):
        return problem

    gate = np.concatenate([np.linspace(-30, 30, 6001), [0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 200.0, -200.0]])
    gate = gate.astype(np.float32)
    up = np.random.default_rng(2).uniform(-3, 3, gate.shape).astype(np.float32)
    product = np.full_like(gate, np.nan)
    if (status := _call(silu_product, gate, up, product)) != 0:
        return f"{library}: SiluProduct returned {status}"
    wide = gate.astype(np.float64)
    expected = wide / (1.0 + np.exp(-wide)) * up
    if problem := _compare("SiLU product", gate, product, expected, TOLERANCE, library):
        return problem

    # Head widths of the vector form (64) and of the plain one (12), on two threads.
    for width in (64, 12):
        problem = _check_step_attention(attention, width, library)
        if problem:
            return problem
    for width in (64, 16):
        problem = _check_masked_attention(masked, width, library)
        if problem:
            return problem
    return _check_write_rows(write_rows, library) or _check_greedy_choice(greedy, library)


def _check_greedy_choice(greedy, library: Path) -> str | None:
    """Rows of logits as a decode step has them, one with its largest logit twice (the first
    wins, as argmax has it), with and without a penalty of 1.3 on some ids (a positive logit
    divided, a negative one multiplied), against numpy's argmax and a float64 log-softmax."""
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((5, 1001)) * 4).astype(np.float32)
    logits[1, [17, 600]] = logits[1].max() + 1.0
    logits[2] = -np.abs(logits[2])  # all negative: a penalised id moves away from the top
    presence = (rng.uniform(size=logits.shape) < 0.3).astype(np.float32)
    presence[3, int(np.argmax(logits[3]))] = 1.0  # the top id penalised: another may win
    wide = logits.astype(np.float64)
    log_softmax = wide - wide.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    for penalty in (np.ones(1, np.float32), np.full((5, 1), 1.3, np.float32)):
        scores = np.where(presence > 0, np.where(logits < 0, logits * penalty, logits / penalty), logits)
        tokens = np.argmax(scores, -1)
        out = np.full((5, 2), np.nan, np.float32)
        if (status := _call(greedy, logits, presence, penalty, np.array([2], np.int32), out)) != 0:
            return f"{library}: GreedyChoice returned {status}"
        if not np.array_equal(out[:, 0], tokens):
            return f"{library} gives greedy tokens {out[:, 0].tolist()} where argmax gives {tokens.tolist()}"
        expected = log_softmax[np.arange(5), tokens]
        if problem := _compare("greedy log-probabilities", logits[:, :1], out[:, 1:], expected[:, None],
                               NORM_TOLERANCE, library):
            return problem
    return None


def _check_write_rows(write_rows, library: Path) -> str | None:
    """Rows of [2, 3] written into a [6, 2, 3] array, one of them twice (the last values win, as
    the graphs' padding repeats a real entry), the others untouched; a row past the end refused."""
    dst = np.arange(36, dtype=np.float32).reshape(6, 2, 3)
    rows = np.array([4, 0, 4, 5], np.int32)
    values = -np.arange(1, 25, dtype=np.float32).reshape(4, 2, 3)
    expected = dst.copy()
    for row, value in zip(rows, values):
        expected[row] = value
    echoed = np.full_like(rows, -1)
    if (status := _call(write_rows, dst, rows, values, echoed)) != 0:
        return f"{library}: WriteRows returned {status}"
    if _call(write_rows, dst.copy(), np.array([6], np.int32), values[:1].copy(), echoed[:1].copy()) == 0:
        return f"{library}: WriteRows took row 6 of 6"
    if not np.array_equal(echoed, rows):
        return f"{library}: WriteRows gave back {echoed.tolist()} for rows {rows.tolist()}"
    return _compare("row writes", dst, dst, expected, 0.0, library)


def _check_rotary(rotary, library: Path) -> str | None:
    """Three tokens of two heads of 64, each token at its own angles, scaled by 0.125; an odd width
    refused."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 64)).astype(np.float32) * np.float32(4.0)
    # Qwen2's angles (theta 10000), computed here rather than imported from the decoder, which
    # imports this module.
    angles = np.array([0, 7, 801], np.float64).reshape(3, 1, 1) * 10000.0 ** (-np.arange(0, 64, 2) / 64)
    angles = np.concatenate([angles, angles], -1)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    scale = np.array([0.125], np.float32)
    out = np.full_like(x, np.nan)
    if (status := _call(rotary, x, cos, sin, scale, out)) != 0:
        return f"{library}: Rotary returned {status}"
    if _call(rotary, x[..., :63].copy(), cos[..., :63].copy(), sin[..., :63].copy(), scale, out[..., :63].copy()) == 0:
        return f"{library}: Rotary took heads of 63 (odd)"
    wide = x.astype(np.float64)
    turned = np.concatenate([-wide[..., 32:], wide[..., :32]], -1)
    expected = (wide * cos + turned * sin) * 0.125
    return _compare("rotary", x, out, expected, TOLERANCE, library)


def _check_masked_attention(masked, width: int, library: Path) -> str | None:
    """Two packed rows as the encoder and prefill have them: clips that see their own block, a
    prefix seen causally then by two suffixes, each seen causally, and padding that sees itself;
    lengths that are no multiple of the kernel's blocks, two query heads per key/value head. Then
    some of the queries alone, out of order (prefill's last layer: each task's last token), against
    every key."""
    from pipeline.model.packing import MASKED

    rng = np.random.default_rng(width)
    rows, kv, groups, length = 2, 2, 2, 45
    mask = np.full((rows, length, length), MASKED, np.float32)
    mask[:, np.arange(length), np.arange(length)] = 0.0
    mask[0, :13, :13] = mask[0, 13:40, 13:40] = 0.0  # two clips, then padding
    causal = np.tril(np.ones((length, length), bool))
    prefix, first, second = slice(0, 20), slice(20, 29), slice(29, 41)
    for part in (prefix, first, second):
        mask[1, part, part][causal[part, part]] = 0.0
        mask[1, part, prefix] = np.where(causal[part, prefix] | (part != prefix), 0.0, MASKED)
    # Token-major, as the projections write them: query head h uses key/value head h // groups.
    q = (rng.standard_normal((rows, length, kv * groups, width)) * width**-0.5 * 2).astype(np.float32)
    keys = rng.standard_normal((rows, length, kv, width)).astype(np.float32)
    values = rng.standard_normal((rows, length, kv, width)).astype(np.float32)
    out = np.full_like(q, np.nan)
    if (status := _call(masked, q, keys, values, mask, np.array([2], np.int32), out)) != 0:
        return f"{library}: MaskedAttention returned {status}"
    wide = q.reshape(rows, length, kv, groups, width).astype(np.float64)
    probs = _softmax64(np.einsum("bihgd,bthd->bhgit", wide, keys) + mask[:, None, None])
    expected = np.einsum("bhgit,bthd->bihgd", probs, values).reshape(q.shape)
    if problem := _compare(f"masked attention (heads of {width})", q, out, expected, NORM_TOLERANCE, library):
        return problem
    some = np.array([28, 40, 12, 19, 44, 3, 39, 33, 21])  # more than one block of queries
    q, mask = np.ascontiguousarray(q[:, some]), np.ascontiguousarray(mask[:, some])
    out = np.full(q.shape, np.nan, np.float32)
    if (status := _call(masked, q, keys, values, mask, np.array([2], np.int32), out)) != 0:
        return f"{library}: MaskedAttention returned {status} for some queries"
    return _compare(f"masked attention (heads of {width}, some queries)", q, out, expected[:, some],
                    NORM_TOLERANCE, library)


def _check_step_attention(attention, width: int, library: Path) -> str | None:
    """Slots at the first position, in the middle, at the last a row has, and idle (the scratch
    position: zeros); two query heads per key/value head."""
    rng = np.random.default_rng(width)
    slots, kv, groups, span = 4, 2, 2, 37
    q = rng.standard_normal((slots, kv, groups, width)).astype(np.float32) * np.float32(2.0)
    keys = rng.standard_normal((slots, kv, span, width)).astype(np.float32)
    values = rng.standard_normal((slots, kv, span, width)).astype(np.float32)
    positions = np.array([0, 17, span - 2, span - 1], np.int32)
    scale = np.array([width**-0.5], np.float32)
    out = np.full_like(q, np.nan)
    if (status := _call(attention, q, keys, values, positions, scale, np.array([2], np.int32), out)) != 0:
        return f"{library}: StepAttention returned {status}"
    expected = np.zeros(q.shape)
    for slot, position in enumerate(positions[:-1]):
        seen = slice(0, position + 1)
        scores = np.einsum("hgd,htd->hgt", q[slot].astype(np.float64), keys[slot, :, seen]) * float(scale[0])
        expected[slot] = np.einsum("hgt,htd->hgd", _softmax64(scores), values[slot, :, seen])
    return _compare(f"step attention (heads of {width})", q, out, expected, NORM_TOLERANCE, library)


def _softmax64(scores: np.ndarray) -> np.ndarray:
    """The softmax over the last axis in float64, what the attention kernels are checked against."""
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def _compare(name: str, x, y, expected, tolerance: float, library: Path) -> str | None:
    error = np.abs(y - expected) / np.maximum(1.0, np.abs(expected))
    if np.all(error <= tolerance):
        return None
    worst = np.unravel_index(int(np.argmax(np.where(np.isnan(error), np.inf, error))), error.shape)
    return f"{library} gives {name} {y[worst]} where float64 gives {expected[worst]} (input {x[worst]})"


class RowWriter(nn.Cell):
    """dst[rows[j]] = values[j] in a graph's state (a Parameter), returning what to hang the rest
    of the graph on with ops.depend: the compiled kernel's copy where there is one (five times
    ScatterUpdate's speed on MindSpore's CPU backend), else ScatterUpdate. dst must not be read
    later in the same graph (the graphs never do): MindSpore does not know the kernel writes it."""

    def __init__(self, kernels: CpuKernels | None):
        super().__init__()
        self.native = kernels is not None
        if kernels is not None:
            self.kernel = kernels.op("WriteRows", like=1)

    def construct(self, dst, rows, values):
        if self.native:
            return self.kernel(dst, rows, values)
        return ops.depend(rows, ops.scatter_update(dst, rows, values))


class ExactGelu(nn.Cell):
    """GELU with the exact erf (the reference's): the compiled kernel where there is one, else
    MindSpore's."""

    def __init__(self, kernels: CpuKernels | None):
        super().__init__()
        self.native = kernels is not None
        if kernels is not None:
            self.kernel = kernels.op("ExactGelu")

    def construct(self, x):
        if self.native:
            return self.kernel(x)
        return ops.gelu(x, approximate="none")
