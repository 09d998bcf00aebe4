"""Finding the checkpoint: a local folder, or a hub id resolved to a local snapshot."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError

REQUIRED_FILES = ("config.json", "tokenizer_config.json")


def resolve_checkpoint(model: str, revision: str | None = None) -> tuple[Path, str | None]:
    """-> (local folder, resolved revision or None for a plain folder)."""
    path = Path(model).expanduser()
    if path.is_dir():
        absent = [name for name in REQUIRED_FILES if not (path / name).is_file()]
        if absent:
            raise UserError(f"model folder {path} is not a Hugging Face checkpoint: no {', '.join(absent)}")
        return path.resolve(), revision
    if path.exists() or model.startswith((".", "/")) or model.count("/") != 1:
        raise UserError(f"model {model!r} is not a checkpoint folder (and not a hub id like Qwen/Qwen2-Audio-7B)")
    from huggingface_hub import snapshot_download

    try:  # a snapshot downloaded earlier works offline
        folder = snapshot_download(model, revision=revision, local_files_only=True)
    except Exception:
        try:
            folder = snapshot_download(model, revision=revision)
        except Exception as exc:
            raise UserError(
                f"model {model!r} is not a local folder and the Hugging Face hub could not provide it "
                f"({type(exc).__name__}). Download it where the hub is reachable, e.g. "
                f"`huggingface-cli download {model} --local-dir models/{model.split('/')[-1]}`, "
                f"then pass MODEL=models/{model.split('/')[-1]}"
            ) from None
    folder = Path(folder)
    return folder, folder.name  # snapshot folders are named by commit hash
