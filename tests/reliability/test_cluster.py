"""A two-node Ray cluster (ray.cluster_utils.Cluster, each node declaring an NPU): the work spreads
over both nodes, and removing one midway loses and duplicates nothing; nothing is left running
afterwards. The cluster lives in its own process (the session's Ray is a single node)."""

import json
import subprocess
import sys

import psutil

from tests.reliability.conftest import REPO, subprocess_env
from tests.reliability.test_interruptions import assert_gone

CLUSTER_RUN = """
import json, sys, threading, time
from pathlib import Path
import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster
from pipeline.annotate import annotate
from pipeline.testing.fake_model import FakeModelFactory
from tests.pipeline.conftest import fast_config

manifest, out, model = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"NPU": 1}})
second = cluster.add_node(num_cpus=2, resources={"NPU": 1})
ray.init(address=cluster.address, logging_level="ERROR")
cluster.wait_for_nodes()
# Two batches per worker in flight: the removed node must still hold work when it goes (with the
# default 8, both workers take nearly all 16 items at once and finish before the removal).
config = fast_config(model, manifest, device="auto", dtype="auto", batch_items=1, commit_items=1,
                     worker_start_timeout_s=30.0, prefetch_batches=1)
found = {}
try:
    spread = annotate(manifest, config, out=out / "spread", progress=False, model_factory=FakeModelFactory(delay_s=0.2))
    found["spread_nodes"] = len({w["node"] for w in spread.run_info["this_run"]["workers"]})

    def remove_midway():
        while len(list((out / "removed" / "commits").glob("*.json"))) < 4:
            time.sleep(0.05)
        cluster.remove_node(second)
        found["removed_at"] = len(list((out / "removed" / "commits").glob("*.json")))

    remover = threading.Thread(target=remove_midway, daemon=True)
    remover.start()
    removed = annotate(manifest, config, out=out / "removed", progress=False,
                       model_factory=FakeModelFactory(delay_s=0.5))
    remover.join(timeout=5)
    this_run = removed.run_info["this_run"]
    found.update(exit_code=removed.exit_code, replacements=this_run["worker_replacements"],
                 keys=pq.read_table(out / "removed" / "parts").column("key").to_pylist(),
                 same=pq.read_table(out / "removed" / "annotations.parquet").to_pylist()
                 == pq.read_table(out / "spread" / "annotations.parquet").to_pylist(),
                 statuses=pq.read_table(out / "removed" / "annotations.parquet").column("status").to_pylist())
    time.sleep(1)
    found["free"] = ray.available_resources().get("NPU", 0) == ray.cluster_resources().get("NPU", 0)
    import psutil
    found["children"] = [p.pid for p in psutil.Process().children(recursive=True)]
finally:
    ray.shutdown()
    cluster.shutdown()
print("RESULT", json.dumps(found))
"""


def test_two_nodes_one_removed_midway(clips, model_dir, tmp_path):
    process = subprocess.Popen([sys.executable, "-c", CLUSTER_RUN, str(clips), str(tmp_path / "out"), str(model_dir)],
                               cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        output, _ = process.communicate(timeout=400)
    finally:
        process.kill()
    line = next((line for line in output.splitlines() if line.startswith("RESULT ")), None)
    assert process.returncode == 0 and line, output[-4000:]
    found = json.loads(line[len("RESULT "):])
    assert found["spread_nodes"] == 2  # one worker on each node
    assert found["removed_at"] < 16 and found["replacements"] >= 1
    assert found["exit_code"] == 0 and found["statuses"] == ["ok"] * 16
    assert len(found["keys"]) == len(set(found["keys"])) == 16  # nothing lost, nothing twice
    assert found["same"] and found["free"]
    # The cluster's processes (raylets, GCS, workers) are gone with it.
    assert found["children"]
    assert_gone([psutil.Process(pid) for pid in found["children"] if psutil.pid_exists(pid)])
