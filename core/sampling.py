"""Where to sample next: designs of new soil sample sites on a feature raster.

Candidates are the valid tiles of the feature raster (one pixel per tile) that are not
excluded (EXCLUDE polygons), that have a finite cost (COST: nodata = inaccessible) and
covariate values, and that hold no existing sample.  The raster is scanned window by
window; a bounded random sample of candidates (``max_candidates``) and of all valid tiles
(``max_map``: the prediction area, for the AOA shares) is kept.

Feature space: the leading principal components (``n_pcs``) of the standardised features
(each feature scaled to unit variance, as the AOA's distances are), fitted on the sample of
valid tiles.

The designs (:mod:`.designs`): ``coverage`` (weighted K-means in PC space with the
existing samples as fixed centres; candidates outside the existing samples' AOA weigh
``OUTSIDE_WEIGHT``) and ``clhs`` (conditioned Latin hypercube on the PCs plus the
covariates, keeping the existing samples), both at least ``min_distance`` from existing
samples and from each other.

AOA growth (Meyer & Pebesma 2021, :mod:`.aoa`): the AOA of the existing samples (their
tiles' features, spatial K-means folds) is fitted with :func:`.aoa.fit_aoa` and its share
of the valid tiles measured with :func:`.aoa.aoa_predict`; then the proposed sites'
features join the reference (each in the fold of its nearest existing sample) and the
share is measured again.  The same for ``n_random`` random designs of N candidates (same
spacing rule) and, with covariates, for cLHS on the covariates alone.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from .aoa import aoa_predict, fit_aoa
from .designs import (CLHS_ITERATIONS, clhs_design, coverage_design, random_design,
                      spacing_error, spacing_mask)
from .errors import InputError
from .maps import _row_windows, _valid, check_features
from .places import Places, pixel_centres, points_to_grid
from .progress import Progress, ensure
from .writer import read_tags

METHODS = ("coverage", "clhs")
N_RANDOM = 20
N_PCS = 10
MAX_CANDIDATES = 20_000
MAX_MAP = 5_000
OUTSIDE_WEIGHT = 4.0   # coverage: weight of a candidate outside the AOA (inside: 1)
MAX_FOLDS = 6


# ---------------------------------------------------------------------------------------
# Inputs on the feature grid
# ---------------------------------------------------------------------------------------
def _bounds_meet(a, b) -> bool:
    return not (a[2] <= b[0] or a[0] >= b[2] or a[3] <= b[1] or a[1] >= b[3])


class _OnGrid:
    """A raster (all bands) warped onto the feature raster's grid (tile averages), NaN
    where it has no data."""

    def __init__(self, path: str, ds, what: str):
        try:
            self.src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"Cannot open the {what} raster '{path}': {exc}") from exc
        try:
            if self.src.crs is None:
                raise InputError(f"The {what} raster '{path}' has no CRS: assign one in QGIS.")
            theirs = transform_bounds(self.src.crs, ds.crs, *self.src.bounds)
            if not _bounds_meet(theirs, ds.bounds):
                raise InputError(
                    f"The {what} raster does not overlap the feature raster: its extent "
                    f"{_fmt(theirs)} vs {_fmt(ds.bounds)} (in {ds.crs}).")
            nodata = self.src.nodata
            self.vrt = WarpedVRT(self.src, crs=ds.crs, transform=ds.transform, width=ds.width,
                                 height=ds.height, resampling=Resampling.average,
                                 src_nodata=nodata, nodata=np.nan, dtype="float32")
        except BaseException:
            self.src.close()
            raise
        self.count = self.src.count
        self.names = [d or f"band {i}" for i, d in enumerate(self.src.descriptions, 1)]

    def read(self, win: Window) -> np.ndarray:
        return self.vrt.read(window=win).astype(np.float64)

    def close(self):
        self.vrt.close()
        self.src.close()


def _fmt(b) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in b) + ")"


@dataclass
class Scan:
    """What one pass over the feature raster keeps."""
    cand_feats: np.ndarray            # (m, D) float32
    cand_xy: np.ndarray               # (m, 2) tile centres, raster CRS
    cand_cost: Optional[np.ndarray]   # (m,)
    cand_cov: Optional[np.ndarray]    # (m, q)
    map_feats: np.ndarray             # (k, D) sample of every valid tile
    n_valid: int
    n_candidates: int
    n_excluded: int
    n_costless: int
    cov_names: List[str]


def tile_values(ds, rows: np.ndarray, cols: np.ndarray, covs: Sequence[_OnGrid] = ()):
    """Features (n, D), validity (n,) and covariates (n, q) of the tiles (rows, cols),
    read by row windows (one read per window, not per point)."""
    n = len(rows)
    feats = np.full((n, ds.count), np.nan, np.float32)
    ok = np.zeros(n, bool)
    cov = np.full((n, sum(c.count for c in covs)), np.nan)
    for win in _row_windows(ds):
        r0 = int(win.row_off)
        sel = (rows >= r0) & (rows < r0 + int(win.height))
        if not sel.any():
            continue
        rr, cc = rows[sel] - r0, cols[sel]
        block = ds.read(window=win).astype(np.float32, copy=False)
        feats[sel] = block[:, rr, cc].T
        ok[sel] = _valid(ds, block, win)[rr, cc]
        if covs:
            cov[sel] = np.concatenate([g.read(win)[:, rr, cc] for g in covs]).T
    return feats, ok, cov


def _sample_rate(total: int, keep: int) -> float:
    return min(1.0, 1.5 * keep / max(1, total))


def scan(ds, cost: Optional[_OnGrid], covs: Sequence[_OnGrid], exclude: Optional[Places],
         taken: np.ndarray, max_candidates: int, max_map: int, rng,
         progress: Progress) -> Scan:
    total = ds.width * ds.height
    rate_c, rate_m = _sample_rate(total, max_candidates), _sample_rate(total, max_map)
    feats, xy, costs, cvs, maps = [], [], [], [], []
    n_valid = n_cand = n_excl = n_costless = 0
    for win in _row_windows(ds):
        progress.check()
        block = ds.read(window=win).astype(np.float32, copy=False)
        ok = _valid(ds, block, win)
        allowed = ok.copy()
        if exclude is not None:
            ex = exclude.mask(win)
            n_excl += int((ok & ex).sum())
            allowed &= ~ex
        cw = None
        if cost is not None:
            cw = cost.read(win)[0]
            finite = np.isfinite(cw)
            n_costless += int((allowed & ~finite).sum())
            allowed &= finite
        cov = None
        if covs:
            cov = np.concatenate([c.read(win) for c in covs])
            allowed &= np.isfinite(cov).all(axis=0)
        r0, c0 = int(win.row_off), int(win.col_off)
        if len(taken):  # tiles that hold an existing sample (linear indices, sorted)
            rr, cc = np.indices(ok.shape)
            allowed &= ~np.isin((rr + r0) * ds.width + cc + c0, taken)
        n_valid += int(ok.sum())
        n_cand += int(allowed.sum())
        pick = allowed & (rng.random(ok.shape) < rate_c)
        rows, cols = np.nonzero(pick)
        if len(rows):
            feats.append(block[:, pick].T)
            xy.append(np.column_stack(pixel_centres(ds, rows + r0, cols + c0)))
            if cw is not None:
                costs.append(cw[pick])
            if cov is not None:
                cvs.append(cov[:, pick].T)
        pm = ok & (rng.random(ok.shape) < rate_m)
        if pm.any():
            maps.append(block[:, pm].T)
        progress.set((win.row_off + win.height) / ds.height)
    d = ds.count
    cat = (lambda parts, width: np.concatenate(parts) if parts else np.empty((0, width)))
    out = Scan(cat(feats, d).astype(np.float32), cat(xy, 2),
               cat(costs, 1).reshape(-1) if cost is not None else None,
               cat(cvs, sum(c.count for c in covs)) if covs else None,
               cat(maps, d).astype(np.float32), n_valid, n_cand, n_excl, n_costless,
               [f"{i}:{n}" if len(covs) > 1 else n for i, c in enumerate(covs, 1)
                for n in c.names])
    if len(out.cand_feats) > max_candidates:
        keep = np.sort(rng.choice(len(out.cand_feats), max_candidates, replace=False))
        out.cand_feats, out.cand_xy = out.cand_feats[keep], out.cand_xy[keep]
        if out.cand_cost is not None:
            out.cand_cost = out.cand_cost[keep]
        if out.cand_cov is not None:
            out.cand_cov = out.cand_cov[keep]
    if len(out.map_feats) > max_map:
        out.map_feats = out.map_feats[rng.choice(len(out.map_feats), max_map, replace=False)]
    return out


# ---------------------------------------------------------------------------------------
# AOA shares
# ---------------------------------------------------------------------------------------
def n_folds_for(n_points: int) -> int:
    return max(2, min(MAX_FOLDS, n_points // 2))


def reference_folds(xy: np.ndarray, seed: int = 0) -> np.ndarray:
    """Spatial K-means folds of the existing samples (random folds if K-means leaves a fold
    too small)."""
    from .cv import spatial_folds
    k = n_folds_for(len(xy))
    try:
        return spatial_folds(xy, k, "kmeans", seed)
    except InputError:
        return spatial_folds(xy, k, "random", seed)


class AoaGrowth:
    """Share of the valid tiles inside the AOA of the existing samples, and of the existing
    samples plus a design (each site joins the fold of its nearest existing sample)."""

    def __init__(self, X: np.ndarray, xy: np.ndarray, folds: np.ndarray, map_feats: np.ndarray):
        from scipy.spatial import cKDTree
        self.X, self.xy, self.folds, self.map = X, xy, folds, map_feats
        self.tree = cKDTree(xy)
        self.state = fit_aoa(X, folds)
        self.di_map, inside = aoa_predict(self.state, map_feats)
        self.before = float(inside.mean())

    def share(self, feats: np.ndarray, xy: np.ndarray) -> float:
        _, near = self.tree.query(xy, k=1)
        state = fit_aoa(np.vstack([self.X, feats]), np.concatenate([self.folds,
                                                                    self.folds[near]]))
        return float(aoa_predict(state, self.map)[1].mean())


# ---------------------------------------------------------------------------------------
# Model values at the sites
# ---------------------------------------------------------------------------------------
FEATURE_HEADS = ("mlp", "ridge", "rf_features")


def model_values(model: dict, feats: np.ndarray, level: float = 0.9,
                 feature_tags: Optional[dict] = None, progress: Optional[Progress] = None
                 ) -> dict:
    """Field name -> (n,) values at the sites: pred_<target> (the model's head on the
    tiles' features), spread_<target> (std of the fold models) and, for a model with CV
    residual calibration, width_<target> (width of the LEVEL prediction interval)."""
    from .heads import load_regressor
    progress = ensure(progress)
    ref = (feature_tags or {}).get("backbone") or {}
    mref = model.get("backbone") or {}
    if isinstance(ref, dict) and ref.get("sha256") and mref.get("sha256") and \
            ref["sha256"] != mref["sha256"]:
        raise InputError("The MODEL was fitted with another backbone than the one that made "
                         "the feature raster: extract the features with the model's backbone.")
    if model.get("aoa") is not None and model["aoa"].get("mean") is not None and \
            len(model["aoa"]["mean"]) != feats.shape[1]:
        raise InputError(f"The MODEL maps {len(model['aoa']['mean'])}-dimensional features; the "
                         f"feature raster has {feats.shape[1]} bands.")
    out = {}
    for t in model["targets"]:
        label = str(model["methods"][t])
        if label.split(" ")[0] not in FEATURE_HEADS:
            progress.info(f"{t}: the model maps it with {label}, which needs more than the "
                          f"feature raster; no predicted value at the sites.")
            continue
        out[f"pred_{t}"] = load_regressor(model["heads"][t]).predict(feats)
        folds = model.get("fold_heads", {}).get(t) or []
        if folds:
            out[f"spread_{t}"] = np.stack([load_regressor(s).predict(feats)
                                           for s in folds]).std(axis=0)
        width = _interval_width(model, t, feats, level)
        if width is not None:
            out[f"width_{t}"] = width
        else:
            progress.info(f"{t}: the model holds no prediction-interval calibration (CV "
                          f"residuals): no interval width at the sites.")
    return out


def _interval_width(model: dict, target: str, feats: np.ndarray, level: float):
    """2 x conformal factor x local scale, where the model holds a calibration (trust)."""
    conformal = (model.get("conformal") or {}).get(target)
    if not conformal:
        return None
    try:
        from .errorprofile import aoa_state
        from .intervals import interval_factor, local_scale
    except ImportError:
        return None
    profile = (model.get("error_profile") or {}).get(target)
    state = aoa_state(model, target)
    di = aoa_predict(state, feats)[0] if (profile is not None and state is not None) \
        else np.zeros(len(feats))
    return 2.0 * interval_factor(conformal, level) * local_scale(profile, di)


# ---------------------------------------------------------------------------------------
# The design
# ---------------------------------------------------------------------------------------
@dataclass
class Design:
    x: np.ndarray
    y: np.ndarray
    rank: np.ndarray
    di: np.ndarray
    inside: np.ndarray
    reason: List[str]
    values: dict                        # extra fields: cost, pred_*, spread_*, width_*
    summary: dict
    crs: str
    pcs_sites: np.ndarray = field(repr=False, default=None)
    pcs_existing: np.ndarray = field(repr=False, default=None)
    pcs_map: np.ndarray = field(repr=False, default=None)


def sampling_design(features: str, points_xy, points_crs=None, n: int = 20,
                    min_distance: float = 0.0, cost: Optional[str] = None,
                    exclude: Optional[Sequence[dict]] = None, exclude_crs=None,
                    covariates: Sequence[str] = (), method: str = "coverage",
                    model: Optional[dict] = None, level: float = 0.9, n_pcs: int = N_PCS,
                    cost_weight: float = 1.0, n_random: int = N_RANDOM, seed: int = 0,
                    max_candidates: int = MAX_CANDIDATES, max_map: int = MAX_MAP,
                    iterations: int = CLHS_ITERATIONS,
                    progress: Optional[Progress] = None) -> Design:
    """N new sample sites on the feature raster ``features`` given the existing samples
    ``points_xy`` ((xs, ys) in ``points_crs``); see the module doc.  Raises InputError
    (nothing is written here) for N above the candidate tiles, a cost raster that does
    not overlap, exclusion zones covering every tile, or an impossible MIN_DISTANCE."""
    progress = ensure(progress)
    if method not in METHODS:
        raise InputError(f"Unknown METHOD '{method}': use one of {', '.join(METHODS)}.")
    n = int(n)
    if n < 1:
        raise InputError(f"N must be at least 1 (got {n}).")
    if min_distance < 0:
        raise InputError(f"MIN_DISTANCE must not be negative (got {min_distance}).")
    check_features(features, progress)
    rng = np.random.default_rng(seed)
    tags = read_tags(features)
    opened: list = []
    with rasterio.open(features) as ds:
        try:
            xs, ys = (np.asarray(v, float) for v in points_xy)
            px, py, pc, pr, inside = points_to_grid(xs, ys, points_crs, ds)
            if not inside.any():
                raise InputError("Every existing sample point lies outside the feature raster: "
                                 "check that POINTS and INPUT cover the same area.")
            cost_r = _OnGrid(cost, ds, "cost") if cost else None
            if cost_r is not None:
                opened.append(cost_r)
            covs = []
            for path in covariates or ():
                covs.append(_OnGrid(path, ds, "covariate"))
                opened.append(covs[-1])
            places = None
            if exclude:
                places = Places(exclude, exclude_crs, ds, "exclusion")
            taken = np.unique(pr[inside] * ds.width + pc[inside])
            # existing samples: their tiles' features (and covariates)
            ex_feats, ex_ok, ex_cov = tile_values(ds, pr[inside], pc[inside], covs)
            if ex_ok.sum() < 4:
                raise InputError(f"Only {int(ex_ok.sum())} existing sample point(s) lie on valid "
                                 f"tiles of the feature raster: the area of applicability "
                                 f"needs at least 4.")
            if (~ex_ok).any():
                progress.info(f"{int((~ex_ok).sum())} existing point(s) lie on nodata tiles; "
                              f"they only count for the spacing.")
            if (~inside).any():
                progress.info(f"{int((~inside).sum())} existing point(s) lie outside the "
                              f"feature raster; they only count for the spacing.")
            X_ex = ex_feats[ex_ok].astype(np.float64)
            cov_ex = ex_cov[ex_ok]
            xy_ex = np.column_stack(pixel_centres(ds, pr[inside], pc[inside]))[ex_ok]
            xy_all = np.column_stack([px, py])
            progress.info("Scanning the feature raster for candidate tiles...")
            sc = scan(ds, cost_r, covs, places, taken, max_candidates, max_map, rng,
                      progress.sub(0.0, 0.3))
            crs = ds.crs.to_wkt()
        finally:
            for g in opened:
                g.close()
    if sc.n_valid == 0:
        raise InputError(f"'{features}' has no valid pixel: every tile is nodata.")
    if places is not None and sc.n_excluded >= sc.n_valid:
        raise InputError("The exclusion polygons cover every valid tile of the feature raster: "
                         "no candidate site is left.")
    if cost_r is not None and sc.n_costless and sc.n_candidates == 0:
        raise InputError("The cost raster has no value (nodata = inaccessible) on any candidate "
                         "tile: no site can be reached.")
    if n > sc.n_candidates:
        raise InputError(f"N = {n} is larger than the {sc.n_candidates} candidate tiles (valid, "
                         f"not excluded, reachable, without a sample): lower N or extract the "
                         f"features at a smaller STRIDE.")
    if covs and np.isfinite(cov_ex).all(axis=1).sum() < len(cov_ex):
        bad = ~np.isfinite(cov_ex).all(axis=1)
        progress.info(f"{int(bad.sum())} existing point(s) have no covariate value; cLHS counts "
                      f"them at the covariates' median.")
        med = np.nanmedian(sc.cand_cov, axis=0)
        cov_ex = np.where(np.isfinite(cov_ex), cov_ex, med)
    m = len(sc.cand_feats)
    progress.info(f"{sc.n_valid} valid tiles, {sc.n_candidates} candidates "
                  f"({m} kept for the design), {len(X_ex)} existing samples on valid tiles.")
    progress.set(0.3)
    # principal components of the features
    from sklearn.decomposition import PCA
    k = int(max(1, min(n_pcs, sc.map_feats.shape[1], len(sc.map_feats) - 1)))
    # standardised features, as the AOA measures distances (every feature counts alike)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    pca = make_pipeline(StandardScaler(), PCA(n_components=k, random_state=seed)).fit(
        sc.map_feats)
    explained = float(pca[-1].explained_variance_ratio_.sum())
    P_c, P_ex, P_map = (pca.transform(a) for a in (sc.cand_feats, X_ex, sc.map_feats))
    # the AOA of the existing samples
    folds = reference_folds(xy_ex, seed)
    growth = AoaGrowth(X_ex, xy_ex, folds, sc.map_feats)
    thr = float(growth.state["threshold"])
    di_c, inside_c = aoa_predict(growth.state, sc.cand_feats)
    progress.info(f"Area of applicability of the {len(X_ex)} existing samples: "
                  f"{growth.before:.1%} of the valid tiles (DI threshold {thr:.3f}).")
    allowed = spacing_mask(sc.cand_xy, xy_all, min_distance)
    if not allowed.any():
        raise spacing_error(0, n, min_distance)
    sub = progress.sub(0.35, 0.7)
    reasons: List[str] = []
    cov_names = sc.cov_names
    var_names = [f"PC{i + 1}" for i in range(k)] + cov_names
    if method == "coverage":
        w = np.where(inside_c, 1.0, OUTSIDE_WEIGHT)
        res = coverage_design(P_c, P_ex, n, w, sc.cand_xy, allowed, min_distance,
                              sc.cand_cost, cost_weight, seed, progress=sub)
        idx = res["index"]
        for i, size in zip(idx, res["size"]):
            reasons.append(f"centre of {int(size)} candidate tiles ({size / m:.0%}) of feature "
                           f"space that no existing sample represents")
    else:
        V = np.hstack([P_c, sc.cand_cov]) if sc.cand_cov is not None else P_c
        Vf = np.hstack([P_ex, cov_ex]) if sc.cand_cov is not None else P_ex
        res = clhs_design(V, Vf, n, sc.cand_xy, allowed, min_distance, sc.cand_cost,
                          cost_weight, iterations, seed, sub)
        idx = res["index"]
        names = [var_names[v] for v in res["variables"]]
        for filled, strata in zip(res["filled"], res["strata"]):
            if filled:
                parts = ", ".join(f"{names[v]} {strata[v]}/{res['total']}" for v in filled[:4])
                more = f" and {len(filled) - 4} more" if len(filled) > 4 else ""
                reasons.append(f"fills empty Latin-hypercube strata: {parts}{more}")
            else:
                reasons.append("balances the strata and correlations of the design")
    idx = np.asarray(idx)
    di_s, in_s = di_c[idx], inside_c[idx]
    reasons = [f"{'outside' if not ok else 'inside'} the AOA (DI {d:.2f} "
               f"{'>' if not ok else '<='} {thr:.2f}); {r}"
               for d, ok, r in zip(di_s, in_s, reasons)]
    # AOA growth: the design, random designs, cLHS on the covariates alone
    progress.info("Measuring the AOA growth of the design and of random designs...")
    sub = progress.sub(0.7, 0.97)
    after = growth.share(sc.cand_feats[idx], sc.cand_xy[idx])
    shares = []
    for r in range(n_random):
        sub.check()
        sel = random_design(sc.cand_xy, allowed, n, min_distance, rng)
        if sel is None:
            break
        shares.append(growth.share(sc.cand_feats[sel], sc.cand_xy[sel]))
        sub.set((r + 1) / (n_random + 1))
    cov_share = None
    if sc.cand_cov is not None:
        try:
            cres = clhs_design(sc.cand_cov, cov_ex, n, sc.cand_xy, allowed, min_distance,
                               sc.cand_cost, cost_weight, iterations, seed)
            cov_share = growth.share(sc.cand_feats[cres["index"]], sc.cand_xy[cres["index"]])
        except InputError as exc:
            progress.info(f"cLHS on the covariates alone: {exc}")
    gain = after - growth.before
    random_gain = (float(np.mean(shares)) - growth.before) if shares else float("nan")
    summary = {
        "method": method, "n": n, "existing": int(len(X_ex)), "valid_tiles": sc.n_valid,
        "candidate_tiles": sc.n_candidates, "candidates_used": m, "pcs": k,
        "explained_variance": explained,
        "threshold": thr, "aoa_before": growth.before, "aoa_after": after,
        "aoa_random_mean": float(np.mean(shares)) if shares else float("nan"),
        "aoa_random_std": float(np.std(shares)) if shares else float("nan"),
        "aoa_random": shares, "aoa_covariate_clhs": cov_share,
        "growth": gain, "random_growth": random_gain,
        "growth_ratio": gain / random_gain if shares and random_gain > 0 else
        (float("inf") if gain > 0 else float("nan")),
        "min_distance": float(min_distance), "covariates": cov_names,
        "cost": bool(cost), "excluded_tiles": sc.n_excluded, "variables": var_names,
    }
    progress.info(format_summary(summary))
    values = {}
    if sc.cand_cost is not None:
        values["cost"] = sc.cand_cost[idx]
    if model is not None:
        values.update(model_values(model, sc.cand_feats[idx].astype(np.float32), level, tags,
                                   progress))
    order = np.argsort(-np.nan_to_num(di_s, nan=np.inf), kind="stable")  # most novel first
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(1, n + 1)
    progress.set(1.0)
    return Design(sc.cand_xy[idx, 0], sc.cand_xy[idx, 1], rank, di_s, in_s, reasons, values,
                  summary, crs, P_c[idx], P_ex, P_map)


def ratio_text(s: dict) -> str:
    """The growth ratio in words where it is not a number."""
    if math.isfinite(s["growth_ratio"]):
        return f"{s['growth_ratio']:.2f}×"
    if s["aoa_before"] >= 1.0:
        return "— (every tile is already inside the AOA)"
    if s["growth"] > 0:
        return "— (the design grows the AOA, random designs do not)"
    return "— (neither grows the AOA)"


def format_summary(s: dict) -> str:
    """The AOA comparison as log lines."""
    lines = [f"Share of the valid tiles inside the area of applicability ({s['n']} new sites, "
             f"{s['method']}):",
             f"  existing {s['existing']} samples: {s['aoa_before']:.1%}",
             f"  + designed sites: {s['aoa_after']:.1%} (growth {s['growth']:+.1%})"]
    if s["aoa_random"]:
        lines.append(f"  + random sites ({len(s['aoa_random'])} draws): "
                     f"{s['aoa_random_mean']:.1%} ± {s['aoa_random_std']:.1%} "
                     f"(growth {s['random_growth']:+.1%})")
        lines.append(f"  design growth / mean random growth: {ratio_text(s)}")
    if s["aoa_covariate_clhs"] is not None:
        lines.append(f"  + cLHS on the covariates alone: {s['aoa_covariate_clhs']:.1%} "
                     f"(growth {s['aoa_covariate_clhs'] - s['aoa_before']:+.1%})")
    return "\n".join(lines)


def write_design_report(path: str, design: Design, title: str = "SoilSSL sampling design") -> str:
    """Self-contained HTML: the AOA comparison, the sites and their PC-space positions."""
    from .files import atomic_write_text
    from .report import CSS, _figure, _png
    s = design.summary
    rows = [("existing samples", s["aoa_before"], "")]
    rows.append((f"+ {s['n']} designed sites ({s['method']})", s["aoa_after"],
                 f"{s['growth']:+.1%}"))
    if s["aoa_random"]:
        rows.append((f"+ {s['n']} random sites, {len(s['aoa_random'])} draws (mean ± std)",
                     s["aoa_random_mean"], f"{s['random_growth']:+.1%} ± "
                                           f"{s['aoa_random_std']:.1%}"))
    if s["aoa_covariate_clhs"] is not None:
        rows.append((f"+ {s['n']} sites by cLHS on the covariates alone",
                     s["aoa_covariate_clhs"], f"{s['aoa_covariate_clhs'] - s['aoa_before']:+.1%}"))
    table = "<table><tr><th>reference</th><th>share inside AOA</th><th>growth</th></tr>" + \
        "".join(f"<tr><td>{html.escape(a)}</td><td>{b:.1%}</td><td>{c}</td></tr>"
                for a, b, c in rows) + "</table>"
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{s['valid_tiles']} valid tiles, {s['candidate_tiles']} candidates, "
             f"{s['existing']} existing samples; feature space: {s['pcs']} principal components "
             f"({s['explained_variance']:.0%} of the variance)"
             + (", covariates " + html.escape(", ".join(s["covariates"])) if s["covariates"]
                else "") +
             f". Minimum spacing {s['min_distance']:g} map units"
             f"{', cost-constrained' if s['cost'] else ''}.</p>",
             "<h2>Area of applicability if the sites were sampled</h2>", table,
             f"<p>Growth of the design / mean growth of random designs: "
             f"<b>{html.escape(ratio_text(s))}</b>.</p>" if s["aoa_random"] else "",
             "<p class='note'>The proposed sites' features are added to the existing samples' "
             "dissimilarity-index reference (each site in the spatial fold of its nearest "
             "sample) and the AOA (Meyer &amp; Pebesma 2021) is recomputed over a sample of "
             "the valid tiles.</p>"]
    fig = _figure(6.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    if design.pcs_map is not None and design.pcs_map.shape[1] >= 2:
        ax.scatter(design.pcs_map[:, 0], design.pcs_map[:, 1], s=3, c="#bbbbbb",
                   label="tiles")
        ax.scatter(design.pcs_existing[:, 0], design.pcs_existing[:, 1], s=10, c="tab:blue",
                   label="existing samples")
        ax.scatter(design.pcs_sites[:, 0], design.pcs_sites[:, 1], s=40, c="tab:red",
                   marker="*", label="proposed sites")
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.legend(fontsize=8)
        parts.append("<h2>Feature space (first two principal components)</h2>" + _png(fig))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in
                   ["rank", "x", "y", "DI", *design.values, "reason"])
    body = ""
    for i in np.argsort(design.rank):
        extra = "".join(f"<td>{float(v[i]):.3g}</td>" for v in design.values.values())
        body += (f"<tr><td>{design.rank[i]}</td><td>{design.x[i]:.1f}</td>"
                 f"<td>{design.y[i]:.1f}</td><td>{design.di[i]:.2f}</td>{extra}"
                 f"<td style='text-align:left'>{html.escape(design.reason[i])}</td></tr>")
    parts.append(f"<h2>Proposed sites</h2><table><tr>{head}</tr>{body}</table></body></html>")
    return atomic_write_text("\n".join(parts), path)
