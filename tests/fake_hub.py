"""A Hugging Face hub stand-in for tests: huggingface_hub.snapshot_download against a cache folder
laid out as the real one (models--ORG--NAME/snapshots/COMMIT), serving one checkpoint folder and
recording what each call asked for. The real function is replaced: nothing reaches a network."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import huggingface_hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, monkeypatch, source: Path, cache: Path):
        self.source, self.cache, self.calls = source, cache, []
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)

    def snapshot(self, repo_id: str) -> Path:
        return self.cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT

    def snapshot_download(self, repo_id, revision=None, local_files_only=False, allow_patterns=None, **_):
        self.calls.append({"repo_id": repo_id, "revision": revision, "local_files_only": local_files_only,
                           "allow_patterns": allow_patterns})
        if revision not in (None, "main", COMMIT):
            raise ValueError(f"no revision {revision}")
        folder = self.snapshot(repo_id)
        if local_files_only:
            if not folder.is_dir():
                raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id} is not in the cache")
            return str(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for path in self.source.iterdir():
            if allow_patterns is None or any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                shutil.copy(path, folder / path.name)
        return str(folder)

    @property
    def downloads(self) -> list[dict]:
        return [c for c in self.calls if not c["local_files_only"]]
