"""Atomic file publication: outputs appear complete or not at all.

Everything SoilSSL writes goes into a temporary file in the destination folder
and is renamed onto its final name at the end (same file system, so the
rename is atomic).  On error or cancel the temporary file is removed and the
destination is untouched.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import List, Optional, Tuple

from .errors import InputError


def _umask_from_proc() -> Optional[int]:
    """The process umask as the kernel reports it (Linux >= 4.7), without changing it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    # read once, while the plugin is imported (QGIS's main thread, before any worker runs);
    # os.umask can only be read by setting it, which would race with other threads later
    value = _umask_from_proc()
    if value is None:
        value = os.umask(0o022)
        os.umask(value)
    return value


_IMPORT_UMASK = _umask_at_import()


def file_mode() -> int:
    """The permissions a new ordinary file gets here (0o666 less the umask), read without
    touching the process umask (other QGIS threads create files meanwhile)."""
    umask = _umask_from_proc()
    return 0o666 & ~(_IMPORT_UMASK if umask is None else umask)


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
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    return path


def discard(*paths: str) -> None:
    for p in paths:
        if p and os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        elif p and os.path.lexists(p):
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


def is_local_file(destination) -> bool:
    """Whether an output destination is a plain file path (not ``memory:``, ``ogr:``,
    ``postgres:``... URIs, nor a Windows drive letter mistaken for one)."""
    import re
    return isinstance(destination, str) and bool(destination) and \
        (not re.match(r"^[A-Za-z]{2,}:", destination) or os.path.isabs(destination))


class Outputs:
    """Several outputs published together: all of them or none.

    :meth:`stage` gives, for each final path, a temporary path in the same folder to write
    to by any means (``folder=True``: a file of the same name in a temporary folder, for
    writers that derive something from the name -- a GeoPackage layer name -- or write
    sidecar files -- a shapefile's .dbf/.shx/.prj).  :meth:`commit` checks and renames every
    staged output onto its final name once all are written; leaving the ``with`` block by
    an exception (or without commit) removes every temporary file and publishes nothing.
    """

    def __init__(self):
        self._staged: List[Tuple[str, str, Optional[str]]] = []  # (tmp, path, tmp folder)
        self.committed = False

    def stage(self, path: str, folder: bool = False) -> str:
        path = os.path.abspath(str(path))
        if not folder:
            ext = os.path.splitext(path)[1]
            tmp = temp_beside(path, ".tmp" + ext)
            self._staged.append((tmp, path, None))
            return tmp
        parent = os.path.dirname(path) or "."
        try:
            os.makedirs(parent, exist_ok=True)
            tmp_dir = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".",
                                       suffix=".tmp", dir=parent)
        except OSError as exc:
            raise InputError(f"Cannot write into folder '{parent}': {exc.strerror}. "
                             f"{io_hint(exc) or 'Choose a writable output location.'}") from exc
        tmp = os.path.join(tmp_dir, os.path.basename(path))
        self._staged.append((tmp, path, tmp_dir))
        return tmp

    def write(self, path: str, write) -> str:
        """Stage ``path`` and call ``write(tmp)``; errors name ``path``, not the temporary
        file (what :func:`atomic_write` does for one file)."""
        from .errors import SoilSSLError
        tmp = self.stage(path)
        try:
            write(tmp)
        except OSError as exc:
            raise write_error(os.path.abspath(str(path)), exc) from exc
        except SoilSSLError as exc:
            if tmp not in str(exc):
                raise
            raise type(exc)(str(exc).replace(tmp, os.path.abspath(str(path)))) from exc
        return tmp

    def save(self, obj, path: str) -> str:
        """``torch.save`` ``obj`` as the staged ``path``."""
        import torch
        return self.write(path, lambda tmp: torch.save(obj, tmp))

    def _moves(self) -> List[Tuple[str, str]]:
        """(temporary file, final file) pairs: a staged folder publishes every file its
        writer made beside the staged name (same stem: sidecars)."""
        moves = []
        for tmp, path, tmp_dir in self._staged:
            if tmp_dir is None:
                moves.append((tmp, path))
                continue
            if not os.path.exists(tmp):
                raise OSError(errno.ENOENT, f"the output was not written ({tmp})")
            stem = os.path.splitext(os.path.basename(path))[0]
            for name in sorted(os.listdir(tmp_dir)):
                if os.path.splitext(name)[0] == stem or name == os.path.basename(path):
                    moves.append((os.path.join(tmp_dir, name),
                                  os.path.join(os.path.dirname(path), name)))
        return moves

    def commit(self) -> List[str]:
        """Check every staged output, then rename them all onto their final names."""
        try:
            moves = self._moves()
            for tmp, _ in moves:
                if tmp.lower().endswith((".tif", ".tiff")):
                    check_raster(tmp)
                os.chmod(tmp, file_mode())
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise write_error(self._staged[0][1] if len(self._staged) == 1 else
                                  ", ".join(p for _, p, _ in self._staged), exc) from exc
            raise
        for tmp, path in moves:  # renames need no space: once every file is complete, all appear
            os.replace(tmp, path)
        for _, _, tmp_dir in self._staged:
            if tmp_dir:
                discard(tmp_dir)
        self.committed = True
        return [p for _, p, _ in self._staged]

    def abort(self) -> None:
        """Remove every temporary file; no final path is touched."""
        for tmp, _, tmp_dir in self._staged:
            discard(tmp_dir or tmp, tmp + ".aux.xml")
        self._staged = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.committed:
            self.abort()
        return False
