"""MindSpore process set-up: graph mode, the device, CPU threads and the compiler cache.

The only Ascend-specific code is here: on a Ray worker pinned to one NPU, Ray sets
ASCEND_RT_VISIBLE_DEVICES to that NPU alone, so it is always device 0 inside the process.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


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


def configure(device: str, compile_cache_dir: Path | None, cpu_threads: int,
              compile_order_fixed: bool = False) -> None:
    """Call once per process, before the first graph compiles.

    MindSpore's compile cache (`compile_cache_<i>.mindir`) is keyed by the order in which a process
    compiles its graphs, not by what the graphs are: a process that compiles bucket 10 s first
    loads the 5 s graph an earlier process compiled first, and fails at run time (or worse, runs
    it). The cache is therefore only used when the caller compiles every graph in the same order
    in every process (compile_order_fixed). Graphs compiled on demand by the first batch of each
    bucket arrive in data order, so they run uncached, which is slower to start but always right.
    """
    if compile_cache_dir is not None and not compile_order_fixed:
        log.warning("MindSpore compile cache not used: graphs are compiled in data order, and the "
                    "cache would hand a process the graph another process compiled at that position")
    elif compile_cache_dir is not None:
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


def mindspore_dtype(name: str):
    import mindspore as ms

    return {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}[name]
