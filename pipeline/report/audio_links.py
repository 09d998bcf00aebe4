"""Links from the page to the audio of the rows it shows, where a browser opening the page can
reach the file: local audio, linked relative to OUT (so the folder can move with its audio, and
nothing but a path is written). Audio on object storage, and any audio when OUT itself is on
object storage, get no link: the page shows the path (no presigned URLs).

A relative manifest value resolves as the run resolved it: against the audio root when one was
set, else against its manifest file's folder (several manifests: the first folder that holds it).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from pipeline import storage


class AudioLinks:
    def __init__(self, out, folders: list[str], audio_root: str | None):
        out = storage.location(out)
        self.out = Path(os.path.abspath(out)) if isinstance(out, Path) else None
        self.audio_root = audio_root
        self.folders = [f for f in folders if not storage.is_url(f)]
        self.cache: dict[str, str | None] = {}

    def __call__(self, audio: str) -> str | None:
        if audio not in self.cache:
            self.cache[audio] = self._href(audio)
        return self.cache[audio]

    def _href(self, audio: str) -> str | None:
        if self.out is None or storage.is_url(audio):
            return None
        where = Path(audio)
        if where.is_absolute():
            candidates = [where]
        elif self.audio_root is not None:
            candidates = [] if storage.is_url(self.audio_root) else [Path(self.audio_root) / where]
        else:
            candidates = [Path(folder) / where for folder in self.folders]
        for candidate in candidates:
            candidate = Path(os.path.abspath(candidate))
            if candidate.is_file():
                return quote(Path(os.path.relpath(candidate, self.out)).as_posix())
        return None
