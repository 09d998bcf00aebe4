"""run/idle_agent.py, what a private node runs in place of Ray's node agents: it writes each port it
stands for as "not in use" where Ray's raylet looks for it, and ends when the raylet (its standard
input's writer) does."""

import os
import subprocess
import sys
import time

from ray import _raylet
from ray._private import ray_constants

from pipeline.run import cluster, idle_agent

NODE = "ab" * 28


def test_port_files_are_where_ray_reads_them():
    assert os.path.basename(idle_agent.port_file("s", "metrics_agent_port", NODE)) == \
        _raylet.get_port_filename(NODE, "metrics_agent_port")


def test_stands_in_for_both_agents_with_their_ports():
    commands = cluster._idle_agent_commands()
    assert commands[ray_constants.PROCESS_TYPE_DASHBOARD_AGENT][-4:] == [
        _raylet.METRICS_AGENT_PORT_NAME, _raylet.METRICS_EXPORT_PORT_NAME, _raylet.DASHBOARD_AGENT_LISTEN_PORT_NAME,
        "--"]
    assert commands[ray_constants.PROCESS_TYPE_RUNTIME_ENV_AGENT][-2:] == [_raylet.RUNTIME_ENV_AGENT_PORT_NAME, "--"]


def test_writes_ports_not_in_use_then_ends_with_its_parents_pipe(tmp_path):
    agent = subprocess.Popen([sys.executable, "-S", idle_agent.__file__, "a_port", "b_port", "--", "/ray/agent.py",
                              f"--node-id={NODE}", f"--session-dir={tmp_path}", "--gcs-address=x:1"],
                             stdin=subprocess.PIPE)
    try:
        files = [tmp_path / f"{name}_{NODE}" for name in ("a_port", "b_port")]
        deadline = time.monotonic() + 30
        while not all(f.exists() for f in files) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [f.read_text() for f in files] == ["-1", "-1"]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)  # no partial file left
        time.sleep(0.2)
        assert agent.poll() is None  # waits while the raylet lives
        agent.stdin.close()  # the raylet ends
        assert agent.wait(timeout=10) == 0
    finally:
        agent.kill()
