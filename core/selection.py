"""Nested method selection: an honest score for "the method the CV picks".

Picking the method with the lowest cross-validated RMSE and reporting that RMSE is
optimistic: the rows that score the method also chose it.  :func:`nested_selection`
adds the row ``selected`` to a :class:`~.cv.CVResult`: for every outer fold k the method
is chosen by an inner CV on the other folds only (never on fold k), and fold k is then
predicted by that method's outer model (fitted on all folds but k, already in the CV).
The ``selected`` row's RMSE is therefore the outer-loop score of the whole procedure
"select by CV, then fit", which is what the map (chosen by CV on all points) gets.

Inner CV: the inner folds of outer fold k are the other outer folds j.  The inner model
that predicts fold j for outer fold k is trained on every fold but {k, j}; the same
model predicts fold k for outer fold j, so one fit per unordered pair of folds serves
both (K(K-1)/2 fits per candidate instead of K(K-1)).  No inner model used for fold k's
choice has seen fold k.  The inner fits use cheaper head settings (:data:`INNER_OPTIONS`,
fewer trees / epochs; options given by the caller take precedence): the inner CV only
ranks the candidates.  The inner score is the mean over inner folds of the fold RMSE,
the same criterion as the final choice (mean over folds of the outer RMSE).
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import replace
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from sklearn.metrics import r2_score

from .cv import (CONTEXT, MIN_TRAIN_POINTS, PIXELS, SELECTED, CVResult, MethodSpec,
                 make_head, regression_metrics, stack_blocks)
from .errors import InputError
from .progress import Progress, ensure

# Cheaper settings of the inner fits (ranking only): about half the trees and epochs.
INNER_OPTIONS: Dict[str, dict] = {
    "rf": {"n_estimators": 50, "search_estimators": 25},
    "mlp": {"max_epochs": 100, "patience": 8},
    "gbm": {"max_iter": 150},
    "rf_hybrid": {"inner": {"n_estimators": 50, "search_estimators": 25}},
    "gbm_hybrid": {"inner": {"max_iter": 150}},
}


def candidates(cv: CVResult, features: str) -> List[str]:
    """Labels of the rows METHOD=all may map with: every row on the mapping backbone's
    feature set ``features`` and/or the pixel covariates (and their context); rows of
    compared backbones and the ``selected`` row are not candidates."""
    allowed = {PIXELS, CONTEXT, features}
    return [s.label for s in cv.methods
            if s.method != SELECTED and s.blocks and set(s.blocks) <= allowed]


def choose_best(cv: CVResult, labels: Sequence[str]) -> Dict[str, str]:
    """Per target, the label with the lowest mean RMSE over folds (first on ties)."""
    mean, _ = cv.summary()
    rows = [cv.labels.index(label) for label in labels]
    out = {}
    for t, target in enumerate(cv.target_names):
        scores = [mean[t, m, 0] if np.isfinite(mean[t, m, 0]) else np.inf for m in rows]
        out[target] = cv.labels[rows[int(np.argmin(scores))]]
    return out


def _inner_options(options: Optional[Mapping[str, dict]]) -> Dict[str, dict]:
    merged = {k: dict(v) for k, v in INNER_OPTIONS.items()}
    for name, opts in (options or {}).items():
        merged[name] = {**merged.get(name, {}), **dict(opts)}
    return merged


def rmse(y_true, y_pred) -> float:
    """The default inner score (lower is better)."""
    return float(regression_metrics(y_true, y_pred)[0])


def inner_scores(feature_sets: Mapping[str, np.ndarray], y: np.ndarray, folds: np.ndarray,
                 specs: Sequence[MethodSpec], loss: str = "mse", weights=None, seed: int = 0,
                 head_options: Optional[Mapping[str, dict]] = None,
                 progress: Optional[Progress] = None, on_fit=None, score=rmse,
                 factory=make_head) -> np.ndarray:
    """(K outer, M candidates) mean inner-fold score of each candidate for each outer fold
    (NaN where no inner fold could be scored), for one target ``y`` (N,) (NaN = missing).

    ``score(y_true, y_pred)``: lower is better (RMSE; a class target would pass e.g.
    1 - kappa); ``factory(spec, widths, loss, seed, options)``: a new head (a class
    target's heads would come from its own factory); ``on_fit(spec, train_mask)`` is called
    before each inner fit (tests use it to check what each fit sees)."""
    progress = ensure(progress)
    fold_ids = np.unique(folds)
    K, M = len(fold_ids), len(specs)
    valid = np.isfinite(y)
    scores = np.full((K, K, M), np.nan)  # [outer k, inner j, candidate]
    options = _inner_options(head_options)
    pairs = list(itertools.combinations(range(K), 2))
    for p, (a, b) in enumerate(pairs):
        train = valid & ~np.isin(folds, [fold_ids[a], fold_ids[b]])
        if train.sum() < MIN_TRAIN_POINTS:
            continue
        w_train = None if weights is None else weights[train]
        for m, spec in enumerate(specs):
            progress.check()
            if on_fit is not None:
                on_fit(spec, train)
            head = factory(spec, [feature_sets[s].shape[1] for s in spec.blocks], loss,
                           seed, options)
            head.fit(stack_blocks(feature_sets, spec.blocks, train), y[train],
                     sample_weight=w_train)
            for outer, inner in ((a, b), (b, a)):
                test = valid & (folds == fold_ids[inner])
                if test.any():
                    pred = head.predict(stack_blocks(feature_sets, spec.blocks, test))
                    scores[outer, inner, m] = score(y[test], pred)
            progress.set((p * M + m + 1) / (len(pairs) * M))
    with warnings.catch_warnings():  # an outer fold without any scored inner fold -> NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(scores, axis=1)


def class_inner(n_classes: int, class_weight: Optional[str] = None) -> dict:
    """:func:`inner_scores` arguments for a class target: its class heads, scored by
    1 - Cohen's kappa (the mapped class method is chosen by kappa too)."""
    from sklearn.metrics import cohen_kappa_score
    from .classes import CLASSIFICATION

    def score(y_true, y_pred):
        return 1.0 - cohen_kappa_score(np.asarray(y_true).astype(int),
                                       np.asarray(y_pred).astype(int))

    def factory(spec, widths, loss, seed, options):
        return make_head(spec, widths, loss, seed, options, CLASSIFICATION, n_classes,
                         class_weight)
    return {"score": score, "factory": factory}


def nested_selection(cv: CVResult, feature_sets: Mapping[str, np.ndarray],
                     labels: Sequence[str], loss: str = "mse", weights=None, seed: int = 0,
                     head_options: Optional[Mapping[str, dict]] = None,
                     progress: Optional[Progress] = None, weighted_metrics: bool = False,
                     on_fit=None, inner: Optional[Mapping[str, dict]] = None) -> CVResult:
    """``cv`` with the row ``selected`` appended (see the module docstring).

    ``labels``: the candidate rows (e.g. :func:`candidates`); ``feature_sets``, ``loss``,
    ``weights``, ``seed`` as given to :func:`~.cv.cross_validate`; ``inner``: per target,
    extra :func:`inner_scores` arguments (``score``, ``factory``; e.g. for class targets).
    Fold k of the ``selected`` row is a copy of fold k of the row chosen for it: its
    predictions, fold metrics, and any other per-row array the CVResult carries (class
    probabilities and metrics).  The result's ``selection`` maps each target to the label
    chosen for each outer fold (in ``fold_ids`` order)."""
    progress = ensure(progress)
    if not labels:
        raise InputError("Nested selection needs at least one candidate method.")
    if SELECTED in cv.labels:
        raise InputError("The cross-validation already has a 'selected' row.")
    rows = [cv.labels.index(label) for label in labels]
    specs = [cv.methods[m] for m in rows]
    w = None if weights is None else np.asarray(weights, np.float64)
    T, n = len(cv.target_names), cv.y.shape[0]
    pred = np.full((T, 1, n), np.nan)
    metrics = np.full((T, 1) + cv.fold_metrics.shape[2:], np.nan)
    selection: Dict[str, List[str]] = {}
    models = dict(cv.fold_models) if cv.fold_models is not None else None
    # per-row arrays of class targets, when the CVResult has them (copied like predictions)
    probs = getattr(cv, "probabilities", None)  # target -> (M, N, C)
    class_fold = getattr(cv, "class_fold_metrics", None)  # (T, M, K, n metrics)
    sel_probs = {g: np.full((1,) + p.shape[1:], np.nan) for g, p in probs.items()} \
        if probs else None
    sel_class = None if class_fold is None else \
        np.full(class_fold.shape[:1] + (1,) + class_fold.shape[2:], np.nan)
    for t, target in enumerate(cv.target_names):
        progress.info(f"{target}: nested selection among {len(specs)} methods (inner CV on "
                      f"the training folds of each outer fold)...")
        scores = inner_scores(feature_sets, cv.y[:, t], cv.folds, specs, loss, w, seed,
                              head_options, progress.sub(t / T, (t + 1) / T), on_fit,
                              **dict((inner or {}).get(target, {})))
        chosen = []
        for k, fold in enumerate(cv.fold_ids):
            s = np.where(np.isfinite(scores[k]), scores[k], np.inf)
            m = rows[int(np.argmin(s))]
            chosen.append(cv.labels[m])
            test = (cv.folds == fold) & np.isfinite(cv.y[:, t])
            pred[t, 0, test] = cv.predictions[t, m, test]
            metrics[t, 0, k] = cv.fold_metrics[t, m, k]
            if sel_probs is not None and target in sel_probs:
                sel_probs[target][0, test] = probs[target][m, test]
            if sel_class is not None:
                sel_class[t, 0, k] = class_fold[t, m, k]
        selection[target] = chosen
        if models is not None and all((target, c) in models for c in chosen):
            models[(target, SELECTED)] = [models[(target, c)][k] for k, c in enumerate(chosen)]
        progress.info(f"{target}: per outer fold the inner CV chose {', '.join(chosen)}.")
    r2 = np.full((T, 1), np.nan)
    for t, target in enumerate(cv.target_names):
        ok = np.isfinite(cv.y[:, t])
        kind = cv.kind(target) if hasattr(cv, "kind") else "regression"
        if ok.sum() > 1 and kind == "regression":
            r2[t, 0] = r2_score(cv.y[ok, t], pred[t, 0, ok], sample_weight=w[ok] if (
                w is not None and weighted_metrics) else None)
    spec = MethodSpec(SELECTED, SELECTED, SELECTED)
    extra = {}
    if sel_probs is not None:
        extra["probabilities"] = {g: np.concatenate([probs[g], sel_probs[g]]) for g in probs}
    if sel_class is not None:
        extra["class_fold_metrics"] = np.concatenate([class_fold, sel_class], axis=1)
    out = replace(cv, **extra, methods=list(cv.methods) + [spec],
                  predictions=np.concatenate([cv.predictions, pred], axis=1),
                  fold_metrics=np.concatenate([cv.fold_metrics, metrics], axis=1),
                  r2_pooled=np.concatenate([cv.r2_pooled, r2], axis=1), fold_models=models,
                  selection=selection)
    return out
