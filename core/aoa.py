"""Area of applicability (AOA) of a model in its predictor space, as CAST does it
(Meyer & Pebesma 2021; CAST ``trainDI`` and ``aoa``).

The predictors (the columns the model sees) are scaled as R's ``scale()`` does with the
training points' statistics (mean, standard deviation with n − 1) and multiplied by
their weights, the model's variable importance (:func:`~.importance.aoa_weights`:
a forest's impurity importances, else permutation importance on the held-out folds;
negative ones set to 0; constant columns get weight 0).  The dissimilarity index of a
vector x is

    DI(x) = (distance from x to the nearest training point) / (mean distance between
            distinct training points)

and x is inside the AOA when DI(x) <= threshold.  The threshold comes from the
cross-validation (CAST's CV-aware ``trainDI``): each training point's DI is measured
against the training points of the *other* folds only (what its fold model saw); the
threshold is the upper whisker Q75 + 1.5·IQR of those values, capped at their maximum.
The local point density (LPD, CAST >= 0.9) of x is the number of training points whose
DI to x is below the threshold (training points: counted among the other folds).

:func:`fit_model_aoa` fits one AOA per target, on the points that have that target and
the columns of the method mapped for it.  The states hold tensors and plain Python
types only, so they round-trip through ``torch.save`` / ``torch.load(weights_only=True)``.
Distances are computed by scikit-learn in chunks of bounded memory
(``WORKING_MEMORY_MB``), and rows are standardised ``chunk_rows`` at a time, so maps of
any size fit.  Version-1 states (unweighted, one for all targets) still load.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import sklearn
import torch
from sklearn.metrics import pairwise_distances_argmin_min, pairwise_distances_chunked

from .errors import InputError
from .heads import to_numpy
from .importance import (aoa_weights, block_matrix, native_importances, spec_blocks,
                         target_metric)
from .progress import Progress, ensure

STATE_VERSION = 2
WORKING_MEMORY_MB = 128
FEATURES = "features"                    # cv.FEATURES: the mapped backbone's features
NON_FEATURE_BLOCKS = ("pixels", "context")  # cv.PIXELS, cv.CONTEXT


def _nearest_distance(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of A to its nearest row of B."""
    with sklearn.config_context(working_memory=WORKING_MEMORY_MB):
        return pairwise_distances_argmin_min(A, B, metric="euclidean")[1]


def _nearest_and_count(A: np.ndarray, B: np.ndarray, radius: float):
    """(distance to the nearest row of B, number of rows of B closer than ``radius``)."""
    nearest, count = [], []
    with sklearn.config_context(working_memory=WORKING_MEMORY_MB):
        for d_min, n in pairwise_distances_chunked(
                A, B, metric="euclidean",
                reduce_func=lambda d, start: (d.min(axis=1), (d < radius).sum(axis=1))):
            nearest.append(d_min)
            count.append(n)
    return np.concatenate(nearest), np.concatenate(count)


def _mean_pairwise_distance(X: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of distinct rows (i != j): CAST's
    ``trainDist_avrgmean``, the mean over points of their mean distance to the others."""
    total = 0.0
    with sklearn.config_context(working_memory=WORKING_MEMORY_MB):
        for block in pairwise_distances_chunked(X, metric="euclidean",
                                                reduce_func=lambda d, start: d.sum(axis=1)):
            total += float(block.sum())
    n = X.shape[0]
    return total / (n * (n - 1))


def upper_whisker(values: np.ndarray) -> float:
    """min(Q75 + 1.5·IQR, max) of the values (R's default quantiles), NaN ignored: the
    threshold of CAST >= 0.7 (``quantile(DI, 0.75) + 1.5 * IQR(DI)``, capped at max)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    q25, q75 = np.percentile(values, [25, 75])
    return float(min(q75 + 1.5 * (q75 - q25), np.max(values)))


def _weights(weights, d: int) -> np.ndarray:
    if weights is None:
        return np.ones(d)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != d or not np.isfinite(w).all():
        raise InputError(f"AOA weights must be {d} finite values, got {w.shape[0]}.")
    return np.clip(w, 0, None)  # CAST: negative weights are set to 0


def fit_aoa(X_train, folds, weights=None) -> dict:
    """AOA state from the training predictors (N, D), their CV fold ids (N,) and the
    predictors' weights (D,) (default 1): CAST's ``trainDI`` with CV folds."""
    X = np.asarray(X_train, dtype=np.float64)
    folds = np.asarray(folds).reshape(-1)
    if X.ndim != 2 or X.shape[0] != folds.shape[0]:
        raise InputError(f"AOA needs (N, D) training features and N fold ids, got "
                         f"{X.shape} and {folds.shape[0]}.")
    if not np.isfinite(X).all():
        raise InputError("AOA training features contain NaN/inf: drop those points.")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise InputError("The AOA threshold needs at least 2 CV folds.")
    w = _weights(weights, X.shape[1])
    mean, scale = X.mean(axis=0), X.std(axis=0, ddof=1)  # R's scale()
    constant = ~(scale > 0)
    if constant.all():
        raise InputError("All training feature vectors are identical: the area of "
                         "applicability is undefined.")
    scale[constant], w[constant] = 1.0, 0.0  # no variance: nothing the model could use
    if not (w > 0).any():
        raise InputError("All AOA predictor weights are 0 (no variable importance, or every "
                         "predictor is constant): the area of applicability is undefined.")
    Xs = (X - mean) / scale * w
    mean_distance = _mean_pairwise_distance(Xs)
    if not mean_distance > 0:
        raise InputError("All training feature vectors are identical: the area of "
                         "applicability is undefined.")
    train_di = np.empty(X.shape[0], dtype=np.float64)
    for fold in fold_ids:
        held = folds == fold
        train_di[held] = _nearest_distance(Xs[held], Xs[~held]) / mean_distance
    threshold = upper_whisker(train_di)
    train_lpd = np.empty(X.shape[0], dtype=np.int64)
    for fold in fold_ids:  # CAST: other-fold points with DI < threshold
        held = folds == fold
        train_lpd[held] = _nearest_and_count(Xs[held], Xs[~held],
                                             threshold * mean_distance)[1]
    return {"kind": "aoa", "version": STATE_VERSION,
            "mean": torch.from_numpy(mean), "scale": torch.from_numpy(scale),
            "weights": torch.from_numpy(w), "train": torch.from_numpy(Xs),
            "mean_distance": float(mean_distance), "train_di": torch.from_numpy(train_di),
            "threshold": threshold, "train_lpd": torch.from_numpy(train_lpd)}


def aoa_measures(state: dict, X, lpd: bool = False, chunk_rows: int = 4096
                 ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(DI, inside, LPD or None) of each row of X (M, D); rows with NaN/inf get DI NaN,
    inside False and LPD 0."""
    if state.get("kind") != "aoa" or int(state.get("version", -1)) > STATE_VERSION:
        raise InputError("Not an AOA state of this SoilSSL version.")
    mean, scale = to_numpy(state["mean"]), to_numpy(state["scale"])
    w = to_numpy(state["weights"]) if "weights" in state else np.ones_like(mean)
    train = to_numpy(state["train"])
    md, threshold = float(state["mean_distance"]), float(state["threshold"])
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != mean.shape[0]:
        raise InputError(f"AOA expects (M, {mean.shape[0]}) features, got shape {X.shape}: "
                         "use the backbone the model was trained with.")
    di = np.full(X.shape[0], np.nan, dtype=np.float64)
    density = np.zeros(X.shape[0], dtype=np.int64) if lpd else None
    for start in range(0, X.shape[0], max(1, int(chunk_rows))):
        chunk = np.asarray(X[start:start + chunk_rows], dtype=np.float64)
        ok = np.isfinite(chunk).all(axis=1)
        if ok.any():
            z = (chunk[ok] - mean) / scale * w
            if lpd:
                d, n = _nearest_and_count(z, train, threshold * md)
                density[start:start + chunk.shape[0]][ok] = n
            else:
                d = _nearest_distance(z, train)
            di[start:start + chunk.shape[0]][ok] = d / md
    inside = np.zeros(X.shape[0], dtype=bool)
    np.less_equal(di, threshold, out=inside, where=np.isfinite(di))
    return di, inside, density


def aoa_predict(state: dict, X, chunk_rows: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """(DI, inside) of each row of X (M, D); rows with NaN/inf get DI NaN, inside False."""
    di, inside, _ = aoa_measures(state, X, chunk_rows=chunk_rows)
    return di, inside


# ----------------------------------------------------------------------------- per target

def fit_model_aoa(cv, sets: Mapping[str, np.ndarray], chosen: Mapping[str, str],
                  heads: Optional[Mapping[str, object]] = None, seed: int = 0,
                  progress: Optional[Progress] = None,
                  blocks: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, dict]:
    """target -> AOA state of the method mapped for it (``chosen``), fitted on the points
    that have the target, its predictors weighted by importance (``heads``: the refitted
    heads, whose forest importances are used; else the CV's fold models' permutation
    importance on the held-out folds).  Each state also holds ``target``, ``method``,
    ``blocks`` ([set name, columns] in the head's order), ``weighting`` (where the weights
    come from) and ``index`` (the state's rows among the CV's points), so that
    ``train_di[i]`` belongs to point ``index[i]``.
    ``blocks``: per target, the blocks the mapped head reads when they are fewer than its
    CV row's (a stack without its unweighted candidates): the state measures those."""
    progress = ensure(progress)
    heads = heads or {}
    out = {}
    for target in cv.target_names:
        label = chosen[target]
        t, m = cv.index(target, label)
        full = spec_blocks(cv.methods[m])
        used = tuple((blocks or {}).get(target) or full)
        X, columns = block_matrix(sets, used)
        y = cv.y[:, t]
        ok = np.isfinite(y)
        kinds = getattr(cv, "kinds", None)
        kind = kinds.get(target, "regression") if isinstance(kinds, Mapping) else "regression"
        fold_models = (cv.fold_models or {}).get((target, label))
        metric = target_metric(kind)
        if used == full or native_importances(heads.get(target), X.shape[1]) is not None:
            weights, source = aoa_weights(heads.get(target), fold_models, X, y, cv.folds,
                                          cv.fold_ids, metric, seed=seed, check=progress.check)
        else:  # the fold models read every block: their importances, on the used columns
            Xf, cf = block_matrix(sets, full)
            weights, source = aoa_weights(None, fold_models, Xf, y, cv.folds, cv.fold_ids,
                                          metric, seed=seed, check=progress.check)
            weights = weights[np.concatenate([cf[b] for b in used])]
        if not (weights > 0).any():
            progress.info(f"{target}: no predictor of {label} has a positive importance; the "
                          f"area of applicability is computed unweighted.")
            weights, source = np.ones(X.shape[1]), "unweighted (no positive importance)"
        state = fit_aoa(X[ok], cv.folds[ok], weights)
        state.update(target=target, method=label, weighting=source,
                     blocks=[[b, int(len(columns[b]))] for b in used],
                     index=torch.from_numpy(np.flatnonzero(ok)))
        progress.info(f"{target}: area of applicability of {label} on {int(ok.sum())} points "
                      f"({source}); DI threshold {state['threshold']:.3f}.")
        out[target] = state
    return out


def model_aoa_states(model: dict) -> List[Tuple[Optional[str], dict]]:
    """[(target, state)] of a model: one per target (``aoa_targets``), or for a model of an
    older version its one AOA for all targets as [(None, state)]; [] without AOA."""
    per_target = model.get("aoa_targets")
    if per_target:
        return [(t, per_target[t]) for t in model["targets"] if t in per_target]
    return [(None, model["aoa"])] if model.get("aoa") is not None else []


def aoa_matrix(state: dict, blocks) -> np.ndarray:
    """The state's predictors from a map's blocks (set name -> (n, d) array, or the
    feature rows (n, D) alone): the state's sets side by side; a ViT feature set of
    another name (e.g. "patch") is the map's FEATURES block."""
    if not isinstance(blocks, Mapping):
        blocks = {FEATURES: blocks}
    names = [b for b, _ in state.get("blocks") or [[FEATURES, 0]]]
    parts = []
    for name in names:
        if name in blocks:
            parts.append(blocks[name])
        elif name not in NON_FEATURE_BLOCKS and FEATURES in blocks:
            parts.append(blocks[FEATURES])
        else:
            raise InputError(f"The area of applicability needs the '{name}' predictors, "
                             "which this map does not compute.")
    parts = [np.asarray(p).reshape(len(p), -1) for p in parts]
    return np.hstack(parts) if len(parts) > 1 else parts[0]


class MapAOA:
    """The AOA raster of a model: per target the bands inside (1/0), DI and optionally LPD
    (one set of bands without a target name for a model of an older version).
    ``product`` is the raster's count, band names and tags; calling it on a map's blocks
    gives the (count, n) float32 block, ``nodata`` where a row's predictors are missing."""

    def __init__(self, model: dict, lpd: bool = False, tags: Optional[dict] = None,
                 nodata: float = -9999.0):
        self.states = model_aoa_states(model)
        if not self.states:
            raise InputError("This model has no area-of-applicability state.")
        self.lpd, self.nodata = bool(lpd), float(nodata)
        per = 3 if self.lpd else 2
        names = []
        for target, _ in self.states:
            prefix = f"{target}: " if target is not None else ""
            names += [f"{prefix}inside AOA (1/0)", f"{prefix}dissimilarity index"]
            names += [f"{prefix}local point density"] if self.lpd else []
        thresholds = {str(t): float(s["threshold"]) for t, s in self.states}
        self.product = {
            "count": per * len(self.states), "band_names": names,
            "tags": dict(tags or {}, soilssl_product="aoa",
                         threshold=(thresholds["None"] if None in dict(self.states)
                                    else thresholds),
                         aoa_bands="inside, DI" + (", LPD" if self.lpd else "") + " per target")}
        self.inside_counts = {t: 0 for t, _ in self.states}
        self.inside_all = 0

    def __call__(self, blocks) -> np.ndarray:
        return self.measure(blocks)[0]

    def measure(self, blocks) -> Tuple[np.ndarray, Dict[int, np.ndarray]]:
        """(the (count, n) block, {id(state): (n,) float64 DI, NaN where a row's predictors
        are missing}): the DI too, for the error map and the intervals."""
        n = len(next(iter(blocks.values()))) if isinstance(blocks, Mapping) else len(blocks)
        per = 3 if self.lpd else 2
        out = np.full((per * len(self.states), n), self.nodata, np.float32)
        all_inside = np.ones(n, dtype=bool)
        dis = {}
        for i, (target, state) in enumerate(self.states):
            X = aoa_matrix(state, blocks)
            ok = np.isfinite(X).all(axis=1)
            all_inside &= ok
            dis[id(state)] = np.full(n, np.nan)
            if not ok.any():
                continue
            di, inside, density = aoa_measures(state, X[ok], lpd=self.lpd)
            dis[id(state)][ok] = di
            out[per * i, ok] = inside
            out[per * i + 1, ok] = di
            if self.lpd:
                out[per * i + 2, ok] = density
            all_inside[ok] &= inside
            self.inside_counts[target] += int(inside.sum())
        self.inside_all += int(all_inside.sum())
        return out, dis
