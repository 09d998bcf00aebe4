"""A real cluster started with `ray start --head` (docs/clusters.md): a run beside it starts its
own private Ray; a run that names it joins it with Ray's token authentication; `ray job submit` runs
the command of docs/schedulers.md on it and reports the run's exit code as its driver_exit_code;
an address that cannot be joined ends the run at once with one line and exit 2.

One head for the module, started and stopped here: its own temp folder (RAY_TMPDIR, where it
leaves ray_current_cluster), its own ports, token authentication on. Ray replaces a loopback
address with the node's own before connecting; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps the head
and the drivers that join it on 127.0.0.1 instead (a single-node cluster needs nothing more).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from tests.reliability.conftest import REPO

pytestmark = pytest.mark.cluster

VENV_BIN = Path(sys.executable).parent
EXAMPLE = REPO / "manifests" / "example.parquet"
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def plain_env(**extra: str) -> dict:
    """A user's shell: no Ray settings (this test process may hold some: ray.init sets RAY_AUTH_MODE
    in its own environment), the project's venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


@dataclass
class Head:
    address: str  # the GCS address: what RAY_ADDRESS / --ray-address name
    dashboard: str  # the job submission server
    token: str
    temp: Path  # RAY_TMPDIR of the head
    process: subprocess.Popen

    def auth_env(self) -> dict:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}


@pytest.fixture(scope="module")
def head():
    # A short folder: Ray's socket paths inside it must stay under the 107-byte limit.
    temp = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))
    port, dashboard_port = free_port(), free_port()
    token = secrets.token_hex(32)
    env = plain_env(RAY_TMPDIR=str(temp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **LOOPBACK_ONLY)
    log = open(temp / "ray-start.log", "wb")
    # --block: this process owns the head's processes and stops them all on SIGTERM. Every port
    # with a fixed default is chosen here, so that Rays started by other tests cannot collide.
    process = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (temp / "ray" / "ray_current_cluster").exists() or process.poll() is not None, 120)
        assert process.poll() is None, (temp / "ray-start.log").read_text()[-3000:]
        address = (temp / "ray" / "ray_current_cluster").read_text().strip()
        assert address == f"127.0.0.1:{port}"
        yield Head(address, f"http://127.0.0.1:{dashboard_port}", token, temp, process)
    finally:
        stop_head(process, temp)
        log.close()


def stop_head(process: subprocess.Popen, temp: Path) -> None:
    """SIGTERM to `ray start --block`, which stops what it started; then anything of this head's
    still running (its process group, or found by its temp folder) is killed. Never a global
    `ray stop`, which would stop every Ray on the machine."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    try:  # its own process group (start_new_session): what the head's processes started
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for candidate in psutil.process_iter(["pid", "cmdline"]):
        if str(temp) in " ".join(candidate.info["cmdline"] or []):
            try:
                candidate.kill()
            except psutil.Error:
                pass
    shutil.rmtree(temp, ignore_errors=True)


def wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def job_file(checkpoint_dir, tmp_path_factory) -> Path:
    """The tiny model with small shapes (a quick run); everything about Ray left at its default."""
    job = tmp_path_factory.mktemp("ray-start") / "job.yaml"
    job.write_text(yaml.safe_dump({
        "model": str(checkpoint_dir("small-instruct")), "device": "cpu", "decode_slots": 4, "batch_items": 2,
        "cpu_threads_per_worker": 1, "compile_cache_dir": None,
        "max_new_tokens": {"caption": 6, "events": 6, "transcript": 8, "moderation": 4},
    }))
    return job


@pytest.fixture(scope="module")
def all_missing(tmp_path_factory) -> Path:
    """The example's ids with audio that does not exist: a run that joins, starts no worker (every row
    fails before any model work) and exits 3 (the error gate)."""
    manifest = tmp_path_factory.mktemp("ray-start") / "missing.parquet"
    pq.write_table(pq.read_table(EXAMPLE).select(["id"]).append_column(
        "audio", [[f"/nonexistent/{i}.wav" for i in range(8)]]), manifest)
    return manifest


def annotate(out: Path, job: Path, env: dict, *options: str, cwd: Path = REPO, manifest: Path = EXAMPLE
             ) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "annotate", str(manifest), "--job", str(job),
                             "--out", str(out), "--no-progress", *options],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout_s: float = 600) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        process.kill()
    return process.returncode, stdout, stderr


def ray_on_start_line(stdout: str) -> str | None:
    """What the start line (the first line a run prints) says about Ray."""
    found = re.search(r"; Ray: (.+?)(; decoding: .*)?$", stdout.splitlines()[0] if stdout else "")
    return found.group(1) if found else stdout


def statuses(out: Path) -> list[str]:
    return pq.read_table(out / "annotations.parquet").column("status").to_pylist()


def test_runs_beside_it_and_joined_to_it(head, job_file, tmp_path):
    # Beside: nothing names a cluster. RAY_TMPDIR is the head's, so Ray's own lookup finds it (as
    # /tmp/ray/ray_current_cluster would after a plain `ray start --head`): ray.init() without
    # address="local" joined it and refused num_cpus (exit 1, a traceback).
    beside = annotate(tmp_path / "beside", job_file, plain_env(RAY_TMPDIR=str(head.temp)))
    # Joined, as docs/clusters.md says: RAY_ADDRESS and the cluster's token. From another folder, as
    # from another machine: Ray puts a driver's working directory first on the sys.path of workers
    # on its node, and this repository's pipeline/ would be found there before the shipped copy.
    joined = annotate(tmp_path / "joined", job_file,
                      plain_env(RAY_ADDRESS=head.address, **head.auth_env(), **LOOPBACK_ONLY), cwd=tmp_path)
    beside_code, beside_out, beside_err = finish(beside)
    joined_code, joined_out, joined_err = finish(joined)

    assert beside_code == 0, beside_out + beside_err
    assert statuses(tmp_path / "beside") == ["ok"] * 8
    assert ray_on_start_line(beside_out) == "a private local cluster for this run"

    assert joined_code == 0, joined_out + joined_err
    assert statuses(tmp_path / "joined") == ["ok"] * 8
    assert ray_on_start_line(joined_out) == f"the cluster at {head.address} (named by RAY_ADDRESS), 1 node"
    # The run shipped this package to the cluster (runtime_env py_modules): its workers ran that copy.
    shipped = head.temp.resolve() / "ray"
    workers = json.loads((tmp_path / "joined" / "run.json").read_text())["this_run"]["workers"]
    assert workers and all(Path(w["package"]).is_relative_to(shipped) and "py_modules_files" in w["package"]
                           for w in workers), [w["package"] for w in workers]
    beside_workers = json.loads((tmp_path / "beside" / "run.json").read_text())["this_run"]["workers"]
    assert [w["package"] for w in beside_workers] == [str(REPO / "pipeline")]


def test_auto_joins_it_and_what_cannot_be_joined_ends_the_run_with_one_line(head, job_file, all_missing, tmp_path):
    closed = free_port()
    # Ray retries a refused connection for about 20 s; the refusals need one try each here.
    quick = {"RAY_gcs_server_port_wait_time_s": "1", **LOOPBACK_ONLY}
    runs = {
        # auto: the cluster `ray start` left on this node (found through RAY_TMPDIR here); with a token at
        # hand, Ray turns token mode on by itself for it. Exit 3: every row of this manifest fails.
        "auto": annotate(tmp_path / "auto", job_file, plain_env(RAY_TMPDIR=str(head.temp), RAY_AUTH_TOKEN=head.token,
                                                                **LOOPBACK_ONLY),
                         "--ray-address", "auto", manifest=all_missing),
        "unreachable": annotate(tmp_path / "a", job_file, plain_env(), "--ray-address", f"127.0.0.1:{closed}"),
        "no token": annotate(tmp_path / "b", job_file, plain_env(RAY_ADDRESS=head.address, **quick)),
        "wrong token": annotate(tmp_path / "c", job_file, plain_env(RAY_ADDRESS=head.address, RAY_AUTH_MODE="token",
                                                                    RAY_AUTH_TOKEN="not-the-token", **quick)),
    }
    found = {name: finish(process, 300) for name, process in runs.items()}

    code, stdout, stderr = found.pop("auto")
    assert code == 3, stdout + stderr
    assert ray_on_start_line(stdout) == f"the cluster at {head.address} (named by --ray-address / ray_address), 1 node"
    named = rf"the Ray cluster at {re.escape(head.address)} \(named by RAY_ADDRESS\)"
    expected = {
        "unreachable": rf"error: cannot reach the Ray cluster at 127\.0\.0\.1:{closed} \(named by --ray-address / "
                       r"ray_address\): Connection refused\. .+",
        "no token": rf"error: {named} requires token authentication: set RAY_AUTH_MODE=token and the cluster's "
                    r"token .+",
        "wrong token": rf"error: {named} refused this driver's authentication token \(RAY_AUTH_TOKEN\): it is not "
                       r"the cluster's",
    }
    for name, (code, stdout, stderr) in found.items():
        assert code == 2, (name, stdout, stderr)
        assert stdout == "", (name, stdout)
        assert re.fullmatch(expected[name], stderr.strip()), (name, stderr)  # one line, no traceback


def test_ray_job_submit_runs_the_readme_command(head, job_file, all_missing, tmp_path):
    env = plain_env(**head.auth_env())
    # The command of docs/schedulers.md (`--working-dir .` from the repository), and one whose run
    # exits 3 (every row fails: the error gate), to see that the job's driver_exit_code is the run's
    # exit code.
    jobs = {
        "done": [str(EXAMPLE), "--job", str(job_file), "--out", str(tmp_path / "done"), "--quiet"],
        "gate": [str(all_missing), "--job", str(job_file), "--out", str(tmp_path / "gate"), "--quiet"],
    }
    ids = {name: f"{name}-{secrets.token_hex(4)}" for name in jobs}
    submits = {name: subprocess.Popen(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", head.dashboard, "--submission-id", ids[name],
         "--working-dir", ".", "--", "python", "-m", "pipeline", "annotate", *arguments],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, arguments in jobs.items()}
    results = {name: finish(process) for name, process in submits.items()}
    exit_codes = {name: driver_exit_code(head, ids[name]) for name in jobs}

    assert results["done"][0] == 0 and exit_codes["done"] == 0, results["done"][1][-3000:]
    assert statuses(tmp_path / "done") == ["ok"] * 8
    # ray job submit says only "failed" (exit 1); the run's own code is the driver's.
    assert results["gate"][0] == 1 and exit_codes["gate"] == 3, results["gate"][1][-3000:]
    assert set(statuses(tmp_path / "gate")) == {"error"}


def driver_exit_code(head: Head, submission_id: str) -> int | None:
    """As docs/schedulers.md reads it: the jobs API, with the cluster's token as a bearer token."""
    request = urllib.request.Request(f"{head.dashboard}/api/jobs/{submission_id}",
                                     headers={"Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["driver_exit_code"]
