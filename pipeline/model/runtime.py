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

# MindSpore logs through glog, which reads these when mindspore is imported: they must be in a
# process's environment before that, so run/cluster.ray_session gives them to every Ray worker: by
# inheritance from the driver's environment for a private Ray, through runtime_env on a cluster.
# To stderr, because Ray ships each worker's stderr to the driver, which writes it to the run's
# log file (output/library_log.py); a node-local log folder would keep them out of it. Values
# already set in the driver's environment win (GLOG_v=1 for more detail). Warnings stay on: they
# are in the log, not on the terminal. The ones a normal run prints, and why they are harmless:
# - none from the graphs themselves (a cold and a warm run checked). ANALYZER ClearIsolatedNodes
#   "Some side effect nodes were eliminated by mistake" would mean an assigned name that is never
#   read inside a graph; in graphs that update Parameters in place it can mean a lost update, so
#   graphs assign no name they do not read, to keep that warning meaningful.
# - PIPELINE CanLoadCache "Open the hash file ... The file may not exist" and
#   GetCompileCacheResource "Check the consistency of dependency files hash failed. Execute all
#   the compilation actions": a cold compile cache (first run with these dims, shapes and code),
#   so every graph compiles; the next run loads them.
# - PIPELINE GetCachedFuncGraph "Use the compilation cache ... Be aware of correctness risks": a
#   warm cache; the risk is stale graphs after a code change, which graph_code_fingerprint rules
#   out by keying the cache folder on the model code.
GLOG_DEFAULTS = {
    "GLOG_v": "2",  # warnings and above
    "GLOG_logtostderr": "1",
}


def log_environment() -> dict[str, str]:
    """MindSpore's logging settings for worker processes (see GLOG_DEFAULTS)."""
    return {name: os.environ.get(name, value) for name, value in GLOG_DEFAULTS.items()}


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
