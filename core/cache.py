"""The point-feature cache: its folder, its size, and clearing it.

``fit_points`` keeps the ViT features of the point tiles in
``$XDG_CACHE_HOME/soilssl/point-features`` (``~/.cache/soilssl/point-features`` by default),
one ``.npy`` file per backbone, raster and point set, so that a second fit on the same
points skips the ViT.  Clearing it only costs time on the next fit.
"""
from __future__ import annotations

import os
from typing import Optional

CACHE_FILES = (".npy", ".tmp")  # cached arrays and what an interrupted write left


def cache_folder() -> str:
    from .soil import cache_dir
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
