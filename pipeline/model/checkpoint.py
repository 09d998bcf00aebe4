"""Finding the checkpoint: a local folder, or a hub id resolved to a local snapshot; on the driver,
and again on every node that runs a worker.

The driver resolves the checkpoint once and records how to find it (ModelPlan: its folder, hub id
and revision, and every file's name and size). A worker may run on another node, where the
driver's folder (its own Hugging Face cache, say) need not exist: each node finds the checkpoint
for itself (checkpoint_on_this_node). A hub snapshot is looked up by the same hub id and revision
in the node's own cache (downloaded there when the node reaches the hub); a folder must be at the
same path on every node (a shared file system, or a copy) with the same files, which is checked,
and a node that lacks it fails with a message naming the node and the path.
"""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path

from pipeline.errors import UserError

REQUIRED_FILES = ("config.json", "tokenizer_config.json")
# What planning reads (config, tokenizer, generation config, chat template, feature extractor, the
# weights' index): a dry run fetches only these, never the weights.
METADATA_PATTERNS = ("*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken")
IDENTITY_SUFFIXES = (".safetensors", ".json")


class CheckpointMissing(UserError):
    """A node cannot find the checkpoint the driver planned with."""


def resolve_checkpoint(model: str, revision: str | None = None, weights: bool = True) -> tuple[Path, str | None]:
    """-> (local folder, resolved revision or None for a plain folder). weights=False (a dry run):
    a hub snapshot needs only what planning reads, and only that is fetched when it is not local."""
    path = Path(model).expanduser()
    if path.is_dir():
        absent = [name for name in REQUIRED_FILES if not (path / name).is_file()]
        if absent:
            raise UserError(f"model folder {path} is not a Hugging Face checkpoint: no {', '.join(absent)}")
        return path.resolve(), revision
    if path.exists() or model.startswith((".", "/")) or model.count("/") != 1:
        raise UserError(f"model {model!r} is not a checkpoint folder (and not a hub id like Qwen/Qwen2-Audio-7B)")
    folder = _hub_snapshot(model, revision, weights)
    return folder, folder.name  # snapshot folders are named by commit hash


def is_hub_id(model: str) -> bool:
    """A model given as a hub id (what resolve_checkpoint resolves through the hub cache)."""
    path = Path(model).expanduser()
    return not path.exists() and not model.startswith((".", "/")) and model.count("/") == 1


def has_weights(folder: Path) -> bool:
    """Every weights file the checkpoint names is there (a snapshot fetched for a dry run has none)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        return bool(shards) and all((folder / name).is_file() for name in shards)
    return (folder / "model.safetensors").is_file()


def checkpoint_files(folder: Path) -> dict[str, int]:
    """What identifies the weights without hashing gigabytes: the names and sizes of the weights and
    configuration files (the run's fingerprint holds them, and every node compares its own)."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())
            if p.suffix in IDENTITY_SUFFIXES and p.is_file()}


def _hub_snapshot(model: str, revision: str | None, weights: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:  # a snapshot downloaded earlier works offline
        folder = Path(snapshot_download(model, revision=revision, local_files_only=True))
        # A snapshot holding only some files (a dry run's, or a partial download) is not the checkpoint.
        if not weights or has_weights(folder):
            return folder
    except Exception:
        pass
    try:
        if weights:
            return Path(snapshot_download(model, revision=revision))
        return Path(snapshot_download(model, revision=revision, allow_patterns=list(METADATA_PATTERNS)))
    except Exception as exc:
        raise UserError(
            f"model {model!r} is not a local folder and the Hugging Face hub could not provide it "
            f"({type(exc).__name__}). Download it where the hub is reachable, e.g. "
            f"`huggingface-cli download {model} --local-dir models/{model.split('/')[-1]}`, "
            f"then pass MODEL=models/{model.split('/')[-1]}"
        ) from None


@functools.lru_cache(maxsize=4)
def _on_this_node(model_dir: str, hub_id: str | None, revision: str | None, files: str) -> Path:
    node = socket.gethostname()
    if hub_id is not None:
        try:
            folder, _ = resolve_checkpoint(hub_id, revision)
        except UserError as exc:
            raise CheckpointMissing(f"node {node}: {exc}") from None
    else:
        folder = Path(model_dir)
        if not folder.is_dir():
            raise CheckpointMissing(
                f"node {node}: the model folder {model_dir} (the driver's) does not exist here. Every node "
                "needs the checkpoint at the same path (a shared file system, or a copy), or give the "
                "model as a hub id, which each node resolves in its own cache")
    expected = json.loads(files)
    if expected and checkpoint_files(folder) != expected:
        found = checkpoint_files(folder)
        differ = sorted(n for n in set(expected) | set(found) if expected.get(n) != found.get(n))
        raise CheckpointMissing(
            f"node {node}: the checkpoint at {folder} is not the one the driver planned with "
            f"(files that differ: {', '.join(differ[:5])}); give every node the same checkpoint")
    return folder


def checkpoint_on_this_node(plan) -> Path:
    """The folder this process loads the planned checkpoint from (a ModelPlan: model_dir, hub_id,
    revision, files); raises CheckpointMissing naming this node when it has no such checkpoint.
    Cached per process: a worker's prepare tasks call it for every batch."""
    files = json.dumps(dict(plan.checkpoint_files), sort_keys=True)
    return _on_this_node(plan.model_dir, plan.hub_id, plan.revision, files)
