"""Area of applicability (AOA) of a model in feature space (Meyer & Pebesma 2021).

Features are standardised with the training points' statistics.  The dissimilarity
index of a feature vector x is

    DI(x) = (distance from x to the nearest training point) / (mean distance between
            distinct training points)

and x is inside the AOA when DI(x) <= threshold.  The threshold comes from the
cross-validation: each training point's DI is measured against the training points of
the *other* folds only (what the fold model saw); the threshold is the upper whisker
Q75 + 1.5·IQR of those values, capped at their maximum.

The state from :func:`fit_aoa` holds tensors and plain Python types only, so it
round-trips through ``torch.save`` / ``torch.load(weights_only=True)``.  Distances are
computed by scikit-learn in chunks of bounded memory (``WORKING_MEMORY_MB``), and
:func:`aoa_predict` standardises ``chunk_rows`` rows at a time, so maps of any size fit.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import sklearn
import torch
from sklearn.metrics import pairwise_distances_argmin_min, pairwise_distances_chunked
from sklearn.preprocessing import StandardScaler

from .errors import InputError
from .heads import to_numpy

STATE_VERSION = 1
WORKING_MEMORY_MB = 128


def _nearest_distance(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of A to its nearest row of B."""
    with sklearn.config_context(working_memory=WORKING_MEMORY_MB):
        return pairwise_distances_argmin_min(A, B, metric="euclidean")[1]


def _mean_pairwise_distance(X: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of distinct rows (i != j)."""
    total = 0.0
    with sklearn.config_context(working_memory=WORKING_MEMORY_MB):
        for block in pairwise_distances_chunked(X, metric="euclidean",
                                                reduce_func=lambda d, start: d.sum(axis=1)):
            total += float(block.sum())
    n = X.shape[0]
    return total / (n * (n - 1))


def upper_whisker(values: np.ndarray) -> float:
    """min(Q75 + 1.5·IQR, max) of the values."""
    q25, q75 = np.percentile(values, [25, 75])
    return float(min(q75 + 1.5 * (q75 - q25), np.max(values)))


def fit_aoa(X_train, folds) -> dict:
    """AOA state from the training features (N, D) and their CV fold ids (N,)."""
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
    scaler = StandardScaler().fit(X)
    Xs = scaler.transform(X)
    mean_distance = _mean_pairwise_distance(Xs)
    if not mean_distance > 0:
        raise InputError("All training feature vectors are identical: the area of "
                         "applicability is undefined.")
    train_di = np.empty(X.shape[0], dtype=np.float64)
    for fold in fold_ids:
        held = folds == fold
        train_di[held] = _nearest_distance(Xs[held], Xs[~held]) / mean_distance
    return {"kind": "aoa", "version": STATE_VERSION,
            "mean": torch.from_numpy(scaler.mean_.astype(np.float64)),
            "scale": torch.from_numpy(scaler.scale_.astype(np.float64)),
            "train": torch.from_numpy(Xs), "mean_distance": float(mean_distance),
            "train_di": torch.from_numpy(train_di), "threshold": upper_whisker(train_di)}


def aoa_predict(state: dict, X, chunk_rows: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """(DI, inside) of each row of X (M, D); rows with NaN/inf get DI NaN, inside False."""
    if state.get("kind") != "aoa" or int(state.get("version", -1)) > STATE_VERSION:
        raise InputError("Not an AOA state of this SoilSSL version.")
    mean, scale = to_numpy(state["mean"]), to_numpy(state["scale"])
    train = to_numpy(state["train"])
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != mean.shape[0]:
        raise InputError(f"AOA expects (M, {mean.shape[0]}) features, got shape {X.shape}: "
                         "use the backbone the model was trained with.")
    di = np.full(X.shape[0], np.nan, dtype=np.float64)
    for start in range(0, X.shape[0], max(1, int(chunk_rows))):
        chunk = np.asarray(X[start:start + chunk_rows], dtype=np.float64)
        ok = np.isfinite(chunk).all(axis=1)
        if ok.any():
            d = _nearest_distance((chunk[ok] - mean) / scale, train)
            di[start:start + chunk.shape[0]][ok] = d / float(state["mean_distance"])
    inside = np.zeros(X.shape[0], dtype=bool)
    np.less_equal(di, float(state["threshold"]), out=inside, where=np.isfinite(di))
    return di, inside
