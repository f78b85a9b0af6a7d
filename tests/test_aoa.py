"""Area of applicability: DI, CV threshold, inside/outside, weights_only state, chunks."""
import io

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from soilssl.core.aoa import aoa_predict, fit_aoa, upper_whisker
from soilssl.core.errors import InputError


def training(n=240, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 30, size=d) + rng.uniform(-50, 50, size=d)
    return X, np.arange(n) % 4


def test_di_and_threshold_equal_a_brute_force_computation():
    X, folds = training(n=60, d=5)
    state = fit_aoa(X, folds)
    Xs = (X - X.mean(axis=0)) / X.std(axis=0)
    dist = cdist(Xs, Xs)
    mean_distance = dist[~np.eye(60, dtype=bool)].mean()
    train_di = np.array([dist[i, folds != folds[i]].min() for i in range(60)]) / mean_distance
    q25, q75 = np.percentile(train_di, [25, 75])
    threshold = min(q75 + 1.5 * (q75 - q25), train_di.max())
    assert state["mean_distance"] == pytest.approx(mean_distance, rel=1e-9)
    np.testing.assert_allclose(state["train_di"].numpy(), train_di, rtol=1e-6)
    assert state["threshold"] == pytest.approx(threshold, rel=1e-6)

    X_new = np.random.default_rng(1).normal(size=(25, 5)) * 20
    di, inside = aoa_predict(state, X_new)
    expected = cdist((X_new - X.mean(axis=0)) / X.std(axis=0), Xs).min(axis=1) / mean_distance
    np.testing.assert_allclose(di, expected, rtol=1e-6)
    np.testing.assert_array_equal(inside, expected <= state["threshold"])


def test_upper_whisker_is_capped_at_the_maximum():
    assert upper_whisker(np.array([1.0, 2.0, 3.0, 4.0, 100.0])) == pytest.approx(4 + 1.5 * 2)
    assert upper_whisker(np.array([1.0, 2.0, 3.0, 4.0])) == 4.0


def test_far_off_features_outside_training_like_inside():
    X, folds = training()
    state = fit_aoa(X, folds)
    rng = np.random.default_rng(7)
    mean, std = X.mean(axis=0), X.std(axis=0)
    like = rng.normal(size=(200, 12)) * std + mean
    far = like + 8 * std
    di_like, in_like = aoa_predict(state, like)
    di_far, in_far = aoa_predict(state, far)
    assert in_like.mean() > 0.9
    assert not in_far.any() and (di_far > 2 * state["threshold"]).all()
    di_train, in_train = aoa_predict(state, X)
    assert in_train.all() and np.abs(di_train).max() < 1e-6  # each point is its own neighbour


def test_state_is_weights_only_safe_and_chunks_do_not_change_results():
    X, folds = training(n=100)
    buf = io.BytesIO()
    torch.save(fit_aoa(X, folds), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    X_new = np.random.default_rng(2).normal(size=(37, 12)) * 30
    X_new[4, 3] = np.nan  # e.g. a nodata tile
    di_a, in_a = aoa_predict(state, X_new, chunk_rows=5)
    di_b, in_b = aoa_predict(state, X_new, chunk_rows=1000)
    np.testing.assert_allclose(di_a, di_b, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(in_a, in_b)
    assert np.isnan(di_a[4]) and not in_a[4] and np.isfinite(np.delete(di_a, 4)).all()


def test_bad_inputs_raise_input_errors():
    X, folds = training(n=40)
    with pytest.raises(InputError, match="at least 2 CV folds"):
        fit_aoa(X, np.zeros(40, dtype=int))
    with pytest.raises(InputError, match="identical"):
        fit_aoa(np.ones((40, 3)), folds)
    with pytest.raises(InputError, match=r"expects \(M, 12\)"):
        aoa_predict(fit_aoa(X, folds), X[:, :4])
