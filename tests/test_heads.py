"""Soil heads: the paper's MLP size, learning, seeding, weights, losses, weights_only states."""
import io

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from soilssl.core.errors import InputError
from soilssl.core.heads import (ForestHead, MLPHead, RidgeHead, build_head, load_regressor,
                                make_regressor)

FAST = {"mlp": {}, "ridge": {}, "rf": {"n_estimators": 40, "search_estimators": 20}}


def data(n=300, d=10, seed=0):
    """Unscaled features (offsets/scales differ per column) and a smooth target."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    X = z * rng.uniform(0.1, 50, size=d) + rng.uniform(-100, 100, size=d)
    y = 7.5 + 0.8 * z[:, 0] - 0.5 * z[:, 1] + 0.3 * np.tanh(2 * z[:, 2]) \
        + 0.05 * rng.normal(size=n)
    return X, y


def head(method, **opts):
    return make_regressor(method, seed=0, **{**FAST[method], **opts})


def weights_only_copy(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_vit_b_head_has_656897_parameters():
    assert sum(p.numel() for p in build_head(768).parameters()) == 656_897
    X = np.random.default_rng(0).normal(size=(12, 768))
    fitted = MLPHead(max_epochs=1).fit(X, X[:, 0])
    assert sum(p.numel() for p in fitted.net.parameters()) == 656_897
    layers = [type(m).__name__ for m in fitted.net]
    assert layers == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]


@pytest.mark.parametrize("method", ["mlp", "ridge", "rf"])
def test_heads_predict_unseen_points(method):
    X, y = data()
    model = head(method).fit(X[:220], y[:220])
    pred = model.predict(X[220:])
    assert pred.shape == (80,) and pred.dtype == np.float64
    assert r2_score(y[220:], pred) > 0.75


@pytest.mark.parametrize("method", ["mlp", "ridge", "rf"])
def test_state_round_trips_through_weights_only_load(method):
    X, y = data(n=150)
    model = head(method).fit(X, y)
    state = weights_only_copy(model.state_dict())
    assert state["method"] == model.method
    again = load_regressor(state)
    assert type(again) is type(model)
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    rebuilt = type(model).from_state(state)
    np.testing.assert_array_equal(rebuilt.predict(X[:7]), model.predict(X[:7]))


def test_rf_reload_equals_sklearn_predict_exactly():
    X, y = data(n=250, d=6)
    model = head("rf").fit(X[:200], y[:200])
    reloaded = load_regressor(weights_only_copy(model.state_dict()))
    assert reloaded.forest_ is None  # predicts from the stored arrays only
    X_new = np.vstack([X, np.random.default_rng(1).normal(size=(50, 6)) * 40])
    sklearn_pred = model.forest_.set_params(n_jobs=1).predict(X_new)
    np.testing.assert_array_equal(reloaded.predict(X_new), sklearn_pred)
    assert len(model.forest_.estimators_) == 40
    assert model.best_params_["max_features"] in (2, 6)


def test_rf_grid_adapts_to_dimension():
    rf = ForestHead()
    assert rf.grid(3) == [(1, 1), (1, 5), (3, 1), (3, 5)]  # pixels: mtry 1 and all bands
    assert rf.grid(768) == [(27, 1), (27, 5)]  # sqrt only: D/3 and D are too slow
    assert rf.grid(20) == [(4, 1), (4, 5), (6, 1), (6, 5), (20, 1), (20, 5)]
    x = np.linspace(0, 1, 60)[:, None]
    one_feature = ForestHead(n_estimators=10, search_estimators=5).fit(x, 3 * x[:, 0])
    assert one_feature.grid(1) == [(1, 1), (1, 5)]
    np.testing.assert_allclose(one_feature.predict(np.array([[-5.0], [5.0]])), [0, 3], atol=0.3)


def test_ridge_chooses_alpha_on_training_data_and_standardises():
    X, y = data(n=200)
    model = RidgeHead().fit(X, y)
    assert model.alpha in model.alphas
    np.testing.assert_allclose(model.x_mean, X.mean(axis=0))
    np.testing.assert_allclose(model.x_scale, X.std(axis=0))
    noisy = RidgeHead().fit(X, np.random.default_rng(3).normal(size=200))
    assert noisy.alpha > model.alpha  # pure noise wants a stronger penalty


def test_mlp_seeded_runs_identical_and_seed_matters():
    X, y = data(n=200)
    a = MLPHead(seed=4).fit(X, y)
    b = MLPHead(seed=4).fit(X, y)
    c = MLPHead(seed=5).fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert a.epochs_trained == b.epochs_trained
    assert not np.array_equal(a.predict(X), c.predict(X))


def test_mlp_standardises_with_training_stats_and_early_stops():
    X, y = data(n=200)
    model = MLPHead(max_epochs=300, patience=5).fit(X, y * 1000 + 5000)
    np.testing.assert_allclose(model.x_mean, X.mean(axis=0))
    assert model.y_mean == pytest.approx((y * 1000 + 5000).mean())
    assert model.y_scale == pytest.approx((y * 1000).std())
    assert model.epochs_trained < 300 and model.epochs_trained == model.best_epoch + 5
    train, val = model._inner_split(200)
    assert len(val) == 30 and len(np.intersect1d(train, val)) == 0
    assert sorted(np.r_[train, val]) == list(range(200))


def test_l1_loss_resists_outliers_better_than_mse():
    X, y = data(n=300)
    y_dirty = y.copy()
    y_dirty[:30] += 40.0  # 10 % gross outliers (about 50 target standard deviations)
    clean = slice(200, 300)
    errors = {}
    for loss in ("mse", "huber", "l1"):
        model = MLPHead(loss=loss).fit(X[:200], y_dirty[:200])
        errors[loss] = np.median(np.abs(model.predict(X[clean]) - y[clean]))
    assert errors["l1"] < errors["mse"] and errors["huber"] < errors["mse"]


@pytest.mark.parametrize("method", ["mlp", "ridge", "rf"])
def test_sample_weights_pull_the_fit(method):
    rng = np.random.default_rng(0)
    X = np.tile(rng.normal(size=(60, 4)), (2, 1))  # every point twice...
    y = np.r_[np.ones(60), -np.ones(60)]           # ...with conflicting targets
    w = np.r_[np.full(60, 10.0), np.full(60, 0.1)]
    weighted = head(method).fit(X, y, sample_weight=w).predict(X[:60])
    plain = head(method).fit(X, y).predict(X[:60])
    assert weighted.mean() > 0.8  # weighted mean is (10 - 0.1) / 10.1 = 0.98
    assert abs(plain.mean()) < 0.25


def test_bad_inputs_raise_input_errors():
    X, y = data(n=40)
    with pytest.raises(InputError, match="Unknown METHOD 'svm'"):
        make_regressor("svm")
    with pytest.raises(InputError, match="Unknown LOSS"):
        make_regressor("mlp", loss="hinge")
    X_nan = X.copy()
    X_nan[3, 1] = np.nan
    with pytest.raises(InputError, match="1 training points have NaN"):
        make_regressor("ridge").fit(X_nan, y)
    fitted = make_regressor("ridge").fit(X, y)
    with pytest.raises(InputError, match=r"expects \(N, 10\)"):
        fitted.predict(X[:, :5])
    with pytest.raises(InputError, match="'ridge' head given to the 'mlp' head"):
        MLPHead.from_state(fitted.state_dict())
    assert isinstance(make_regressor("rf_pixels"), ForestHead)
