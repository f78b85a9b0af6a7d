"""Raster input: the one way SoilSSL opens images and reads tiles.

* :class:`TileSource` opens an image (band selection, 1-based) and an optional
  DEM warped on the fly onto the image grid (``rasterio.vrt.WarpedVRT``) as an
  extra channel.  Reads are by window, padded outside the raster, with a
  validity mask that is GDAL's mask of the bands (nodata values, alpha band,
  internal or external mask) and finite values.  It is thread-safe: each thread
  gets its own dataset handles (:class:`Handles`).
* :class:`Normalization` holds per-channel mean/std estimated from a sample of
  windows; it travels with every product that uses it (checkpoint, feature
  raster tags, model file).
* :class:`TileGrid` is the grid of tiles (TILE_SIZE at STRIDE) and the
  georeferencing of the one-pixel-per-tile outputs: output pixels are the
  STRIDE cells of the input from its origin, each the footprint of the stride
  cell its tile is centred on.

Batches of tiles are read in background threads by :func:`.batches.iter_batches`;
rasters are written by :class:`.writer.RasterWriter`.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from .errors import InputError

DEFAULT_MIN_VALID = 0.5  # tiles with less valid data than this are skipped


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------
@dataclass
class Normalization:
    mean: list
    std: list

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["Normalization"]:
        if not d:
            return None
        return cls(list(d["mean"]), list(d["std"]))

    def apply(self, arr: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(C,H,W) raw values -> standardised float32; invalid pixels -> 0 (the mean)."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        if arr.shape[0] != mean.shape[0]:
            raise InputError(
                f"The normalisation has {mean.shape[0]} channels but the input has "
                f"{arr.shape[0]}: use the same bands (and DEM) as the backbone was trained with.")
        out = (arr.astype(np.float32, copy=False) - mean) / std
        out[:, ~valid] = 0.0
        return out


# ---------------------------------------------------------------------------
# Tile grid
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` px every ``stride`` px over a ``width`` x ``height`` raster.

    The raster is cut into ``stride`` px cells from its origin: ceil(W/stride) x
    ceil(H/stride) of them, the last ones running past the raster when ``stride``
    does not divide its size.  Cell (r, c) is output pixel (r, c), so an output
    (:meth:`out_transform`) has the input's origin and covers its extent.  Its tile
    is the ``tile`` px window centred on the cell's centre ((c + 0.5) * stride,
    (r + 0.5) * stride), placed as :meth:`TileSource.centred_window` places a tile
    on a point (to the half pixel when exactly one of tile and stride is odd).
    With stride == tile the tile is the cell itself; with a smaller stride edge
    tiles run past the raster and are read with padding, which
    :meth:`TileSource.valid_fraction` counts as invalid.
    """

    width: int
    height: int
    tile: int
    stride: int

    def __post_init__(self):
        if self.tile < 1 or self.stride < 1:
            raise InputError("TILE_SIZE and STRIDE must be positive.")
        if self.stride > self.tile:
            raise InputError(f"STRIDE ({self.stride}) must not exceed TILE_SIZE ({self.tile}).")

    @property
    def n_cols(self) -> int:
        return math.ceil(self.width / self.stride)

    @property
    def n_rows(self) -> int:
        return math.ceil(self.height / self.stride)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    @property
    def offset(self) -> int:
        """Column (and row) of tile 0's first pixel: tile (r, c) starts at
        (c * stride + offset, r * stride + offset); 0 when stride == tile."""
        return self.stride // 2 - self.tile // 2

    def window(self, index: int) -> Window:
        r, c = divmod(int(index), self.n_cols)
        o = self.offset
        return Window(c * self.stride + o, r * self.stride + o, self.tile, self.tile)

    def windows(self, indices: Optional[Sequence[int]] = None) -> "GridWindows":
        """The windows of ``indices`` (default: every tile, row by row), made on demand."""
        return GridWindows(self, indices)

    def out_transform(self, transform: Affine) -> Affine:
        """Georeferencing of the one-pixel-per-tile outputs: the input's origin, pixels
        of ``stride`` input pixels."""
        return transform @ Affine.scale(self.stride)


class GridWindows:
    """A sequence of grid windows made on demand (what :func:`~.batches.iter_batches` reads): a
    20k x 20k raster at stride 16 has 1.6 M tiles, whose Window objects alone would take
    200 MB."""

    def __init__(self, grid: TileGrid, indices: Optional[Sequence[int]] = None):
        self.grid = grid
        self.indices = None if indices is None else np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.grid) if self.indices is None else len(self.indices)

    def _index(self, i) -> int:
        return int(i) if self.indices is None else int(self.indices[i])

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self.grid.window(self._index(i)) for i in range(*item.indices(len(self)))]
        item = int(item) + (len(self) if item < 0 else 0)
        if not 0 <= item < len(self):
            raise IndexError(item)
        return self.grid.window(self._index(item))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


# ---------------------------------------------------------------------------
# Source
# ---------------------------------------------------------------------------
def open_raster(path: str):
    """``rasterio.open(path)``, a failure raised as :class:`~.errors.InputError`."""
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(f"Cannot open raster '{path}': {exc}") from exc


class Handles:
    """Dataset handles of a :class:`TileSource`, one set per thread that reads through
    them, all closed by :meth:`close`.  :func:`~.batches.iter_batches` opens one for each call and
    closes it when the iteration ends, so repeated calls (an epoch each) hold no more
    files than one; the source's own (for direct :meth:`TileSource.read` calls) lives
    until :meth:`TileSource.close`."""

    def __init__(self, source: "TileSource"):
        self._source = source
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list = []

    def get(self) -> tuple:
        """This thread's (image, DEM VRT or None), opened on first use."""
        h = getattr(self._local, "h", None)
        if h is None:
            h = self._local.h = self._source._open_datasets()
            with self._lock:
                self._open.append(h)
        return h[:2]

    def close(self) -> None:
        """Close every handle opened so far (call when no thread reads through them)."""
        with self._lock:
            opened, self._open = self._open, []
            self._local = threading.local()
        for datasets in opened:  # image, DEM VRT, DEM (VRT first)
            for ds in datasets:
                if ds is not None:
                    ds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TileSource:
    """An image (selected bands) plus an optional DEM channel on the image grid."""

    def __init__(self, path: str, bands: Optional[Sequence[int]] = None,
                 dem: Optional[str] = None, dem_band: int = 1):
        self.path = str(path)
        self.dem = str(dem) if dem else None
        self.dem_band = int(dem_band)
        with open_raster(self.path) as ds:
            count = ds.count
            if bands is None or len(bands) == 0:
                bands = list(range(1, min(3, count) + 1))
            bands = [int(b) for b in bands]
            bad = [b for b in bands if b < 1 or b > count]
            if bad:
                raise InputError(
                    f"Band number(s) {bad} out of range: '{os.path.basename(self.path)}' has "
                    f"bands 1..{count}.")
            self.bands = tuple(bands)
            self.width, self.height = ds.width, ds.height
            self.transform = ds.transform
            self.crs = ds.crs
            self.nodata = [ds.nodatavals[b - 1] for b in self.bands]
            self._mask_bands = mask_bands(ds, self.bands)
            self.dtype = ds.dtypes[self.bands[0] - 1]
            self.descriptions = [ds.descriptions[b - 1] or f"band {b}" for b in self.bands]
            if self.crs is None:
                raise InputError(f"Raster '{self.path}' has no CRS: assign one in QGIS first.")
        self.dem_nodata = None
        if self.dem:
            with open_raster(self.dem) as d:
                if not 1 <= self.dem_band <= d.count:
                    raise InputError(f"DEM band {self.dem_band} out of range 1..{d.count}.")
                if d.crs is None:
                    raise InputError(f"DEM '{self.dem}' has no CRS.")
                self.dem_nodata = d.nodatavals[self.dem_band - 1]
                dem_bounds = transform_bounds(d.crs, self.crs, *d.bounds)
            img_bounds = self.bounds
            if (dem_bounds[0] >= img_bounds[2] or dem_bounds[2] <= img_bounds[0]
                    or dem_bounds[1] >= img_bounds[3] or dem_bounds[3] <= img_bounds[1]):
                raise InputError(
                    f"The DEM does not overlap the raster: DEM extent {_fmt(dem_bounds)} vs "
                    f"raster extent {_fmt(img_bounds)} (in {self.crs}).")
        self._handles = Handles(self)

    # -- metadata -------------------------------------------------------------
    @property
    def channels(self) -> int:
        return len(self.bands) + (1 if self.dem else 0)

    @property
    def optical_channels(self) -> int:
        return len(self.bands)

    @property
    def bounds(self):
        return _bounds(self.transform, self.width, self.height)

    @property
    def pixel_size(self) -> tuple:
        return abs(self.transform.a), abs(self.transform.e)

    def describe(self) -> dict:
        return {"path": self.path, "bands": list(self.bands), "dem": self.dem,
                "width": self.width, "height": self.height, "crs": self.crs.to_string()}

    # -- reading --------------------------------------------------------------
    def _open_datasets(self) -> tuple:
        """New handles: (image, DEM warped onto the image grid, DEM) (None, None without
        a DEM)."""
        img = rasterio.open(self.path)
        dem = src = None
        if self.dem:
            src = rasterio.open(self.dem)
            try:
                dem = WarpedVRT(src, crs=self.crs, transform=self.transform, width=self.width,
                                height=self.height, resampling=Resampling.bilinear,
                                src_nodata=self.dem_nodata, nodata=self.dem_nodata
                                if self.dem_nodata is not None else np.nan,
                                dtype="float32")
            except BaseException:
                src.close()
                img.close()
                raise
        return img, dem, src

    def handles(self) -> Handles:
        """A new set of per-thread dataset handles for :meth:`read`; the caller closes
        it (``with source.handles() as h: ...``)."""
        return Handles(self)

    def read(self, window: Window, handles: Optional[Handles] = None) -> tuple:
        """Read a window (may extend past the raster) -> (float32 (C,h,w), valid (h,w)).

        A pixel is valid where GDAL's mask of every selected band says so (nodata
        value, alpha band, internal or external mask: ``read_masks``), its values are
        finite and, with a DEM, the DEM has data there; padding is invalid.
        ``handles`` (default: the source's own) are the dataset handles to read with.
        """
        img, dem = (handles or self._handles).get()
        h, w = int(window.height), int(window.width)
        out = np.zeros((self.channels, h, w), np.float32)
        valid = np.zeros((h, w), bool)
        col0, row0 = int(window.col_off), int(window.row_off)
        c0, r0 = max(col0, 0), max(row0, 0)
        c1, r1 = min(col0 + w, self.width), min(row0 + h, self.height)
        if c1 <= c0 or r1 <= r0:
            return out, valid
        inner = Window(c0, r0, c1 - c0, r1 - r0)
        ys, xs = slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0)
        data = img.read(self.bands, window=inner)
        ok = np.ones(data.shape[1:], bool)
        # nodata values: what GDAL's nodata mask computes, without reading the data again
        for i, nd in enumerate(self.nodata):
            if nd is not None and not np.isnan(nd):
                ok &= data[i] != nd
        if self._mask_bands:  # alpha band, internal/external mask: read GDAL's mask
            ok &= (img.read_masks(self._mask_bands, window=inner) > 0).all(axis=0)
        if np.issubdtype(data.dtype, np.floating):
            ok &= np.isfinite(data).all(axis=0)  # also covers a NaN nodata value
        out[: len(self.bands), ys, xs] = data
        if dem is not None:
            z = dem.read(self.dem_band, window=inner).astype(np.float32)
            if self.dem_nodata is not None:
                ok &= z != self.dem_nodata
            ok &= np.isfinite(z)  # the warper marks where the DEM's own mask is invalid
            out[-1, ys, xs] = z
        valid[ys, xs] = ok
        return out, valid

    @staticmethod
    def valid_fraction(window: Window, valid: np.ndarray) -> float:
        """Share of valid pixels in ``window``.  Padding outside the raster is invalid,
        so MIN_VALID is the share of the tile that holds data."""
        n = int(window.width) * int(window.height)
        return float(np.count_nonzero(valid)) / n if n else 0.0

    def compute_normalization(self, n_windows: int = 64, size: int = 256,
                              seed: int = 0) -> Normalization:
        """Per-channel mean/std of valid pixels in a seeded sample of windows."""
        rng = np.random.default_rng(seed)
        size = min(size, self.width, self.height)
        total = np.zeros(self.channels)
        total2 = np.zeros(self.channels)
        n = 0
        for _ in range(n_windows):
            c = int(rng.integers(0, self.width - size + 1))
            r = int(rng.integers(0, self.height - size + 1))
            arr, valid = self.read(Window(c, r, size, size))
            px = arr[:, valid].astype(np.float64)
            total += px.sum(axis=1)
            total2 += (px ** 2).sum(axis=1)
            n += px.shape[1]
        if n == 0:
            raise InputError(f"No valid pixel found in '{self.path}': is it all nodata?")
        mean = total / n
        std = np.sqrt(np.maximum(total2 / n - mean ** 2, 0.0))
        std = np.where(std < 1e-6, 1.0, std)
        return Normalization(mean.tolist(), std.tolist())

    def points_to_pixels(self, xs, ys, crs=None) -> tuple:
        """Map coordinates (in ``crs``, default the raster's) to fractional (col, row)."""
        xs = np.asarray(xs, float)
        ys = np.asarray(ys, float)
        if crs is not None and len(xs) and rasterio.crs.CRS.from_user_input(crs) != self.crs:
            tx, ty = warp_transform(rasterio.crs.CRS.from_user_input(crs), self.crs, xs, ys)
            xs, ys = np.asarray(tx), np.asarray(ty)
        inv = ~self.transform
        cols, rows = inv @ (xs, ys)
        return np.asarray(cols, float), np.asarray(rows, float)

    def inside(self, cols, rows) -> np.ndarray:
        cols, rows = np.asarray(cols), np.asarray(rows)
        return (cols >= 0) & (rows >= 0) & (cols < self.width) & (rows < self.height)

    def centred_window(self, col: float, row: float, tile: int) -> Window:
        """The ``tile`` px window centred on pixel (col, row) (may run past the edges)."""
        return Window(int(math.floor(col)) - tile // 2, int(math.floor(row)) - tile // 2, tile, tile)

    def close(self):
        """Close the handles of direct :meth:`read` calls (the source stays usable)."""
        self._handles.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def mask_bands(ds, bands: Sequence[int]) -> tuple:
    """The bands whose GDAL mask :meth:`TileSource.read` must read: none when every
    selected band's mask is "all valid" or its nodata value (compared in memory); the
    first band for a per-dataset mask (alpha band, internal or external .msk mask,
    NODATA_VALUES), which serves every band; otherwise the bands with a mask of their
    own."""
    flags = [set(ds.mask_flag_enums[b - 1]) for b in bands]
    if any(MaskFlags.per_dataset in f for f in flags):
        return (bands[[MaskFlags.per_dataset in f for f in flags].index(True)],)
    return tuple(b for b, f in zip(bands, flags)
                 if not f <= {MaskFlags.all_valid, MaskFlags.nodata})


def _bounds(transform: Affine, width: int, height: int) -> tuple:
    xs, ys = zip(transform @ (0, 0), transform @ (width, height))
    return min(xs), min(ys), max(xs), max(ys)


def _fmt(b) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in b) + ")"
