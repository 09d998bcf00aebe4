"""File versions by folder: what tells a changed file (storage.version's value), found for a whole
window of rows with one listing per folder instead of a request per row.

Locally a folder is read with one scandir (names, and which are symlinks, from the directory
itself); a file's size and modification time then cost one stat, done once per file however many
rows name it, and kept. On object storage one listing of a prefix gives every object's size and
ETag (storage.list_versions), which a HEAD request per object gave before. The versions are exactly
storage.version's ("size=N mtime_ns=T", "size=N etag=E"), so results committed before are compared
as they were. A folder that may be searched but not read, or a prefix the credentials may not list,
is asked name by name instead (a stat, a HEAD request), once per file.

Every listed entry is found through one sorted array of 64-bit keys (its folder's and its name's
hashes combined), confirmed by comparing the names: a window's lookup is one binary search per row,
however many folders it spans. Listings are kept for the folders used most recently, up to
MAX_ENTRIES entries in all: a manifest that returns to a folder many windows later lists it again
(and sees a file changed meanwhile).
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.key_index import combine, hash_strings

MAX_ENTRIES = 2_000_000  # listed entries kept in all (about 50 bytes each)
_HEAD_THREADS = 32  # HEAD requests at once where a prefix cannot be listed
_UNKNOWN, _FILE, _NONE = 0, 1, 2  # an entry's state: not statted yet, a regular file, anything else


class _Listing:
    """One folder's (or prefix's) entries: names, which are symlinks, and their versions (local
    ones statted when first asked for). `heads` instead when the folder could not be listed: each
    name asked for alone."""

    def __init__(self, folder: str, number: int):
        self.folder, self.number = folder, number
        self.heads: dict[str, tuple[str | None, bool]] | None = None
        self.versions: pa.Array | None = None  # object stores: every entry's version, listed
        names, links = ([], []) if storage.is_url(folder) else self._scan()
        if storage.is_url(folder):
            names, versions = self._list()
            self.versions = pa.array(versions, pa.string())
            links = [False] * len(names)
        self.names = pa.array(names, pa.string())
        self.links = np.array(links, bool)
        self.state = np.zeros(len(names), np.int8)
        self.size = np.zeros(len(names), np.int64)
        self.mtime = np.zeros(len(names), np.int64)
        self.keys_base = hash_strings(pa.array([folder]))[0]
        self.keys = combine(np.full(len(names), self.keys_base, np.uint64), hash_strings(self.names))

    def __len__(self) -> int:
        return len(self.names) + len(self.heads or ())

    def _scan(self) -> tuple[list[str], list[bool]]:
        names, links = [], []
        try:
            with os.scandir(self.folder or "/") as entries:
                for entry in entries:
                    names.append(entry.name)
                    try:
                        links.append(entry.is_symlink())
                    except OSError:
                        links.append(False)
        except (FileNotFoundError, NotADirectoryError):  # no file is found here
            pass
        except OSError:  # a folder that may be searched but not read (x without r): stat each name
            self.heads = {}
        return names, links

    def _list(self) -> tuple[list[str], list[str]]:
        try:
            listed = storage.list_versions(storage.location(self.folder))
        except storage.StorageError:
            listed = None  # asked object by object, which says what it can
        if listed is None:
            self.heads = {}
            return [], []
        return listed

    def stat(self, slot: int) -> None:
        try:
            # Follows a symlink, as storage.version does: the version is the target's.
            st = os.stat(os.path.join(self.folder or "/", self.names[slot].as_py()))
        except OSError:
            self.state[slot] = _NONE
            return
        if stat.S_ISREG(st.st_mode):
            self.state[slot], self.size[slot], self.mtime[slot] = _FILE, st.st_size, st.st_mtime_ns
        else:
            self.state[slot] = _NONE

    def ask(self, names: list[str]) -> tuple[list[str | None], list[bool]]:
        """Versions of names asked for one by one (a folder or prefix that could not be listed)."""
        todo = sorted({n for n in names if n not in self.heads})
        with ThreadPoolExecutor(_HEAD_THREADS if storage.is_url(self.folder) else 1) as pool:
            self.heads.update(zip(todo, pool.map(self._head, todo)))
        found = [self.heads[n] for n in names]
        return [v for v, _ in found], [link for _, link in found]

    def _head(self, name: str) -> tuple[str | None, bool]:
        if storage.is_url(self.folder):
            try:
                return storage.version(storage.location(self.folder) / name), False
            except OSError:  # denied or unavailable now: no version (committed results are kept)
                return None, False
        path = os.path.join(self.folder or "/", name)
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
            st = os.stat(path)
            return (f"size={st.st_size} mtime_ns={st.st_mtime_ns}" if stat.S_ISREG(st.st_mode) else None), link
        except OSError:
            return None, False


class FolderListings:
    """Versions of the files in the folders a run reads, one listing per folder (see the module)."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._listed: OrderedDict[str, _Listing] = OrderedDict()
        self._entries = 0
        self._numbers = 0
        self.listings = 0  # folders listed so far
        self._index = None  # (sorted keys, listing of each, slot of each, names in that order), rebuilt on change

    def versions(self, folders: list[str], folder: np.ndarray, names: pa.Array) -> tuple[pa.Array, np.ndarray]:
        """For rows whose file is folders[folder[row]] + "/" + names[row] (folder -1: not here, null):
        (each file's version, null where no regular file is there; whether the name is a symlink)."""
        n = len(names)
        versions = pa.nulls(n, pa.string())
        links = np.zeros(n, bool)
        used = np.unique(folder[folder >= 0])
        if not len(used):
            return versions, links
        listings = {int(i): self._listing(folders[i]) for i in used.tolist()}
        self._evict(keep=set(listings.values()))
        number_of = np.full(int(used.max()) + 1, -1, np.int64)
        for index, listing in listings.items():
            number_of[index] = listing.number
        rows = np.flatnonzero(folder >= 0)
        found_slot = np.full(n, -1, np.int64)
        found_listing = np.full(n, -1, np.int64)
        keys, owners, slots, ordered_names = self._lookup_index()
        hash_of = np.zeros(int(used.max()) + 1, np.uint64)
        for index, listing in listings.items():
            hash_of[index] = listing.keys_base
        row_names = names.take(pa.array(rows))
        row_keys = combine(hash_of[folder[rows]], hash_strings(row_names))
        at = np.searchsorted(keys, row_keys)
        hit = np.zeros(len(rows), bool)
        wanted = number_of[folder[rows]]
        # Keys equal by chance sit side by side: try each until folder and name match (rarely more than one).
        for step in range(len(keys) and 8):
            look = np.flatnonzero(~hit & (at + step < len(keys)))
            if not len(look):
                break
            slot = at[look] + step
            same_key = keys[slot] == row_keys[look]
            look, slot = look[same_key], slot[same_key]
            if not len(look):
                break
            candidates = owners[slot] == wanted[look]
            equal = pc.equal(row_names.take(pa.array(look)), ordered_names.take(pa.array(slot)))
            matched = candidates & np.asarray(equal.to_numpy(zero_copy_only=False), bool)
            hit[look[matched]] = True
            at[look[matched]] = slot[matched]
        found_slot[rows[hit]] = slots[at[hit]]
        found_listing[rows[hit]] = owners[at[hit]]
        by_number = {listing.number: listing for listing in listings.values()}
        pieces = {}
        for number, listing in by_number.items():
            mine = np.flatnonzero(found_listing == number)
            if listing.heads is not None:
                continue
            links[mine] = listing.links[found_slot[mine]]
            pieces[number] = mine
        return self._versions(n, by_number, pieces, found_slot, folder, names, listings, links), links

    def _versions(self, n, by_number, pieces, found_slot, folder, names, listings, links) -> pa.Array:
        """Each row's version string, from its listing (local ones statted on first use)."""
        size = np.zeros(n, np.int64)
        mtime = np.zeros(n, np.int64)
        is_file = np.zeros(n, bool)
        object_rows, object_versions = [], []
        for number, mine in pieces.items():
            listing = by_number[number]
            slots = found_slot[mine]
            if listing.versions is not None:
                object_rows.append(mine)
                object_versions.append(listing.versions.take(pa.array(slots)))
                continue
            for slot in np.unique(slots[listing.state[slots] == _UNKNOWN]).tolist():
                listing.stat(slot)
            size[mine], mtime[mine] = listing.size[slots], listing.mtime[slots]
            is_file[mine] = listing.state[slots] == _FILE
        versions = pc.binary_join_element_wise("size=", pc.cast(pa.array(size, mask=~is_file), pa.string()),
                                               " mtime_ns=", pc.cast(pa.array(mtime, mask=~is_file), pa.string()),
                                               "")
        asked = [(index, listing) for index, listing in listings.items() if listing.heads is not None]
        if not object_rows and not asked:
            return versions
        values = versions.to_pylist()
        for mine, found in zip(object_rows, object_versions):
            for row, version in zip(mine.tolist(), found.to_pylist()):
                values[row] = version
        for index, listing in asked:
            mine = np.flatnonzero(folder == index)
            found, linked = listing.ask(names.take(pa.array(mine)).to_pylist())
            for row, version, link in zip(mine.tolist(), found, linked):
                values[row], links[row] = version, link
        return pa.array(values, pa.string())

    def _listing(self, folder: str) -> _Listing:
        listing = self._listed.get(folder)
        if listing is None:
            listing = _Listing(folder, self._numbers)
            self._numbers += 1
            self._listed[folder] = listing
            self._entries += len(listing)
            self.listings += 1
            self._index = None
        else:
            self._listed.move_to_end(folder)
        return listing

    def _evict(self, keep: set) -> None:
        for folder in list(self._listed):
            if self._entries <= self.max_entries:
                return
            listing = self._listed[folder]
            if listing not in keep:
                del self._listed[folder]
                self._entries -= len(listing)
                self._index = None

    def _lookup_index(self):
        if self._index is None:
            listings = [l for l in self._listed.values() if len(l.names)]
            if not listings:
                self._index = (np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                               pa.array([], pa.string()))
            else:
                keys = np.concatenate([l.keys for l in listings])
                owners = np.concatenate([np.full(len(l.names), l.number, np.int64) for l in listings])
                slots = np.concatenate([np.arange(len(l.names), dtype=np.int64) for l in listings])
                names = pa.concat_arrays([l.names for l in listings])
                order = np.argsort(keys, kind="stable")
                self._index = (keys[order], owners[order], slots[order], names.take(pa.array(order)))
        return self._index
