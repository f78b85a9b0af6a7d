"""Conformal prediction intervals calibrated on the spatial-CV residuals, locally scaled.

Split-conformal with a normalised conformity score (Papadopoulos et al. 2008; Lei et al.
2018): each calibration point i, predicted out of fold, scores

    r_i = |y_i - ŷ_i| / s(x_i)

where s is the point's expected error from the DI error profile (:mod:`.errorprofile`),
so intervals widen where the map extrapolates in feature space.  A model without a DI
reference uses s = 1 (plain absolute residuals, constant width).  At level L the
half-width factor is the ⌈(n+1)·L⌉-th smallest score (the finite-sample correction that
gives coverage >= L for exchangeable points); a pixel's interval is ŷ ± q·s(x).

The model keeps every target's sorted scores (not a quantile), so any LEVEL can be asked
at mapping time.  :func:`heldout_coverage` measures coverage honestly: for each fold, the
profile and the quantile come from the other folds only and the fold's points are tested.

Classification targets (``kinds`` = "classification") get neither profile nor intervals
here; the class probability maps are their measure of confidence.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from .aoa import aoa_matrix, aoa_predict
from .errorprofile import WINDOW, aoa_state, expected_error, fit_error_profile, point_di
from .errors import InputError
from .heads import to_numpy
from .progress import Progress, ensure

STATE_VERSION = 1
REPORT_LEVELS = (0.8, 0.9, 0.95)
SCALES = ("error_profile", "constant")


# ----------------------------------------------------------------------------- core

def conformal_quantile(scores, level: float) -> float:
    """The ⌈(n+1)·level⌉-th smallest score; inf when n is too small for ``level``."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise InputError(f"LEVEL must lie strictly between 0 and 1, got {level}.")
    s = np.sort(np.asarray(scores, np.float64))
    n = len(s)
    k = math.ceil((n + 1) * level)
    return float(s[k - 1]) if 1 <= k <= n else math.inf


def scale_floor(profile: Optional[dict]) -> float:
    """Smallest scale s used: keeps scores finite where the profile is (near) zero."""
    if profile is None:
        return 1.0
    return 1e-6 * float(np.max(to_numpy(profile["error"]))) + 1e-12


def local_scale(profile: Optional[dict], di) -> np.ndarray:
    """s(x): the profile's expected error at each DI (1 without a profile)."""
    if profile is None:
        return np.ones(np.shape(di), np.float64)
    return np.maximum(expected_error(profile, di), scale_floor(profile))


def fit_conformal(residuals, scale) -> dict:
    """Calibration state from out-of-fold residuals and each point's scale s (NaN skipped)."""
    res = np.asarray(residuals, np.float64).reshape(-1)
    s = np.asarray(scale, np.float64).reshape(-1)
    ok = np.isfinite(res) & np.isfinite(s)
    if ok.sum() < 2:
        raise InputError("Prediction intervals need at least 2 points with a CV residual.")
    scores = np.sort(np.abs(res[ok]) / s[ok])
    return {"kind": "conformal", "version": STATE_VERSION,
            "scores": torch.from_numpy(scores), "n": int(ok.sum())}


def interval_factor(state: dict, level: float) -> float:
    """q at ``level`` from a calibration state; a clear error where n is too small."""
    if not isinstance(state, dict) or state.get("kind") != "conformal" or \
            int(state.get("version", -1)) > STATE_VERSION:
        raise InputError("Not a conformal calibration of this SoilSSL version.")
    q = conformal_quantile(to_numpy(state["scores"]), level)
    if not math.isfinite(q):
        n = int(state["n"])
        raise InputError(f"LEVEL {level} needs more calibration points than the model's {n}: "
                         f"use LEVEL <= {n / (n + 1):.3f}.")
    return q


def heldout_coverage(di, residuals, folds, level: float, threshold: Optional[float] = None,
                     window: int = WINDOW) -> dict:
    """Coverage of the intervals on held-out folds: for each fold the error profile (when
    ``di`` is given) and the quantile are fitted on the other folds' points, and the fold's
    points are tested.  Returns level, coverage (pooled), per_fold, mean_width (mean of
    2·q·s over tested points; inf where a fold's calibration set is too small) and n."""
    res = np.asarray(residuals, np.float64).reshape(-1)
    folds = np.asarray(folds).reshape(-1)
    di = None if di is None else np.asarray(di, np.float64).reshape(-1)
    ok = np.isfinite(res) & (np.isfinite(di) if di is not None else True)
    hits, widths, per_fold = [], [], {}
    for fold in np.unique(folds[ok]):
        cal, test = ok & (folds != fold), ok & (folds == fold)
        if cal.sum() < 3 or not test.any():
            continue
        profile = fit_error_profile(di[cal], res[cal], threshold, window) \
            if di is not None else None
        q = conformal_quantile(np.abs(res[cal]) / local_scale(profile, di[cal] if di is not None
                                                                else np.zeros(int(cal.sum()))),
                               level)
        s = local_scale(profile, di[test] if di is not None else np.zeros(int(test.sum())))
        inside = np.abs(res[test]) <= q * s
        hits.append(inside)
        widths.append(2 * q * s)
        per_fold[int(fold)] = float(inside.mean())
    if not hits:
        raise InputError("Held-out coverage needs at least 2 folds with residuals.")
    hits, widths = np.concatenate(hits), np.concatenate(widths)
    return {"level": float(level), "coverage": float(hits.mean()), "per_fold": per_fold,
            "mean_width": float(widths.mean()), "n": int(len(hits))}


# ----------------------------------------------------------------------------- model

def fit_trust(model: dict, cv, progress: Optional[Progress] = None,
              levels: Sequence[float] = REPORT_LEVELS) -> dict:
    """``error_profile`` and ``conformal`` (target -> state) of a model dict from the CV
    residuals of each target's mapped method; a target without a DI reference gets
    constant-scale intervals and no profile; classification targets get neither."""
    progress = ensure(progress)
    profiles, conformal = {}, {}
    kinds = model.get("kinds") or {}
    for target in model["targets"]:
        if kinds.get(target, "regression") != "regression":
            continue
        label = model["methods"][target]
        res = cv.residuals(target, label)
        state = aoa_state(model, target)
        di = point_di(state, res)  # None: no DI reference for these points, no profile
        threshold = None if state is None else float(state["threshold"])
        profile = None
        if di is not None:
            profile = fit_error_profile(di, res, threshold)
            profiles[target] = profile
        s = local_scale(profile, di if di is not None else np.zeros(res.shape))
        cal = fit_conformal(res, s)
        cal["scale"] = SCALES[0] if profile is not None else SCALES[1]
        cal["heldout"] = [heldout_coverage(di, res, cv.folds, lv, threshold) for lv in levels]
        conformal[target] = cal
        cover = ", ".join(f"{h['coverage']:.1%} at {h['level']:.0%}" for h in cal["heldout"])
        progress.info(f"{target}: prediction intervals ({label}, scaled by "
                      f"{'the DI error profile' if profile is not None else 'a constant'}) "
                      f"cover {cover} of held-out points.")
    return {"error_profile": profiles, "conformal": conformal}


def has_trust(model: dict) -> bool:
    """Whether the model holds CV residual calibrations (models fitted before them do not)."""
    return bool(model.get("conformal"))


class TrustMaps:
    """Expected error and interval bounds on the map: ``products`` (name -> count, band
    names, tags) for "error", "lower", "upper" as asked, and :meth:`fill` writes them into
    MapHeads' blocks from the prediction block and the features of the valid rows."""

    def __init__(self, model: dict, error: bool = False, lower: bool = False,
                 upper: bool = False, level: float = 0.9, tags: Optional[dict] = None):
        self.model, self.level = model, float(level)
        self.targets = list(model["targets"])
        self.products, self.notes = {}, []
        if not (error or lower or upper):
            return
        asked = [n for n, on in (("OUTPUT_ERROR", error), ("OUTPUT_LOWER", lower),
                                 ("OUTPUT_UPPER", upper)) if on]
        if not has_trust(model):
            raise InputError(f"This model has no cross-validation residual calibration, "
                             f"needed for {', '.join(asked)}: it was fitted by an older "
                             f"SoilSSL. Fit it again with Fit soil heads on points.")
        profiles = model.get("error_profile") or {}
        conformal = model["conformal"]
        # targets without a calibration (class targets: they have class probabilities
        # instead) keep nodata bands; only a model with none for any target is refused
        missing = [t for t in self.targets if t not in conformal]
        if (lower or upper) and missing:
            if len(missing) == len(self.targets):
                raise InputError(f"No prediction intervals for {missing} (classification "
                                 f"targets have class probabilities instead).")
            self.notes.append(f"No prediction intervals for {missing} (class targets have "
                              f"class probabilities instead): their bounds are nodata.")
        if error:
            missing = [t for t in self.targets if t not in profiles]
            if len(missing) == len(self.targets):
                raise InputError(f"No error profile for {missing}: the model has no DI "
                                 f"reference for them (no area of applicability).")
            if missing:
                self.notes.append(f"No error profile for {missing}: their expected-error "
                                  f"bands are nodata.")
        self.profiles = {t: profiles.get(t) for t in self.targets}
        self.q = {t: interval_factor(conformal[t], self.level) for t in self.targets
                  if (lower or upper) and t in conformal}
        tags = dict(tags or {})
        if error:
            self.products["error"] = {
                "count": len(self.targets),
                "band_names": [f"{t} expected RMSE" for t in self.targets],
                "tags": dict(tags, soilssl_product="error",
                             note="expected CV RMSE at the pixel's DI; flat beyond the "
                                  "calibrated DI range (outside the AOA: a lower bound)")}
        for name, on, sign in (("lower", lower, "-"), ("upper", upper, "+")):
            if on:
                self.products[name] = {
                    "count": len(self.targets),
                    "band_names": [f"{t} {name} {self.level:.0%}" for t in self.targets],
                    "tags": dict(tags, soilssl_product=name, level=self.level,
                                 factor=dict(self.q),
                                 note=f"prediction {sign} factor x scale (conformal)")}

    def __bool__(self):
        return bool(self.products)

    def fill(self, blocks: dict, x: np.ndarray, ok: np.ndarray,
             di: Optional[dict] = None) -> None:
        """Fill this object's products in ``blocks`` for the rows ``ok``: ``x`` the map's
        blocks of those rows (set name -> array, or the feature rows alone); ``di``: id of
        an AOA state -> the DI of these rows, when the AOA map has computed it already."""
        if not self.products:
            return
        di_by_state = dict(di or {})
        n = int(np.count_nonzero(ok))
        for t, target in enumerate(self.targets):
            state = aoa_state(self.model, target)
            profile = self.profiles[target]
            if profile is not None:
                if id(state) not in di_by_state:
                    di_by_state[id(state)] = aoa_predict(state, aoa_matrix(state, x))[0]
                s = local_scale(profile, di_by_state[id(state)])
            else:
                s = np.ones(n)
            if "error" in blocks and profile is not None:
                blocks["error"][t, ok] = expected_error(profile, di_by_state[id(state)])
            pred = blocks["prediction"][t, ok].astype(np.float64)
            if target in self.q:
                half = self.q[target] * s
                if "lower" in blocks:
                    blocks["lower"][t, ok] = pred - half
                if "upper" in blocks:
                    blocks["upper"][t, ok] = pred + half
