"""Spatial cross-validation of soil heads on precomputed features (the paper's Table 2).

:func:`spatial_folds` makes the folds: K-means of the point coordinates (the paper's
spatial CV) or a seeded random split.  :func:`cross_validate` fits every method row on
every fold's training points and predicts the held-out fold, so each point gets exactly
one out-of-fold prediction per target and method, from a model that never saw it.  All
statistics (feature standardisation, target scaling, early stopping, hyper-parameter
search) live inside the heads' ``fit`` and therefore only see training folds.

A method row is a :class:`MethodSpec`: a head (``mlp``, ``ridge``, ``rf_features``,
``rf_pixels``, ``rf_context``, ``rf_hybrid``, ``gbm_hybrid``) on the blocks (named
feature sets) it stacks.  The rows come from :func:`method_specs`::

    rows = method_specs("all", compare=True)
    # rf_pixels on "pixels"; rf_context on "pixels" + "context"; mlp, rf_features, ridge
    # on "features"; rf_hybrid, gbm_hybrid on "pixels" + "features" (PCA in the head);
    # "mlp [compare]", "rf_features [compare]", "ridge [compare]" on "compare"
    result = cross_validate({"pixels": P, "context": C, "features": F, "compare": G}, y,
                            folds, rows, target_names=["pH", "Si"])
    print(result.format_table())
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from .classes import CLASS_METRICS, CLASSIFICATION, REGRESSION, check_kind, class_metrics, \
    CLASS_HEADS, class_head_name, confusion, make_classifier
from .errors import InputError
from .heads import HEADS, canonical_method, make_regressor
from .progress import Progress, ensure

FOLD_MODES = ("kmeans", "random", "knndm")
MIN_FOLD_POINTS = 2
MIN_TRAIN_POINTS = 5

# Names of the feature sets the paper's rows use.
PIXELS, FEATURES, COMPARE = "pixels", "features", "compare"
CONTEXT = "context"
FEATURE_METHODS = ("mlp", "rf_features", "ridge")
HYBRID_METHODS = ("rf_hybrid", "gbm_hybrid")
ALL_METHODS = ("rf_pixels", "rf_context") + FEATURE_METHODS + HYBRID_METHODS
SELECTED = "selected"  # the stack's row, scored by nested CV (core/selection.py)
BASELINE = "rf_pixels"  # the everyday baseline's row: RF on every pixel covariate
METRICS = ("rmse", "mae", "r2")


# ----------------------------------------------------------------------------- folds

def spatial_folds(coords, n_folds: int = 6, mode: str = "kmeans", seed: int = 0,
                  prediction=None, progress: Optional[Progress] = None) -> np.ndarray:
    """Fold id (0..n_folds-1) of each point.

    ``kmeans``: scikit-learn KMeans(n_clusters=n_folds, random_state=seed, n_init=10) of
    the (projected) coordinates (N, 2): nearby points share a fold.  ``random``: a seeded
    shuffle split into folds whose sizes differ by at most one.  ``knndm``: folds whose
    test-to-train distances match those from ``prediction`` (P, 2), the map's locations,
    to the points (:func:`.knndm.knndm_folds`).
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"Coordinates must be an (N, 2) array, got shape {coords.shape}.")
    if not np.isfinite(coords).all():
        raise InputError("Some point coordinates are NaN/inf: remove those points.")
    if mode not in FOLD_MODES:
        raise InputError(f"Unknown FOLD_MODE '{mode}': use one of {', '.join(FOLD_MODES)}.")
    n_folds, n = int(n_folds), coords.shape[0]
    if n_folds < 2:
        raise InputError(f"FOLDS must be at least 2, got {n_folds}.")
    if n < MIN_FOLD_POINTS * n_folds:
        raise InputError(f"{n} points are too few for {n_folds} folds: at least "
                         f"{MIN_FOLD_POINTS * n_folds} are needed. Use fewer FOLDS "
                         "(or add points).")
    if mode == "knndm":
        if prediction is None:
            raise InputError("FOLD_MODE=knndm needs the prediction locations (the raster).")
        from .knndm import knndm_folds
        folds = knndm_folds(coords, prediction, n_folds, min_size=MIN_FOLD_POINTS,
                            seed=seed, progress=progress).folds
    elif mode == "kmeans":
        folds = KMeans(n_clusters=n_folds, random_state=seed, n_init=10).fit_predict(coords)
    else:
        folds = np.empty(n, dtype=np.int64)
        folds[np.random.default_rng(seed).permutation(n)] = np.arange(n) % n_folds
    folds = folds.astype(np.int64)
    sizes = np.bincount(folds, minlength=n_folds)
    if (sizes < MIN_FOLD_POINTS).any():
        small = int(np.argmin(sizes))
        raise InputError(f"Fold sizes are {sizes.tolist()}: fold {small} has {sizes[small]} "
                         f"point(s), fewer than {MIN_FOLD_POINTS}. Use fewer FOLDS, another "
                         "SEED or FOLD_MODE=random (points may be clumped or duplicated).")
    return folds


# ----------------------------------------------------------------------------- metrics

def regression_metrics(y_true, y_pred, sample_weight=None) -> np.ndarray:
    """[RMSE, MAE, R²] by scikit-learn; R² is NaN with fewer than 2 points."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if len(y_true) == 0:
        return np.full(len(METRICS), np.nan)
    rmse = root_mean_squared_error(y_true, y_pred, sample_weight=sample_weight)
    mae = mean_absolute_error(y_true, y_pred, sample_weight=sample_weight)
    r2 = r2_score(y_true, y_pred, sample_weight=sample_weight) if len(y_true) > 1 else np.nan
    return np.array([rmse, mae, r2], dtype=np.float64)


# ----------------------------------------------------------------------------- method rows

def _natural_features(method: str) -> str:
    return PIXELS if method in ("rf_pixels", "rf_context") else FEATURES


@dataclass(frozen=True)
class MethodSpec:
    """One row of the comparison: head ``method`` on feature set ``features``.

    ``features`` defaults to "pixels" for rf_pixels/rf_context and "features" otherwise;
    ``label`` defaults to the method name, with " [set]" appended on any other set
    (e.g. "mlp [compare]").  ``blocks``: the feature sets stacked column-wise, in order,
    as the head's input: (features,) for mlp/ridge/rf_features, (pixels,) for rf_pixels,
    (pixels, context) for rf_context, (pixels, features) for the hybrids.  The row
    ``selected`` (method SELECTED) is nested selection's, filled by core/selection.py.
    """

    method: str
    features: str = ""
    label: str = ""
    blocks: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.method != SELECTED:
            canonical_method(self.method)
        features = self.features or _natural_features(self.method)
        object.__setattr__(self, "features", features)
        if not self.label:
            label = self.method if features == _natural_features(self.method) \
                else f"{self.method} [{features}]"
            object.__setattr__(self, "label", label)
        blocks = self.blocks
        if not blocks and self.method == "rf_context":
            blocks = (features, CONTEXT)
        elif not blocks and self.method in HYBRID_METHODS:
            blocks = (PIXELS, features)
        elif not blocks and self.method != SELECTED:
            blocks = (features,)
        object.__setattr__(self, "blocks", tuple(blocks))


MethodLike = Union[MethodSpec, str, Tuple[str, ...]]


def as_spec(item: MethodLike) -> MethodSpec:
    """A MethodSpec from a MethodSpec, a method name, or (method, features[, label])."""
    if isinstance(item, MethodSpec):
        return item
    if isinstance(item, str):
        return MethodSpec(item)
    return MethodSpec(*item)


def method_specs(method: str = "all", compare: bool = False) -> List[MethodSpec]:
    """The rows for METHOD (one name or ``all``), plus the same feature methods on the
    ``compare`` set when a second backbone is compared (pixels do not depend on it)."""
    names = ALL_METHODS if method == "all" else (method,)
    specs = [MethodSpec(m) for m in names]
    if compare:
        specs += [MethodSpec(m, COMPARE) for m in names if m in FEATURE_METHODS]
    return specs


def stack_blocks(sets: Mapping[str, np.ndarray], blocks: Sequence[str], rows=None) -> np.ndarray:
    """The head input of a method row: its ``blocks`` (MethodSpec.blocks) side by side,
    rows ``rows`` of each (one block: as it is; several: float64)."""
    parts = [np.asarray(sets[b]) if rows is None else np.asarray(sets[b])[rows]
             for b in blocks]
    return parts[0] if len(parts) == 1 else np.hstack([p.astype(np.float64) for p in parts])


def make_head(spec: MethodSpec, widths: Sequence[int], loss: str = "mse", seed: int = 0,
              options: Optional[Mapping[str, dict]] = None, kind: str = REGRESSION,
              n_classes: int = 2, class_weight: Optional[str] = None):
    """A new head for a row: the factory's head with ``options[canonical name]`` and the
    options that follow from its blocks' widths (the hybrids: how many covariate columns
    precede the features); a class head (:mod:`.classes`) for a ``classification`` target."""
    name = canonical_method(spec.method)
    opts = dict((options or {}).get(name, {}))
    factory = HEADS[name] if kind == REGRESSION else CLASS_HEADS[class_head_name(spec.method)]
    block_params = getattr(factory, "block_params", None)
    if block_params is not None:
        opts.update(block_params(list(widths)))
    if kind == REGRESSION:
        return make_regressor(spec.method, loss=loss, seed=seed, **opts)
    return make_classifier(spec.method, n_classes, class_weight, seed, **opts)


# ----------------------------------------------------------------------------- result

@dataclass
class CVResult:
    """Out-of-fold predictions and fold metrics of a cross-validation.

    Arrays are indexed [target, method row, ...] in the order of ``target_names`` and
    ``methods``; ``fold_metrics[..., k, :]`` holds RMSE, MAE, R² of fold ``fold_ids[k]``
    (NaN where the fold had no point with that target).  ``fold_models`` (when kept)
    maps (target, label) to the fitted heads in ``fold_ids`` order; ``selection`` (after
    :func:`~.selection.nested_selection`) the stack's weights for each outer fold per target,
    ``stacks`` the weights of the mapped stack.
    """

    target_names: List[str]
    methods: List[MethodSpec]
    folds: np.ndarray         # (N,) fold id of each point
    fold_ids: np.ndarray      # (K,) sorted distinct fold ids
    y: np.ndarray             # (N, T) observed targets, NaN = missing
    predictions: np.ndarray   # (T, M, N) out-of-fold predictions, NaN where y is missing
    fold_metrics: np.ndarray  # (T, M, K, 3)
    r2_pooled: np.ndarray     # (T, M) R² of all out-of-fold predictions together
    fold_models: Optional[Dict[Tuple[str, str], list]] = None
    # class targets (core/classes.py): kind per target, class names, out-of-fold
    # probabilities target -> (M, N, C) and (T, M, K, 4) fold CLASS_METRICS (NaN elsewhere)
    kinds: Optional[List[str]] = None
    classes: Optional[Dict[str, List[str]]] = None
    probabilities: Optional[Dict[str, np.ndarray]] = None
    class_fold_metrics: Optional[np.ndarray] = None

    def kind(self, target: str) -> str:
        """"regression" or "classification"."""
        return (self.kinds or [REGRESSION] * len(self.target_names))[
            self.target_names.index(target)]

    def pooled_class_metrics(self, t: int, m: int) -> np.ndarray:
        """CLASS_METRICS of all out-of-fold predictions of target t by row m together."""
        ok = np.isfinite(self.y[:, t])
        return class_metrics(self.y[ok, t], self.predictions[t, m, ok])

    def confusion(self, target: str, label: str) -> np.ndarray:
        """(C, C) out-of-fold confusion matrix (rows observed, columns predicted)."""
        t, m = self.index(target, label)
        return confusion(self.y[:, t], self.predictions[t, m], len(self.classes[target]))
    selection: Optional[Dict[str, List[str]]] = None  # nested selection: weights per fold
    stacks: Optional[Dict[str, Dict[str, float]]] = None  # the mapped stack's weights
    inner_best: Optional[Dict[str, List[str]]] = None  # best single candidate per fold
    kriging: Optional[Dict[str, dict]] = None  # residual kriging of the stack (kriging.py)
    spread: Optional[Dict[str, dict]] = None  # rf_pixels' score over seeds (spread.py)

    @property
    def labels(self) -> List[str]:
        return [s.label for s in self.methods]

    @property
    def n_used(self) -> np.ndarray:
        """(T,) points with a value, per target."""
        return np.isfinite(self.y).sum(axis=0)

    @property
    def n_skipped(self) -> np.ndarray:
        """(T,) points skipped because the target has no value."""
        return self.y.shape[0] - self.n_used

    def index(self, target: str, label: str) -> Tuple[int, int]:
        try:
            return self.target_names.index(target), self.labels.index(label)
        except ValueError:
            raise InputError(f"No CV row for target '{target}' and method '{label}'.") from None

    def oof(self, target: str, label: str) -> np.ndarray:
        """(N,) out-of-fold predictions of one target by one method row."""
        t, m = self.index(target, label)
        return self.predictions[t, m]

    def residuals(self, target: str, label: str) -> np.ndarray:
        """(N,) observed minus out-of-fold prediction (NaN where missing)."""
        t, _ = self.index(target, label)
        return self.y[:, t] - self.oof(target, label)

    def summary(self) -> Tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation (numpy's, ddof=0) over folds: two (T, M, 3) arrays."""
        with warnings.catch_warnings():  # all-NaN slices (no fold with values) -> NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(self.fold_metrics, axis=2)
            std = np.nanstd(self.fold_metrics, axis=2)
        return mean, std

    def class_summary(self) -> Tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over folds of the fold CLASS_METRICS: two
        (T, M, len(CLASS_METRICS)) arrays (NaN for numeric targets)."""
        with warnings.catch_warnings():  # all-NaN slices (no fold with values) -> NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(self.class_fold_metrics, axis=2)
            std = np.nanstd(self.class_fold_metrics, axis=2)
        return mean, std

    def table(self) -> List[dict]:
        """One row per (target, method): plain Python values, for logs, reports, outputs."""
        mean, std = self.summary()
        classes = self.class_summary() if self.class_fold_metrics is not None else None
        rows = []
        for t, target in enumerate(self.target_names):
            for m, spec in enumerate(self.methods):
                row = {"target": target, "method": spec.label, "features": spec.features,
                       "n": int(self.n_used[t]), "kind": self.kind(target)}
                if spec.label == BASELINE and target in (self.spread or {}):
                    # its score's sd over seeds (core/spread.py), absolute and in %
                    row["seed_sd"] = self.spread[target]["sd"]
                    row["seed_sd_percent"] = self.spread[target]["percent"]
                if row["kind"] == CLASSIFICATION:  # pooled out-of-fold metrics, fold mean/std
                    rows.append(self._class_row(row, t, m, classes[0][t, m], classes[1][t, m]))
                    continue
                for j, name in enumerate(METRICS):
                    row[f"{name}_mean"] = float(mean[t, m, j])
                    row[f"{name}_std"] = float(std[t, m, j])
                row["r2_pooled"] = float(self.r2_pooled[t, m])
                rows.append(row)
        return rows

    def _class_row(self, row: dict, t: int, m: int, mean: np.ndarray,
                   std: np.ndarray) -> dict:
        for j, name in enumerate(CLASS_METRICS):
            row[name] = float(self.pooled_class_metrics(t, m)[j])
            row[f"{name}_mean"], row[f"{name}_std"] = float(mean[j]), float(std[j])
        row["classes"] = list(self.classes[row["target"]])
        row["confusion"] = self.confusion(row["target"], row["method"]).tolist()
        return row

    def format_table(self, digits: int = 3) -> str:
        """Plain-text table of :meth:`table` (mean ± std over folds) for the log."""
        def pm(row, name):
            return f"{row[name + '_mean']:.{digits}f} ± {row[name + '_std']:.{digits}f}"

        header = ["target", "method", "n", "RMSE", "MAE", "R²", "R² pooled"]
        body = [[r["target"], r["method"], str(r["n"]), pm(r, "rmse"), pm(r, "mae"),
                 pm(r, "r2"), f"{r['r2_pooled']:.{digits}f}"] if r["kind"] == REGRESSION else
                [r["target"], r["method"], str(r["n"]), f"accuracy {r['accuracy']:.{digits}f}",
                 f"balanced {r['balanced_accuracy']:.{digits}f}",
                 f"kappa {r['kappa']:.{digits}f}", f"macro F1 {r['macro_f1']:.{digits}f}"]
                for r in self.table()]
        widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
        sizes = [int((self.folds == k).sum()) for k in self.fold_ids]
        lines = [f"Cross-validation: {len(self.fold_ids)} folds of {sizes} points; "
                 "mean ± std over folds."]
        lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                  for line in [header] + body]
        lines += [f"{name}: {int(k)} point(s) without a value skipped."
                  for name, k in zip(self.target_names, self.n_skipped) if k]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- validation

def _targets(y, target_names) -> Tuple[np.ndarray, List[str]]:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise InputError(f"Targets must be (N,) or (N, T), got shape {y.shape}.")
    names = list(target_names) if target_names is not None \
        else [f"target{i + 1}" for i in range(y.shape[1])]
    if len(names) != y.shape[1] or len(set(names)) != len(names):
        raise InputError(f"{y.shape[1]} target column(s) need as many distinct names, "
                         f"got {names}.")
    if np.isinf(y).any():
        raise InputError("Targets contain inf: use NULL/NaN for missing values.")
    return y, names


def _feature_sets(feature_sets: Mapping[str, np.ndarray], names, n: int) -> Dict[str, np.ndarray]:
    out = {}
    for name in names:
        if name not in feature_sets:
            raise InputError(f"No feature set '{name}' (have: {', '.join(feature_sets)}).")
        X = np.asarray(feature_sets[name])
        if X.ndim != 2 or X.shape[0] != n:
            raise InputError(f"Feature set '{name}' must be ({n}, D), got shape {X.shape}.")
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        if bad:
            raise InputError(f"Feature set '{name}' has {bad} point(s) with NaN/inf values: "
                             "drop those points before cross-validation.")
        out[name] = X
    return out


def _folds(folds, n: int) -> np.ndarray:
    folds = np.asarray(folds).reshape(-1)
    if folds.shape[0] != n or not np.issubdtype(folds.dtype, np.integer):
        raise InputError(f"Folds must be {n} integer ids, got {folds.shape[0]} of {folds.dtype}.")
    if len(np.unique(folds)) < 2:
        raise InputError("Cross-validation needs at least 2 folds.")
    return folds


def _weights(weights, n: int) -> Optional[np.ndarray]:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n or not np.isfinite(w).all() or (w < 0).any():
        raise InputError(f"Weights must be {n} finite non-negative values (a weight field "
                         "without NULLs).")
    return w


# ----------------------------------------------------------------------------- CV

def cross_validate(feature_sets: Mapping[str, np.ndarray], y, folds,
                   methods: Sequence[MethodLike], target_names: Optional[Sequence[str]] = None,
                   loss: str = "mse", weights=None, seed: int = 0,
                   progress: Optional[Progress] = None, weighted_metrics: bool = False,
                   keep_models: bool = False,
                   head_options: Optional[Mapping[str, dict]] = None,
                   kinds: Optional[Sequence[str]] = None,
                   classes: Optional[Mapping[str, Sequence[str]]] = None,
                   class_weight: Optional[str] = None) -> CVResult:
    """Out-of-fold predictions and fold metrics of every method row for every target.

    feature_sets: name -> (N, D) array; y: (N,) or (N, T), NaN = no value (that point is
    skipped for that target and counted); folds: (N,) integer fold ids; methods: rows as
    MethodSpec / name / (method, features[, label]); weights: (N,) sample weights used in
    training (and in the metrics with ``weighted_metrics``); head_options: constructor
    options per head ("mlp", "ridge", "rf"); keep_models: keep each fold's fitted heads.
    Every row uses the same folds; progress is reported and cancel checked before each
    fit.  kinds: "regression" | "classification" per target (default all regression); a
    class target's y holds class indices, ``classes`` its names (default "0".."C-1");
    class_weight (None | "balanced") goes to the class heads.  Class targets get
    out-of-fold probabilities over all their classes (a class absent from a training fold
    gets 0) and fold CLASS_METRICS instead of RMSE/MAE/R².
    """
    progress = ensure(progress)
    specs = [as_spec(m) for m in methods]
    if not specs:
        raise InputError("No method to cross-validate.")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise InputError(f"Method rows need distinct labels, got {labels}.")
    y, names = _targets(y, target_names)
    n = y.shape[0]
    X = _feature_sets(feature_sets, sorted({b for s in specs for b in s.blocks}), n)
    folds = _folds(folds, n)
    w = _weights(weights, n)
    fold_ids = np.unique(folds)
    options = dict(head_options or {})
    kinds = [check_kind(k) for k in (kinds or [REGRESSION] * len(names))]
    classes = {t: [str(c) for c in (classes or {}).get(t) or
                   range(int(np.nanmax(y[:, i])) + 1)]
               for i, t in enumerate(names) if kinds[i] == CLASSIFICATION}

    T, M, K = y.shape[1], len(specs), len(fold_ids)
    predictions = np.full((T, M, n), np.nan)
    fold_metrics = np.full((T, M, K, len(METRICS)), np.nan)
    models: Optional[dict] = {} if keep_models else None
    class_fold = np.full((T, M, K, len(CLASS_METRICS)), np.nan)
    probabilities = {t: np.full((M, n, len(classes[t])), np.nan) for t in classes}
    done, total = 0, T * K * M
    for t, target in enumerate(names):
        valid = np.isfinite(y[:, t])
        if not valid.all():
            progress.info(f"{target}: {int((~valid).sum())} point(s) without a value skipped.")
        for k, fold in enumerate(fold_ids):
            train, test = valid & (folds != fold), valid & (folds == fold)
            if train.sum() < MIN_TRAIN_POINTS:
                raise InputError(f"{target}: holding out fold {fold} leaves {int(train.sum())} "
                                 f"training point(s) with a value; at least {MIN_TRAIN_POINTS} "
                                 "are needed. Use fewer FOLDS or a target with more values.")
            w_train = None if w is None else w[train]
            w_test = w[test] if (w is not None and weighted_metrics) else None
            for m, spec in enumerate(specs):
                progress.check()
                head = make_head(spec, [X[b].shape[1] for b in spec.blocks], loss, seed,
                                 options, kinds[t],
                                 len(classes[target]) if kinds[t] == CLASSIFICATION else 2,
                                 class_weight)
                head.fit(stack_blocks(X, spec.blocks, train), y[train, t], sample_weight=w_train)
                if test.any() and kinds[t] == CLASSIFICATION:
                    proba = head.predict_proba(stack_blocks(X, spec.blocks, test))
                    probabilities[target][m, test] = proba
                    predictions[t, m, test] = proba.argmax(axis=1)
                    class_fold[t, m, k] = class_metrics(y[test, t], predictions[t, m, test],
                                                        sample_weight=w_test)
                elif test.any():
                    predictions[t, m, test] = head.predict(stack_blocks(X, spec.blocks, test))
                    fold_metrics[t, m, k] = regression_metrics(
                        y[test, t], predictions[t, m, test], sample_weight=w_test)
                if models is not None:
                    models.setdefault((target, spec.label), []).append(head)
                done += 1
                progress.set(done / total)

    r2_pooled = np.full((T, M), np.nan)
    for t in range(T):
        valid = np.isfinite(y[:, t])
        if valid.sum() > 1 and kinds[t] == REGRESSION:
            w_all = w[valid] if (w is not None and weighted_metrics) else None
            for m in range(M):
                r2_pooled[t, m] = r2_score(y[valid, t], predictions[t, m, valid],
                                           sample_weight=w_all)
    return CVResult(names, specs, folds, fold_ids, y, predictions, fold_metrics, r2_pooled,
                    models, kinds, classes, probabilities, class_fold)
