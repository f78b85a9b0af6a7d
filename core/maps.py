"""Unsupervised maps of a feature raster: K-means landscape classes and PCA colours.

Both fit on a bounded random sample of valid feature pixels (scikit-learn
KMeans, or MiniBatchKMeans for large samples; PCA) and are applied window by
window, so the feature raster is never held whole in memory.  Nodata stays
nodata.  The PCA map follows the paper (Tresson et al. 2024): 1st component ->
red, 2nd -> blue, 3rd -> green, each stretched between its 2nd and 98th
percentiles to 1..255 (0 = nodata).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import rasterio
from rasterio.windows import Window

from .errors import InputError
from .progress import Progress, ensure
from .raster import mask_bands
from .writer import RasterWriter, read_tags

CLUSTER_NODATA = 255
MAX_SAMPLE = 50_000


def _row_windows(ds, rows_per_window: int = 64) -> Iterator[Window]:
    for r in range(0, ds.height, rows_per_window):
        yield Window(0, r, ds.width, min(rows_per_window, ds.height - r))


def _valid(ds, block: np.ndarray, win: Window) -> np.ndarray:
    """block (C,h,w) of every band of ``ds`` at ``win`` -> (h,w) mask of pixels with every
    band valid: finite, not a nodata value, and valid in GDAL's mask (alpha band, internal
    or external mask) as :meth:`~.raster.TileSource.read` sees it."""
    ok = np.isfinite(block).all(axis=0)
    for band, nodata in zip(block, ds.nodatavals):
        if nodata is not None and not np.isnan(nodata):
            ok &= band != nodata
    masks = mask_bands(ds, ds.indexes)
    if masks:
        ok &= (ds.read_masks(masks, window=win) > 0).all(axis=0)
    return ok


def check_features(path: str, progress: Optional[Progress] = None) -> bool:
    """Warn when ``path`` is not a feature raster written by extract_features (its tags say
    so): a plain image would be clustered on its colours, not on ViT features.  -> whether
    it is one."""
    tags = read_tags(path)
    if tags.get("soilssl_product") == "features":
        return True
    with rasterio.open(path) as ds:
        kind = f"{ds.count} band(s) of {ds.dtypes[0]}"
    ensure(progress).info(
        f"Warning: '{path}' is not a SoilSSL feature raster ({kind}, no feature metadata): "
        f"it is mapped on its own pixel values, not on ViT features. Run Extract ViT features "
        f"on the image first and use its output as INPUT.")
    return False


def sample_pixels(path: str, max_sample: int = MAX_SAMPLE, seed: int = 0,
                  progress: Optional[Progress] = None) -> np.ndarray:
    """A seeded random sample (n, C) of valid pixels, read window by window."""
    progress = ensure(progress)
    rng = np.random.default_rng(seed)
    with rasterio.open(path) as ds:
        total = ds.width * ds.height
        rate = min(1.0, 1.5 * max_sample / max(1, total))
        parts = []
        for win in _row_windows(ds):
            progress.check()
            block = ds.read(window=win).astype(np.float32, copy=False)
            ok = _valid(ds, block, win) & (rng.random(block.shape[1:]) < rate)
            parts.append(block[:, ok].T)
    x = np.concatenate(parts) if parts else np.empty((0, 0), np.float32)
    if len(x) == 0:
        raise InputError(f"'{path}' has no valid pixel: every tile is nodata.")
    if len(x) > max_sample:
        x = x[rng.choice(len(x), max_sample, replace=False)]
    return x


def apply_by_windows(path: str, output: str, fn: Callable[[np.ndarray], np.ndarray], count: int,
                     dtype: str, nodata, tags: dict, progress: Optional[Progress] = None,
                     band_names=None) -> str:
    """Map valid pixels (n, C) -> (n, count) with ``fn`` window by window into ``output``."""
    progress = ensure(progress)
    with rasterio.open(path) as ds, RasterWriter(
            output, ds.width, ds.height, count, dtype, ds.crs, ds.transform, nodata=nodata,
            tags=tags, band_names=band_names) as w:
        for win in _row_windows(ds):
            progress.check()
            block = ds.read(window=win).astype(np.float32, copy=False)
            ok = _valid(ds, block, win)
            out = np.full((count,) + ok.shape, nodata, dtype)
            if ok.any():
                out[:, ok] = fn(block[:, ok].T).T.astype(dtype)
            w.write(out, win)
            progress.set((win.row_off + win.height) / ds.height)
    return output


def cluster_map(features: str, output: str, k: int = 8, seed: int = 0,
                max_sample: int = MAX_SAMPLE, progress: Optional[Progress] = None) -> dict:
    """K-means classes (0..k-1, nodata 255) of a feature raster."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    if not 2 <= k <= 254:
        raise InputError(f"K must be between 2 and 254 (got {k}).")
    progress = ensure(progress)
    check_features(features, progress)
    x = sample_pixels(features, max_sample, seed, progress.sub(0, 0.3))
    if len(x) < k:
        raise InputError(f"Only {len(x)} valid feature pixels for K={k} clusters: lower K or "
                         f"use a smaller STRIDE/TILE_SIZE.")
    progress.info(f"Fitting K-means (K={k}) on {len(x)} feature pixels...")
    if len(x) > 10_000:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=4)
    km.fit(x)
    tags = {"soilssl_product": "clusters", "k": k, "seed": seed, "features": read_tags(features)
            .get("backbone", "")}
    apply_by_windows(features, output, lambda v: km.predict(v)[:, None], 1, "uint8",
                     CLUSTER_NODATA, tags, progress.sub(0.3, 1.0), ["cluster"])
    sizes = np.bincount(km.labels_, minlength=k)
    return {"output": output, "k": k, "sample": len(x), "sample_sizes": sizes.tolist()}


def pca_map(features: str, output: str, seed: int = 0, max_sample: int = MAX_SAMPLE,
            progress: Optional[Progress] = None) -> dict:
    """3-component PCA as a displayable uint8 RGB raster (PC1 red, PC2 blue, PC3 green)."""
    from sklearn.decomposition import PCA
    progress = ensure(progress)
    check_features(features, progress)
    x = sample_pixels(features, max_sample, seed, progress.sub(0, 0.3))
    if x.shape[1] < 3 or len(x) < 3:
        raise InputError(f"PCA needs at least 3 bands and 3 valid pixels (got {x.shape[1]} "
                         f"bands, {len(x)} pixels).")
    pca = PCA(n_components=3, random_state=seed).fit(x)
    scores = pca.transform(x)
    lo, hi = np.percentile(scores, 2, axis=0), np.percentile(scores, 98, axis=0)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    order = [0, 2, 1]  # band R <- PC1, band G <- PC3, band B <- PC2 (paper's colouring)

    def colour(v):
        s = (pca.transform(v)[:, order] - lo[order]) / span[order]
        return np.clip(np.rint(1 + 254 * s), 1, 255)

    tags = {"soilssl_product": "pca", "explained_variance_ratio":
            [float(r) for r in pca.explained_variance_ratio_], "band_components": "R=PC1 G=PC3 B=PC2"}
    apply_by_windows(features, output, colour, 3, "uint8", 0, tags, progress.sub(0.3, 1.0),
                     ["PC1 (red)", "PC3 (green)", "PC2 (blue)"])
    return {"output": output, "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
            "sample": len(x)}
