"""Feature similarity map: where else does the landscape look like this pit / this field?

The references (points: the tile each falls in; lines or polygons: every tile they
touch, see :mod:`.places`) are averaged into one reference feature r; every tile's
feature x gets the cosine similarity

    s(x) = <x - c, r - c> / (|x - c| |r - c|)

with c the scene's mean feature when ``centre`` (default: the part every tile of the
scene shares is removed, so that s spreads over -1..1 instead of bunching near 1 as raw
ViT features do) or c = 0 (the plain cosine of the raw features).  Two passes over the
feature raster, window by window: the sums (scene and references), then the map; the
raster is never held whole.  An optional THRESHOLD gives a 1/0 mask of s >= threshold.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import rasterio

from .errors import InputError
from .maps import _row_windows, _valid, check_features
from .places import Places
from .progress import Progress, ensure
from .writer import RasterWriter, commit_all, read_tags

SIM_NODATA = -9999.0
MASK_NODATA = 255


def cosine(x: np.ndarray, r: np.ndarray, centre: Optional[np.ndarray] = None) -> np.ndarray:
    """Cosine similarity of each row of x (n, D) to r (D,) after subtracting ``centre``;
    0 where a vector is zero."""
    x = np.asarray(x, np.float64)
    r = np.asarray(r, np.float64)
    if centre is not None:
        x = x - centre
        r = r - centre
    num = x @ r
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(r)
    out = np.zeros(len(x))
    np.divide(num, den, out=out, where=den > 0)
    return np.clip(out, -1.0, 1.0)


def reference_feature(path: str, geoms: Sequence[dict], crs, progress: Optional[Progress] = None
                      ) -> dict:
    """First pass: the references' mean feature, the scene's mean feature and counts."""
    progress = ensure(progress)
    with rasterio.open(path) as ds:
        places = Places(geoms, crs, ds, "references")
        if not places.overlaps():
            raise InputError("The references lie outside the feature raster: check that they "
                             "cover the same area (their CRS is reprojected).")
        d = ds.count
        ref_sum, scene_sum = np.zeros(d), np.zeros(d)
        n_ref = n_scene = n_marked = 0
        for win in _row_windows(ds):
            progress.check()
            block = ds.read(window=win).astype(np.float64, copy=False)
            ok = _valid(ds, block, win)
            marked = places.mask(win)
            n_marked += int(marked.sum())
            sel = marked & ok
            scene_sum += block[:, ok].sum(axis=1)
            ref_sum += block[:, sel].sum(axis=1)
            n_scene += int(ok.sum())
            n_ref += int(sel.sum())
            progress.set((win.row_off + win.height) / ds.height)
    if n_scene == 0:
        raise InputError(f"'{path}' has no valid pixel: every tile is nodata.")
    if n_ref == 0:
        where = "only on nodata tiles" if n_marked else "outside the feature raster"
        raise InputError(f"The references lie {where}: no reference feature. Choose points or "
                         f"polygons over valid tiles of the feature raster.")
    return {"reference": ref_sum / n_ref, "scene": scene_sum / n_scene, "tiles": n_ref,
            "scene_tiles": n_scene}


def similarity_map(features: str, output: str, geoms: Sequence[dict], crs=None,
                   threshold: Optional[float] = None, mask_output: Optional[str] = None,
                   centre: bool = True, progress: Optional[Progress] = None) -> dict:
    """Cosine similarity (float32, nodata -9999) of every tile of ``features`` to the mean
    feature of the tiles under ``geoms``; with ``threshold`` and ``mask_output`` also a
    uint8 mask (1: similarity >= threshold, 0: below, 255: nodata).  Both files or none."""
    progress = ensure(progress)
    if mask_output and threshold is None:
        raise InputError("A similarity mask needs a THRESHOLD (a cosine between -1 and 1).")
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise InputError(f"THRESHOLD is a cosine similarity: between -1 and 1 (got {threshold}).")
    check_features(features, progress)
    ref = reference_feature(features, geoms, crs, progress.sub(0.0, 0.4))
    c = ref["scene"] if centre else None
    r = ref["reference"]
    if c is not None and not np.linalg.norm(r - c) > 0:
        raise InputError("The references' mean feature is the scene's mean feature: with "
                         "CENTRE on every similarity would be 0. Choose fewer, more specific "
                         "references or turn CENTRE off.")
    progress.info(f"Reference: mean feature of {ref['tiles']} tile(s); "
                  f"{'centred on the scene mean of' if centre else 'scene:'} "
                  f"{ref['scene_tiles']} tiles.")
    tags = {"soilssl_product": "similarity", "reference_tiles": ref["tiles"],
            "centred": bool(centre), "features": read_tags(features).get("backbone", "")}
    sub = progress.sub(0.4, 1.0)
    hist = np.zeros(20, np.int64)
    above = 0
    with rasterio.open(features) as ds:
        writers = [RasterWriter(output, ds.width, ds.height, 1, "float32", ds.crs, ds.transform,
                                nodata=SIM_NODATA, tags=tags, band_names=["cosine similarity"])]
        try:
            if mask_output and threshold is not None:
                writers.append(RasterWriter(
                    mask_output, ds.width, ds.height, 1, "uint8", ds.crs, ds.transform,
                    nodata=MASK_NODATA, tags=dict(tags, soilssl_product="similarity_mask",
                                                  threshold=float(threshold)),
                    band_names=[f"similarity >= {float(threshold):g}"]))
            for win in _row_windows(ds):
                sub.check()
                block = ds.read(window=win).astype(np.float32, copy=False)
                ok = _valid(ds, block, win)
                sim = np.full(ok.shape, SIM_NODATA, np.float32)
                if ok.any():
                    s = cosine(block[:, ok].T, r, c)
                    sim[ok] = s
                    hist += np.histogram(s, bins=20, range=(-1, 1))[0]
                    if threshold is not None:
                        above += int((s >= threshold).sum())
                writers[0].write(sim[None], win)
                if len(writers) > 1:
                    m = np.full(ok.shape, MASK_NODATA, np.uint8)
                    m[ok] = sim[ok] >= threshold
                    writers[1].write(m[None], win)
                sub.set((win.row_off + win.height) / ds.height)
            commit_all(writers)
        finally:
            for w in writers:
                if not w.done:
                    w.abort()
    out = {"output": output, "mask": mask_output if len(writers) > 1 else None,
           "reference_tiles": ref["tiles"], "tiles": ref["scene_tiles"],
           "histogram": hist.tolist()}
    if threshold is not None:
        out["above_threshold"] = above
        progress.info(f"{above} of {ref['scene_tiles']} tiles ({above / ref['scene_tiles']:.1%}) "
                      f"have a similarity >= {float(threshold):g}.")
    return out
