"""Pixel covariates: every band of INPUT (and the DEM) plus any covariate rasters.

The soil scientist's everyday baseline is a random forest on *all* the covariate bands at
the point.  This module gives the engine those values, on INPUT's grid:

* :class:`Covariate` is one covariate raster (any CRS and resolution, every band), either
  continuous (warped onto INPUT's grid with bilinear resampling) or categorical (nearest
  resampling, one-hot encoded over the categories found at the points at fit time; a
  category unknown at map time gives all zeros).  Its :meth:`~Covariate.record` goes into
  the model file; :func:`resolve_covariates` finds the files again at map time, or takes
  replacements with the same band count.
* :class:`PixelStack` reads INPUT's bands (through :class:`~.raster.TileSource`) and the
  covariates (``rasterio.vrt.WarpedVRT`` onto INPUT's grid) by window, with NaN where a
  value is invalid.  It gives the PIXELS block (values at a pixel, categorical bands
  one-hot) and the CONTEXT block (mean and std of each continuous band over the tile
  window centred on a pixel, nodata-aware) at points, and per output row of a map
  (:class:`MapBlocks`), streaming: a map row reads one strip of tile rows at a time.

A point's pixel is the INPUT pixel it falls in; on a map, an output pixel's is the INPUT
pixel at its centre (the pixel its tile is centred on), so both see the same values.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from .cv import CONTEXT, PIXELS
from .errors import InputError
from .progress import Progress, ensure
from .raster import TileSource

RESAMPLING = {False: "bilinear", True: "nearest"}  # categorical -> resampling
MAX_STRIP_PX = 4096   # input columns of one strip read for the map's CONTEXT block


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(str(path)))[0] or "covariate"


def _band_names(stem: str, descriptions, bands, single: bool = False) -> List[str]:
    """A band's description where it has one, else ``<stem>_b<band>`` (``<stem>`` alone
    for the only band)."""
    out = []
    for b in bands:
        desc = descriptions[b - 1] if b - 1 < len(descriptions) else None
        out.append(desc.strip() if desc and desc.strip() else stem if single else f"{stem}_b{b}")
    return out


def _gdal_source(path: str) -> bool:
    """A GDAL source that is not a plain file (/vsizip/..., GPKG:...:table) and opens."""
    if os.path.exists(path) or not (path.startswith("/vsi") or ":" in path):
        return False
    try:
        with rasterio.open(path):
            return True
    except Exception:
        return False


def _code(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _checksum(path: str) -> dict:
    """sha256, size and mtime of a file (empty for a GDAL source that is not a file)."""
    from .backbone import file_sha256
    if not os.path.isfile(path):
        return {}
    st = os.stat(path)
    return {"sha256": file_sha256(path), "size": int(st.st_size), "mtime": int(st.st_mtime)}


@dataclass
class Covariate:
    """One covariate raster: every band, continuous or categorical."""

    path: str
    count: int
    categorical: bool = False
    categories: Optional[List[List[float]]] = None  # per band, set by PixelStack.fit_categories
    checksum: dict = field(default_factory=dict)
    nodata: Optional[float] = None
    descriptions: tuple = ()  # the bands' descriptions, where the file has them

    @classmethod
    def open(cls, path: str, categorical: bool = False,
             categories: Optional[list] = None, checksum: Optional[dict] = None) -> "Covariate":
        path = str(path)
        if not os.path.isfile(path) and not _gdal_source(path):
            raise InputError(f"Covariate raster '{path}' is not found.")
        try:
            with rasterio.open(path) as ds:
                count, crs, nodata, desc = ds.count, ds.crs, ds.nodata, ds.descriptions
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"Cannot open covariate raster '{path}': {exc}") from exc
        if crs is None:
            raise InputError(f"Covariate raster '{path}' has no CRS: assign one in QGIS first.")
        return cls(os.path.abspath(path) if os.path.isfile(path) else path, count,
                   bool(categorical), categories,
                   checksum if checksum is not None else _checksum(path), nodata, tuple(desc))

    @property
    def resampling(self) -> str:
        return RESAMPLING[self.categorical]

    @property
    def names(self) -> List[str]:
        """Raw band names: each band's description, else the file's stem (with _b<band>
        when it has several bands)."""
        stem = _stem(self.path)
        return _band_names(stem, self.descriptions, range(1, self.count + 1),
                           self.count == 1)

    def record(self) -> dict:
        """What the model file keeps (weights_only-loadable: plain values)."""
        return {"path": self.path, "bands": list(range(1, self.count + 1)),
                "names": self.names, "categorical": self.categorical,
                "resampling": self.resampling,
                "categories": [[float(v) for v in c] for c in self.categories]
                if self.categories is not None else None, **self.checksum}

    def vrt(self, ds, source: TileSource) -> WarpedVRT:
        """The covariate warped onto ``source``'s grid, float32, NaN where invalid."""
        return WarpedVRT(ds, crs=source.crs, transform=source.transform, width=source.width,
                         height=source.height, resampling=Resampling[self.resampling],
                         src_nodata=self.nodata, nodata=np.nan, dtype="float32",
                         tolerance=1e-6)


def open_covariates(paths: Sequence[str], categorical: Sequence[str] = ()) -> List[Covariate]:
    """The covariates of ``paths`` (continuous unless also in ``categorical``) and those of
    ``categorical`` not in ``paths``, in that order; a file given twice counts once."""
    def key(p):
        return os.path.normcase(os.path.abspath(str(p)))
    cat = {key(p) for p in categorical}
    order, seen = [], set()
    for p in list(paths) + list(categorical):
        if key(p) not in seen:
            seen.add(key(p))
            order.append(p)
    return [Covariate.open(p, key(p) in cat) for p in order]


def resolve_covariates(records: Sequence[dict], replacements: Optional[Sequence[str]] = None,
                       progress: Optional[Progress] = None) -> List[Covariate]:
    """The model's covariates for a map: the recorded files, or ``replacements`` (given as
    COVARIATES: as many files as recorded, in the recorded order, each with the same band
    count).  Categories and resampling always come from the record."""
    progress = ensure(progress)
    records = list(records or [])
    names = ", ".join(f"'{_stem(r['path'])}'" for r in records)
    if replacements:
        if len(replacements) != len(records):
            raise InputError(
                f"COVARIATES gives {len(replacements)} raster(s) but the model was fitted with "
                f"{len(records)} covariate(s) ({names or 'none'}): give one replacement for "
                f"each, in that order.")
        out = []
        for rec, path in zip(records, replacements):
            cov = Covariate.open(path, rec["categorical"], rec.get("categories"))
            if cov.count != len(rec["bands"]):
                raise InputError(
                    f"COVARIATES '{path}' has {cov.count} band(s) but the model's covariate "
                    f"'{rec['path']}' it replaces has {len(rec['bands'])}: give a raster with "
                    f"the same bands, in the recorded order ({names}).")
            if cov.checksum.get("sha256") != rec.get("sha256"):
                progress.info(f"Covariate '{rec['path']}' replaced by '{path}'.")
            out.append(cov)
        return out
    out = []
    for rec in records:
        path = rec["path"]
        if not os.path.isfile(path) and not _gdal_source(path):
            raise InputError(
                f"The model's covariate '{path}' is not found (moved or deleted): give it, or "
                f"its replacement, as COVARIATES: {len(records)} raster(s) in the recorded "
                f"order ({names}).")
        st = os.stat(path) if os.path.isfile(path) else None
        same = st is None or (st.st_size == rec.get("size") and
                              int(st.st_mtime) == rec.get("mtime"))
        checksum = {k: rec.get(k) for k in ("sha256", "size", "mtime")} if same \
            else _checksum(path)
        if checksum.get("sha256") != rec.get("sha256"):
            progress.info(f"Warning: covariate '{path}' changed since the model was fitted "
                          f"(checksum differs).")
        cov = Covariate.open(path, rec["categorical"], rec.get("categories"), checksum)
        if cov.count != len(rec["bands"]):
            raise InputError(f"Covariate '{path}' now has {cov.count} band(s); the model was "
                             f"fitted with {len(rec['bands'])}.")
        out.append(cov)
    return out


def _window_stats(arr: np.ndarray) -> np.ndarray:
    """(C, h, w) with NaN = invalid -> (2C,) [means..., stds...] of the valid values
    (population std; NaN where a band has no valid value)."""
    flat = arr.reshape(arr.shape[0], -1).astype(np.float64)
    ok = np.isfinite(flat)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, flat, 0.0).sum(axis=1) / n
        var = np.where(ok, (flat - mean[:, None]) ** 2, 0.0).sum(axis=1) / n
    return np.concatenate([mean, np.sqrt(var)])


class PixelStack:
    """INPUT's bands (all but an alpha band, by default) and DEM, plus covariates, on
    INPUT's grid.

    Raw channels: INPUT bands, the DEM, each covariate's bands.  ``pixel_names`` are the
    PIXELS columns (categorical bands one-hot: ``soilmap=3``), ``context_names`` the
    CONTEXT columns (``<band> mean`` for each continuous channel, then ``<band> std``)."""

    def __init__(self, source: TileSource, covariates: Sequence[Covariate] = (),
                 input_bands: Optional[Sequence[int]] = None):
        with rasterio.open(source.path) as ds:  # every band but an alpha band
            every = [b for b in range(1, ds.count + 1)
                     if ds.colorinterp[b - 1] != ColorInterp.alpha]
            descriptions = ds.descriptions
        bands = list(input_bands) if input_bands else every
        self.base = TileSource(source.path, bands, source.dem, source.dem_band)
        self.covariates = list(covariates)
        stem = _stem(source.path)
        names = _band_names(stem, descriptions, bands)
        if source.dem:
            names.append(_stem(source.dem))
        self.categorical = [False] * len(names)
        self._cov_index = []  # covariate, band of each raw channel past the base's
        for cov in self.covariates:
            names += cov.names
            self.categorical += [cov.categorical] * cov.count
            self._cov_index += [(cov, b) for b in range(1, cov.count + 1)]
            self._check_overlap(cov, source)
        self.raw_names = _unique(names)
        self.shape = (source.height, source.width)
        self._datasets = None

    @staticmethod
    def _check_overlap(cov: Covariate, source: TileSource) -> None:
        with rasterio.open(cov.path) as ds:
            b = transform_bounds(ds.crs, source.crs, *ds.bounds)
        s = source.bounds
        if b[0] >= s[2] or b[2] <= s[0] or b[1] >= s[3] or b[3] <= s[1]:
            raise InputError(f"Covariate '{cov.path}' does not overlap INPUT "
                             f"('{source.path}'): check their extents and CRS.")

    # -- names and records ----------------------------------------------------------------
    @property
    def raw_count(self) -> int:
        return len(self.raw_names)

    @property
    def continuous(self) -> List[int]:
        return [i for i, c in enumerate(self.categorical) if not c]

    @property
    def input_bands(self) -> List[int]:
        return list(self.base.bands)

    def _categories(self) -> List[Optional[List[float]]]:
        """Per raw channel: its categories (categorical) or None."""
        out = [None] * (self.raw_count - len(self._cov_index))
        for cov, b in self._cov_index:
            out.append(cov.categories[b - 1] if cov.categorical and cov.categories else
                       ([] if cov.categorical else None))
        return out

    @property
    def pixel_names(self) -> List[str]:
        names = []
        for name, cats in zip(self.raw_names, self._categories()):
            names += [name] if cats is None else [f"{name}={_code(v)}" for v in cats]
        return names

    @property
    def context_names(self) -> List[str]:
        cont = [self.raw_names[i] for i in self.continuous]
        return [f"{n} mean" for n in cont] + [f"{n} std" for n in cont]

    def record(self) -> dict:
        """The model file's keys: covariates, pixel_names, context_names, pixel_input."""
        return {"covariates": [c.record() for c in self.covariates],
                "pixel_names": self.pixel_names, "context_names": self.context_names,
                "pixel_input": {"bands": self.input_bands, "dem": bool(self.base.dem)}}

    # -- reading --------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.base.close()
        if self._datasets:
            for vrt, ds in self._datasets:
                vrt.close()
                ds.close()
        self._datasets = None

    def _vrts(self) -> list:
        if self._datasets is None:
            self._datasets = []
            for cov in self.covariates:
                ds = rasterio.open(cov.path)
                self._datasets.append((cov.vrt(ds, self.base), ds))
        return [v for v, _ in self._datasets]

    def read(self, window: Window) -> np.ndarray:
        """(raw channels, h, w) float32 over ``window`` (may run past INPUT), NaN where
        invalid: INPUT's mask (nodata, alpha, mask, padding), a covariate's nodata or
        extent."""
        arr, valid = self.base.read(window)
        arr[:, ~valid] = np.nan
        h, w = int(window.height), int(window.width)
        col0, row0 = int(window.col_off), int(window.row_off)
        c0, r0 = max(col0, 0), max(row0, 0)
        c1, r1 = min(col0 + w, self.shape[1]), min(row0 + h, self.shape[0])
        covs = np.full((len(self._cov_index), h, w), np.nan, np.float32)
        if c1 > c0 and r1 > r0 and self.covariates:
            inner = Window(c0, r0, c1 - c0, r1 - r0)
            ys, xs = slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0)
            i = 0
            for cov, vrt in zip(self.covariates, self._vrts()):
                covs[i:i + cov.count, ys, xs] = vrt.read(window=inner)
                i += cov.count
        return np.concatenate([arr, covs]) if len(covs) else arr

    # -- blocks ---------------------------------------------------------------------------
    def sample(self, cols, rows) -> np.ndarray:
        """Raw values (n, raw channels) at the INPUT pixels holding fractional (cols, rows)."""
        out = np.empty((len(cols), self.raw_count), np.float32)
        for i, (c, r) in enumerate(zip(cols, rows)):
            out[i] = self.read(Window(int(math.floor(c)), int(math.floor(r)), 1, 1))[:, 0, 0]
        return out

    def fit_categories(self, raw: np.ndarray) -> None:
        """Categories of each categorical band: the distinct values at the points."""
        start = self.raw_count - len(self._cov_index)
        for cov in self.covariates:
            if cov.categorical:
                cov.categories = []
                for b in range(cov.count):
                    j = start + self._cov_index.index((cov, b + 1))
                    v = raw[:, j]
                    cov.categories.append(sorted(float(x) for x in np.unique(v[np.isfinite(v)])))

    def valid(self, raw: np.ndarray) -> np.ndarray:
        """(n,) rows of raw values whose continuous channels are all valid (a categorical
        band without data encodes as all zeros, see :meth:`encode`)."""
        return np.isfinite(raw[:, self.continuous]).all(axis=1)

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Raw values (n, raw channels) -> PIXELS (n, p): categorical bands one-hot (0/1; a
        category not seen at fit time, nodata or outside the raster give all zeros, like
        an unmapped class; a continuous NaN stays NaN)."""
        cols = []
        for j, cats in enumerate(self._categories()):
            v = raw[:, j:j + 1].astype(np.float32)
            if cats is None:
                cols.append(v)
            else:
                cols.append((v == np.asarray(cats, np.float32)[None, :]).astype(np.float32))
        return np.concatenate(cols, axis=1) if cols else np.empty((len(raw), 0), np.float32)

    def context(self, cols, rows, tile: int, progress: Optional[Progress] = None) -> np.ndarray:
        """CONTEXT (n, 2q): mean and std of each continuous channel over the ``tile`` px
        window centred on each point (as :meth:`TileSource.centred_window` places tiles)."""
        progress = ensure(progress)
        cont = self.continuous
        out = np.empty((len(cols), 2 * len(cont)), np.float32)
        for i, (c, r) in enumerate(zip(cols, rows)):
            progress.check()
            win = self.base.centred_window(c, r, tile)
            out[i] = _window_stats(self.read(win)[cont])
            progress.set((i + 1) / len(cols))
        return out

    def map_blocks(self, width: int, height: int, transform, tile: int,
                   blocks: Sequence[str] = (PIXELS, CONTEXT)) -> "MapBlocks":
        """Row blocks for a map of ``width`` x ``height`` output pixels at ``transform``
        (e.g. a :class:`~.patches.FeatureRows`' width, height and transform())."""
        return MapBlocks(self, width, height, transform, tile, tuple(blocks))


def _unique(names: List[str]) -> List[str]:
    out, seen = [], {}
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n} ({k + 1})")
    return out


class MapBlocks:
    """``blocks(row) -> {PIXELS: (width, p), CONTEXT: (width, 2q)}`` for one output row: the
    pixel at each output pixel's centre and the stats of the ``tile`` px window centred on
    it.  Each call reads one strip of ``tile`` input rows (in chunks of at most
    ``MAX_STRIP_PX`` columns), so memory does not grow with the raster."""

    def __init__(self, stack: PixelStack, width: int, height: int, transform, tile: int,
                 blocks: tuple):
        self.stack, self.width, self.height, self.tile = stack, width, height, int(tile)
        self.blocks = blocks
        to_input = ~stack.base.transform @ transform
        cx, _ = to_input @ (np.arange(width) + 0.5, np.full(width, 0.5))
        self.cols = np.floor(np.asarray(cx) + 1e-9).astype(np.int64)
        _, ry = to_input @ (np.full(height, 0.5), np.arange(height) + 0.5)
        self.rows = np.floor(np.asarray(ry) + 1e-9).astype(np.int64)

    def __call__(self, row: int) -> Dict[str, np.ndarray]:
        out = {}
        r = int(self.rows[row])
        if PIXELS in self.blocks:
            c0, c1 = int(self.cols.min()), int(self.cols.max()) + 1
            strip = self.stack.read(Window(c0, r, c1 - c0, 1))[:, 0, :]
            out[PIXELS] = self.stack.encode(strip[:, self.cols - c0].T)
        if CONTEXT in self.blocks:
            out[CONTEXT] = self._context(r)
        return out

    def _context(self, r: int) -> np.ndarray:
        cont = self.stack.continuous
        t, half = self.tile, self.tile // 2
        res = np.empty((self.width, 2 * len(cont)), np.float32)
        scale = int(self.cols[1] - self.cols[0]) if self.width > 1 else 1
        step = max(1, MAX_STRIP_PX // max(1, scale))
        for a in range(0, self.width, step):
            cols = self.cols[a:a + step]
            s0 = int(cols.min()) - half
            s1 = int(cols.max()) - half + t
            arr = self.stack.read(Window(s0, r - half, s1 - s0, t))[cont].astype(np.float64)
            ok = np.isfinite(arr)
            # shift by each band's strip mean: sums of squares without cancellation
            with np.errstate(invalid="ignore"):
                shift = np.where(ok.any(axis=(1, 2)),
                                 np.where(ok, arr, 0).sum(axis=(1, 2)) /
                                 np.maximum(ok.sum(axis=(1, 2)), 1), 0.0)
            x = np.where(ok, arr - shift[:, None, None], 0.0)
            sums = [np.concatenate([np.zeros((len(cont), 1)), np.cumsum(v.sum(axis=1), axis=1)],
                                   axis=1) for v in (x, x * x, ok.astype(np.float64))]
            lo = cols - half - s0
            hi = lo + t
            s, s2, n = (q[:, hi] - q[:, lo] for q in sums)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = s / n
                std = np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0))
            res[a:a + step] = np.concatenate([mean + shift[:, None], std]).T
        return res
