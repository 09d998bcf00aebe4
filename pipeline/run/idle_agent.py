"""What a private run's Ray node runs in place of Ray's two node agents (run/cluster.py,
`_lighter_private_node`): it tells the node that the agents' services are not there, then waits for
the raylet to end.

Ray's raylet starts a dashboard agent (metrics, logs, job submission and events, for the dashboard)
and a runtime-env agent (it builds `runtime_env`s), and registers its node only once both have
written the ports they serve into the session folder. A private run uses none of those services (no
dashboard, no `runtime_env`, no job API, no metrics: docs/decisions.md), yet each agent's start
(importing Ray and its modules: 0.5-1 s of CPU each on this project's two cores) held every run's
start by about a second. This process writes -1 for each port it stands for, which the raylet reads
as a service not in use (what Ray's own agent writes for the metrics ports where the dashboard's
dependencies are missing), then exits when the raylet does: the raylet holds a pipe on its agents'
standard input, which reads empty once the raylet is gone.

Standard library only, run with `python -S`: it is up in tens of milliseconds.

    python -S idle_agent.py PORT_NAME [PORT_NAME ...] -- RAY_AGENT_ARGUMENTS

of whose arguments it reads `--node-id=` and `--session-dir=`.
"""

from __future__ import annotations

import os
import stat
import sys
import time

NOT_IN_USE = -1


def port_file(session_dir: str, name: str, node_id: str) -> str:
    """Where Ray's components write the port they serve (ray._raylet.get_port_filename)."""
    return os.path.join(session_dir, f"{name}_{node_id}")


def write_port(path: str, port: int) -> None:
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w") as out:
        out.write(str(port))
    os.replace(partial, path)  # the raylet polls for the file: it never reads a partial one


def wait_for_raylet() -> None:
    """Return once the raylet that started this process has ended."""
    try:
        piped = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        piped = False
    if piped:
        while os.read(0, 4096):
            pass
        return
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.2)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    names, ray_arguments = argv[:split], argv[split + 1:]
    options = dict(a[2:].split("=", 1) for a in ray_arguments if a.startswith("--") and "=" in a)
    for name in names:
        write_port(port_file(options["session-dir"], name, options["node-id"]), NOT_IN_USE)
    wait_for_raylet()


if __name__ == "__main__":
    main(sys.argv[1:])
