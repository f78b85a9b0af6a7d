"""How far the everyday baseline's CV score moves when only its random seed changes.

A random forest is random: its bootstrap samples, the features tried at each split and the
out-of-bag choice of its settings all follow the seed.  On a few dozen points its
cross-validated RMSE moves by 2-4 % with the seed alone, the folds and the data unchanged
(`make noise` on the real sets of `make evaluate`; README).  A method that beats
``rf_pixels`` by 1 % there has not shown that it is better.

:func:`baseline_spread` refits the baseline row on the CV's own folds with ``n_seeds`` more
seeds; the report (:mod:`.report`) then says, beside each gain over ``rf_pixels``, whether
it is larger than twice that spread (:func:`spread_clause`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Mapping, Optional

import numpy as np

from .classes import CLASSIFICATION, KAPPA
from .cv import BASELINE, CVResult, cross_validate
from .progress import Progress, ensure

SPREAD_SEEDS = 4  # seeds added to the CV's own: 5 scores per target
BEYOND = 2.0  # a gain counts as beyond the spread when larger than BEYOND standard deviations


def row_scores(cv: CVResult, label: str) -> np.ndarray:
    """(T,) the row's score per target: mean fold RMSE, or mean fold kappa for a class
    target (the scores the report and the CV table compare)."""
    m = cv.labels.index(label)
    rmse = cv.summary()[0][:, m, 0]
    if cv.class_fold_metrics is None:
        return rmse
    kappa = cv.class_summary()[0][:, m, KAPPA]
    return np.array([kappa[t] if cv.kind(name) == CLASSIFICATION else rmse[t]
                     for t, name in enumerate(cv.target_names)])


def baseline_spread(cv: CVResult, feature_sets: Mapping[str, np.ndarray], seed: int = 0,
                    n_seeds: int = SPREAD_SEEDS, loss: str = "mse", weights=None,
                    class_weight: Optional[str] = None,
                    head_options: Optional[Mapping[str, dict]] = None,
                    progress: Optional[Progress] = None) -> CVResult:
    """``cv`` with ``spread``: per target {"scores": the baseline's score with the CV's
    ``seed`` and ``n_seeds`` more (seed+1, seed+2, ...), "sd": their standard deviation
    (ddof=1), "percent": sd in % of their mean's magnitude}.  Same folds, points, feature
    sets, loss, weights and head settings as the CV (``seed``, ``loss``, ``weights``,
    ``class_weight``, ``head_options`` as given to :func:`~.cv.cross_validate`); only the
    seed changes.  ``cv`` unchanged when it has no ``rf_pixels`` row or ``n_seeds`` < 1."""
    progress = ensure(progress)
    if BASELINE not in cv.labels or n_seeds < 1:
        return cv
    spec = cv.methods[cv.labels.index(BASELINE)]
    scores = [row_scores(cv, BASELINE)]
    for i in range(n_seeds):
        other = cross_validate(feature_sets, cv.y, cv.folds, [spec],
                               target_names=cv.target_names, loss=loss, weights=weights,
                               seed=seed + 1 + i, head_options=head_options,
                               progress=progress.sub(i / n_seeds, (i + 1) / n_seeds),
                               kinds=cv.kinds, classes=cv.classes, class_weight=class_weight)
        scores.append(row_scores(other, BASELINE))
    scores = np.array(scores)  # (seeds, T)
    spread: Dict[str, dict] = {}
    for t, target in enumerate(cv.target_names):
        s = scores[:, t]
        if not np.isfinite(s).all():
            continue
        sd = float(s.std(ddof=1))
        mean = float(abs(s.mean()))
        spread[target] = {"scores": s.tolist(), "sd": sd,
                          "percent": 100.0 * sd / mean if mean else float("nan")}
    return replace(cv, spread=spread)


def spread_clause(cv: CVResult, target: str, percent: float) -> str:
    """Words for a gain of ``percent`` % over rf_pixels against the baseline's own spread
    ('' without one): within or beyond :data:`BEYOND` standard deviations of it."""
    s = (getattr(cv, "spread", None) or {}).get(target)
    if not s or not np.isfinite(s["percent"]):
        return ""
    where = "beyond" if abs(percent) > BEYOND * s["percent"] else "within"
    return f", {where} twice rf_pixels' seed spread of {s['percent']:.1f} %"


def spread_note(cv: CVResult) -> Optional[str]:
    """What "rf_pixels' seed spread" means, once per report (None without one)."""
    spread = getattr(cv, "spread", None) or {}
    if not spread:
        return None
    n = len(next(iter(spread.values()))["scores"])
    return (f"rf_pixels' seed spread: the standard deviation of its CV score over {n} random "
            f"seeds, the points and folds unchanged, in % of its mean. A difference within "
            f"twice that spread is not shown to be real: the baseline itself moves that much.")


def spread_text(cv: CVResult) -> Optional[str]:
    """One line for the log: the baseline's spread per target."""
    spread = getattr(cv, "spread", None) or {}
    if not spread:
        return None
    parts = [f"{t} {s['percent']:.1f} %" for t, s in spread.items()]
    n = len(next(iter(spread.values()))["scores"])
    return (f"How far rf_pixels moves by itself (sd of its CV score over {n} seeds, same "
            f"folds): {', '.join(parts)}. Differences between methods smaller than about "
            f"twice this are not shown to be real.")
