"""Vector geometries on a raster grid: reference places, exclusion zones, sample points.

The engine takes geometries as GeoJSON-like dicts (what ``QgsGeometry.asJson()`` gives,
parsed) in any CRS; :class:`Places` reprojects them once onto a raster's CRS
(``rasterio.warp.transform_geom``) and rasterises them window by window
(``rasterio.features.geometry_mask``), so a mask of any raster size is never held
whole.  Points mark the pixel they fall in; lines and polygons every pixel they touch
(``all_touched``), so a field smaller than one tile still marks its tile.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from rasterio.crs import CRS
from rasterio.features import geometry_mask
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from .errors import InputError


def _crs(value) -> Optional[CRS]:
    if value is None or value == "":
        return None
    try:
        return CRS.from_user_input(value)
    except Exception as exc:  # rasterio's CRSError and friends: one clear message
        raise InputError(f"Unknown coordinate reference system: {str(value)[:80]}") from exc


def geometry_bounds(geoms: Sequence[dict]) -> tuple:
    """(xmin, ymin, xmax, ymax) of GeoJSON-like geometries."""
    xs, ys = [], []

    def walk(c):
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            xs.append(c[0])
            ys.append(c[1])
        elif isinstance(c, (list, tuple)):
            for p in c:
                walk(p)
    for g in geoms:
        if g.get("type") == "GeometryCollection":
            for part in g.get("geometries", []):
                walk(part.get("coordinates", []))
        else:
            walk(g.get("coordinates", []))
    if not xs:
        return (np.nan,) * 4
    return min(xs), min(ys), max(xs), max(ys)


class Places:
    """GeoJSON-like geometries (in ``crs``; None = the raster's) on the grid of ``ds`` (an
    open rasterio dataset, or anything with ``crs``, ``transform``, ``width``, ``height``)."""

    def __init__(self, geoms: Sequence[dict], crs, ds, what: str = "geometries"):
        geoms = [g for g in (geoms or []) if g and g.get("type")]
        if not geoms:
            raise InputError(f"The {what} layer has no geometry.")
        src = _crs(crs)
        if src is not None and ds.crs is not None and src != ds.crs:
            geoms = [transform_geom(src, ds.crs, g) for g in geoms]
        self.geoms = geoms
        self.transform, self.width, self.height = ds.transform, ds.width, ds.height
        self.what = what

    def mask(self, win: Window) -> np.ndarray:
        """(h, w) bool: the window's pixels that a geometry falls in or touches."""
        h, w = int(win.height), int(win.width)
        return geometry_mask(self.geoms, (h, w), window_transform(win, self.transform),
                             all_touched=True, invert=True)

    def overlaps(self) -> bool:
        """Whether any geometry's bounding box meets the raster."""
        xmin, ymin, xmax, ymax = geometry_bounds(self.geoms)
        if not np.isfinite(xmin):
            return False
        t = self.transform
        xs = [t.c, t.c + t.a * self.width]
        ys = [t.f, t.f + t.e * self.height]
        return not (xmax < min(xs) or xmin > max(xs) or ymax < min(ys) or ymin > max(ys))


def points_to_grid(xs, ys, crs, ds) -> tuple:
    """Point coordinates (in ``crs``; None = the raster's) -> (x, y in the raster CRS, col,
    row integer pixel indices, inside mask)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    src = _crs(crs)
    if src is not None and ds.crs is not None and src != ds.crs and len(xs):
        tx, ty = warp_transform(src, ds.crs, xs, ys)
        xs, ys = np.asarray(tx, float), np.asarray(ty, float)
    cols, rows = (~ds.transform) @ (xs, ys)
    cols, rows = np.floor(np.asarray(cols)).astype(np.int64), np.floor(np.asarray(rows)).astype(
        np.int64)
    inside = (cols >= 0) & (rows >= 0) & (cols < ds.width) & (rows < ds.height)
    return xs, ys, cols, rows, inside


def pixel_centres(ds, rows, cols) -> tuple:
    """Map coordinates (x, y) of the centres of pixels (rows, cols) of ``ds``."""
    x, y = ds.transform @ (np.asarray(cols, float) + 0.5, np.asarray(rows, float) + 0.5)
    return np.asarray(x, float), np.asarray(y, float)
