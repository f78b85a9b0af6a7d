"""Atomic file publication: outputs appear complete or not at all.

Everything SoilSSL writes goes into a temporary file in the destination folder
and is renamed onto its final name at the end (same file system, so the
rename is atomic).  On error or cancel the temporary file is removed and the
destination is untouched.
"""
from __future__ import annotations

import os
import tempfile

from .errors import InputError


def temp_beside(path: str, suffix: str = ".tmp") -> str:
    """Create an empty temporary file in ``path``'s folder and return its name."""
    path = os.path.abspath(str(path))
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix,
                                   dir=folder)
        os.close(fd)
    except OSError as exc:
        raise InputError(f"Cannot write into folder '{folder}': {exc.strerror}. "
                         f"Choose a writable output location.") from exc
    return tmp


def publish(tmp: str, path: str) -> str:
    """Rename a finished temporary file onto ``path`` with ordinary permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def discard(*paths: str) -> None:
    for p in paths:
        if p and os.path.exists(p):
            os.remove(p)


def atomic_save(obj, path: str) -> str:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    import torch
    path = os.path.abspath(str(path))
    tmp = temp_beside(path)
    try:
        torch.save(obj, tmp)
    except BaseException as exc:
        discard(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"Writing '{path}' failed: {exc}") from exc
        raise
    return publish(tmp, path)


def atomic_write_text(text: str, path: str) -> str:
    path = os.path.abspath(str(path))
    tmp = temp_beside(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    except BaseException as exc:
        discard(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"Writing '{path}' failed: {exc}") from exc
        raise
    return publish(tmp, path)
