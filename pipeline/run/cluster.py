"""The Ray cluster this run uses, and what it offers: the session (join the cluster the run names,
or start a private local Ray: run/ray_address.py), its NPUs, the memory each model worker may plan
for, and room for decoding.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import ray

from pipeline.errors import UserError
from pipeline.model.runtime import log_environment
from pipeline.run import ray_address
from pipeline.run.signals import StopRequested


# A private node's processes connect to its raylet and object store retrying every 20 ms, 500
# times, where Ray's defaults retry every second, 10 times: the same 10 s of patience. The raylet's
# own connection to its object store missed the store's first moment about one start in three here
# and came up a second later (1.0 s of those starts, measured).
# No task events either (a 0 interval turns them off): they feed Ray's state API and timeline,
# which nothing of a run reads, and the driver's shutdown waited 0.25 s to flush them to a GCS
# about to stop (measured). Worker processes started ahead stay on: docs/decisions.md, Start-up.
PRIVATE_SYSTEM_CONFIG = {"raylet_client_connect_timeout_milliseconds": 20, "raylet_client_num_connect_attempts": 500,
                         "task_events_report_interval_ms": 0}
# How long the node table is watched for a private node's registration before Ray's own wait takes over.
REGISTRATION_WAIT_S = 30.0


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
            with _environment(log_environment()), _lighter_private_node():
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 2 * workers), include_dashboard=False,
                         logging_level="WARNING", log_to_driver=True, _system_config=PRIVATE_SYSTEM_CONFIG)
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
        ray.shutdown()


def import_serializers() -> None:
    """Import what Ray's first serialization in this process imports (its pydantic and Arrow
    serializers), so that it can happen while Ray starts: the first ray.put, ahead of the model
    workers' submission, took 0.08-0.10 s with them to import and 0.02-0.04 s without (measured)."""
    from ray._common import pydantic_compat  # noqa: F401  (not public API: Ray is pinned)
    from ray._private import arrow_serialization  # noqa: F401


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
def _lighter_private_node():
    """A private cluster's node without what a run never uses, each measured on this machine's two
    cores (a bare ray.init 2.4-3.5 s before):
    - Ray's API server (the dashboard's head, which `include_dashboard=False` still starts with its
      usage-stats module): ray.init waited for it, 0.55-0.8 s. Nothing of a run asks it anything
      (where `ray[default]` is installed, the node agent's event module then logs once a second, in
      Ray's session folder, that it finds no dashboard to report to).
    - the autoscaler monitor: a private cluster never scales, and ray.shutdown then waited about
      1 s for it to give up reporting to the GCS stopped before it.
    - the node agent's fixed port (52365): where another Ray on the node holds it (a `ray start`
      cluster, another run, a test session), the agent retried it five times with growing pauses
      and the node was not up until it gave up (3.4 s of every start); it takes any free port
      (where Ray's own agent runs: the stand-in below binds none).
    - the node's registration, which ray.init asks the GCS for in a call that waits in whole
      seconds (1 or 2 s here, for a node that registers 0.6-0.7 s after its raylet starts): the
      node table is read every 20 ms until the node is in it, then Ray's call returns at once.
    - the dashboard's dependency check: Ray imports them to see whether they are installed (aiohttp
      and more, 0.3 s of the driver's CPU on the start's critical path where `ray[default]` is);
      told they are missing, Ray skips that import (the driver builds the agents' commands either
      way), and where Ray's own node agent runs it starts as with a plain `pip install ray`, without
      its HTTP and metrics servers, which nothing of a private run reads.
    - the node's two agents (Ray's dashboard agent and runtime-env agent): the raylet registers the
      node only once both have written their ports, after importing Ray and their modules (1-1.4 s
      after they start here, and 1.5 s of CPU beside the driver's and the workers' start); a private
      run uses no runtime_env, no dashboard, no job API and no metrics, and run/idle_agent.py stands
      in for both: it writes "not in use" for their ports at once and waits for the raylet to end.
      A run's Ray start 1.1-1.4 s instead of 1.7-2.4 s.
    Ray's node, parameter, services, state, utils and _raylet modules are not public API (Ray is
    pinned): where one lacks what this changes, that part of Ray's start stays as it was."""
    from ray._private import node, parameter, services, state, utils

    fields = parameter.RayParams.__init__.__code__.co_varnames
    defaults = {name: value for name, value in (("dashboard_agent_listen_port", 0), ("no_monitor", True))
                if name in fields}

    class RayParams(parameter.RayParams):
        def __init__(self, *args, **kwargs):
            for name, value in defaults.items():
                kwargs.setdefault(name, value)
            super().__init__(*args, **kwargs)

    original_get_node = getattr(services, "get_node", None)

    def get_node_once_registered(gcs_address, node_id):
        table = state.GlobalState()
        try:
            table._initialize_global_state(services._get_gcs_client_options(gcs_address))
            deadline = time.monotonic() + REGISTRATION_WAIT_S
            while node_id not in {n["NodeID"] for n in table.node_table()} and time.monotonic() < deadline:
                time.sleep(0.02)
        except Exception:  # noqa: BLE001 - Ray's own call below still waits for the node, its own way
            pass
        finally:
            table.disconnect()
        return original_get_node(gcs_address, node_id)

    stand_ins = _idle_agent_commands()
    original_command = getattr(services, "_build_python_executable_command_memory_profileable", None)

    def agent_command(component, session_dir, *args, **kwargs):
        if component in stand_ins:
            return list(stand_ins[component])
        return original_command(component, session_dir, *args, **kwargs)

    with ExitStack() as restore:
        for owner, name, replacement in (
                (parameter, "RayParams", RayParams),
                (services, "_build_python_executable_command_memory_profileable", agent_command),
                (node.Node, "start_api_server", lambda self, **_: None),
                (services, "get_node", get_node_once_registered),
                (utils, "get_dashboard_dependency_error",
                 lambda: ImportError("a private run's node serves no dashboard"))):
            _replace_for_now(restore, owner, name, replacement)
        yield


def _idle_agent_commands() -> dict[str, list[str]]:
    """Ray's agent process type -> the command that starts run/idle_agent.py in its place, with the
    ports that agent would write. Empty (Ray's own agents) where this Ray names them differently or
    keeps their ports elsewhere than idle_agent.port_file says."""
    from pipeline.run import idle_agent

    try:
        from ray import _raylet
        from ray._private import ray_constants

        node = ray.NodeID.nil().hex()
        if _raylet.get_port_filename(node, "x") != os.path.basename(idle_agent.port_file("", "x", node)):
            return {}
        ports = {
            ray_constants.PROCESS_TYPE_DASHBOARD_AGENT: (_raylet.METRICS_AGENT_PORT_NAME,
                                                         _raylet.METRICS_EXPORT_PORT_NAME,
                                                         _raylet.DASHBOARD_AGENT_LISTEN_PORT_NAME),
            ray_constants.PROCESS_TYPE_RUNTIME_ENV_AGENT: (_raylet.RUNTIME_ENV_AGENT_PORT_NAME,),
        }
    except (ImportError, AttributeError, TypeError, ValueError):
        return {}
    return {component: [sys.executable, "-S", idle_agent.__file__, *names, "--"] for component, names in ports.items()}


def _replace_for_now(restore: ExitStack, owner, name: str, replacement) -> None:
    """owner.name = replacement until restore closes; nothing where Ray has no such attribute."""
    original = getattr(owner, name, None)
    if original is None:
        return
    setattr(owner, name, replacement)
    restore.callback(setattr, owner, name, original)


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
