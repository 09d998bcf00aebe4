"""MindSpore process set-up: graph mode, the device, CPU threads and the compiler cache.

The only Ascend-specific code is here: on a Ray worker pinned to one NPU, Ray sets
ASCEND_RT_VISIBLE_DEVICES to that NPU alone, so it is always device 0 inside the process.
"""

from __future__ import annotations

import os
from pathlib import Path


def ascend_available() -> bool:
    import mindspore as ms

    try:
        return bool(ms.device_context.ascend.is_available()) and ms.device_context.ascend.device_count() > 0
    except Exception:  # the CPU wheel has no Ascend plugin; any failure means no NPU
        return False


def resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("ASCEND_RT_VISIBLE_DEVICES"):
        return "ascend"
    return "ascend" if ascend_available() else "cpu"


def configure(device: str, compile_cache_dir: Path | None, cpu_threads: int) -> None:
    """Call once per process, before the first graph compiles."""
    if compile_cache_dir is not None:
        # MindSpore reads these when it compiles; the folder name already encodes model, shapes,
        # dtype and MindSpore version, so a stale graph can never be picked up.
        compile_cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["MS_COMPILER_CACHE_ENABLE"] = "1"
        os.environ["MS_COMPILER_CACHE_PATH"] = str(compile_cache_dir)
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
