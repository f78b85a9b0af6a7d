"""Class targets (soil types, land covers): detection, encoding, classifier heads, metrics.

A class target travels through the engine as float class indices 0..C-1 (NaN = missing) in
``Points.values``, with its names in ``Points.classes[target]``.  The heads mirror the
regression heads of :mod:`.heads` (same interface, same weights_only-safe state dicts) and
always know the full class list: a class missing from a training fold gets probability 0,
so every fold model's probabilities have the same C columns::

    head = make_target_head("rf_features", CLASSIFICATION, n_classes=4,
                            class_weight="balanced")
    head.fit(X, y)                 # y: class indices 0..3 (some may be absent)
    head.predict_proba(X)          # -> (M, 4), rows sum to 1
    head.predict(X)                # -> float64 class index of the most probable class
    same = load_head(head.state_dict())

The registry has a ``kind`` switch: :func:`make_target_head` gives a regressor of :mod:`.heads`
for regression and a classifier of :data:`CLASS_HEADS` for classification, under the same
method labels.  For a class target the ``ridge`` row (the linear probe) is an L2-penalised
multinomial logistic regression; ``mlp`` is the paper's MLP with a softmax output and
cross-entropy; ``rf_*`` rows are a random forest classifier.  A head without a classifier
variant (e.g. a regression-only hybrid) raises a clear InputError.

Class weights (``class_weight="balanced"``): each training point's weight is multiplied by
n / (C_seen * count of its class) in the training fold (scikit-learn's
``compute_sample_weight``), so rare classes count as much as common ones.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, cohen_kappa_score,
                             confusion_matrix, f1_score, log_loss)
from sklearn.utils.class_weight import compute_sample_weight
from torch.nn import functional as F

from .errors import InputError
from .heads import (ForestHead, MLPNet, Regressor, Seeded, _check_fit_data, _standardisation,
                    METHOD_ALIASES, forest_arrays, forest_leaves, load_regressor,
                    make_regressor, to_numpy)
from .hybrid import FoldPCA, GBMSettings, gbm_arrays, gbm_raw

REGRESSION, CLASSIFICATION = "regression", "classification"
KINDS = (REGRESSION, CLASSIFICATION)
TARGET_TYPES = ("auto",) + KINDS
CLASS_WEIGHTS = (None, "balanced")
# An integer field is a class target (TARGET_TYPE=auto) with at most this many distinct
# values, and fewer distinct values than this share of its points.
MAX_AUTO_CLASSES = 20
MAX_AUTO_SHARE = 0.10
CLASS_METRICS = ("accuracy", "balanced_accuracy", "kappa", "macro_f1")
KAPPA = CLASS_METRICS.index("kappa")  # its column in class metric arrays
# The method mapped for a class target (METHOD=all) is the one with the highest pooled
# out-of-fold Cohen's kappa; ties go to the higher balanced accuracy.
SELECT_BY = "kappa"


# ----------------------------------------------------------------------------- detection

def is_class_field(values: Sequence, text: bool = False, integer: bool = False,
                   target_type: str = "auto") -> bool:
    """Whether a field is a class target.

    ``values``: the field's raw values (None = NULL); ``text``/``integer``: the field's
    type.  ``classification``/``regression`` decide outright; ``auto`` takes a text field
    whose values are not all numbers, or an integer field with few distinct values (at
    most :data:`MAX_AUTO_CLASSES`, and fewer than :data:`MAX_AUTO_SHARE` of the points).
    """
    if target_type not in TARGET_TYPES:
        raise InputError(f"Unknown TARGET_TYPE '{target_type}': use one of "
                         f"{', '.join(TARGET_TYPES)}.")
    if target_type != "auto":
        return target_type == CLASSIFICATION
    present = [v for v in values if v is not None]
    if text:
        return not all(_is_number(v) for v in present)
    if integer:
        distinct = len(set(present))
        return 0 < distinct <= MAX_AUTO_CLASSES and distinct < MAX_AUTO_SHARE * len(present)
    return False


def _is_number(value) -> bool:
    try:
        return math.isfinite(float(str(value).replace(",", ".")))
    except (TypeError, ValueError):
        return False


def _class_name(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def encode_classes(values: Sequence) -> Tuple[np.ndarray, List[str]]:
    """(float class indices with NaN for None/empty, class names): names sorted numerically
    when every value is a number ("2" before "10"), else alphabetically."""
    names = [None if v is None else _class_name(v) for v in values]
    names = [None if n in (None, "") else n for n in names]
    distinct = sorted({n for n in names if n is not None})
    if distinct and all(_is_number(n) for n in distinct):
        distinct.sort(key=lambda n: float(n.replace(",", ".")))
    index = {n: i for i, n in enumerate(distinct)}
    codes = np.array([np.nan if n is None else index[n] for n in names], dtype=np.float64)
    return codes, distinct


# ----------------------------------------------------------------------------- metrics

def class_metrics(y_true, y_pred, sample_weight=None) -> np.ndarray:
    """[accuracy, balanced accuracy, Cohen's kappa, macro F1] by scikit-learn (NaN for no
    point; kappa is NaN where truth and prediction are one same class)."""
    y_true, y_pred = np.asarray(y_true).astype(np.int64), np.asarray(y_pred).astype(np.int64)
    if len(y_true) == 0:
        return np.full(len(CLASS_METRICS), np.nan)
    with warnings.catch_warnings():  # single-class folds: recall/kappa undefined -> NaN/0
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(y_true, y_pred, sample_weight=sample_weight) \
            if len(np.union1d(y_true, y_pred)) > 1 else np.nan
        return np.array([
            accuracy_score(y_true, y_pred, sample_weight=sample_weight),
            balanced_accuracy_score(y_true, y_pred, sample_weight=sample_weight),
            kappa,
            f1_score(y_true, y_pred, average="macro", sample_weight=sample_weight,
                     zero_division=0)], dtype=np.float64)


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(C, C) counts: rows observed class, columns predicted class (all C classes)."""
    ok = np.isfinite(np.asarray(y_true, float)) & np.isfinite(np.asarray(y_pred, float))
    return confusion_matrix(np.asarray(y_true)[ok].astype(np.int64),
                            np.asarray(y_pred)[ok].astype(np.int64), labels=range(n_classes))


def entropy(proba: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row of (N, C) probabilities divided by log(C): 0 = one class
    certain, 1 = all classes equally likely."""
    p = np.clip(np.asarray(proba, np.float64), 1e-12, 1.0)
    if p.shape[1] < 2:
        return np.zeros(p.shape[0])
    return -(p * np.log(p)).sum(axis=1) / math.log(p.shape[1])


def disagreement(fold_classes: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Share of the fold models (rows of (K, N) class indices) that do not predict
    ``chosen`` (N,): the class targets' uncertainty (0 = all fold models agree)."""
    return (np.asarray(fold_classes) != np.asarray(chosen)[None, :]).mean(axis=0)


# ----------------------------------------------------------------------------- heads

class Classifier(Regressor):
    """A class head: :class:`~.heads.Regressor`'s interface plus :meth:`predict_proba`.

    ``n_classes`` is the full class count; ``fit`` takes class indices 0..C-1 (any may be
    absent) and ``predict`` gives the index of the most probable class as float64.
    Subclasses implement ``_fit`` (on the classes seen, ``self.seen``), ``_proba_seen``
    (probabilities over ``self.seen``), ``_state`` and ``_load``.
    """

    kind = CLASSIFICATION

    def __init__(self, n_classes: int = 2, class_weight: Optional[str] = None):
        Regressor.__init__(self)  # not super(): ForestClassifier's forest options stay
        if int(n_classes) < 2:
            raise InputError(f"A class target needs at least 2 classes, got {n_classes}.")
        if class_weight not in CLASS_WEIGHTS:
            raise InputError(f"Unknown class weight '{class_weight}': use None or 'balanced'.")
        self.n_classes, self.class_weight = int(n_classes), class_weight
        self.seen = np.arange(0)

    def base_params(self) -> dict:
        return {"n_classes": self.n_classes, "class_weight": self.class_weight}

    def fit(self, X, y, sample_weight=None) -> "Classifier":
        X, y, w = _check_fit_data(X, y, sample_weight)
        if (y != np.round(y)).any() or y.min() < 0 or y.max() >= self.n_classes:
            raise InputError(f"Class targets must be class indices 0..{self.n_classes - 1}.")
        y = y.astype(np.int64)
        if self.class_weight == "balanced":
            cw = compute_sample_weight("balanced", y)
            w = cw if w is None else w * cw
            w = w / w.mean()
        self.seen = np.unique(y)
        self._fit(X, y, w)
        self.n_features = int(X.shape[1])
        return self

    def _predict_chunk(self, X: np.ndarray) -> np.ndarray:
        return self._proba_chunk(X).argmax(axis=1).astype(np.float64)

    def _proba_chunk(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros((X.shape[0], self.n_classes), dtype=np.float64)
        if len(self.seen) == 1:
            out[:, self.seen[0]] = 1.0
        else:
            out[:, self.seen] = self._proba_seen(X)
        return out

    def predict_proba(self, X) -> np.ndarray:
        """(N, n_classes) class probabilities (0 for classes absent from training)."""
        return self._by_chunks(X, self._proba_chunk, self.n_classes)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(kind=CLASSIFICATION, seen=torch.from_numpy(self.seen.astype(np.int64)))
        return state

    @classmethod
    def from_state(cls, state: dict) -> "Classifier":
        head = super().from_state(state)
        head.seen = to_numpy(state["seen"]).astype(np.int64)
        return head

    def _fit(self, X, y, w) -> None:
        raise NotImplementedError

    def _proba_seen(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _node_probabilities(tree) -> np.ndarray:
    """(nodes, classes) class probabilities of a fitted classification tree's nodes."""
    value = tree.value[:, 0, :].astype(np.float64)
    return value / value.sum(axis=1, keepdims=True).clip(1e-300)


class ForestClassifier(Classifier, ForestHead):
    """Random forest classifier with (max_features, min_samples_leaf) chosen by out-of-bag
    accuracy on :meth:`ForestHead.grid`; trees stored as arrays (leaf class fractions)
    and predicted by the vectorised traversal: exactly RandomForestClassifier's
    ``predict_proba``."""

    method = "rf"

    def __init__(self, n_classes: int = 2, class_weight: Optional[str] = None, seed: int = 0,
                 **forest):
        ForestHead.__init__(self, seed=seed, **forest)
        Classifier.__init__(self, n_classes, class_weight)

    def params(self) -> dict:
        return {**ForestHead.params(self), **self.base_params()}

    def _forest(self, n_trees: int, mtry: int, leaf: int, oob: bool) -> RandomForestClassifier:
        return RandomForestClassifier(n_estimators=n_trees, max_features=mtry,
                                      min_samples_leaf=leaf, oob_score=oob, warm_start=True,
                                      n_jobs=self.n_jobs, random_state=self.seed)

    @staticmethod
    def _oob_r2(forest: RandomForestClassifier, y, w) -> float:  # ForestHead's search score
        proba = forest.oob_decision_function_
        ok = np.isfinite(proba).all(axis=1)
        if ok.sum() < 2:
            return -math.inf
        pred = forest.classes_[proba[ok].argmax(axis=1)]
        return float(accuracy_score(y[ok], pred, sample_weight=None if w is None else w[ok]))

    def _fit(self, X, y, w) -> None:
        if len(self.seen) == 1:
            self.arrays, self.best_params_ = {}, {}
            return
        ForestHead._fit(self, X, y, w)

    def _tree_arrays(self, forest) -> Dict[str, np.ndarray]:
        return forest_arrays(forest, _node_probabilities)

    def _proba_seen(self, X: np.ndarray) -> np.ndarray:
        leaves = forest_leaves(self.arrays, X)
        total = np.zeros((X.shape[0], len(self.seen)), dtype=np.float64)
        for tree_leaves in leaves:
            total += self.arrays["value"][tree_leaves]
        return total / len(self.arrays["roots"])

    def _state(self) -> dict:
        return ForestHead._state(self)

    def _load(self, state: dict) -> None:
        ForestHead._load(self, state)


class LogisticHead(Seeded, Classifier):
    """Linear probe for classes: standardised features, multinomial logistic regression
    (L2).  C is chosen from ``Cs`` by the log-loss on a seeded inner split of the training
    points (``val_fraction``; with fewer than 20 points C = 1), then refitted on all."""

    method = "ridge"

    def __init__(self, n_classes: int = 2, class_weight: Optional[str] = None, seed: int = 0,
                 Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
                 val_fraction: float = 0.2, max_iter: int = 500):
        super().__init__(n_classes, class_weight)
        self.seed, self.Cs = int(seed), [float(c) for c in Cs]
        self.val_fraction, self.max_iter = float(val_fraction), int(max_iter)
        self.x_mean = self.x_scale = self.coef = self.intercept = None
        self.C = float("nan")

    def params(self) -> dict:
        return {**self.base_params(), "seed": self.seed, "Cs": list(self.Cs),
                "val_fraction": self.val_fraction, "max_iter": self.max_iter}

    def _model(self, C: float) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=self.max_iter)

    def _fit(self, X, y, w) -> None:
        self.x_mean, self.x_scale = _standardisation(X)
        xs = (X - self.x_mean) / self.x_scale
        if len(self.seen) == 1:
            self.coef, self.intercept = np.zeros((1, X.shape[1])), np.zeros(1)
            return
        self.C = 1.0
        order = np.random.default_rng(self.seed).permutation(len(y))
        va, tr = order[:int(round(self.val_fraction * len(y)))], \
            order[int(round(self.val_fraction * len(y))):]
        if len(y) >= 20 and len(np.unique(y[tr])) == len(self.seen):
            best = math.inf
            for C in self.Cs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # ConvergenceWarning on tiny C grids
                    model = self._model(C).fit(xs[tr], y[tr], None if w is None else w[tr])
                score = log_loss(y[va], model.predict_proba(xs[va]), labels=model.classes_,
                                 sample_weight=None if w is None else w[va])
                if score < best:
                    best, self.C = score, C
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = self._model(self.C).fit(xs, y, w)
        self.coef = np.asarray(model.coef_, np.float64)
        self.intercept = np.asarray(model.intercept_, np.float64)

    def _proba_seen(self, X: np.ndarray) -> np.ndarray:
        z = ((X - self.x_mean) / self.x_scale) @ self.coef.T + self.intercept
        if z.shape[1] == 1:  # binary: scikit-learn keeps one column, for the second class
            z = np.hstack([np.zeros_like(z), z])
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def _state(self) -> dict:
        return {"x_mean": torch.from_numpy(self.x_mean), "x_scale": torch.from_numpy(self.x_scale),
                "coef": torch.from_numpy(self.coef), "intercept": torch.from_numpy(self.intercept),
                "C": self.C}

    def _load(self, state: dict) -> None:
        self.x_mean = to_numpy(state["x_mean"]).astype(np.float64)
        self.x_scale = to_numpy(state["x_scale"]).astype(np.float64)
        self.coef = to_numpy(state["coef"]).astype(np.float64)
        self.intercept = to_numpy(state["intercept"]).astype(np.float64)
        self.C = float(state["C"])


class MLPClassifier(Seeded, MLPNet, Classifier):
    """The paper's MLP head with C outputs, softmax and (weighted) cross-entropy, on
    standardised features; Adam, early stopping on a seeded inner split as the regression
    MLP (:class:`~.heads.MLPHead`)."""

    method = "mlp"

    def __init__(self, n_classes: int = 2, class_weight: Optional[str] = None, seed: int = 0,
                 hidden: int = 512, lr: float = 1e-3, weight_decay: float = 0.0,
                 batch_size: int = 256, max_epochs: int = 300, patience: int = 10,
                 val_fraction: float = 0.15):
        super().__init__(n_classes, class_weight)
        self.seed, self.hidden, self.lr = int(seed), int(hidden), float(lr)
        self.weight_decay, self.batch_size = float(weight_decay), int(batch_size)
        self.max_epochs, self.patience = int(max_epochs), int(patience)
        self.val_fraction = float(val_fraction)
        self.net = None
        self.x_mean = self.x_scale = None
        self.epochs_trained = self.best_epoch = 0

    def params(self) -> dict:
        return {**self.base_params(), "seed": self.seed, "hidden": self.hidden, "lr": self.lr,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                "max_epochs": self.max_epochs, "patience": self.patience,
                "val_fraction": self.val_fraction}

    def _fit(self, X, y, w) -> None:
        ys = torch.from_numpy(y)
        self._train_net(
            X, w, self.n_classes,
            lambda out, idx: F.cross_entropy(out, ys[idx], reduction="none"),
            "The mlp class head diverged (loss {loss}) at epoch {epoch}: lower the learning "
            "rate.")

    def _proba_chunk(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = self.net(self._inputs(X)).double()
        logits[:, np.setdiff1d(np.arange(self.n_classes), self.seen)] = -math.inf
        return torch.softmax(logits, dim=1).numpy()

    def _state(self) -> dict:
        return self._net_state()

    def _load(self, state: dict) -> None:
        self._load_net(state, self.n_classes)


# ----------------------------------------------------------------------------- boosting, hybrids

class GBMClassifier(GBMSettings, Seeded, Classifier):
    """HistGradientBoostingClassifier (log loss) with the fixed, conservative settings of
    the regression ``gbm`` head; early stopping on a stratified inner split (from 40 points
    with at least 2 per class).  Trees stored as flat node arrays (one tree per class and
    round; one per round for two classes) and predicted by a vectorised traversal equal
    to scikit-learn's ``predict_proba``."""

    method = "gbm"
    chunk_rows = 8192

    def __init__(self, n_classes: int = 2, class_weight: Optional[str] = None, seed: int = 0,
                 max_iter: int = 300, learning_rate: float = 0.05, max_leaf_nodes: int = 15,
                 min_samples_leaf: int = 10, l2_regularization: float = 1.0,
                 validation_fraction: float = 0.15, n_iter_no_change: int = 20):
        super().__init__(n_classes, class_weight)
        self.set_gbm_options(seed, max_iter, learning_rate, max_leaf_nodes, min_samples_leaf,
                             l2_regularization, validation_fraction, n_iter_no_change)
        self.arrays: Dict[str, np.ndarray] = {}
        self.model_ = None  # the scikit-learn model (not in the state)

    def params(self) -> dict:
        return {**self.base_params(), **self.gbm_params()}

    def _fit(self, X, y, w) -> None:
        if len(self.seen) == 1:
            return
        from sklearn.ensemble import HistGradientBoostingClassifier
        n, counts = len(y), np.unique(y, return_counts=True)[1]
        early = (n >= 40 and self.validation_fraction > 0 and counts.min() >= 2
                 and self.validation_fraction * n >= len(counts))
        model = HistGradientBoostingClassifier(
            learning_rate=self.learning_rate, max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=max(1, min(self.min_samples_leaf, n // 4)),
            l2_regularization=self.l2_regularization, early_stopping=early,
            validation_fraction=self.validation_fraction if early else None,
            n_iter_no_change=self.n_iter_no_change, random_state=self.seed)
        model.fit(X, y, sample_weight=w)
        self.model_ = model
        self.arrays = gbm_arrays(model)

    def raw(self, X: np.ndarray) -> np.ndarray:
        """(N, columns) raw scores: baseline plus each tree's leaf value, in order (by the
        fitted scikit-learn model while it is in memory: the same values, ~10x faster with
        13 classes; by the flat arrays once loaded from a model file)."""
        if self.model_ is not None:
            return np.asarray(self.model_.decision_function(X), np.float64).reshape(len(X), -1)
        return gbm_raw(self.arrays, X)

    def _proba_seen(self, X: np.ndarray) -> np.ndarray:
        z = self.raw(X)
        if z.shape[1] == 1:  # two classes: one logistic score for the second
            z = np.hstack([np.zeros_like(z), z])
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def _state(self) -> dict:
        return {"trees": {k: torch.from_numpy(np.ascontiguousarray(v))
                          for k, v in self.arrays.items()}}

    def _load(self, state: dict) -> None:
        self.arrays = {k: to_numpy(v) for k, v in dict(state["trees"]).items()}


class ClassHybrid(FoldPCA, Seeded, Classifier):
    """A class head on ``[covariates | features]``: the first ``n_keep`` columns kept, the
    features replaced by their first principal components (fitted in ``fit``: training
    folds only; the fewest reaching ``variance``, at most ``max_components`` and n - 1),
    then the ``inner_method`` classifier (``inner``: its options).  The classifier variant
    of the regression hybrids (rf_hybrid, gbm_hybrid) under the same labels."""

    method = ""
    inner_method = "rf"

    def __init__(self, n_classes: int = 2, class_weight: Optional[str] = None, seed: int = 0,
                 n_keep: int = 0, variance: float = 0.9, max_components: int = 20,
                 inner: Optional[dict] = None):
        super().__init__(n_classes, class_weight)
        self.set_pca_options(seed, n_keep, variance, max_components, inner)
        self.head: Optional[Classifier] = None

    def params(self) -> dict:
        return {**self.base_params(), **self.pca_params()}

    def _fit(self, X, y, w) -> None:
        self.fit_pca(X)
        # the class weights are already in w: the inner head takes them as they are
        self.head = make_classifier(self.inner_method, self.n_classes, None, self.seed,
                                    **self.inner)
        self.head.fit(self.reduce(X), y, sample_weight=w)

    def _proba_seen(self, X: np.ndarray) -> np.ndarray:
        return self.head.predict_proba(self.reduce(X))[:, self.seen]

    def _state(self) -> dict:
        return {**self.pca_state(), "head": self.head.state_dict()}

    def _load(self, state: dict) -> None:
        self.load_pca(state)
        self.head = load_head(dict(state["head"]))


class ForestClassHybrid(ClassHybrid):
    method, inner_method = "rf_hybrid", "rf"


class GBMClassHybrid(ClassHybrid):
    method, inner_method = "gbm_hybrid", "gbm"


# ----------------------------------------------------------------------------- registry

# Classifier per canonical head name (heads.canonical_method): the kind switch of the
# registry.  A branch adding a head adds its classifier variant here.
CLASS_HEADS: Dict[str, type] = {"mlp": MLPClassifier, "ridge": LogisticHead,
                                "rf": ForestClassifier, "gbm": GBMClassifier,
                                "rf_hybrid": ForestClassHybrid, "gbm_hybrid": GBMClassHybrid}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(f"Unknown target kind '{kind}': use one of {', '.join(KINDS)}.")
    return kind


def class_head_name(method: str) -> str:
    """The :data:`CLASS_HEADS` key of a method label (rf_features/rf_pixels -> rf)."""
    name = METHOD_ALIASES.get(method, method)
    if name not in CLASS_HEADS:
        raise InputError(f"Method '{method}' has no classifier: use one of "
                         f"{', '.join(sorted(CLASS_HEADS))} for class targets.")
    return name


def make_classifier(method: str, n_classes: int, class_weight: Optional[str] = None,
                    seed: int = 0, **opts) -> Classifier:
    """A new, unfitted class head for ``n_classes`` classes (``opts``: its constructor's)."""
    return CLASS_HEADS[class_head_name(method)].create(
        seed=int(seed), n_classes=int(n_classes), class_weight=class_weight, **opts)


def make_target_head(method: str, kind: str = REGRESSION, loss: str = "mse", seed: int = 0,
                     n_classes: int = 2, class_weight: Optional[str] = None,
                     **opts) -> Regressor:
    """The registry's kind switch: :func:`~.heads.make_regressor` for a regression target,
    :func:`make_classifier` (``n_classes``, ``class_weight``) for a class target."""
    if check_kind(kind) == REGRESSION:
        return make_regressor(method, loss=loss, seed=seed, **opts)
    return make_classifier(method, n_classes, class_weight, seed=seed, **opts)


def load_head(state: dict) -> Regressor:
    """Rebuild any head (regressor, classifier or a stack of them) from its
    ``state_dict()``."""
    if state.get("kind") == CLASSIFICATION and state.get("method") != "stack":
        return CLASS_HEADS[class_head_name(str(state.get("method")))].from_state(state)
    return load_regressor(state)



# ----------------------------------------------------------------------------- selection, maps

def choose_class_method(cv, t: int, rows: Sequence[int]) -> str:
    """Label of the row (among ``rows``) mapped for class target ``t``: the highest pooled
    out-of-fold Cohen's kappa (:data:`SELECT_BY`), ties to the higher balanced accuracy."""
    def score(m):
        acc, bal, kappa, _ = cv.pooled_class_metrics(t, m)
        return (np.nan_to_num(kappa, nan=-np.inf), np.nan_to_num(bal, nan=-np.inf))
    return cv.methods[max(rows, key=score)].label


def class_targets(model: dict) -> List[str]:
    """The model's class targets, in target order (none for a model of before classes)."""
    kinds = model.get("kinds") or {}
    return [t for t in model["targets"] if kinds.get(t) == CLASSIFICATION]


def class_products(model: dict, tags: dict, probability: bool) -> Dict[str, dict]:
    """predict_map products of the class targets: the optional "probability" raster, two
    bands per class target ("<t> probability": of the mapped class, "<t> entropy":
    :func:`entropy`, 0..1)."""
    targets = class_targets(model)
    if not probability:
        return {}
    if not targets:
        raise InputError("The model has no class target: a probability raster needs one.")
    names = [f"{t} {band}" for t in targets for band in ("probability", "entropy")]
    return {"probability": {"count": len(names), "band_names": names,
                            "tags": dict(tags, soilssl_product="probability",
                                         class_targets=targets)}}


def class_block(head, fold_heads, x: np.ndarray, fold_x: Optional[np.ndarray] = None,
                rows: Optional[np.ndarray] = None):
    """(class index, its probability, entropy, fold models' disagreement or None) of the
    feature rows ``x`` (n, D) by a class head and its fold heads; ``fold_x``: the fold
    heads' rows when they read other blocks than the head, for the rows ``rows`` (a mask
    of the n rows) only."""
    p = head.predict_proba(x)
    pred = p.argmax(axis=1)
    fx = x if fold_x is None else fold_x
    spread = None if fold_heads is None else np.zeros(0) if not len(fx) else \
        disagreement(np.stack([f.predict(fx) for f in fold_heads]),
                     pred if rows is None else pred[rows])
    return pred, p.max(axis=1), entropy(p), spread


def report_html(cv, chosen: dict) -> str:
    """The report's section on class targets: per target the CV table (pooled out-of-fold
    accuracy, balanced accuracy, Cohen's kappa, macro F1; kappa mean ± std over folds) and
    the confusion matrix of the method mapped ('' without class targets)."""
    import html
    parts = []
    for r_target in [t for t in cv.target_names if cv.kind(t) == CLASSIFICATION]:
        rows = [r for r in cv.table() if r["target"] == r_target]
        esc = html.escape
        head = ("<tr><th>target</th><th>method</th><th>n</th><th>accuracy</th>"
                "<th>balanced accuracy</th><th>kappa</th><th>kappa per fold (mean ± std)</th>"
                "<th>macro F1</th></tr>")
        body = "".join(
            f"<tr{' class=best' if chosen.get(r_target) == r['method'] else ''}>"
            f"<td>{esc(r_target)}</td><td>{esc(r['method'])}</td><td>{r['n']}</td>"
            f"<td>{r['accuracy']:.3f}</td><td>{r['balanced_accuracy']:.3f}</td>"
            f"<td>{r['kappa']:.3f}</td><td>{r['kappa_mean']:.3f} ± {r['kappa_std']:.3f}</td>"
            f"<td>{r['macro_f1']:.3f}</td></tr>" for r in rows)
        label = chosen[r_target]
        names = cv.classes[r_target]
        matrix = cv.confusion(r_target, label)
        cm = ("<tr><th>observed \\ predicted</th>" +
              "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>" +
              "".join(f"<tr><td>{esc(n)}</td>" + "".join(f"<td>{int(v)}</td>" for v in row) +
                      "</tr>" for n, row in zip(names, matrix)))
        parts.append(
            f"<h2>{esc(r_target)}: classes</h2><p>Out-of-fold metrics of all points together "
            f"(Cohen's kappa also per fold). The mapped method is chosen by the highest "
            f"{SELECT_BY}.</p><table>{head}{body}</table>"
            f"<h3>{esc(r_target)}: confusion matrix of {esc(label)} (out of fold)</h3>"
            f"<table>{cm}</table>")
    return "".join(parts)
