"""Expected-error profile: the cross-validated error as a monotone function of the DI.

As CAST's ``errorProfiles`` (Meyer & Pebesma 2021): each training point's dissimilarity
index (DI) is measured against the points of the *other* CV folds (``train_di`` of the
AOA state), which is how far that point was from what its fold model saw.  The points are
ordered by DI, the RMSE of their out-of-fold residuals is taken over a centred moving
window of ``window`` points, and a monotone increasing curve of that RMSE against DI is
fitted (scikit-learn ``IsotonicRegression``; CAST uses a shape-constrained spline).  As in
CAST only the points inside the AOA (DI <= threshold) calibrate the curve when at least
``MIN_POINTS`` are; the curve is flat beyond its end points (``out_of_bounds="clip"``).

The state holds the isotonic curve as its thresholds (two float64 tensors) and plain Python
numbers, so it round-trips through ``torch.load(weights_only=True)``; evaluating it is a
linear interpolation between the thresholds, exactly what ``IsotonicRegression.predict``
does.  :func:`aoa_state` / :func:`train_di` are the one place that knows where a model
keeps the DI reference (one shared ``aoa`` state, or per target ``aoa_targets``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression

from .errors import InputError
from .heads import to_numpy

STATE_VERSION = 1
WINDOW = 5          # CAST's default window.size
MIN_POINTS = 10     # fewer calibration points inside the AOA: use all points


def aoa_state(model: dict, target: str) -> Optional[dict]:
    """The AOA state that measures DI for ``target``: its own (``aoa_targets``) or the
    model's shared one (``aoa``); None when the model has none."""
    per_target = model.get("aoa_targets") or {}
    return per_target.get(target, model.get("aoa"))


def train_di(state: Optional[dict]) -> Optional[np.ndarray]:
    """(N,) DI of each training point against the other folds (NaN where unknown)."""
    if state is None or state.get("train_di") is None:
        return None
    return np.asarray(to_numpy(state["train_di"]), dtype=np.float64).reshape(-1)


def point_di(state: Optional[dict], residuals) -> Optional[np.ndarray]:
    """:func:`train_di` aligned with a target's (N,) residuals: as is when it has N values,
    spread over the points with a residual when it has one per such point (a per-target
    AOA fitted on those points only); None when there is none or it does not fit."""
    di = train_di(state)
    res = np.asarray(residuals, np.float64).reshape(-1)
    if di is None or di.shape == res.shape:
        return di
    has = np.isfinite(res)
    if di.shape[0] != int(has.sum()):
        return None
    full = np.full(res.shape, np.nan)
    full[has] = di
    return full


def window_rmse(di, abs_error, window: int = WINDOW):
    """(di, rmse) of the centred moving windows of ``window`` points ordered by DI (as
    zoo::rollapply(align="center") in CAST): one value per complete window, at the DI of
    the window's centre point."""
    di = np.asarray(di, np.float64)
    err = np.asarray(abs_error, np.float64)
    order = np.argsort(di, kind="stable")
    di, sq = di[order], err[order] ** 2
    window = max(1, min(int(window), len(di)))
    sums = np.convolve(sq, np.ones(window), mode="valid")
    half = (window - 1) // 2
    centres = di[half:half + len(sums)]
    return centres, np.sqrt(sums / window)


def fit_error_profile(di, residuals, threshold: Optional[float] = None,
                      window: int = WINDOW) -> dict:
    """The error profile of one target from each point's DI against the other folds and
    its out-of-fold residual (observed - predicted); NaN in either is skipped."""
    di = np.asarray(di, np.float64).reshape(-1)
    res = np.asarray(residuals, np.float64).reshape(-1)
    if di.shape != res.shape:
        raise InputError(f"Error profile: {di.shape[0]} DI values for {res.shape[0]} residuals.")
    ok = np.isfinite(di) & np.isfinite(res)
    n_all = int(ok.sum())
    if n_all < 3:
        raise InputError(f"Error profile: {n_all} point(s) with a DI and a CV residual; at "
                         f"least 3 are needed.")
    inside = ok & (di <= threshold) if threshold is not None else ok
    use = inside if inside.sum() >= MIN_POINTS else ok
    x, y = window_rmse(di[use], np.abs(res[use]), window)
    iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y)
    return {"kind": "error_profile", "version": STATE_VERSION, "metric": "rmse",
            "di": torch.from_numpy(np.asarray(iso.X_thresholds_, np.float64)),
            "error": torch.from_numpy(np.asarray(iso.y_thresholds_, np.float64)),
            "window": int(window), "n": int(use.sum()),
            "threshold": None if threshold is None else float(threshold)}


def expected_error(state: dict, di) -> np.ndarray:
    """Expected RMSE at each DI (NaN where DI is NaN)."""
    if not isinstance(state, dict) or state.get("kind") != "error_profile" or \
            int(state.get("version", -1)) > STATE_VERSION:
        raise InputError("Not an error profile of this SoilSSL version.")
    x = np.asarray(to_numpy(state["di"]), np.float64)
    y = np.asarray(to_numpy(state["error"]), np.float64)
    di = np.asarray(di, np.float64)
    out = np.interp(di, x, y) if len(x) > 1 else np.full(di.shape, float(y[0]))
    out[~np.isfinite(di)] = np.nan
    return out
