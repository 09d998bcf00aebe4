"""Finding the checkpoint on the driver and on every worker's node (model/checkpoint.py)."""

import shutil
import socket

import pytest

from pipeline.config import Config
from pipeline.items import Batch, Item
from pipeline.model import checkpoint
from pipeline.model.checkpoint import CheckpointMissing, checkpoint_on_this_node, has_weights, resolve_checkpoint
from pipeline.model.model_plan import plan_model
from pipeline.run import actors
from pipeline.tasks.catalog import resolve_tasks
from tests.fake_hub import COMMIT, FakeHub

HUB_ID = "tiny-org/tiny-audio"


@pytest.fixture
def source(checkpoint_dir):
    return checkpoint_dir("small-instruct")


@pytest.fixture(autouse=True)
def fresh_caches():
    """Each test is another node: nothing found by an earlier test in this process counts."""
    for cached in (getattr(checkpoint, "_on_this_node", None), actors._preparer):
        if cached is not None:
            cached.cache_clear()
    yield
    for cached in (getattr(checkpoint, "_on_this_node", None), actors._preparer):
        if cached is not None:
            cached.cache_clear()


def _plan(model: str):
    config = Config(model=model, device="cpu", decode_slots=2)
    return plan_model(config, resolve_tasks(config), "cpu", 2**30)


def _prepare(plan, write_tone):
    """What a worker's decode task does first on its node: load the feature extractor, then decode."""
    clip = write_tone("clip.wav", seconds=1.0)
    spec = actors.WorkerSpec(plan=plan, tasks=[], moderation_labels=(), silence_dbfs=-60.0, search_s=2.0,
                             compile_cache_root=None, cpu_threads=1)
    summary, prepared = actors.prepare_batch(spec, Batch((Item(0, "a", str(clip), 0, 1, 0.0, 1.0, 1.0),)))
    return summary


def test_a_node_resolves_a_hub_checkpoint_in_its_own_cache(source, tmp_path, monkeypatch, write_tone):
    """The driver's snapshot folder is its own cache: a worker on another node finds the same hub id
    and revision in that node's cache instead of the driver's path."""
    driver = FakeHub(monkeypatch, source, tmp_path / "driver-cache")
    plan = _plan(HUB_ID)
    assert plan.model_dir == str(driver.snapshot(HUB_ID)) and plan.revision == COMMIT
    shutil.rmtree(tmp_path / "driver-cache")  # not on this node
    node = FakeHub(monkeypatch, source, tmp_path / "node-cache")
    assert _prepare(plan, write_tone)["failed"] == 0
    assert checkpoint_on_this_node(plan) == node.snapshot(HUB_ID)
    assert {c["revision"] for c in node.calls} == {COMMIT}  # the driver's revision, not "main"


def test_a_node_without_the_driver_folder_fails_naming_the_node_and_the_path(source, tmp_path, write_tone):
    folder = tmp_path / "models" / "tiny"
    shutil.copytree(source, folder)
    plan = _plan(str(folder))
    shutil.rmtree(folder)  # this "node" has no copy at the driver's path
    with pytest.raises(CheckpointMissing) as error:
        _prepare(plan, write_tone)
    message = str(error.value)
    assert f"node {socket.gethostname()}" in message and str(folder) in message
    assert "same path" in message


def test_a_node_with_another_checkpoint_at_that_path_is_refused(source, tmp_path):
    folder = tmp_path / "models" / "tiny"
    shutil.copytree(source, folder)
    plan = _plan(str(folder))
    with open(folder / "model.safetensors", "ab") as weights:  # other weights at the same path
        weights.write(b"\0" * 8)
    with pytest.raises(CheckpointMissing, match=r"not the one the driver planned with \(files that differ: "
                                                r"model.safetensors\)"):
        checkpoint_on_this_node(plan)


def test_a_snapshot_without_its_weights_is_not_taken_for_the_checkpoint(source, tmp_path, monkeypatch):
    """A snapshot holding only the configuration (what a dry run fetches) is completed before a run
    uses it, instead of failing on a worker."""
    hub = FakeHub(monkeypatch, source, tmp_path / "cache")
    partial, _ = resolve_checkpoint(HUB_ID, weights=False)
    assert not has_weights(partial) and (partial / "config.json").is_file()
    folder, revision = resolve_checkpoint(HUB_ID)
    assert folder == partial and has_weights(folder) and revision == COMMIT
    assert [c["allow_patterns"] is None for c in hub.downloads] == [False, True]
