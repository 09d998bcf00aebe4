"""The private Ray a run starts for itself (run/cluster.ray_session): its processes get the logging
settings from the environment, not a runtime_env (which made Ray discard the workers it starts
ahead of the job); run/idle_agent.py stands in for the node's two agents, so nothing waits for a
port another Ray on the node holds; it starts neither Ray's API server nor the autoscaler monitor;
and it leaves no process behind. In a subprocess: this test session's own Ray is already running
here."""

import json
import os
import socket
import subprocess
import sys

import psutil

SCRIPT = r"""
import json, os, sys, time
import ray
from pipeline.run import cluster, ray_address
from pipeline.run.actors import WorkerSpec

before = {k: os.environ.get(k) for k in ("GLOG_v", "GLOG_logtostderr")}

@ray.remote(num_cpus=1)
def environment():
    return os.getpid(), os.environ.get("GLOG_v"), os.environ.get("GLOG_logtostderr")

with cluster.ray_session(1, ray_address.choose("local", environ={})):
    node = ray._private.worker._global_node
    session = node.get_session_dir_path()
    pid, glog_v, glog_stderr = ray.get(environment.remote())
    children = __import__("psutil").Process().children(recursive=True)
    def command(process):  # [] for one that is gone or a zombie
        try:
            return process.cmdline()
        except Exception:
            return []
    print(json.dumps({"agent_port": node.dashboard_agent_listen_port, "session": session,
                      "runtime_env_port": node.runtime_env_agent_port,
                      "stand_ins": [c[2] for c in map(command, children) if c[2:3] and c[2].endswith("idle_agent.py")],
                      "ray_agents": [c[0] for c in map(command, children) if c[:1] and c[0].endswith("Agent")],
                      "processes": sorted(node.all_processes),
                      "worker_glog": [glog_v, glog_stderr], "driver_env_inside": {k: os.environ.get(k) for k in before},
                      "pids": [p.pid for p in children]}), flush=True)
print(json.dumps({"driver_env_after": {k: os.environ.get(k) for k in before}, "before": before}))
"""


def test_private_cluster_settings_ports_and_cleanup(tmp_path):
    holder = socket.socket()
    try:  # hold the agent's default port, as another Ray on the node does (it may hold it already)
        holder.bind(("0.0.0.0", 52365))
        holder.listen()
    except OSError:
        pass
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLOG_", "RAY_ADDRESS"))}
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    finally:
        holder.close()
    assert done.returncode == 0, done.stderr[-3000:]
    inside, after = [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]]
    assert inside["worker_glog"] == ["2", "1"]  # MindSpore's logging settings reach the workers
    assert after["driver_env_after"] == after["before"] == {"GLOG_v": None, "GLOG_logtostderr": None}
    # The stand-ins, not Ray's agents: their ports "not in use", the node's one each.
    assert inside["agent_port"] == inside["runtime_env_port"] == -1
    assert len(inside["stand_ins"]) == 2 and inside["ray_agents"] == []  # Ray's: ray::DashboardAgent...
    assert not os.path.exists(os.path.join(inside["session"], "logs", "dashboard_agent.log"))
    assert inside["processes"] == ["gcs_server", "log_monitor", "raylet"]  # no API server, no monitor
    left = [pid for pid in inside["pids"] if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert left == []
