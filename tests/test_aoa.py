"""Area of applicability as CAST computes it: weighted DI, CV threshold, inside/outside, LPD,
one AOA per target, weights_only state, chunks, old states."""
import io

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from soilssl.core.aoa import (MapAOA, aoa_matrix, aoa_measures, aoa_predict, fit_aoa,
                              fit_model_aoa, model_aoa_states, upper_whisker)
from soilssl.core.cv import cross_validate
from soilssl.core.errors import InputError


def training(n=240, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 30, size=d) + rng.uniform(-50, 50, size=d)
    return X, np.arange(n) % 4


def test_di_and_threshold_equal_a_brute_force_computation():
    X, folds = training(n=60, d=5)
    state = fit_aoa(X, folds)
    Xs = (X - X.mean(axis=0)) / X.std(axis=0, ddof=1)
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
    expected = cdist((X_new - X.mean(axis=0)) / X.std(axis=0, ddof=1), Xs).min(axis=1) / mean_distance
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


# ----------------------------------------------------------------------------- CAST trainDI

SIX = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [2.0, 2.0], [4.0, 5.0]])
SIX_FOLDS = np.array([0, 0, 1, 1, 2, 2])
SIX_WEIGHTS = np.array([2.0, 0.5])


def _r_quantile(v, q):
    """R's default (type 7) quantile, written out."""
    v = np.sort(v)
    h = (len(v) - 1) * q
    lo = int(np.floor(h))
    return v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def _hand_train_di(X, folds, w):
    """CAST trainDI step by step: scale() with sd (n-1), times the weights; each point's
    mean distance to all others (trainDist_avrg) and minimum distance to the points of the
    other folds (trainDist_min); DI = min / mean(avrg); threshold = Q75 + 1.5 IQR, capped."""
    n = len(X)
    mean = X.sum(axis=0) / n
    sd = np.sqrt(((X - mean) ** 2).sum(axis=0) / (n - 1))
    Z = (X - mean) / sd * w
    avrg, mins = [], []
    for i in range(n):
        d = [np.sqrt(((Z[i] - Z[j]) ** 2).sum()) for j in range(n)]
        avrg.append(np.mean([d[j] for j in range(n) if j != i]))
        mins.append(min(d[j] for j in range(n) if folds[j] != folds[i]))
    avrgmean = np.mean(avrg)
    di = np.array(mins) / avrgmean
    q25, q75 = _r_quantile(di, 0.25), _r_quantile(di, 0.75)
    thres = min(q75 + 1.5 * (q75 - q25), di.max())
    return Z, mean, sd, avrgmean, di, thres


def test_weighted_di_threshold_aoa_and_lpd_equal_a_hand_computation():
    Z, mean, sd, avrgmean, di, thres = _hand_train_di(SIX, SIX_FOLDS, SIX_WEIGHTS)
    state = fit_aoa(SIX, SIX_FOLDS, SIX_WEIGHTS)
    assert state["mean_distance"] == pytest.approx(avrgmean, rel=1e-12)
    np.testing.assert_allclose(state["train_di"].numpy(), di, rtol=1e-12)
    assert state["threshold"] == pytest.approx(thres, rel=1e-12)
    # training LPD: points of the other folds with DI below the threshold (strict, as CAST)
    lpd = [sum(np.sqrt(((Z[i] - Z[j]) ** 2).sum()) / avrgmean < thres
               for j in range(6) if SIX_FOLDS[j] != SIX_FOLDS[i]) for i in range(6)]
    np.testing.assert_array_equal(state["train_lpd"].numpy(), lpd)
    # new data: nearest training point, DI <= threshold inside, LPD over all training points
    new = np.array([[0.5, 0.0], [2.0, 1.5], [10.0, 0.0], [0.0, 9.0], [np.nan, 1.0]])
    di_new, inside, density = aoa_measures(state, new, lpd=True)
    for k, x in enumerate(new[:4]):
        z = (x - mean) / sd * SIX_WEIGHTS
        d = np.array([np.sqrt(((z - Z[j]) ** 2).sum()) for j in range(6)]) / avrgmean
        assert di_new[k] == pytest.approx(d.min(), rel=1e-12)
        assert inside[k] == (d.min() <= thres)
        assert density[k] == int((d < thres).sum())
    assert np.isnan(di_new[4]) and not inside[4] and density[4] == 0
    assert inside[:2].all() and not inside[2:].any() and density[0] >= 1


def test_six_points_literal_values():
    """The same six points, numbers worked out once by hand (weights 2 and 0.5)."""
    state = fit_aoa(SIX, SIX_FOLDS, SIX_WEIGHTS)
    # both columns have mean 10/6; squared deviations sum to 40/3 (x) and 52/3 (y): sd (n-1)
    sx, sy = np.sqrt(8 / 3), np.sqrt(52 / 15)
    np.testing.assert_allclose(state["scale"].numpy(), [sx, sy], rtol=1e-12)
    # point 1 (1, 0), fold 0: nearest other-fold points (0, 2) and (2, 2), both at
    # dx = 1 -> 1 / sx * 2 and dy = 2 -> 2 / sy * 0.5; (3, 1) is farther (2 / sx * 2 = 2.45)
    Z = state["train"].numpy()
    d12 = np.hypot(2 / sx, 1 / sy)
    assert np.hypot(*(Z[1] - Z[4])) == pytest.approx(d12, rel=1e-12)
    assert np.hypot(*(Z[1] - Z[2])) == pytest.approx(d12, rel=1e-12)
    assert state["train_di"][1].item() == pytest.approx(d12 / state["mean_distance"])


def test_weights_scale_free_zero_weight_drops_a_column_negative_is_zero():
    X, folds = training(n=50, d=3)
    a = fit_aoa(X, folds, [1.0, 2.0, 0.0])
    b = fit_aoa(X, folds, [10.0, 20.0, -3.0])  # x10, negative -> 0 (CAST)
    c = fit_aoa(X[:, :2], folds, [1.0, 2.0])
    for s in (b, c):
        np.testing.assert_allclose(s["train_di"].numpy(), a["train_di"].numpy(), rtol=1e-9)
        assert s["threshold"] == pytest.approx(a["threshold"], rel=1e-9)
    np.testing.assert_allclose(b["weights"].numpy(), [10.0, 20.0, 0.0])
    new = np.random.default_rng(3).normal(size=(9, 3)) * 20
    np.testing.assert_allclose(aoa_predict(a, new)[0], aoa_predict(c, new[:, :2])[0], rtol=1e-9)
    with pytest.raises(InputError, match="weights are 0"):
        fit_aoa(X, folds, [0.0, -1.0, 0.0])
    # a constant column gets weight 0 instead of a division by zero
    Xc = np.column_stack([X[:, :2], np.full(50, 7.0)])
    s = fit_aoa(Xc, folds)
    assert s["weights"][2].item() == 0 and np.isfinite(s["train_di"].numpy()).all()


def _cv_two_targets(method="ridge", n=60, seed=0):
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(n, 6))
    P = rng.normal(size=(n, 3))
    y = np.column_stack([3 * F[:, 0] + rng.normal(0, 0.1, n), F[:, 1] - F[:, 2]])
    y[::4, 1] = np.nan  # target b misses a quarter of the points
    folds = np.arange(n) % 3
    sets = {"features": F, "pixels": P}
    cv = cross_validate(sets, y, folds, [method], target_names=["a", "b"], keep_models=True,
                        head_options={"rf": {"n_estimators": 20, "search_estimators": 10,
                                             "n_jobs": 1}})
    return cv, sets, y, folds


def test_one_aoa_per_target_fitted_on_the_points_with_that_target():
    cv, sets, y, folds = _cv_two_targets()
    states = fit_model_aoa(cv, sets, {"a": "ridge", "b": "ridge"}, seed=0)
    assert set(states) == {"a", "b"}
    ok = np.isfinite(y[:, 1])
    b = states["b"]
    assert b["train_di"].shape == (int(ok.sum()),) and b["train_lpd"].shape == (int(ok.sum()),)
    np.testing.assert_array_equal(b["index"].numpy(), np.flatnonzero(ok))
    assert b["target"] == "b" and b["method"] == "ridge" and b["blocks"] == [["features", 6]]
    assert b["weighting"].startswith("permutation")
    again = fit_aoa(sets["features"][ok], folds[ok], b["weights"].numpy())
    np.testing.assert_allclose(again["train_di"].numpy(), b["train_di"].numpy(), rtol=1e-12)
    # the weights follow what each target depends on: a on column 0, b on columns 1 and 2
    wa, wb = states["a"]["weights"].numpy(), b["weights"].numpy()
    assert wa.argmax() == 0 and set(np.argsort(wb)[-2:]) == {1, 2}
    assert states["a"]["train_di"].shape == (60,)
    # seeded: the same weights again
    np.testing.assert_array_equal(fit_model_aoa(cv, sets, {"a": "ridge", "b": "ridge"},
                                                seed=0)["b"]["weights"].numpy(), wb)


def test_a_forest_is_weighted_by_its_impurity_importances():
    from soilssl.core.heads import make_regressor
    cv, sets, y, folds = _cv_two_targets("rf_features", n=45)
    head = make_regressor("rf_features", n_estimators=20, search_estimators=10, n_jobs=1)
    head.fit(sets["features"], y[:, 0])
    states = fit_model_aoa(cv, sets, {"a": "rf_features", "b": "rf_features"}, {"a": head})
    np.testing.assert_allclose(states["a"]["weights"].numpy(),
                               head.forest_.feature_importances_, rtol=1e-12)
    assert states["a"]["weighting"] == "forest impurity importance"
    assert states["b"]["weighting"].startswith("permutation")  # no refitted head given
    # without fold models nor a forest: unweighted, as CAST without a model
    cv.fold_models = None
    states = fit_model_aoa(cv, sets, {"a": "rf_features", "b": "rf_features"})
    assert states["b"]["weighting"].startswith("unweighted")
    np.testing.assert_array_equal(states["b"]["weights"].numpy(), np.ones(6))


def test_map_aoa_bands_per_target_with_lpd_and_old_models():
    cv, sets, y, folds = _cv_two_targets()
    states = fit_model_aoa(cv, sets, {"a": "ridge", "b": "ridge"})
    model = {"targets": ["a", "b"], "aoa_targets": states}
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    model = torch.load(buf, weights_only=True)
    mapper = MapAOA(model, lpd=True)
    assert mapper.product["count"] == 6
    assert mapper.product["band_names"] == [
        "a: inside AOA (1/0)", "a: dissimilarity index", "a: local point density",
        "b: inside AOA (1/0)", "b: dissimilarity index", "b: local point density"]
    assert mapper.product["tags"]["threshold"] == {"a": states["a"]["threshold"],
                                                   "b": states["b"]["threshold"]}
    feats = np.random.default_rng(5).normal(size=(30, 6))
    feats[3] = np.nan
    block = mapper({"features": feats})
    assert block.shape == (6, 30) and (block[:, 3] == -9999).all()
    for i, t in enumerate(["a", "b"]):
        di, inside, lpd = aoa_measures(states[t], np.delete(feats, 3, axis=0), lpd=True)
        np.testing.assert_allclose(np.delete(block[3 * i + 1], 3), di, rtol=1e-6)
        np.testing.assert_array_equal(np.delete(block[3 * i], 3), inside)
        np.testing.assert_array_equal(np.delete(block[3 * i + 2], 3), lpd)
        assert mapper.inside_counts[t] == int(inside.sum())
    both = (block[0] == 1) & (block[3] == 1)
    assert mapper.inside_all == int(both.sum())
    # "patch" features are the map's feature rows; pixel predictors must be given
    np.testing.assert_array_equal(aoa_matrix({"blocks": [["patch", 6]]}, feats), feats)
    with pytest.raises(InputError, match="'pixels' predictors"):
        aoa_matrix({"blocks": [["pixels", 3], ["features", 6]]}, {"features": feats})
    # an older model: one unweighted AOA for all targets, the old two bands
    X, f = training(n=40, d=6)
    old = fit_aoa(X, f)
    old.pop("weights")
    old["version"] = 1
    legacy = {"targets": ["a", "b"], "aoa": old}
    assert model_aoa_states(legacy) == [(None, old)]
    m = MapAOA(legacy)
    assert m.product["band_names"] == ["inside AOA (1/0)", "dissimilarity index"]
    np.testing.assert_allclose(m(feats)[1, :3], aoa_predict(old, feats[:3])[0], rtol=1e-6)
    with pytest.raises(InputError, match="no area-of-applicability"):
        MapAOA({"targets": ["a"], "aoa": None})
