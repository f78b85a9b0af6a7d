"""The point-feature cache: ViT features of the tiles around sample points, kept between runs
so that refitting heads on the same points (another METHOD, FOLDS, fields) skips the ViT.

An entry is one ``.npy`` file named by the SHA-256 of its key: the caller's key must hold
everything that changes the numbers (see :func:`soilssl.core.soil.cached_point_features`).
The folder is bounded: after each write the least recently used entries are removed until
the folder holds at most ``SOILSSL_CACHE_MB`` megabytes (default 512; 0 turns the cache
off).  "Recently used" is the file's modification time, which a cache hit refreshes (access
times are unreliable: file systems are often mounted noatime/relatime).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import numpy as np

from .errors import InputError
from .files import atomic_write

ENV_LIMIT = "SOILSSL_CACHE_MB"
DEFAULT_LIMIT_MB = 512
SUFFIX = ".npy"


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "soilssl", "point-features")


def limit_bytes() -> int:
    """The size limit from ``SOILSSL_CACHE_MB`` (megabytes, may be fractional)."""
    raw = os.environ.get(ENV_LIMIT, "").strip()
    if not raw:
        return DEFAULT_LIMIT_MB * 2 ** 20
    try:
        mb = float(raw)
    except ValueError:
        raise InputError(f"{ENV_LIMIT}='{raw}' is not a number of megabytes (e.g. 512; 0 "
                         f"turns the feature cache off).")
    return max(0, int(mb * 2 ** 20))


def digest(key: dict, *arrays: np.ndarray) -> str:
    """The entry name of ``key`` (JSON-serialisable) plus raw arrays (point positions)."""
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a, np.float64).tobytes())
    return h.hexdigest()


class FeatureCache:
    """A folder of ``.npy`` entries with an LRU size limit."""

    def __init__(self, folder: Optional[str] = None, limit: Optional[int] = None):
        self.folder = folder or cache_dir()
        self.limit = limit_bytes() if limit is None else int(limit)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name + SUFFIX)

    def get(self, name: str) -> Optional[np.ndarray]:
        """The cached array, or None; a hit marks the entry as recently used."""
        path = self.path(name)
        if self.limit <= 0 or not os.path.isfile(path):
            return None
        try:
            arr = np.load(path, allow_pickle=False)
            os.utime(path)
        except (OSError, ValueError):  # damaged or removed meanwhile: recompute
            return None
        return arr

    def put(self, name: str, arr: np.ndarray) -> bool:
        """Store ``arr`` (atomically), then evict old entries; False if it was not kept
        (cache off, larger than the limit by itself)."""
        if self.limit <= 0 or arr.nbytes > self.limit:
            return False

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
                np.save(f, arr, allow_pickle=False)

        path = atomic_write(self.path(name), write)
        self.evict(keep=path)
        return True

    def entries(self) -> list:
        """[(mtime, size, path)] of the entries, oldest first."""
        out = []
        try:
            names = os.listdir(self.folder)
        except OSError:
            return out
        for n in names:
            if not n.endswith(SUFFIX) or n.startswith("."):
                continue
            p = os.path.join(self.folder, n)
            try:
                st = os.stat(p)
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def size(self) -> int:
        return sum(s for _, s, _ in self.entries())

    def evict(self, keep: Optional[str] = None) -> int:
        """Remove least recently used entries (never ``keep``) until the folder fits the
        limit; returns how many were removed."""
        entries = self.entries()
        total = sum(s for _, s, _ in entries)
        removed = 0
        for _, size, path in entries:
            if total <= self.limit:
                break
            if keep and os.path.abspath(path) == os.path.abspath(keep):
                continue
            try:
                os.remove(path)
            except OSError:
                continue
            total -= size
            removed += 1
        return removed


# -- what users see: the size of the cache, and clearing it (Tools → Clear feature cache) --
CACHE_FILES = (SUFFIX, ".tmp")  # cached arrays and what an interrupted write left


def cache_folder() -> str:
    return cache_dir()


def _entries(folder: str):
    try:
        with os.scandir(folder) as it:
            return [e for e in it if e.is_file(follow_symlinks=False)
                    and e.name.endswith(CACHE_FILES)]
    except FileNotFoundError:
        return []


def cache_size(folder: Optional[str] = None) -> dict:
    """{"folder", "files", "bytes"} of the cache."""
    folder = folder or cache_folder()
    entries = _entries(folder)
    return {"folder": folder, "files": len(entries),
            "bytes": sum(e.stat(follow_symlinks=False).st_size for e in entries)}


def clear_cache(folder: Optional[str] = None) -> dict:
    """Delete the cached point features (only the cache's own files) -> what was removed:
    {"folder", "files", "bytes"}."""
    folder = folder or cache_folder()
    removed = {"folder": folder, "files": 0, "bytes": 0}
    for entry in _entries(folder):
        size = entry.stat(follow_symlinks=False).st_size
        try:
            os.remove(entry.path)
        except FileNotFoundError:  # removed meanwhile (another run)
            continue
        removed["files"] += 1
        removed["bytes"] += size
    return removed
