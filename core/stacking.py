"""Convex stacking of the candidate methods: what METHOD=all maps with.

Choosing one method by cross-validation on a hundred points is noisy: the differences
between the candidates are often smaller than the spread of their fold scores, and the
choice flips from fold to fold.  A *stack* (Breiman 1996, "Stacked regressions"; van der
Laan et al. 2007, the "super learner") predicts with a weighted mean of the candidates
instead, the weights non-negative and summing to 1, chosen to minimise the squared error
of the candidates' out-of-fold predictions (for a class target: the Brier score of their
out-of-fold class probabilities).  One best candidate is the special case of one weight 1.
Weights under :data:`MIN_WEIGHT` are dropped and the rest refitted, so a stack keeps only
the members that matter.  :func:`shrunk_weights` pulls them toward prior weights (the
baseline alone) by a shrinkage chosen by leaving out one fold of predictions at a time,
with the one-standard-error rule (:func:`one_se_choice`), scored as the product is judged:
squared error, or the kappa of the class map.

:class:`StackedHead` is a head like the others (fit / predict / predict_proba /
state_dict): each member reads its own columns of the stack's input, which is the union of
the members' blocks (:func:`union_blocks`).  :func:`simplex_weights` solves for the
weights; core/selection.py scores the stack honestly (weights of outer fold k from an
inner CV that never saw fold k) and :func:`stack_head` builds the mapped one (weights from
the outer CV's out-of-fold predictions of all points).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.optimize import minimize

from .classes import CLASSIFICATION, KAPPA, REGRESSION, class_metrics
from .errors import InputError, SoilSSLError

STACK = "stack"           # the method name in a stacked head's state
MIN_WEIGHT = 0.05         # members below this weight are dropped (and the rest refitted)
STATE_VERSION = 1
SHRINK_GRID = np.linspace(0.0, 1.0, 11)  # λ tried by shrunk_weights


# ----------------------------------------------------------------------------- weights

def _simplex_lstsq(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||A w - b||² over w >= 0, sum(w) = 1 (A (n, M), M small)."""
    M = A.shape[1]
    if M == 1:
        return np.ones(1)
    scale = max(float(np.mean(b ** 2)), 1e-12) * len(b)

    def f(w):
        r = A @ w - b
        return float(r @ r) / scale, (2.0 * (A.T @ r)) / scale

    res = minimize(f, np.full(M, 1.0 / M), jac=True, method="SLSQP",
                   bounds=[(0.0, 1.0)] * M,
                   constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0,
                                 "jac": lambda w: np.ones_like(w)}],
                   options={"maxiter": 500, "ftol": 1e-12})
    w = np.clip(np.nan_to_num(res.x, nan=0.0), 0.0, None)
    if not np.isfinite(w).all() or w.sum() <= 0:  # solver failure: the best single member
        errors = ((A - b[:, None]) ** 2).sum(axis=0)
        w = np.zeros(M)
        w[int(np.argmin(errors))] = 1.0
    return w / w.sum()


def _prepared(P, y, sample_weight):
    """``P``, ``y`` and the sample weights as float64 arrays, and the usable rows (no NaN,
    weight > 0)."""
    P = np.asarray(P, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if P.ndim not in (2, 3) or P.shape[0] != y.shape[0] or P.shape[1] == 0:
        raise InputError(f"Stacking needs (n, M[, C]) predictions for n targets, got "
                         f"{P.shape} and {y.shape}.")
    s = np.ones(len(y)) if sample_weight is None else \
        np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    ok = np.isfinite(y) & np.isfinite(P.reshape(len(y), -1)).all(axis=1) & (s > 0)
    return P, y, s, ok


def _least_squares(P, y, s) -> Tuple[np.ndarray, np.ndarray]:
    """(A, b) with ||A w - b||² the weighted squared error of the mix ``P @ w`` (class
    probabilities: its Brier score, one row per point and class)."""
    root = np.sqrt(s)
    if P.ndim == 2:
        return P * root[:, None], y * root
    onehot = np.eye(P.shape[2])[y.astype(np.int64)]
    A = (P * root[:, None, None]).transpose(0, 2, 1).reshape(-1, P.shape[1])
    return A, (onehot * root[:, None]).reshape(-1)


def simplex_weights(P, y, sample_weight=None, min_weight: float = MIN_WEIGHT,
                    n_classes: Optional[int] = None) -> np.ndarray:
    """(M,) stacking weights (>= 0, sum 1) of M candidates from their out-of-fold
    predictions ``P``: (n, M) for a numeric target ``y`` (n,), minimising the squared
    error; or (n, M, C) class probabilities for class indices ``y``, minimising the Brier
    score.  Rows with a NaN are left out.  Members below ``min_weight`` are dropped (the
    smallest first) and the others refitted, until every kept weight reaches it."""
    P, y, s, ok = _prepared(P, y, sample_weight)
    M = P.shape[1]
    if not ok.any():
        raise InputError("No point with out-of-fold predictions of every candidate: the "
                         "stack cannot be weighted.")
    A, b = _least_squares(P[ok], y[ok], s[ok])
    active = np.arange(M)
    while True:
        w = _simplex_lstsq(A[:, active], b)
        small = w < min_weight
        if not small.any() or len(active) == 1:
            break
        # drop the smallest weight only: a near-tie of two members can then become one
        active = np.delete(active, int(np.argmin(w)))
    out = np.zeros(M)
    out[active] = w
    return out


def shrunk_weights(P, y, groups, prior, sample_weight=None,
                   grid=SHRINK_GRID) -> Tuple[np.ndarray, float]:
    """Stacking weights shrunk toward ``prior`` weights (M,), and the shrinkage λ:
    ``λ·prior + (1-λ)·simplex_weights(P, y)``, members left below :data:`MIN_WEIGHT`
    dropped (:func:`shrink`).

    Weights fitted on a few dozen out-of-fold predictions are noisy: a member that happened
    to fit a handful of points gets a large weight.  λ (from ``grid``) is chosen by
    cross-validating the weight fit itself, leaving out one group of rows at a time
    (``groups``: the folds the predictions came from, so a left-out group was predicted by
    models that never saw it) and scoring the shrunk weights of the other groups on it.
    λ = 0 is the plain stack, λ = 1 the prior (e.g. the everyday baseline alone).

    With a handful of groups the λ of the lowest cross-validated loss is itself noisy, so
    the *one-standard-error rule* (Breiman et al. 1984; Hastie, Tibshirani & Friedman,
    *Elements of Statistical Learning*, §7.10) picks the largest λ (the one closest to
    the prior) whose loss exceeds the lowest by at most one standard error of that
    excess.  The groups are the same for every λ, so the excess is paired: its standard
    error is that of the per-group differences from the best λ.  With one group, or when
    every group's fit fails, λ = 0.  ``P``, ``y``, ``sample_weight`` as
    :func:`simplex_weights` takes them."""
    P, y, s, ok = _prepared(P, y, sample_weight)
    groups = np.asarray(groups).reshape(-1)
    prior = np.asarray(prior, dtype=np.float64).reshape(-1)
    if groups.shape[0] != y.shape[0] or prior.shape[0] != P.shape[1] or \
            (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
        raise InputError(f"Shrinking a stack needs one group per point and prior weights "
                         f"summing to 1 over the {P.shape[1]} members.")
    full = simplex_weights(P, y, s)
    grid = np.asarray(grid, dtype=np.float64)
    losses = []  # per left-out group: its loss at each λ
    for g in np.unique(groups[ok]):
        test, train = ok & (groups == g), ok & (groups != g)
        if not train.any():
            continue
        w = simplex_weights(P[train], y[train], s[train])
        losses.append([_held_out_loss(P[test], y[test], s[test], shrink(w, prior, lam))
                       for lam in grid])
    losses = np.asarray(losses, dtype=np.float64).reshape(-1, len(grid))
    losses = losses[np.isfinite(losses).all(axis=1)]  # kappa undefined: one class only
    lam = one_se_choice(losses, grid) if len(losses) > 1 else 0.0
    return shrink(full, prior, lam), lam


def shrink(weights, prior, lam: float, min_weight: float = MIN_WEIGHT) -> np.ndarray:
    """``λ·prior + (1-λ)·weights``, then members below ``min_weight`` dropped, their
    weight given to the kept members in proportion to ``prior`` (to the baseline, when the
    prior is the baseline alone): a stack of 0.96 rf_pixels and four members of 0.01 is
    rf_pixels alone, not five models to run over the map."""
    w = lam * np.asarray(prior, dtype=np.float64) + (1 - lam) * np.asarray(weights, np.float64)
    small = (w > 0) & (w < min_weight)
    keep = (w > 0) & ~small
    if not small.any() or not keep.any():
        return w
    to = np.where(keep, prior, 0.0)
    if to.sum() <= 0:
        to = np.where(keep, w, 0.0)
    out = np.where(keep, w, 0.0) + w[small].sum() * to / to.sum()
    return out / out.sum()


def _held_out_loss(P, y, s, w) -> float:
    """What the mix ``w`` loses on a left-out group, by the score its product is judged
    by: the summed squared error of a numeric prediction; for class probabilities
    1 - Cohen's kappa of the most probable class (the class map; the CV table averages
    kappa over folds), NaN where kappa is undefined."""
    if P.ndim == 2:
        A, b = _least_squares(P, y, s)
        r = A @ w - b
        return float(r @ r)
    mix = np.tensordot(P, w, axes=([1], [0]))
    return 1.0 - float(class_metrics(y, mix.argmax(axis=1), s)[KAPPA])


def one_se_choice(losses: np.ndarray, grid: np.ndarray) -> float:
    """The largest value of ``grid`` (increasing) whose summed loss over the groups
    (``losses``: groups × grid) exceeds the lowest by at most one standard error of the
    paired per-group excess (a tiny tolerance absorbs rounding)."""
    best = int(np.argmin(losses.sum(axis=0)))
    excess = losses - losses[:, [best]]
    n = excess.shape[0]
    se = excess.std(axis=0, ddof=1) * np.sqrt(n)  # of the summed excess
    within = excess.sum(axis=0) <= se + 1e-12 * max(1.0, float(np.abs(losses).sum()))
    return float(grid[int(np.flatnonzero(within).max())])


def describe(weights: Mapping[str, float]) -> str:
    """'0.62 rf_pixels + 0.38 rf_hybrid' (largest first)."""
    items = sorted(weights.items(), key=lambda kv: -kv[1])
    return " + ".join(f"{w:.2f} {label}" for label, w in items if w > 0)


def kriged_field(cv, target: str):
    """The mapped stack's kriged residual field of ``target`` (``cv.kriging``), or None."""
    return ((getattr(cv, "kriging", None) or {}).get(target) or {}).get("field")


def stack_text(cv, target: str) -> str:
    """The mapped stack of ``target`` (``cv.stacks``) in words: its weights, and its kriged
    residuals when it adds them (``cv.kriging``, :mod:`.kriging`): "0.62 rf_pixels +
    0.38 rf_hybrid + 0.50 × kriged residuals (range ...)"."""
    field = kriged_field(cv, target)
    return describe(cv.stacks[target]) + (f" + {field.describe()}" if field is not None else "")


# ----------------------------------------------------------------------------- layout

def union_blocks(block_lists: Sequence[Sequence[str]]) -> Tuple[str, ...]:
    """The blocks of several rows, each once, in order of first appearance."""
    out: List[str] = []
    for blocks in block_lists:
        out += [b for b in blocks if b not in out]
    return tuple(out)


def member_columns(blocks: Sequence[str], union: Sequence[str],
                   widths: Mapping[str, int]) -> np.ndarray:
    """Indices, in the stack's input (``union`` side by side), of a member's ``blocks`` in
    its own order."""
    start, offsets = 0, {}
    for b in union:
        offsets[b] = start
        start += int(widths[b])
    return np.concatenate([np.arange(offsets[b], offsets[b] + int(widths[b]))
                           for b in blocks]).astype(np.int64)


def _ranges(cols: np.ndarray) -> List[List[int]]:
    """[[start, stop], ...] runs of consecutive indices (compact in a model file)."""
    cols = np.asarray(cols, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(cols) != 1) + 1
    return [[int(run[0]), int(run[-1]) + 1] for run in np.split(cols, breaks) if run.size]


def _from_ranges(ranges) -> np.ndarray:
    return np.concatenate([np.arange(int(a), int(b)) for a, b in ranges]).astype(np.int64)


# ----------------------------------------------------------------------------- head

class StackedHead:
    """A weighted mean of heads, each on its columns of X: a head like the others.

    ``members``: (label, head, column indices) triples; ``weights``: one per member (>= 0,
    normalised to sum 1); ``n_features``: the width of X (the union of the members'
    blocks).  Class stacks (``kind`` classification) average the members' class
    probabilities; ``predict`` is then the most probable class index."""

    method = STACK

    def __init__(self, members: Sequence[Tuple[str, object, np.ndarray]], weights,
                 n_features: int, kind: str = REGRESSION):
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if not members or len(members) != len(weights) or (weights < 0).any() or \
                weights.sum() <= 0:
            raise InputError(f"A stack needs members and as many non-negative weights, got "
                             f"{len(members)} and {weights.tolist()}.")
        self.labels = [m[0] for m in members]
        self.heads = [m[1] for m in members]
        self.columns = [np.asarray(m[2], dtype=np.int64) for m in members]
        self.weights = weights / weights.sum()
        self.n_features = int(n_features)
        self.kind = kind
        if any(c.size == 0 or c.min() < 0 or c.max() >= self.n_features for c in self.columns):
            raise InputError(f"Stack members must read columns 0..{self.n_features - 1}.")

    @property
    def n_classes(self) -> int:
        return int(getattr(self.heads[0], "n_classes", 0))

    @property
    def weight_map(self) -> Dict[str, float]:
        return {label: float(w) for label, w in zip(self.labels, self.weights)}

    def _x(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise InputError(f"The stacked head expects (N, {self.n_features}) inputs, got "
                             f"shape {X.shape}: use the covariates, backbone and bands it "
                             f"was trained with.")
        return X

    def fit(self, X, y, sample_weight=None) -> "StackedHead":
        X = self._x(X)
        for head, cols in zip(self.heads, self.columns):
            head.fit(X[:, cols], y, sample_weight=sample_weight)
        return self

    def predict_proba(self, X) -> np.ndarray:
        if self.kind != CLASSIFICATION:
            raise SoilSSLError("A numeric stack has no class probabilities.")
        X = self._x(X)
        return sum(w * head.predict_proba(X[:, cols])
                   for w, head, cols in zip(self.weights, self.heads, self.columns))

    def predict(self, X) -> np.ndarray:
        if self.kind == CLASSIFICATION:
            return self.predict_proba(X).argmax(axis=1).astype(np.float64)
        X = self._x(X)
        return sum(w * np.asarray(head.predict(X[:, cols]), dtype=np.float64)
                   for w, head, cols in zip(self.weights, self.heads, self.columns))

    @property
    def feature_importances_(self) -> Optional[np.ndarray]:
        """The members' forest impurity importances, weighted, on the stack's columns;
        None unless every member is a forest that sees its columns directly."""
        from .importance import native_importances
        out = np.zeros(self.n_features)
        for w, head, cols in zip(self.weights, self.heads, self.columns):
            values = native_importances(head, len(cols))
            if values is None:
                return None
            out[cols] += w * values
        return out

    def state_dict(self) -> dict:
        return {"method": STACK, "version": STATE_VERSION, "kind": self.kind,
                "n_features": self.n_features, "labels": list(self.labels),
                "weights": [float(w) for w in self.weights],
                "columns": [_ranges(c) for c in self.columns],
                "members": [head.state_dict() for head in self.heads]}

    @classmethod
    def from_state(cls, state: dict) -> "StackedHead":
        if state.get("method") != STACK:
            raise InputError(f"State of a '{state.get('method')}' head given to the stack.")
        if int(state.get("version", -1)) > STATE_VERSION:
            raise InputError(f"Stacked head version {state.get('version')} is newer than this "
                             f"SoilSSL: update the plugin.")
        from .classes import load_head
        members = [(label, load_head(s), _from_ranges(r)) for label, s, r in
                   zip(state["labels"], state["members"], state["columns"])]
        return cls(members, state["weights"], int(state["n_features"]),
                   state.get("kind", REGRESSION))


def stack_head(cv, target: str, widths: Mapping[str, int], union: Sequence[str],
               factory, weights: Optional[Mapping[str, float]] = None) -> StackedHead:
    """An unfitted stack of the rows weighted in ``weights`` (default ``cv.stacks[target]``)
    for ``target``: fresh heads from ``factory(spec)``, each on its blocks' columns of the
    ``union`` layout (``widths``: columns per block)."""
    weights = dict(weights if weights is not None else (cv.stacks or {})[target])
    n = int(sum(int(widths[b]) for b in union))
    members = []
    for label, w in weights.items():
        spec = cv.methods[cv.labels.index(label)]
        members.append((label, factory(spec), member_columns(spec.blocks, union, widths)))
    return StackedHead(members, list(weights.values()), n, cv.kind(target))
