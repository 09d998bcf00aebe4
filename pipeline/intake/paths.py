"""Manifest audio values to locations, a window of rows at a time, with the work done once per folder.

audio.resolve_path says what one value means (relative to the audio root or the manifest's folder,
symlinks and `..` resolved, paths outside the audio root rejected). Here the same answer comes for
a whole column: each value is split into its folder and its file name, each distinct folder is
resolved once (realpath, the audio-root check), and a file's location is its folder's plus its
name. The folders are remembered across windows (a manifest names few folders, many times).

Values whose answer is not a folder's plus a name go to audio.resolve_path one by one, so that
their answer and message are exactly its: a name that is `.`, `..` or empty, a folder that cannot
be resolved or lies outside the audio root (the file could still be the root itself), a URL whose
folder is not an s3:// prefix, and files that are symlinks (listings.py tells which; the caller
passes them back through resolve_one).

A location is a plain string: an absolute local path, `s3://bucket/key`, or a reference to audio
inside a shard (intake/embedded/refs.py's text forms), which audio.resolve_path resolves.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.intake import audio
from pipeline.intake.embedded import refs
from pipeline.reasons import Failure
from pipeline.storage import Location, ObjectPath

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ONE_BY_ONE = object()  # a folder whose rows audio.resolve_path answers one by one


@dataclass(frozen=True)
class ResolvedPaths:
    """A window's rows: where each one's audio is, or why it cannot be used."""

    where: pa.Array  # string: the location, null where the row failed
    folder: np.ndarray  # int64: the resolved folder's index in PathResolver.folders, -1 when resolved alone
    name: pa.Array  # string: the file name within that folder
    reason: pa.Array  # string: a Reason where the row failed, else null
    detail: pa.Array  # string: the failure's detail, else null


class PathResolver:
    """Resolves manifest audio values for one run (one audio root), remembering each folder."""

    def __init__(self, audio_root: Location | None):
        self.audio_root = audio_root
        self.real_root = os.path.realpath(audio_root) if isinstance(audio_root, os.PathLike) else None
        self.folders: list[str] = []  # resolved folders ("/a/b" or "s3://bucket/prefix"), by index
        self._known: dict[tuple[str, str], int | object] = {}  # (base, folder as written) -> index

    def resolve(self, paths: pa.Array, base_dir: Location) -> ResolvedPaths:
        """Every value of this column (rows of one manifest file, whose folder is base_dir)."""
        paths = paths.combine_chunks() if isinstance(paths, pa.ChunkedArray) else paths
        n = len(paths)
        # The folder (with its slash) and the name after the last slash; no slash: no folder.
        # (A slash in front makes every value split in two: its folder then starts after that slash.)
        values = pc.fill_null(paths, "")
        parts = pc.split_pattern(pc.binary_join_element_wise("", values, "/"), "/", max_splits=1, reverse=True)
        names = pc.list_element(parts, 1)
        slashed = pc.greater_equal(pc.find_substring(values, "/"), 0)
        folders = pc.if_else(slashed, pc.binary_join_element_wise(pc.utf8_slice_codeunits(pc.list_element(parts, 0), 1),
                                                                  "", "/"), "")
        encoded = pc.dictionary_encode(folders)
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        base = str(base_dir)
        index = np.array([self._folder(base, text, base_dir) for text in encoded.dictionary.to_pylist()],
                         dtype=object)
        folder = np.full(n, -1, np.int64)
        alone = np.zeros(n, bool)
        if len(index):
            by_code = np.array([-1 if i is _ONE_BY_ONE else i for i in index], np.int64)
            folder = by_code[codes]
            alone = folder < 0
        # Values whose name is not a plain file name, and empty or NUL-holding values.
        odd = pc.is_in(names, value_set=pa.array(["", ".", ".."])).to_numpy(zero_copy_only=False)
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(paths, ""))), 0)
        nul = pc.match_substring(pc.fill_null(paths, ""), "\x00")
        alone |= odd | blank.to_numpy(zero_copy_only=False) | nul.to_numpy(zero_copy_only=False)
        alone |= paths.is_null().to_numpy(zero_copy_only=False)
        # Audio inside a shard (intake/embedded: `parquet-row:...`, `tar-member:...`): resolved as its
        # reference says, by audio.resolve_path.
        for prefix in (refs.PARQUET_ROW, refs.TAR_MEMBER, refs.NO_AUDIO):
            alone |= pc.starts_with(values, prefix).to_numpy(zero_copy_only=False)
        folder[alone] = -1
        folder_text = pa.array(self.folders, pa.string()).take(pa.array(np.where(alone, 0, folder))) \
            if self.folders else pa.nulls(n, pa.string())
        joined = pc.binary_join_element_wise(folder_text, names, "/")
        where = pc.if_else(pa.array(alone), pa.nulls(n, pa.string()), joined)
        reason = pa.nulls(n, pa.string())
        detail = pa.nulls(n, pa.string())
        rows = np.flatnonzero(alone)
        if len(rows):
            where, reason, detail = self._one_by_one(rows, paths, base_dir, where, reason, detail)
        return ResolvedPaths(where, folder, names, reason, detail)

    def resolve_one(self, path: str, base_dir: Location) -> Location | Failure:
        """One value, as audio.resolve_path answers it (symlinked files, odd values)."""
        return audio.resolve_path(path, base_dir, self.audio_root)

    def _one_by_one(self, rows: np.ndarray, paths: pa.Array, base_dir: Location, where, reason, detail):
        values = paths.take(pa.array(rows)).to_pylist()
        found = [self.resolve_one(value, base_dir) for value in values]
        locations = [None if isinstance(f, Failure) else str(f) for f in found]
        reasons = [str(f.reason) if isinstance(f, Failure) else None for f in found]
        details = [f.detail if isinstance(f, Failure) else None for f in found]
        return (_scatter(where, rows, locations), _scatter(reason, rows, reasons), _scatter(detail, rows, details))

    def _folder(self, base: str, text: str, base_dir: Location) -> int | object:
        key = (base, text)
        found = self._known.get(key)
        if found is None:
            resolved = self._resolve_folder(text, base_dir)
            if resolved is None:
                found = _ONE_BY_ONE
            else:
                found = len(self.folders)
                self.folders.append(resolved)
            self._known[key] = found
        return found

    def _resolve_folder(self, text: str, base_dir: Location) -> str | None:
        """The folder's resolved location (without a trailing slash, so that folder + "/" + name is
        the file's), or None when its rows must be resolved one by one."""
        root = self.audio_root if self.audio_root is not None else base_dir
        if _URL.match(text) or (isinstance(root, ObjectPath) and not text.startswith("/")):
            return self._object_folder(text, root)
        if isinstance(self.audio_root, ObjectPath):
            return None  # a local path with an object-store root: outside it, said per row
        candidate = text if text.startswith("/") else os.path.join(str(root), text)
        try:
            real = os.path.realpath(candidate or ".")
            os.stat(real)  # what Path.resolve() checks: a symlink loop is an error
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
        except RuntimeError:
            return None
        if self.real_root is not None and not _inside(real, self.real_root):
            return None
        return real.rstrip("/") if real != "/" else ""

    def _object_folder(self, text: str, root: Location) -> str | None:
        if _URL.match(text):
            if not storage.is_url(text) or not text.lower().startswith("s3://"):
                return None
            try:
                target = storage.location(text.rstrip("/") + "/x").parent
            except storage.UnsupportedLocation:
                return None
        else:
            target = root.joined(text) if text else root
            if target is None:
                return None
        if self.audio_root is not None and not target.is_relative_to(self.audio_root):
            return None
        return str(target).rstrip("/")


def _inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def _scatter(array: pa.Array, rows: np.ndarray, values: list) -> pa.Array:
    """array with these rows replaced by values."""
    if not len(rows):
        return array
    combined = array.to_pylist() if len(array) <= 4 * len(rows) else None
    if combined is not None:
        for row, value in zip(rows.tolist(), values):
            combined[row] = value
        return pa.array(combined, array.type)
    taken = np.arange(len(array), dtype=np.int64)
    extra = pa.array(values, array.type)
    taken[rows] = len(array) + np.arange(len(rows))
    return pa.concat_arrays([array, extra]).take(pa.array(taken))
