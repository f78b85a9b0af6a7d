"""Soil regression heads on frozen features: MLP (the paper's), ridge probe, random forest.

Every head has one interface::

    head = make_regressor("mlp", loss="huber", seed=0)
    head.fit(X, y, sample_weight=None)   # X (N, D) features, y (N,) target
    head.predict(X)                      # -> float64 (M,)
    state = head.state_dict()            # tensors and plain Python types only
    same = load_regressor(state)         # or MLPHead.from_state(state)

``state_dict()`` round-trips through ``torch.save`` / ``torch.load(weights_only=True)``,
so model files never need pickle.  Every statistic a head uses (feature
standardisation, target scaling, early-stopping split, hyper-parameter search)
comes from the data given to ``fit`` only: cross-validation stays leak-free by
construction when ``fit`` only sees the training folds.

- ``mlp``: Linear(D,512)-ReLU-Linear(512,512)-ReLU-Linear(512,1) (656,897 parameters for
  ViT-B's D=768) on standardised features and targets, Adam, loss mse | huber | l1,
  early stopping on an inner random split of the training data.
- ``ridge``: standardised features, :class:`~sklearn.linear_model.RidgeCV` over a log grid
  of alphas (efficient leave-one-out on the training data).
- ``rf``: :class:`~sklearn.ensemble.RandomForestRegressor`; max_features and
  min_samples_leaf chosen on a small grid by out-of-bag R² (an inner validation that uses
  the training data only).  The trees are stored as arrays and predicted by a vectorised
  traversal that gives exactly scikit-learn's predictions.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Dict, Optional, Sequence, Type

import numpy as np
import torch
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F

from .errors import InputError, SoilSSLError, TrainingError

LOSSES = ("mse", "huber", "l1")
STATE_VERSION = 1
MIN_FIT_POINTS = 2


# ----------------------------------------------------------------------------- helpers

def to_numpy(value) -> np.ndarray:
    """A state entry (tensor or array-like) as a numpy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _check_loss(loss: str) -> str:
    loss = (loss or "mse").lower()
    if loss not in LOSSES:
        raise InputError(f"Unknown LOSS '{loss}': use one of {', '.join(LOSSES)}.")
    return loss


def _check_fit_data(X, y, sample_weight):
    """Validated float64 copies of X (N, D), y (N,) and weights (N,) scaled to mean 1."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2:
        raise InputError(f"Features must be a 2-D array (points x features), got shape {X.shape}.")
    if X.shape[0] != y.shape[0]:
        raise InputError(f"{X.shape[0]} feature rows but {y.shape[0]} target values.")
    if X.shape[0] < MIN_FIT_POINTS:
        raise InputError(f"A head needs at least {MIN_FIT_POINTS} training points, "
                         f"got {X.shape[0]}.")
    if not np.isfinite(X).all():
        raise InputError(f"{int((~np.isfinite(X).all(axis=1)).sum())} training points have "
                         "NaN/inf features: remove them before fitting.")
    if not np.isfinite(y).all():
        raise InputError(f"{int((~np.isfinite(y)).sum())} training targets are NaN/inf: "
                         "remove those points before fitting.")
    if sample_weight is None:
        return X, y, None
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape[0] != X.shape[0]:
        raise InputError(f"{w.shape[0]} sample weights for {X.shape[0]} points.")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InputError("Sample weights must be finite, non-negative and not all zero.")
    return X, y, w / w.mean()


def _standardisation(X: np.ndarray):
    """(mean, scale) of the columns of the training X; constant columns get scale 1."""
    scaler = StandardScaler().fit(X)
    return scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64)


# ----------------------------------------------------------------------------- base class

class Regressor:
    """Common interface of the heads: fit / predict / state_dict / from_state.

    Subclasses implement ``_fit``, ``_predict_chunk``, ``_state`` and ``_load`` and list
    their constructor keyword arguments in ``params()``.
    """

    method = ""
    chunk_rows = 65536  # rows predicted at once (bounded memory for map-sized inputs)

    def __init__(self) -> None:
        self.n_features: Optional[int] = None

    # --- to implement
    @classmethod
    def create(cls, loss: str = "mse", seed: int = 0, **opts) -> "Regressor":
        """A new head from the factory's common arguments (heads ignore what they lack)."""
        return cls(**opts)

    def params(self) -> dict:
        raise NotImplementedError

    def _fit(self, X: np.ndarray, y: np.ndarray, w: Optional[np.ndarray]) -> None:
        raise NotImplementedError

    def _predict_chunk(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict:
        raise NotImplementedError

    def _load(self, state: dict) -> None:
        raise NotImplementedError

    # --- public
    def fit(self, X, y, sample_weight=None) -> "Regressor":
        """Fit on features X (N, D) and target y (N,), optional non-negative weights (N,)."""
        X, y, w = _check_fit_data(X, y, sample_weight)
        self._fit(X, y, w)
        self.n_features = int(X.shape[1])
        return self

    def predict(self, X) -> np.ndarray:
        """Predictions (float64, one per row of X), computed by chunks of rows."""
        return self._by_chunks(X, self._predict_chunk)

    def _by_chunks(self, X, fn, width: Optional[int] = None) -> np.ndarray:
        """``fn`` (a chunk of float64 rows -> its outputs) on X by chunks of rows, after
        checking the head is fitted and X is finite with the fitted width: (N,) float64, or
        (N, width)."""
        if self.n_features is None:
            raise SoilSSLError(f"The {self.method} head has not been fitted or loaded.")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise InputError(f"The {self.method} head expects (N, {self.n_features}) features, "
                             f"got shape {X.shape}: use the backbone/bands it was trained with.")
        out = np.empty((X.shape[0],) + (() if width is None else (width,)), dtype=np.float64)
        for start in range(0, X.shape[0], self.chunk_rows):
            chunk = np.asarray(X[start:start + self.chunk_rows], dtype=np.float64)
            if not np.isfinite(chunk).all():
                raise InputError("Features to predict contain NaN/inf: mask those rows first.")
            out[start:start + chunk.shape[0]] = fn(chunk)
        return out

    def state_dict(self) -> dict:
        """Everything needed to predict again: tensors and plain Python types only."""
        if self.n_features is None:
            raise SoilSSLError(f"The {self.method} head has not been fitted.")
        return {"method": self.method, "version": STATE_VERSION, "n_features": self.n_features,
                "params": self.params(), **self._state()}

    @classmethod
    def from_state(cls, state: dict) -> "Regressor":
        """Rebuild a fitted head from :meth:`state_dict` (e.g. after ``torch.load``)."""
        if state.get("method") != cls.method:
            raise InputError(f"State of a '{state.get('method')}' head given to the "
                             f"'{cls.method}' head.")
        if int(state.get("version", -1)) > STATE_VERSION:
            raise InputError(f"Head state version {state.get('version')} is newer than this "
                             f"SoilSSL (version {STATE_VERSION}): update the plugin.")
        head = cls(**dict(state["params"]))
        head._load(state)
        head.n_features = int(state["n_features"])
        return head


# ----------------------------------------------------------------------------- MLP

def build_head(n_features: int, hidden: int = 512, out: int = 1) -> nn.Sequential:
    """The paper's head: Linear(D,h) - ReLU - Linear(h,h) - ReLU - Linear(h,out) (out: 1 for
    a soil property, the number of classes for a class target)."""
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


def _pointwise_loss(kind: str, pred: torch.Tensor, target: torch.Tensor,
                    delta: float) -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(pred, target, reduction="none")
    if kind == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=delta)
    return F.l1_loss(pred, target, reduction="none")


def inner_split(n: int, val_fraction: float, seed: int):
    """Seeded random (train, validation) indices of n training points (no validation part
    under 10 points): the early-stopping split of the MLP heads."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(int(round(val_fraction * n)), n - 1) if n >= 10 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_head(net: nn.Module, per_point, ws: torch.Tensor, tr: torch.Tensor, va: torch.Tensor,
               opts, diverged: str) -> tuple:
    """The MLP heads' training loop (regression and class heads alike): Adam on the
    ``ws``-weighted mean of ``per_point(idx)`` over seeded mini-batches of ``tr``, early
    stopping on ``va`` with ``opts.patience``, the best epoch's weights restored; ``opts``
    gives seed, lr, weight_decay, batch_size, max_epochs.  ``diverged`` (with {loss},
    {epoch}) is the TrainingError of a non-finite loss.  Returns (epochs trained, best
    epoch)."""
    gen = torch.Generator().manual_seed(opts.seed)
    opt = torch.optim.Adam(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)

    def weighted_loss(idx: torch.Tensor) -> torch.Tensor:
        return (per_point(idx) * ws[idx]).sum() / ws[idx].sum().clamp_min(1e-12)

    best_loss, best_state, best_epoch, epoch = math.inf, None, 0, 0
    for epoch in range(1, opts.max_epochs + 1):
        net.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        for start in range(0, len(order), opts.batch_size):
            opt.zero_grad(set_to_none=True)
            loss = weighted_loss(order[start:start + opts.batch_size])
            if not torch.isfinite(loss):
                raise TrainingError(diverged.format(loss=loss.item(), epoch=epoch))
            loss.backward()
            opt.step()
        if len(va) == 0:
            continue
        net.eval()
        with torch.no_grad():
            val = float(weighted_loss(va))
        if val < best_loss:
            best_loss, best_epoch = val, epoch
            best_state = copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= opts.patience:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return epoch, best_epoch or epoch


class MLPNet:
    """What the regression and class MLP heads share: standardised inputs, the paper's head
    built under their seed and trained by :func:`train_head` on a seeded inner split, and
    the net's state.  The head sets ``hidden``, ``seed``, ``val_fraction`` and the options
    :func:`train_head` reads."""

    def _inputs(self, X: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((X - self.x_mean) / self.x_scale).astype(np.float32))

    def _inner_split(self, n: int):
        return inner_split(n, self.val_fraction, self.seed)

    def _train_net(self, X: np.ndarray, w, out: int, loss_of, diverged: str) -> None:
        """Standardise ``X`` and train a new head with ``out`` outputs to the per-point
        loss ``loss_of(net output, idx)`` weighted by ``w`` (None: 1); ``diverged`` as
        :func:`train_head` takes it."""
        self.x_mean, self.x_scale = _standardisation(X)
        xs = self._inputs(X)
        ws = torch.from_numpy((np.ones(len(X)) if w is None else w).astype(np.float32))
        tr, va = (torch.from_numpy(i) for i in self._inner_split(len(X)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = build_head(X.shape[1], self.hidden, out)
        self.epochs_trained, self.best_epoch = train_head(
            net, lambda idx: loss_of(net(xs[idx]), idx), ws, tr, va, self, diverged)
        self.net = net

    def _net_state(self, **extra) -> dict:
        return {"x_mean": torch.from_numpy(self.x_mean), "x_scale": torch.from_numpy(self.x_scale),
                **extra, "net": {k: v.clone() for k, v in self.net.state_dict().items()},
                "epochs_trained": self.epochs_trained, "best_epoch": self.best_epoch}

    def _load_net(self, state: dict, out: int = 1) -> None:
        self.x_mean = to_numpy(state["x_mean"]).astype(np.float64)
        self.x_scale = to_numpy(state["x_scale"]).astype(np.float64)
        self.net = build_head(len(self.x_mean), self.hidden, out)
        self.net.load_state_dict(dict(state["net"]))
        self.net.eval()
        self.epochs_trained = int(state["epochs_trained"])
        self.best_epoch = int(state["best_epoch"])


class Seeded:
    """Mixin for heads whose constructor takes ``seed`` and no ``loss``: their
    :meth:`Regressor.create` (list it before the head's base class)."""

    @classmethod
    def create(cls, loss: str = "mse", seed: int = 0, **opts):
        return cls(seed=seed, **opts)


class MLPHead(MLPNet, Regressor):
    """The paper's MLP head on standardised features and targets.

    Adam on mini-batches of ``batch_size``; ``val_fraction`` of the training points
    (random, seeded; none below 10 points) is held out for early stopping: training
    stops after ``patience`` epochs without a better validation loss (or at
    ``max_epochs``) and the best weights are kept.  ``huber_delta`` is in target
    standard deviations.  Seeded runs are identical (same machine, same threads).
    """

    method = "mlp"

    def __init__(self, loss: str = "mse", seed: int = 0, hidden: int = 512, lr: float = 1e-3,
                 weight_decay: float = 0.0, batch_size: int = 256, max_epochs: int = 300,
                 patience: int = 10, val_fraction: float = 0.15, huber_delta: float = 1.0):
        super().__init__()
        self.loss = _check_loss(loss)
        self.seed = int(seed)
        self.hidden = int(hidden)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.batch_size = int(batch_size)
        self.max_epochs = int(max_epochs)
        self.patience = int(patience)
        self.val_fraction = float(val_fraction)
        self.huber_delta = float(huber_delta)
        self.net: Optional[nn.Sequential] = None
        self.x_mean = self.x_scale = None
        self.y_mean, self.y_scale = 0.0, 1.0
        self.epochs_trained = 0
        self.best_epoch = 0

    @classmethod
    def create(cls, loss: str = "mse", seed: int = 0, **opts) -> "MLPHead":
        return cls(loss=loss, seed=seed, **opts)

    def params(self) -> dict:
        return {"loss": self.loss, "seed": self.seed, "hidden": self.hidden, "lr": self.lr,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                "max_epochs": self.max_epochs, "patience": self.patience,
                "val_fraction": self.val_fraction, "huber_delta": self.huber_delta}

    def _fit(self, X, y, w) -> None:
        self.y_mean = float(y.mean())
        self.y_scale = float(y.std()) or 1.0
        ys = torch.from_numpy(((y - self.y_mean) / self.y_scale).astype(np.float32))
        self._train_net(
            X, w, 1, lambda out, idx: _pointwise_loss(self.loss, out.squeeze(1), ys[idx],
                                                      self.huber_delta),
            "The mlp head diverged (loss {loss}) at epoch {epoch}: lower the learning rate "
            "or check the targets.")

    def _predict_chunk(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.net(self._inputs(X)).squeeze(1).double().numpy()
        return out * self.y_scale + self.y_mean

    def _state(self) -> dict:
        return self._net_state(y_mean=self.y_mean, y_scale=self.y_scale)

    def _load(self, state: dict) -> None:
        self.y_mean, self.y_scale = float(state["y_mean"]), float(state["y_scale"])
        self._load_net(state)


# ----------------------------------------------------------------------------- ridge

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 6, 19))


class RidgeHead(Regressor):
    """Linear probe: standardised features, RidgeCV (leave-one-out) over ``alphas``.

    The leave-one-out errors come from one thin SVD of the training features
    (``gcv_mode="svd"``), the fastest route for a few hundred to a few thousand points.
    """

    method = "ridge"

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS):
        super().__init__()
        self.alphas = [float(a) for a in alphas]
        self.x_mean = self.x_scale = self.coef = None
        self.intercept = 0.0
        self.alpha = float("nan")

    def params(self) -> dict:
        return {"alphas": list(self.alphas)}

    def _fit(self, X, y, w) -> None:
        self.x_mean, self.x_scale = _standardisation(X)
        model = RidgeCV(alphas=self.alphas, gcv_mode="svd").fit((X - self.x_mean) / self.x_scale, y,
                                                sample_weight=w)
        self.coef = np.asarray(model.coef_, dtype=np.float64).reshape(-1)
        self.intercept, self.alpha = float(model.intercept_), float(model.alpha_)

    def _predict_chunk(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.x_mean) / self.x_scale) @ self.coef + self.intercept

    def _state(self) -> dict:
        return {"x_mean": torch.from_numpy(self.x_mean), "x_scale": torch.from_numpy(self.x_scale),
                "coef": torch.from_numpy(self.coef), "intercept": self.intercept,
                "alpha": self.alpha}

    def _load(self, state: dict) -> None:
        self.x_mean = to_numpy(state["x_mean"]).astype(np.float64)
        self.x_scale = to_numpy(state["x_scale"]).astype(np.float64)
        self.coef = to_numpy(state["coef"]).astype(np.float64)
        self.intercept, self.alpha = float(state["intercept"]), float(state["alpha"])


# ----------------------------------------------------------------------------- random forest

def resolve_max_features(spec, n_features: int) -> int:
    """Number of features tried per split, as scikit-learn resolves ``max_features``."""
    if spec == "sqrt":
        return max(1, int(np.sqrt(n_features)))
    if spec == "log2":
        return max(1, int(np.log2(n_features)))
    if isinstance(spec, float):
        return max(1, int(spec * n_features))
    return min(int(spec), n_features)


TREE_ARRAYS = ("children_left", "children_right", "feature", "threshold", "value")


def _leaf_means(tree) -> np.ndarray:
    return tree.value[:, 0, 0].astype(np.float64)


def forest_arrays(forest, node_values=_leaf_means) -> Dict[str, np.ndarray]:
    """The trees of a fitted single-output forest concatenated into flat node arrays.

    ``roots[t]`` is the index of tree t's root; child indices are global (-1 at leaves);
    ``value`` holds ``node_values(tree)`` of each tree (a regression tree's node means; a
    class forest passes its nodes' class probabilities).
    """
    parts = {k: [] for k in TREE_ARRAYS}
    roots, offset = [], 0
    for est in forest.estimators_:
        tree = est.tree_
        left, right = tree.children_left.astype(np.int64), tree.children_right.astype(np.int64)
        parts["children_left"].append(np.where(left >= 0, left + offset, -1))
        parts["children_right"].append(np.where(right >= 0, right + offset, -1))
        parts["feature"].append(tree.feature.astype(np.int64))
        parts["threshold"].append(tree.threshold.astype(np.float64))
        parts["value"].append(node_values(tree))
        roots.append(offset)
        offset += tree.node_count
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    arrays["roots"] = np.asarray(roots, dtype=np.int64)
    return arrays


def forest_predict(arrays: Dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Mean of the trees' leaf values, all trees traversed at once (vectorised).

    Bit-identical to ``RandomForestRegressor.predict`` run with ``n_jobs=1``: the
    features are compared as float32 against float64 thresholds and the tree values are
    summed in tree order, then divided by the number of trees.
    """
    leaf_values = arrays["value"][forest_leaves(arrays, X)]
    total = np.zeros(X.shape[0], dtype=np.float64)
    for tree_values in leaf_values:
        total += tree_values
    return total / len(arrays["roots"])


def forest_leaves(arrays: Dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """(trees, points) global index of the leaf each point reaches in each tree."""
    X32 = np.asarray(X, dtype=np.float32)
    left, right = arrays["children_left"], arrays["children_right"]
    feature, threshold = np.maximum(arrays["feature"], 0), arrays["threshold"]
    roots = arrays["roots"]
    nodes = np.repeat(roots[:, None], X32.shape[0], axis=1)  # (trees, points)
    cols = np.arange(X32.shape[0])[None, :]
    while True:
        child_left = left[nodes]
        inner = child_left >= 0
        if not inner.any():
            break
        go_left = X32[cols, feature[nodes]] <= threshold[nodes]
        nodes = np.where(inner, np.where(go_left, child_left, right[nodes]), nodes)
    return nodes


class ForestHead(Seeded, Regressor):
    """Random forest with (max_features, min_samples_leaf) chosen by out-of-bag R².

    Each grid combination is grown with ``search_estimators`` trees; the best by OOB R²
    (weighted when sample weights are given; first on ties) is grown on to
    ``n_estimators`` trees.  ``max_features`` entries resolve to a number of features;
    duplicates and numbers above ``max(max_mtry, smallest)`` are dropped, which keeps
    768-dim features fast (sqrt(D) only) while pixel values get sqrt(D), D/3 and D.
    """

    method = "rf"
    chunk_rows = 8192  # (trees x rows) node indices are held at once

    def __init__(self, seed: int = 0, n_estimators: int = 100,
                 max_features: Sequence = ("sqrt", 1 / 3, 1.0),
                 min_samples_leaf: Sequence[int] = (1, 5), max_mtry: int = 32,
                 search_estimators: int = 30, n_jobs: int = -1):
        super().__init__()
        self.seed = int(seed)
        self.n_estimators = int(n_estimators)
        self.max_features = list(max_features)
        self.min_samples_leaf = [int(v) for v in min_samples_leaf]
        self.max_mtry = int(max_mtry)
        self.search_estimators = int(search_estimators)
        self.n_jobs = int(n_jobs)
        self.arrays: Optional[Dict[str, np.ndarray]] = None
        self.forest_: Optional[RandomForestRegressor] = None  # sklearn object (not in state)
        self.best_params_: dict = {}
        self.oob_r2_ = float("nan")

    def params(self) -> dict:
        return {"seed": self.seed, "n_estimators": self.n_estimators,
                "max_features": list(self.max_features),
                "min_samples_leaf": list(self.min_samples_leaf), "max_mtry": self.max_mtry,
                "search_estimators": self.search_estimators, "n_jobs": self.n_jobs}

    def grid(self, n_features: int) -> list:
        """The (max_features as int, min_samples_leaf) combinations searched for D features."""
        mtry = sorted({resolve_max_features(s, n_features) for s in self.max_features})
        mtry = [m for m in mtry if m <= max(self.max_mtry, mtry[0])]
        return [(m, leaf) for m in mtry for leaf in self.min_samples_leaf]

    def _forest(self, n_trees: int, mtry: int, leaf: int, oob: bool) -> RandomForestRegressor:
        return RandomForestRegressor(n_estimators=n_trees, max_features=mtry,
                                     min_samples_leaf=leaf, oob_score=oob, warm_start=True,
                                     n_jobs=self.n_jobs, random_state=self.seed)

    @staticmethod
    def _oob_r2(forest: RandomForestRegressor, y, w) -> float:
        pred = forest.oob_prediction_
        ok = np.isfinite(pred)
        if ok.sum() < 2:
            return -math.inf
        return float(r2_score(y[ok], pred[ok], sample_weight=None if w is None else w[ok]))

    def _fit(self, X, y, w) -> None:
        grid = self.grid(X.shape[1])
        if len(grid) == 1:
            forest = self._forest(self.n_estimators, *grid[0], oob=False).fit(X, y, w)
            self.best_params_ = dict(zip(("max_features", "min_samples_leaf"), grid[0]))
        else:
            best_score, forest = -math.inf, None
            n_search = min(self.search_estimators, self.n_estimators)
            for mtry, leaf in grid:
                with warnings.catch_warnings():  # "some inputs do not have OOB scores"
                    warnings.simplefilter("ignore", UserWarning)
                    candidate = self._forest(n_search, mtry, leaf, oob=True).fit(X, y, w)
                score = self._oob_r2(candidate, y, w)
                if forest is None or score > best_score:
                    best_score, forest = score, candidate
                    self.best_params_ = {"max_features": mtry, "min_samples_leaf": leaf}
            self.oob_r2_ = best_score
            if self.n_estimators > n_search:  # warm start: grow the chosen forest
                forest.set_params(n_estimators=self.n_estimators, oob_score=False).fit(X, y, w)
        self.forest_ = forest
        self.arrays = self._tree_arrays(forest)

    def _tree_arrays(self, forest) -> Dict[str, np.ndarray]:
        return forest_arrays(forest)

    def _predict_chunk(self, X: np.ndarray) -> np.ndarray:
        return forest_predict(self.arrays, X)

    def _state(self) -> dict:
        return {"trees": {k: torch.from_numpy(v) for k, v in self.arrays.items()},
                "best_params": dict(self.best_params_), "oob_r2": self.oob_r2_}

    def _load(self, state: dict) -> None:
        self.arrays = {k: to_numpy(v) for k, v in dict(state["trees"]).items()}
        self.best_params_ = dict(state["best_params"])
        self.oob_r2_ = float(state["oob_r2"])


# ----------------------------------------------------------------------------- factory

HEADS: Dict[str, Type[Regressor]] = {"mlp": MLPHead, "ridge": RidgeHead, "rf": ForestHead}
# Names of the paper's baselines: the same forest on ViT features or on pixel values
# (rf_context: pixel values plus their mean and std over the tile window).
METHOD_ALIASES = {"rf_features": "rf", "rf_pixels": "rf", "rf_context": "rf"}


def canonical_method(method: str) -> str:
    """'rf_features'/'rf_pixels'/'rf_context' -> 'rf'; raises InputError for unknown names."""
    name = METHOD_ALIASES.get(method, method)
    if name not in HEADS:
        known = ", ".join(sorted(set(HEADS) | set(METHOD_ALIASES)))
        raise InputError(f"Unknown METHOD '{method}': use one of {known}.")
    return name


def make_regressor(method: str, loss: str = "mse", seed: int = 0, **opts) -> Regressor:
    """A new, unfitted head.

    ``loss`` (mse | huber | l1) is the mlp head's training loss; ridge and the random
    forest always fit squared error and ignore it.  ``seed`` drives the mlp (weights,
    batches, early-stopping split) and the forest; ridge is deterministic.  ``opts`` go to
    the head's constructor.
    """
    return HEADS[canonical_method(method)].create(loss=_check_loss(loss), seed=int(seed), **opts)


def load_regressor(state: dict) -> Regressor:
    """Rebuild any head from its ``state_dict()`` (a stack of heads too)."""
    if state.get("method") == "stack":
        from .stacking import StackedHead
        return StackedHead.from_state(state)
    return HEADS[canonical_method(str(state.get("method")))].from_state(state)


# The hybrid heads (covariates + PCA of the features) and gradient boosting: core/hybrid.py.
from .hybrid import ForestHybrid, GBMHead, GBMHybrid  # noqa: E402  (they subclass Regressor)

HEADS.update({"gbm": GBMHead, "rf_hybrid": ForestHybrid, "gbm_hybrid": GBMHybrid})
