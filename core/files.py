"""Atomic file publication: outputs appear complete or not at all.

Everything SoilSSL writes goes into a temporary file in the destination folder
and is renamed onto its final name at the end (same file system, so the
rename is atomic).  On error or cancel the temporary file is removed and the
destination is untouched.
"""
from __future__ import annotations

import errno
import os
import tempfile

from .errors import InputError


def io_hint(exc) -> str:
    """The fix for a failed write (disk full, read-only folder...), or ''."""
    code, text = getattr(exc, "errno", None), str(exc)
    if code == errno.ENOSPC or "No space left" in text or "Free disk space" in text \
            or "disk may be full" in text:
        return "The disk is full: free some space or choose an output folder on another disk."
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "Permission denied" in text \
            or "Read-only file system" in text:
        return "The folder is not writable: choose another output location."
    if code == errno.EFBIG or "File too large" in text:
        return "The file is larger than this file system allows: choose another disk."
    return ""


def write_error(path: str, exc: BaseException) -> InputError:
    """The error to raise when writing ``path`` failed (nothing was published)."""
    hint = io_hint(exc) or "Choose another output location."
    return InputError(f"Writing '{path}' failed: {exc}. {hint} Nothing was written.")


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
                         f"{io_hint(exc) or 'Choose a writable output location.'}") from exc
    return tmp


def check_raster(path: str) -> None:
    """Reopen a finished raster and read its last row.  GDAL reports write errors that
    happen while it closes a file (a full disk...) only on stderr, so without this check a
    truncated GeoTIFF would be published as if complete."""
    import rasterio
    from rasterio.windows import Window
    try:
        with rasterio.open(path) as ds:
            ds.read(window=Window(0, ds.height - 1, ds.width, 1))
    except Exception as exc:
        raise OSError(errno.EIO, f"the raster is incomplete after writing: the disk may be "
                                 f"full ({exc})") from exc


def publish(tmp: str, path: str, check: bool = True) -> str:
    """Rename a finished temporary file onto ``path`` with ordinary permissions (a raster
    is checked first unless ``check`` is False: see :func:`check_raster`)."""
    if check and tmp.lower().endswith((".tif", ".tiff")):
        check_raster(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def discard(*paths: str) -> None:
    for p in paths:
        if p and os.path.exists(p):
            os.remove(p)


def atomic_write(path: str, write) -> str:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then publish it; on any
    error the temporary file is removed and ``path`` is untouched."""
    path = os.path.abspath(str(path))
    tmp = temp_beside(path)
    try:
        write(tmp)
    except BaseException as exc:
        discard(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise
    return publish(tmp, path)


def atomic_save(obj, path: str) -> str:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    import torch
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str) -> str:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, write)
