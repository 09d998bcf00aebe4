"""MindSpore process set-up: graph mode, the device, CPU threads and the compiler cache.

The only Ascend-specific code is here: on a Ray worker pinned to one NPU, Ray sets
ASCEND_RT_VISIBLE_DEVICES to that NPU alone, so it is always device 0 inside the process.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path


def graph_code_fingerprint() -> str:
    """Hash of this package's source, which defines the graphs and the inputs they are called with.

    MindSpore invalidates its compile cache only when the entry script, or a module that script
    imports at top level, changes. `python -m pipeline` imports the model lazily and a Ray worker's
    entry script is Ray's own, so an edited model would otherwise silently run its old graphs
    (measured: a cell changed from x*2 to x*3 kept returning x*2 from the cache).
    """
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def configure(device: str, compile_cache_dir: Path | None, cpu_threads: int) -> Path | None:
    """Call once per process, before the first graph compiles.

    MindSpore's compile cache (`compile_cache_<i>.mindir`) is keyed by the order in which a process
    compiles its graphs, not by what the graphs are; the engine therefore compiles its four graphs
    at load, always in the same order (Generator.precompile), which makes the cache valid across
    processes. Workers on one node share the folder, so a node compiles each graph once (see
    compile_lock). -> the cache folder in use, or None.
    """
    folder = None
    if compile_cache_dir is not None:
        # The folder name encodes model, shapes, dtype and MindSpore version; the subfolder the
        # code that builds the graphs (see graph_code_fingerprint).
        folder = compile_cache_dir / f"code-{graph_code_fingerprint()}"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["MS_COMPILER_CACHE_ENABLE"] = "1"
        os.environ["MS_COMPILER_CACHE_PATH"] = str(folder)
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    if device == "ascend":
        ms.set_device("Ascend", 0)
    else:
        ms.set_device("CPU")
        if cpu_threads > 0:
            ms.device_context.cpu.op_tuning.threads_num(cpu_threads)
    return folder


@contextmanager
def compile_lock(folder: Path | None):
    """Hold while compiling: the first worker of a node compiles into the cache, the others wait
    and then load what it wrote, instead of all compiling at once into the same files."""
    if folder is None:
        yield
        return
    with open(folder / ".compile.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def mindspore_dtype(name: str):
    import mindspore as ms

    return {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}[name]
