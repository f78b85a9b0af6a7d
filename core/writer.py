"""Raster output: the one way SoilSSL writes a raster.

:class:`RasterWriter` writes by windows into a temporary file in the target folder and
renames it at the end; on error or cancel nothing is left.  :func:`commit_all` publishes
several outputs together (all or none); :func:`read_tags` reads back the JSON tags that
SoilSSL's rasters carry.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.transform import Affine
from rasterio.windows import Window

from .files import check_raster, discard, publish, temp_beside, write_error
from .raster import open_raster


class RasterWriter:
    """Windowed GeoTIFF writer that only publishes a complete file.

    Writes into ``.<name>.*.tmp.tif`` in the destination folder; :meth:`commit`
    (called by ``__exit__`` on success) renames it to ``path``; on an exception
    the temporary file is removed and ``path`` is untouched.
    """

    def __init__(self, path: str, width: int, height: int, count: int, dtype: str,
                 crs, transform: Affine, nodata=None, tags: Optional[dict] = None,
                 band_names: Optional[Sequence[str]] = None, interleave: str = "pixel",
                 tiled: Optional[bool] = None):
        self.path = os.path.abspath(str(path))
        self.tmp = temp_beside(self.path, ".tmp.tif")
        profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype,
                       crs=crs, transform=transform, nodata=nodata, compress="deflate",
                       interleave=interleave, BIGTIFF="IF_SAFER")
        if tiled is None:  # many-band rasters are written row by row: strips keep it bounded
            tiled = count <= 16 and width >= 256 and height >= 256
        if tiled:
            profile.update(tiled=True, blockxsize=256, blockysize=256)
        else:
            profile.update(blockysize=1)
        try:
            self.ds = rasterio.open(self.tmp, "w", **profile)
        except Exception as exc:
            self.abort()
            raise write_error(self.path, exc) from exc
        if tags:
            self.ds.update_tags(**{k: v if isinstance(v, str) else json.dumps(v)
                                   for k, v in tags.items()})
        if band_names:
            for i, name in enumerate(band_names, start=1):
                self.ds.set_band_description(i, str(name))
        self.done = False
        # tiled outputs written row by row: rows are gathered into the block row they
        # fill and handed to GDAL as whole blocks, so that no half-written block waits
        # (dirty) in GDAL's block cache, or is flushed, compressed and rewritten when
        # the reads evict it
        self._block_h = int(self.ds.block_shapes[0][0]) if tiled else 1
        self._band = None  # [first row, rows filled, (count, rows, width) buffer]

    def write(self, data: np.ndarray, window) -> None:
        """Write (count, h, w) data at ``window`` (a Window or ((row0, row1), (col0, col1))).

        A failed write (disk full and friends: OSError, GDAL errors) raises
        :func:`~.files.write_error`; a block that does not fit the window is a bug
        and raises ValueError saying so, not a hint about the output location."""
        win = window if isinstance(window, Window) else Window.from_slices(*window)
        want = (self.ds.count, int(win.height), int(win.width))
        if np.shape(data) != want:
            raise ValueError(
                f"Internal error while writing '{self.path}': a block of shape "
                f"{tuple(np.shape(data))} cannot go into {want[0]} band(s) of {want[1]} x "
                f"{want[2]} px at row {int(win.row_off)}, column {int(win.col_off)}. Nothing "
                f"was written.")
        if not (self._block_h > 1 and int(win.col_off) == 0
                and int(win.width) == self.ds.width and self._gather(data, win)):
            self._flush()
            self._write(data, win)

    def _gather(self, data: np.ndarray, win: Window) -> bool:
        """Add full-width rows to the block row being filled, handing GDAL each block
        row when it is complete; False when they do not follow the rows gathered."""
        r0, h = int(win.row_off), int(win.height)
        if self._band is not None and r0 != self._band[0] + self._band[1]:
            return False
        data = np.asarray(data)
        i = 0
        while i < h:
            r = r0 + i
            if self._band is None:
                end = min((r // self._block_h + 1) * self._block_h, self.ds.height)
                if h - i >= end - r:  # the rest of a block row at once: no copy
                    self._write(data[:, i:i + end - r], Window(0, r, self.ds.width, end - r))
                    i += end - r
                    continue
                self._band = [r, 0, np.empty((self.ds.count, end - r, self.ds.width),
                                             self.ds.dtypes[0])]
            top, filled, buf = self._band
            n = min(buf.shape[1] - filled, h - i)
            buf[:, filled:filled + n] = data[:, i:i + n]
            self._band[1] += n
            i += n
            if self._band[1] == buf.shape[1]:
                self._flush()
        return True

    def _flush(self) -> None:
        """Write the rows gathered so far."""
        band, self._band = self._band, None
        if band is not None and band[1]:
            self._write(band[2][:, :band[1]], Window(0, band[0], self.ds.width, band[1]))

    def _write(self, data: np.ndarray, win: Window) -> None:
        try:
            self.ds.write(data, window=win)
        except (OSError, CPLE_BaseError) as exc:  # disk full and friends
            raise write_error(self.path, exc) from exc

    def finish(self) -> None:
        """Close the temporary file and check it is complete (not yet published)."""
        try:
            self._flush()
            self.ds.close()
            check_raster(self.tmp)
        except (OSError, CPLE_BaseError) as exc:
            self.abort()
            raise write_error(self.path, exc) from exc
        except BaseException:
            self.abort()
            raise

    def commit(self) -> str:
        """Finish and publish this one file."""
        return commit_all([self])[0]

    def abort(self) -> None:
        """Remove the temporary file; ``path`` is left as it was."""
        self._band = None
        try:
            if getattr(self, "ds", None) is not None and not self.ds.closed:
                self.ds.close()
        finally:
            discard(self.tmp, self.tmp + ".aux.xml")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        elif not self.done:
            self.abort()
        return False


def commit_all(writers: Sequence[RasterWriter]) -> list:
    """Finish every writer, then publish them all: either all outputs appear or none."""
    try:
        for w in writers:
            w.finish()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:  # renames need no space: once every file is complete, all appear
        publish(w.tmp, w.path, check=False)
        discard(w.tmp + ".aux.xml")
        w.done = True
    return [w.path for w in writers]


def read_tags(path: str) -> dict:
    """Tags of a SoilSSL raster with JSON values decoded."""
    with open_raster(path) as ds:
        tags = ds.tags()
    out = {}
    for k, v in tags.items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out
