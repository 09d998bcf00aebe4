"""The private Ray a run starts for itself (run/cluster.ray_session): its processes get the logging
settings from the environment, not a runtime_env (which made Ray discard the workers it starts
ahead of the job); its node agent does not wait for a port another Ray on the node holds; it starts
neither Ray's API server nor the autoscaler monitor; and it leaves no process behind. In a
subprocess: this test session's own Ray is already running here."""

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
    print(json.dumps({"agent_port": node.dashboard_agent_listen_port, "session": session,
                      "processes": sorted(node.all_processes),
                      "worker_glog": [glog_v, glog_stderr], "driver_env_inside": {k: os.environ.get(k) for k in before},
                      "pids": [p.pid for p in __import__("psutil").Process().children(recursive=True)]}), flush=True)
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
    assert inside["agent_port"] not in (52365, None)
    assert inside["processes"] == ["gcs_server", "log_monitor", "raylet"]  # no API server, no monitor
    agent_log = open(os.path.join(inside["session"], "logs", "dashboard_agent.log")).read()
    assert "Failed to bind" not in agent_log
    left = [pid for pid in inside["pids"] if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert left == []
