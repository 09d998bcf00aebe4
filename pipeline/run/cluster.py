"""The Ray cluster this run uses, and what it offers: the session (join the cluster the run names,
or start a private local Ray: run/ray_address.py), its NPUs, the memory each model worker may plan
for, and room for decoding.
"""

from __future__ import annotations

import math
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import ray

from pipeline.errors import UserError
from pipeline.model.runtime import log_environment
from pipeline.run import ray_address
from pipeline.run.signals import StopRequested


@contextmanager
def ray_session(workers: int, cluster: ray_address.ClusterChoice):
    """Join the cluster the run names (run/ray_address.py), reuse a Ray already started in this
    process (tests share one per session), or start a private local one that ends with the run.
    Yields what the start line says about it.

    Every worker's stdout and stderr (MindSpore's glog included, see runtime.log_environment)
    comes to this process (log_to_driver), from every node of a cluster, and Ray prints it on
    this process's stderr: the run's log file when the command line runs (output/library_log.py).
    """
    if ray.is_initialized():
        yield "the one already started in this process"
        return
    try:
        if cluster.private:
            # Logical CPUs, not cores: one per model worker and as many again for prepare tasks (one
            # CPU each, see actors.remote_prepare), so decoding always has room beside the models.
            # address="local": a private cluster for this run, even where another Ray runs on the
            # node (`ray start`, another run): without it ray.init joins that one, and refuses
            # num_cpus there.
            # No runtime_env: the cluster's processes inherit the logging settings from this
            # process's environment instead. A job-level runtime_env made Ray discard the workers it
            # starts ahead of the job and start new ones through its runtime-env agent: 0.6 s more
            # before the first task or actor ran, and 0.8 s of CPU for the discarded ones (measured).
            with _environment(log_environment()), _agent_on_any_free_port():
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 2 * workers), include_dashboard=False,
                         logging_level="WARNING", log_to_driver=True)
        else:
            # Ship this package to the cluster's workers; its dependencies must be installed there.
            runtime_env = {"env_vars": log_environment(), "py_modules": [str(Path(__file__).parents[1])]}
            ray_address.join(cluster, runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
    except SystemExit as exc:
        # ray.init installs a SIGTERM handler that exits at once; a SIGTERM while Ray starts comes
        # out here. Nothing has run: stop like any stop request (exit 75), leaving nothing behind.
        if exc.code != signal.SIGTERM:
            raise
        ray.shutdown()
        raise StopRequested(signal.SIGTERM) from None
    try:
        yield ray_address.describe(cluster)
    finally:
        if cluster.private:
            _stop_autoscaler_monitor()
        ray.shutdown()


@contextmanager
def _environment(values: dict[str, str]):
    """These variables in this process's environment while the block runs (what processes started
    then inherit), as they were afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _agent_on_any_free_port():
    """Ray's node agent listens on a fixed port (52365) unless told otherwise, and ray.init has no
    option for it. Where another Ray runs on the node (a `ray start` cluster, another run, a test
    session) that port is taken: the agent retries it five times with growing pauses, then goes on
    without it, and the node is not up until it has (3.4 s of every start here, measured). A
    private cluster's agent takes any free port instead (0). Ray's parameter class is not public
    API: where it has no such field, nothing changes."""
    from ray._private import parameter

    original = parameter.RayParams
    if "dashboard_agent_listen_port" not in original.__init__.__code__.co_varnames:
        yield
        return

    class RayParams(original):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    parameter.RayParams = RayParams
    try:
        yield
    finally:
        parameter.RayParams = original


def _stop_autoscaler_monitor() -> None:
    """Kill a private cluster's autoscaler monitor before ray.shutdown stops the rest. ray.shutdown
    stops the GCS before it, and the monitor, told to stop, then tries to report to the GCS that is
    gone until ray.shutdown gives up on it a second later (1.0 s of every run's end, measured). A
    private cluster never autoscales; nothing of its state matters. Ray's own process table is not
    public API: where it is missing, ray.shutdown does it the slow way."""
    node = getattr(ray._private.worker, "_global_node", None)
    for info in getattr(node, "all_processes", {}).get("monitor", []):
        try:
            info.process.kill()
            info.process.wait(timeout=5)
        except Exception:  # noqa: BLE001 - gone already, or not ours to stop: ray.shutdown still runs
            pass


def cluster_npus() -> int:
    return int(ray.cluster_resources().get("NPU", 0))


# What a worker may plan for, of its share of a device: the rest covers the framework's own
# allocations, and on CPU the driver, the decode tasks and Ray's object store beside it (Ray's
# memory monitor kills workers when a node passes 95%).
NPU_MEMORY_SHARE = 0.85
CPU_MEMORY_SHARE = 0.6


def worker_memory_bytes(workers: int, use_npu: bool, npu_memory_gb: float) -> int:
    """Memory one worker may use in all: its NPU's (the job's npu_memory_gb: the engine plans its
    caches inside the device, not in the host's memory), or its share of its node's (Ray's memory
    resource, which already leaves the object store out)."""
    if use_npu:
        return int(npu_memory_gb * 2**30 * NPU_MEMORY_SHARE)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    smallest = min(n["Resources"].get("memory", 0) for n in nodes)
    per_node = math.ceil(workers / len(nodes))
    return int(smallest * CPU_MEMORY_SHARE / per_node)


def check_room_for_decoding(model_workers: int) -> None:
    """Prepare tasks take a CPU each: a Ray whose CPUs the model workers hold would wait forever."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < model_workers + 1:
        raise UserError(f"the Ray cluster has {cpus:g} CPUs: {model_workers} model workers take one each, "
                        "and decoding needs at least one more")
