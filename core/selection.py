"""Nested selection: an honest score for "the method METHOD=all maps with".

METHOD=all maps with a *stack* of the candidate rows (:mod:`.stacking`): a weighted mean
of their predictions, the weights fitted to out-of-fold predictions.  Fitting the weights
on the same out-of-fold predictions that then score the stack would be optimistic, as
picking the method with the lowest CV RMSE and reporting that RMSE is.
:func:`nested_selection` adds the row ``selected`` to a :class:`~.cv.CVResult`: for every
outer fold k the weights come from an inner CV on the other folds only (never on fold k),
and fold k is then predicted by the weighted mean of the candidates' outer models
(fitted on all folds but k, already in the CV).  The ``selected`` row's score is
therefore the outer-loop score of the whole procedure "weight by CV, then fit", which is
what the map (weighted by the CV of all points) gets.  A stack with one weight 1 is the
plain choice of one method.

The weights are shrunk toward the everyday baseline ``rf_pixels`` alone
(:func:`~.stacking.shrunk_weights`) unless a cross-validation of the weight fit itself
(leaving out one fold of the predictions at a time) shows a gain steadier than one
standard error: on a few dozen points the fitted weights follow the handful of points
each member happened to fit, and do not carry over to the next fold.  λ = 0 (the weights
as fitted) when they do.

Inner CV: the inner folds of outer fold k are the other outer folds j.  The inner model
that predicts fold j for outer fold k is trained on every fold but {k, j}; the same
model predicts fold k for outer fold j, so one fit per unordered pair of folds serves
both (K(K-1)/2 fits per candidate instead of K(K-1)).  No inner model used for fold k's
weights has seen fold k.  The inner fits use the same head settings as the outer ones:
the weights are applied to the outer models' predictions, so they are fitted to the
predictions of the same models (not of cheaper ones with fewer trees, boosting rounds or
epochs).  :func:`inner_scores` also ranks the single candidates per outer fold (the mean
over inner folds of the fold RMSE), for the log.

With the points' coordinates, numeric targets add residual kriging to the stack
(:mod:`.kriging`), nested the same way: fold k's field and its share come from the
stack's inner out-of-fold residuals on the other folds, never from fold k.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import replace
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from sklearn.metrics import r2_score

from .classes import CLASSIFICATION, REGRESSION, class_metrics
from .cv import (BASELINE, CONTEXT, MIN_TRAIN_POINTS, PIXELS, SELECTED, CVResult,
                 MethodSpec, make_head, regression_metrics, stack_blocks)
from .errors import InputError
from .kriging import residual_kriging
from .progress import Progress, ensure
from .stacking import StackedHead, describe, member_columns, shrunk_weights, union_blocks


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


def rmse(y_true, y_pred) -> float:
    """The default inner score (lower is better)."""
    return float(regression_metrics(y_true, y_pred)[0])


def inner_predictions(feature_sets: Mapping[str, np.ndarray], y: np.ndarray, folds: np.ndarray,
                      specs: Sequence[MethodSpec], loss: str = "mse", weights=None,
                      seed: int = 0, head_options: Optional[Mapping[str, dict]] = None,
                      progress: Optional[Progress] = None, on_fit=None,
                      factory=make_head, proba: bool = False) -> np.ndarray:
    """Inner out-of-fold predictions of each candidate for each outer fold, for one target
    ``y`` (N,) (NaN = missing): (K outer, N, M candidates), or with ``proba`` the class
    probabilities (K, N, M, C).  Entry [k, i, m] predicts point i (of an outer fold j != k)
    by candidate m fitted on every fold but {k, j}; NaN for the points of fold k itself
    and where no inner model could be fitted.

    ``factory(spec, widths, loss, seed, options)``: a new head (a class target's heads come
    from its own factory); ``on_fit(spec, train_mask)`` is called before each inner fit
    (tests use it to check what each fit sees)."""
    progress = ensure(progress)
    fold_ids = np.unique(folds)
    K, M, N = len(fold_ids), len(specs), len(y)
    valid = np.isfinite(y)
    out = None
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
                           seed, head_options)
            head.fit(stack_blocks(feature_sets, spec.blocks, train), y[train],
                     sample_weight=w_train)
            for outer, inner in ((a, b), (b, a)):
                test = valid & (folds == fold_ids[inner])
                if test.any():
                    x = stack_blocks(feature_sets, spec.blocks, test)
                    pred = head.predict_proba(x) if proba else head.predict(x)
                    if out is None:
                        out = np.full((K, N, M) + np.shape(pred)[1:], np.nan)
                    out[outer, test, m] = pred
            progress.set((p * M + m + 1) / (len(pairs) * M))
    return np.full((K, N, M), np.nan) if out is None else out


def inner_scores(feature_sets: Mapping[str, np.ndarray], y: np.ndarray, folds: np.ndarray,
                 specs: Sequence[MethodSpec], loss: str = "mse", weights=None, seed: int = 0,
                 head_options: Optional[Mapping[str, dict]] = None,
                 progress: Optional[Progress] = None, on_fit=None, score=rmse,
                 factory=make_head, predictions: Optional[np.ndarray] = None) -> np.ndarray:
    """(K outer, M candidates) mean inner-fold score of each candidate for each outer fold
    (NaN where no inner fold could be scored), for one target ``y`` (N,) (NaN = missing).

    ``score(y_true, y_pred)``: lower is better (RMSE; a class target would pass e.g.
    1 - kappa, and class probabilities as ``predictions``, scored by their most probable
    class); ``predictions``: :func:`inner_predictions` when already computed; the other
    arguments as :func:`inner_predictions` takes them."""
    if predictions is None:
        predictions = inner_predictions(feature_sets, y, folds, specs, loss, weights, seed,
                                        head_options, progress, on_fit, factory)
    fold_ids = np.unique(folds)
    K, M = len(fold_ids), len(specs)
    scores = np.full((K, K, M), np.nan)  # [outer k, inner j, candidate]
    for k, j in itertools.permutations(range(K), 2):
        test = np.isfinite(y) & (folds == fold_ids[j])
        for m in range(M):
            pred = predictions[k, test, m]
            if pred.ndim == 2:  # class probabilities -> class index
                pred = np.where(np.isfinite(pred).all(axis=1), pred.argmax(axis=1), np.nan)
            if test.any() and np.isfinite(pred).all():
                scores[k, j, m] = score(y[test], pred)
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
                     on_fit=None, inner: Optional[Mapping[str, dict]] = None,
                     coords=None) -> CVResult:
    """``cv`` with the row ``selected`` appended: the stack of the candidates (see the
    module docstring), scored honestly.

    ``labels``: the candidate rows (e.g. :func:`candidates`); ``feature_sets``, ``loss``,
    ``weights``, ``seed`` as given to :func:`~.cv.cross_validate`; ``inner``: per target,
    extra arguments (``score``, ``factory``; e.g. :func:`class_inner` for class targets).
    Fold k of ``selected`` is the weighted mean of the candidates' outer predictions of
    fold k (class targets: of their class probabilities), with the weights an inner CV on
    the other folds gave; its fold model is the stack of their fold-k models.  The result's
    ``selection`` maps each target to those weights per outer fold (text, in ``fold_ids``
    order), ``stacks`` to the weights of the mapped stack, from the out-of-fold predictions
    of all points, and ``inner_best`` to the single candidate the inner CV ranked first per
    outer fold.
    ``coords`` (N, 2), when given: numeric targets get residual kriging (:mod:`.kriging`).
    Fold k adds its share α_k of the field of the stack's inner out-of-fold residuals on the
    other folds (α_k chosen on those folds alone); the result's ``kriging`` maps each
    numeric target to {"fold_alpha": [α_k], "field": the mapped field or None, the field
    of the mapped stack's out-of-fold residuals with α chosen on the outer folds,
    "fold_fields": fold k's field or None (the fold models' part, for their spread)}."""
    progress = ensure(progress)
    if not labels:
        raise InputError("Nested selection needs at least one candidate method.")
    if SELECTED in cv.labels:
        raise InputError("The cross-validation already has a 'selected' row.")
    rows = [cv.labels.index(label) for label in labels]
    specs = [cv.methods[m] for m in rows]
    # the weights are shrunk toward the everyday baseline alone (else toward equal weights)
    prior_name = BASELINE if BASELINE in labels else "equal weights"
    prior = np.eye(len(labels))[labels.index(BASELINE)] if BASELINE in labels else \
        np.full(len(labels), 1.0 / len(labels))
    union = union_blocks([s.blocks for s in specs])
    widths = {b: feature_sets[b].shape[1] for b in union}
    cols = [member_columns(s.blocks, union, widths) for s in specs]
    width = int(sum(widths.values()))
    w = None if weights is None else np.asarray(weights, np.float64)
    T, n = len(cv.target_names), cv.y.shape[0]
    pred = np.full((T, 1, n), np.nan)
    metrics = np.full((T, 1) + cv.fold_metrics.shape[2:], np.nan)
    selection: Dict[str, List[str]] = {}
    stacks: Dict[str, Dict[str, float]] = {}
    inner_best: Dict[str, List[str]] = {}
    kriging: Dict[str, dict] = {}
    xy = None if coords is None else np.asarray(coords, np.float64).reshape(-1, 2)
    models = dict(cv.fold_models) if cv.fold_models is not None else None
    # per-row arrays of class targets, when the CVResult has them
    probs = getattr(cv, "probabilities", None)  # target -> (M, N, C)
    class_fold = getattr(cv, "class_fold_metrics", None)  # (T, M, K, n metrics)
    sel_probs = {g: np.full((1,) + p.shape[1:], np.nan) for g, p in probs.items()} \
        if probs else None
    sel_class = None if class_fold is None else \
        np.full(class_fold.shape[:1] + (1,) + class_fold.shape[2:], np.nan)
    for t, target in enumerate(cv.target_names):
        is_class = cv.kind(target) == CLASSIFICATION
        extra = dict((inner or {}).get(target, {}))
        progress.info(f"{target}: stacking {len(specs)} methods, weighted by an inner CV on "
                      f"the training folds of each outer fold...")
        inner_pred = inner_predictions(feature_sets, cv.y[:, t], cv.folds, specs, loss, w,
                                       seed, head_options, progress.sub(t / T, (t + 1) / T),
                                       on_fit, extra.get("factory", make_head), is_class)
        scores = inner_scores(feature_sets, cv.y[:, t], cv.folds, specs,
                              score=extra.get("score", rmse), predictions=inner_pred)
        valid = np.isfinite(cv.y[:, t])
        outer = probs[target][rows].transpose(1, 0, 2) if is_class else \
            cv.predictions[t, rows].T  # (N, M[, C]) outer out-of-fold predictions
        chosen, best, shrink, shares, fields = [], [], [], [], []
        krige = xy is not None and not is_class
        for k, fold in enumerate(cv.fold_ids):
            test = (cv.folds == fold) & valid
            train = (cv.folds != fold) & valid
            wk, lam = shrunk_weights(inner_pred[k][train], cv.y[train, t], cv.folds[train],
                                     prior, None if w is None else w[train])
            shrink.append(lam)
            s = np.where(np.isfinite(scores[k]), scores[k], np.inf)
            best.append(labels[int(np.argmin(s))])
            chosen.append(describe({labels[m]: wk[m] for m in range(len(rows))}))
            mix = np.tensordot(outer[test], wk, axes=([1], [0]))  # (n_k[, C])
            if krige:  # the field of the stack's inner out-of-fold residuals
                field = residual_kriging(xy[train], cv.y[train, t] - inner_pred[k][train] @ wk,
                                         cv.folds[train], seed)
                shares.append(field.alpha if field else 0.0)
                fields.append(field)
                if field:
                    mix = mix + field.predict(xy[test])
            w_test = w[test] if (w is not None and weighted_metrics) else None
            if is_class:
                pred[t, 0, test] = mix.argmax(axis=1)
                sel_probs[target][0, test] = mix
                sel_class[t, 0, k] = class_metrics(cv.y[test, t], pred[t, 0, test],
                                                   sample_weight=w_test)
            else:
                pred[t, 0, test] = mix
                metrics[t, 0, k] = regression_metrics(cv.y[test, t], mix,
                                                      sample_weight=w_test)
            if models is not None and all((target, label) in models for label in labels):
                keep = np.flatnonzero(wk > 0)
                models.setdefault((target, SELECTED), []).append(StackedHead(
                    [(labels[m], models[(target, labels[m])][k], cols[m]) for m in keep],
                    wk[keep], width, cv.kind(target)))
        final, lam = shrunk_weights(outer[valid], cv.y[valid, t], cv.folds[valid], prior,
                                    None if w is None else w[valid])
        stacks[target] = {labels[m]: float(final[m]) for m in np.flatnonzero(final > 0)}
        selection[target], inner_best[target] = chosen, best
        kriged = ""
        if krige:
            field = residual_kriging(xy[valid], cv.y[valid, t] - outer[valid] @ final,
                                     cv.folds[valid], seed)
            kriging[target] = {"fold_alpha": shares, "field": field, "fold_fields": fields}
            kriged = (f" Residual kriging, share per outer fold: "
                      f"{', '.join(f'{a:.2f}' for a in shares)}; mapped: "
                      f"{field.describe() if field else 'none'}.")
        progress.info(f"{target}: per outer fold the inner CV weighted "
                      f"{'; '.join(chosen)} (its best single method: {', '.join(best)}; "
                      f"shrunk toward {prior_name} by {', '.join(f'{x:.1f}' for x in shrink)}). "
                      f"Mapped: {describe(stacks[target])} (shrunk by {lam:.1f}).{kriged}")
    r2 = np.full((T, 1), np.nan)
    for t, target in enumerate(cv.target_names):
        ok = np.isfinite(cv.y[:, t])
        if ok.sum() > 1 and cv.kind(target) == REGRESSION:
            r2[t, 0] = r2_score(cv.y[ok, t], pred[t, 0, ok], sample_weight=w[ok] if (
                w is not None and weighted_metrics) else None)
    spec = MethodSpec(SELECTED, SELECTED, SELECTED, blocks=union)
    extra = {}
    if sel_probs is not None:
        extra["probabilities"] = {g: np.concatenate([probs[g], sel_probs[g]]) for g in probs}
    if sel_class is not None:
        extra["class_fold_metrics"] = np.concatenate([class_fold, sel_class], axis=1)
    out = replace(cv, **extra, methods=list(cv.methods) + [spec],
                  predictions=np.concatenate([cv.predictions, pred], axis=1),
                  fold_metrics=np.concatenate([cv.fold_metrics, metrics], axis=1),
                  r2_pooled=np.concatenate([cv.r2_pooled, r2], axis=1), fold_models=models,
                  selection=selection, stacks=stacks, inner_best=inner_best,
                  kriging=kriging if xy is not None else None)
    return out
