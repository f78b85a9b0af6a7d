"""Permutation importance on the held-out folds of a spatial cross-validation.

For every fold model, a column (or a group of columns) of the rows that model never saw
(its held-out fold) is permuted, and the model's score on those rows is measured again:

    importance = mean over folds and repeats of (score of the permuted rows − score)

with the score's sign chosen so that larger means more important: the increase of the
RMSE for a regression target, the loss of accuracy or of Cohen's kappa for a class
target.  Permutations come from one seeded generator, so runs are reproducible.

Groups of columns are permuted together (the same row shuffle for all columns of the
group), which keeps their joint structure: the report compares the covariates (pixel
and context columns) with the ViT features this way.  :func:`aoa_weights` gives the
per-column weights of the area of applicability (Meyer & Pebesma 2021, CAST ``trainDI``):
a forest's own impurity importances when the forest sees the columns directly, else the
permutation importance of the fold models on the held-out folds.

The permuted copies of a fold are stacked and predicted in few calls (at most
``max_elements`` values at once), so hundreds of ViT feature columns stay affordable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from sklearn.metrics import cohen_kappa_score

from .errors import InputError

METRICS = ("rmse", "accuracy", "kappa")
COVARIATE_BLOCKS = ("pixels", "context")  # cv.PIXELS, cv.CONTEXT
COVARIATES, VIT = "covariates", "ViT features"
MAX_ELEMENTS = 1 << 22  # values of X predicted in one call (32 MiB as float64)


@dataclass
class Importance:
    """Permutation importance of groups of columns (larger = more important).

    ``scores[k, r, g]``: score change of group g in fold k, repeat r (NaN for a fold
    with fewer than 2 held-out rows); ``mean``/``std`` over all finite entries.
    """

    names: List[str]
    mean: np.ndarray       # (G,)
    std: np.ndarray        # (G,)
    scores: np.ndarray     # (K, R, G)
    baseline: float        # mean held-out score of the unpermuted rows over the folds used
    metric: str

    def as_dict(self) -> dict:
        return {"names": list(self.names), "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std], "baseline": float(self.baseline),
                "metric": self.metric}


def _score(metric: str, y_true, y_pred) -> float:
    """The score whose change is the importance, oriented so that larger = worse."""
    if metric == "rmse":  # numpy: thousands of small calls, scikit-learn's checks cost more
        diff = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)
        return float(np.sqrt(np.mean(diff * diff)))
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = np.rint(np.asarray(y_pred, dtype=np.float64)).astype(np.int64)
    if metric == "accuracy":
        return -float(np.mean(y_true == y_pred))
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = cohen_kappa_score(y_true, y_pred)
    return -float(kappa) if np.isfinite(kappa) else 0.0


def _predict_default(model, X: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(X), dtype=np.float64).reshape(-1)


def permutation_importance(models: Sequence, X, y, folds, fold_ids=None,
                           groups: Optional[Mapping[str, Sequence[int]]] = None,
                           repeats: int = 5, seed: int = 0, metric: str = "rmse",
                           predict: Optional[Callable] = None,
                           max_elements: int = MAX_ELEMENTS,
                           check: Optional[Callable[[], None]] = None) -> Importance:
    """Permutation importance of ``groups`` (name -> column indices; default one group
    per column, named by its index) of X (N, D) for the fold models.

    ``models[k]`` was fitted without the points of fold ``fold_ids[k]`` (default the
    sorted distinct ``folds``) and is scored on them; rows whose y is NaN are skipped.
    ``predict(model, X) -> (n,)`` defaults to ``model.predict``; ``check`` is called
    between prediction batches (e.g. a progress cancel check).
    """
    if metric not in METRICS:
        raise InputError(f"Unknown importance metric '{metric}': use one of {METRICS}.")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    folds = np.asarray(folds).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0] or folds.shape[0] != y.shape[0]:
        raise InputError(f"Permutation importance needs X (N, D), y (N,) and folds (N,), got "
                         f"{X.shape}, {y.shape} and {folds.shape}.")
    fold_ids = np.unique(folds) if fold_ids is None else np.asarray(fold_ids).reshape(-1)
    if len(models) != len(fold_ids):
        raise InputError(f"{len(models)} fold models for {len(fold_ids)} folds.")
    if groups is None:
        groups = {str(j): [j] for j in range(X.shape[1])}
    names = list(groups)
    cols = [np.asarray(groups[g], dtype=np.int64).reshape(-1) for g in names]
    if not names or any(c.size == 0 or c.min() < 0 or c.max() >= X.shape[1] for c in cols):
        raise InputError(f"Importance groups must name columns 0..{X.shape[1] - 1}.")
    repeats = max(1, int(repeats))
    predict = predict or _predict_default
    rng = np.random.default_rng(seed)
    G, R = len(names), repeats
    scores = np.full((len(fold_ids), R, G), np.nan)
    base_scores = []
    for k, (model, fold) in enumerate(zip(models, fold_ids)):
        test = np.flatnonzero((folds == fold) & np.isfinite(y))
        if test.size < 2:
            continue
        Xt, yt = X[test], y[test]
        base = _score(metric, yt, predict(model, Xt))
        base_scores.append(base)
        jobs = [(r, g, rng.permutation(test.size)) for r in range(R) for g in range(G)]
        per_call = min(len(jobs), max(1, int(max_elements) // max(1, Xt.size)))
        stack = np.empty((per_call,) + Xt.shape)
        stack[:] = Xt  # copies of the held-out rows; only permuted columns change below
        for start in range(0, len(jobs), per_call):
            if check is not None:
                check()
            batch = jobs[start:start + per_call]
            for i, (_, g, perm) in enumerate(batch):
                stack[i][:, cols[g]] = Xt[np.ix_(perm, cols[g])]
            pred = predict(model, stack[:len(batch)].reshape(-1, Xt.shape[1]))
            pred = np.asarray(pred).reshape(len(batch), -1)
            for i, (r, g, _) in enumerate(batch):
                scores[k, r, g] = _score(metric, yt, pred[i]) - base
                stack[i][:, cols[g]] = Xt[:, cols[g]]  # restore for the next batch
    if not base_scores:
        raise InputError("Permutation importance needs at least one fold with 2 held-out "
                         "points.")
    flat = scores.reshape(-1, G)
    return Importance(names, np.nanmean(flat, axis=0), np.nanstd(flat, axis=0), scores,
                      float(np.mean(base_scores)) * (1 if metric == "rmse" else -1), metric)


# ----------------------------------------------------------------------------- blocks

def spec_blocks(spec) -> Tuple[str, ...]:
    """The feature sets a method row uses, in the order its head sees them."""
    return tuple(getattr(spec, "blocks", None) or (spec.features,))


def block_matrix(sets: Mapping[str, np.ndarray], blocks: Sequence[str]
                 ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """(X, block -> column indices): the blocks side by side, as a head takes them."""
    missing = [b for b in blocks if b not in sets]
    if missing:
        raise InputError(f"No feature set(s) {missing} (have: {', '.join(sets)}).")
    parts = [np.asarray(sets[b], dtype=np.float64) for b in blocks]
    parts = [p.reshape(p.shape[0], -1) for p in parts]
    X = np.hstack(parts) if len(parts) > 1 else parts[0]
    edges = np.cumsum([0] + [p.shape[1] for p in parts])
    return X, {b: np.arange(edges[i], edges[i + 1]) for i, b in enumerate(blocks)}


def covariate_groups(columns: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Columns grouped as covariates (pixel and context blocks) vs ViT features (every
    other block); groups without columns are left out."""
    cov = [c for b, c in columns.items() if b in COVARIATE_BLOCKS]
    vit = [c for b, c in columns.items() if b not in COVARIATE_BLOCKS]
    out = {}
    if cov:
        out[COVARIATES] = np.concatenate(cov)
    if vit:
        out[VIT] = np.concatenate(vit)
    return out


def target_metric(kind: str = "regression") -> str:
    return "kappa" if kind == "classification" else "rmse"


def _target_kind(cv, target: str) -> str:
    kinds = getattr(cv, "kinds", None)
    if isinstance(kinds, Mapping):
        return kinds.get(target, "regression")
    if isinstance(kinds, (list, tuple)):
        return kinds[list(cv.target_names).index(target)]
    return "regression"


def grouped_importance(cv, sets: Mapping[str, np.ndarray], target: str, label: str,
                       repeats: int = 5, seed: int = 0,
                       check: Optional[Callable[[], None]] = None) -> Importance:
    """Covariates vs ViT features importance of one CV row (its kept fold models) on the
    held-out folds of ``target``."""
    if not cv.fold_models or (target, label) not in cv.fold_models:
        raise InputError(f"No fold models kept for '{target}' / '{label}'.")
    t, m = cv.index(target, label)
    X, columns = block_matrix(sets, spec_blocks(cv.methods[m]))
    return permutation_importance(cv.fold_models[(target, label)], X, cv.y[:, t], cv.folds,
                                  cv.fold_ids, covariate_groups(columns), repeats, seed,
                                  target_metric(_target_kind(cv, target)), check=check)


# ----------------------------------------------------------------------------- AOA weights

def native_importances(head, n_columns: int) -> Optional[np.ndarray]:
    """A fitted forest's impurity importances (scikit-learn ``feature_importances_``) when
    it sees the ``n_columns`` columns directly (not e.g. PCA components); else None."""
    for obj in (head, getattr(head, "forest_", None), getattr(head, "model_", None)):
        values = getattr(obj, "feature_importances_", None) if obj is not None else None
        if values is not None:
            values = np.asarray(values, dtype=np.float64).reshape(-1)
            if values.shape[0] == n_columns and np.isfinite(values).all():
                return values
    return None


def aoa_weights(head, fold_models: Sequence, X, y, folds, fold_ids=None, metric: str = "rmse",
                repeats: int = 1, seed: int = 0, check: Optional[Callable[[], None]] = None
                ) -> Tuple[np.ndarray, str]:
    """(weights (D,), source) of the AOA predictors: the forest's impurity importances, or
    the permutation importance of each column on the held-out folds.  Negative
    importances become 0, as CAST's ``aoa_get_weights`` does."""
    X = np.asarray(X, dtype=np.float64)
    native = native_importances(head, X.shape[1])
    if native is not None:
        return np.clip(native, 0, None), "forest impurity importance"
    if not fold_models:
        return np.ones(X.shape[1]), "unweighted (no fold models kept)"
    imp = permutation_importance(fold_models, X, y, folds, fold_ids, repeats=repeats,
                                 seed=seed, metric=metric, check=check)
    return np.clip(np.nan_to_num(imp.mean, nan=0.0), 0, None), \
        "permutation importance on the held-out folds"
