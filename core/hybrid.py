"""Hybrid heads: pixel covariates plus ViT features reduced by PCA, and gradient boosting.

``rf_hybrid`` and ``gbm_hybrid`` get one stacked matrix per point, ``[covariates |
features]`` (:func:`~.cv.cross_validate` stacks the method's blocks in order); the first
``n_keep`` columns (the covariates) are kept as they are and the remaining columns (the
ViT features) are replaced by their first principal components.  The PCA is fitted in
the head's ``fit``, so under cross-validation it only ever sees the training folds.  Its
size: the fewest components explaining ``variance`` (90 %) of the features' variance,
at most ``max_components`` (20) and at most the number of training points minus one.
The reduced matrix goes to the random forest of :mod:`.heads` (``rf_hybrid``) or to
:class:`GBMHead` (``gbm_hybrid``).

:class:`GBMHead` is scikit-learn's
:class:`~sklearn.ensemble.HistGradientBoostingRegressor` with fixed, conservative
settings (early stopping on an inner split of the training data only).  Its trees are
stored as flat node arrays (tensors) and predicted by a vectorised traversal equal to
scikit-learn's, so model files stay ``torch.load(weights_only=True)``-loadable.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from .errors import InputError
from .heads import ForestHead, Regressor, Seeded, to_numpy

GBM_ARRAYS = ("left", "right", "feature", "threshold", "missing_left", "is_leaf", "value")


# ----------------------------------------------------------------------------- gradient boosting

def gbm_arrays(model) -> Dict[str, np.ndarray]:
    """A fitted HistGradientBoosting model's trees (regressor: one score column;
    classifier: one per class, or one for two classes) as flat node arrays with global
    child indices, each tree's score ``column`` and the ``baseline`` per column.

    Only numerical splits exist (the heads never declare categorical features)."""
    parts = {k: [] for k in GBM_ARRAYS + ("column",)}
    roots, offset = [], 0
    for iteration in model._predictors:
        for column, predictor in enumerate(iteration):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise InputError("Categorical splits are not supported by the gbm head.")
            leaf = nodes["is_leaf"].astype(bool)
            parts["left"].append(np.where(leaf, -1, nodes["left"].astype(np.int64) + offset))
            parts["right"].append(np.where(leaf, -1,
                                           nodes["right"].astype(np.int64) + offset))
            parts["feature"].append(nodes["feature_idx"].astype(np.int64))
            parts["threshold"].append(nodes["num_threshold"].astype(np.float64))
            parts["missing_left"].append(nodes["missing_go_to_left"].astype(bool))
            parts["is_leaf"].append(leaf)
            parts["value"].append(nodes["value"].astype(np.float64))
            parts["column"].append(np.array([column], np.int64))
            roots.append(offset)
            offset += len(nodes)
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    arrays["column"] = arrays["column"].astype(np.int64)
    arrays["roots"] = np.asarray(roots, dtype=np.int64)
    arrays["baseline"] = np.asarray(model._baseline_prediction, np.float64).reshape(-1)
    return arrays


def gbm_raw(arrays: Dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """(N, columns) raw scores: the baseline plus the leaf value of every tree, trees
    added in order (as scikit-learn does): NaN follows ``missing_left``, otherwise
    ``x <= threshold`` goes left."""
    X = np.asarray(X, dtype=np.float64)
    out = np.repeat(np.asarray(arrays["baseline"], np.float64).reshape(1, -1), X.shape[0],
                    axis=0)
    roots = arrays["roots"]
    if len(roots) == 0:
        return out
    left, right, leaf = arrays["left"], arrays["right"], arrays["is_leaf"].astype(bool)
    feature, threshold = np.maximum(arrays["feature"], 0), arrays["threshold"]
    missing_left = arrays["missing_left"].astype(bool)
    nodes = np.repeat(roots[:, None], X.shape[0], axis=1)  # (trees, points)
    cols = np.arange(X.shape[0])[None, :]
    while True:
        inner = ~leaf[nodes]
        if not inner.any():
            break
        x = X[cols, feature[nodes]]
        go_left = np.where(np.isnan(x), missing_left[nodes], x <= threshold[nodes])
        nodes = np.where(inner, np.where(go_left, left[nodes], right[nodes]), nodes)
    columns = arrays.get("column")
    columns = np.zeros(len(roots), np.int64) if columns is None else columns
    for column, tree_values in zip(columns, arrays["value"][nodes]):
        out[:, column] += tree_values
    return out


def gbm_predict(arrays: Dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """The regressor's prediction from :func:`gbm_arrays`: its one score column."""
    return gbm_raw(arrays, X)[:, 0]


class GBMSettings:
    """The boosting settings the regression (:class:`GBMHead`) and class
    (:class:`~.classes.GBMClassifier`) gbm heads share, as they are stored in a state."""

    def set_gbm_options(self, seed: int, max_iter: int, learning_rate: float,
                        max_leaf_nodes: int, min_samples_leaf: int, l2_regularization: float,
                        validation_fraction: float, n_iter_no_change: int) -> None:
        self.seed, self.max_iter = int(seed), int(max_iter)
        self.learning_rate = float(learning_rate)
        self.max_leaf_nodes, self.min_samples_leaf = int(max_leaf_nodes), int(min_samples_leaf)
        self.l2_regularization = float(l2_regularization)
        self.validation_fraction = float(validation_fraction)
        self.n_iter_no_change = int(n_iter_no_change)

    def gbm_params(self) -> dict:
        return {"seed": self.seed, "max_iter": self.max_iter,
                "learning_rate": self.learning_rate, "max_leaf_nodes": self.max_leaf_nodes,
                "min_samples_leaf": self.min_samples_leaf,
                "l2_regularization": self.l2_regularization,
                "validation_fraction": self.validation_fraction,
                "n_iter_no_change": self.n_iter_no_change}


class GBMHead(GBMSettings, Seeded, Regressor):
    """HistGradientBoostingRegressor (squared error) with fixed settings: ``max_iter``
    boosting rounds at ``learning_rate``, trees of ``max_leaf_nodes`` leaves with at least
    ``min_samples_leaf`` points (fewer on tiny training sets), L2 ``l2_regularization``,
    early stopping on a seeded ``validation_fraction`` of the training points (from 40
    points on; none below).  It fits with ``threads`` OpenMP threads (1: on a few
    thousand points one thread is about 3x faster than several, which mostly wait on
    each other; the CV's heads run one after the other anyway)."""

    method = "gbm"
    chunk_rows = 8192
    threads = 1

    def __init__(self, seed: int = 0, max_iter: int = 300, learning_rate: float = 0.05,
                 max_leaf_nodes: int = 15, min_samples_leaf: int = 10,
                 l2_regularization: float = 1.0, validation_fraction: float = 0.15,
                 n_iter_no_change: int = 20):
        super().__init__()
        self.set_gbm_options(seed, max_iter, learning_rate, max_leaf_nodes, min_samples_leaf,
                             l2_regularization, validation_fraction, n_iter_no_change)
        self.arrays: Optional[Dict[str, np.ndarray]] = None
        self.model_: Optional[HistGradientBoostingRegressor] = None  # not in the state
        self.n_iter_ = 0

    def params(self) -> dict:
        return self.gbm_params()

    def _fit(self, X, y, w) -> None:
        n = X.shape[0]
        early = n >= 40 and self.validation_fraction > 0
        model = HistGradientBoostingRegressor(
            loss="squared_error", learning_rate=self.learning_rate, max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=max(1, min(self.min_samples_leaf, n // 4)),
            l2_regularization=self.l2_regularization, early_stopping=early,
            validation_fraction=self.validation_fraction if early else None,
            n_iter_no_change=self.n_iter_no_change, random_state=self.seed)
        with threadpool_limits(limits=self.threads, user_api="openmp"):
            model.fit(X, y, sample_weight=w)
        self.model_, self.n_iter_ = model, int(model.n_iter_)
        self.arrays = gbm_arrays(model)

    def _predict_chunk(self, X: np.ndarray) -> np.ndarray:
        # the fitted scikit-learn model while it is in memory (its compiled traversal, the
        # same values); the flat arrays once loaded from a model file
        if self.model_ is not None:
            return self.model_.predict(X)
        return gbm_predict(self.arrays, X)

    def _state(self) -> dict:
        return {"trees": {k: torch.from_numpy(np.ascontiguousarray(v))
                          for k, v in self.arrays.items()}, "n_iter": self.n_iter_}

    def _load(self, state: dict) -> None:
        self.arrays = {k: to_numpy(v) for k, v in dict(state["trees"]).items()}
        self.n_iter_ = int(state["n_iter"])


# ----------------------------------------------------------------------------- hybrids

class FoldPCA:
    """What the hybrid heads share, the regression and the class ones: the first ``n_keep``
    columns (the covariates) kept, the rest (the ViT features) replaced by their first
    principal components, fitted in ``fit`` (training folds only): the fewest reaching
    ``variance``, at most ``max_components`` and n - 1."""

    method = ""
    n_keep, variance, max_components = 0, 0.9, 20
    pca_mean = pca_components = None

    @classmethod
    def block_params(cls, widths) -> dict:
        """Constructor options that follow from the widths of the stacked blocks: every
        block but the last (the features) is kept as it is."""
        return {"n_keep": int(sum(widths[:-1]))}

    def fit_pca(self, X: np.ndarray) -> None:
        if not 0 <= self.n_keep < X.shape[1]:
            raise InputError(f"The {self.method} head needs feature columns after its "
                             f"{self.n_keep} covariate column(s), got {X.shape[1]} columns.")
        F = X[:, self.n_keep:]
        k_max = max(1, min(self.max_components, F.shape[1], X.shape[0] - 1))
        with warnings.catch_warnings():  # constant features: zero explained variance
            warnings.simplefilter("ignore", RuntimeWarning)
            pca = PCA(n_components=k_max, svd_solver="full").fit(F)
        k = self.n_components(pca) if np.isfinite(pca.explained_variance_ratio_).all() else 1
        self.pca_mean = pca.mean_.astype(np.float64)
        self.pca_components = pca.components_[:k].astype(np.float64)

    def n_components(self, pca: PCA) -> int:
        """The fewest components reaching ``variance`` of the explained variance."""
        ratio = np.cumsum(pca.explained_variance_ratio_)
        return int(min(np.searchsorted(ratio, self.variance - 1e-12) + 1, len(ratio)))

    def reduce(self, X: np.ndarray) -> np.ndarray:
        """The covariates and the features' principal component scores, side by side."""
        scores = (X[:, self.n_keep:] - self.pca_mean) @ self.pca_components.T
        return np.hstack([X[:, :self.n_keep], scores])

    def pca_state(self) -> dict:
        return {"pca_mean": torch.from_numpy(self.pca_mean),
                "pca_components": torch.from_numpy(np.ascontiguousarray(self.pca_components))}

    def load_pca(self, state: dict) -> None:
        self.pca_mean = to_numpy(state["pca_mean"]).astype(np.float64)
        self.pca_components = to_numpy(state["pca_components"]).astype(np.float64)

    @property
    def components(self) -> int:
        return 0 if self.pca_components is None else int(self.pca_components.shape[0])

    def set_pca_options(self, seed: int, n_keep: int, variance: float, max_components: int,
                        inner: Optional[dict]) -> None:
        self.seed, self.n_keep = int(seed), int(n_keep)
        self.variance, self.max_components = float(variance), int(max_components)
        self.inner = dict(inner or {})
        self.pca_mean = self.pca_components = None

    def pca_params(self) -> dict:
        return {"seed": self.seed, "n_keep": self.n_keep, "variance": self.variance,
                "max_components": self.max_components, "inner": dict(self.inner)}


class HybridHead(FoldPCA, Seeded, Regressor):
    """``[covariates | features]``: covariates kept, features replaced by their PCA scores
    (fitted on the training data given to ``fit``), then the ``inner`` head.

    ``n_keep``: how many leading columns are covariates (set from the block widths by
    :meth:`block_params`); ``inner``: constructor options of the inner head.
    """

    method = ""
    inner_class = ForestHead

    def __init__(self, seed: int = 0, n_keep: int = 0, variance: float = 0.9,
                 max_components: int = 20, inner: Optional[dict] = None):
        super().__init__()
        self.set_pca_options(seed, n_keep, variance, max_components, inner)
        self.head: Optional[Regressor] = None

    def params(self) -> dict:
        return self.pca_params()

    def _fit(self, X, y, w) -> None:
        self.fit_pca(X)
        self.head = self.inner_class.create(seed=self.seed, **self.inner)
        self.head.fit(self.reduce(X), y, sample_weight=w)

    def _predict_chunk(self, X: np.ndarray) -> np.ndarray:
        return self.head.predict(self.reduce(X))

    def _state(self) -> dict:
        return {**self.pca_state(), "head": self.head.state_dict()}

    def _load(self, state: dict) -> None:
        self.load_pca(state)
        self.head = self.inner_class.from_state(dict(state["head"]))


class ForestHybrid(HybridHead):
    """``rf_hybrid``: the random forest of :class:`~.heads.ForestHead` on covariates + PCs."""

    method = "rf_hybrid"
    inner_class = ForestHead


class GBMHybrid(HybridHead):
    """``gbm_hybrid``: :class:`GBMHead` on covariates + PCs."""

    method = "gbm_hybrid"
    inner_class = GBMHead
