"""Spatial cross-validation: folds, leak-free out-of-fold predictions, metrics, table."""
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from soilssl.core import heads
from soilssl.core.cv import (MethodSpec, cross_validate, method_specs, regression_metrics,
                             spatial_folds)
from soilssl.core.errors import Cancelled, InputError
from soilssl.core.heads import make_regressor
from soilssl.core.progress import Progress

# Small heads so that every test runs in about a second.
FAST = {"mlp": {"max_epochs": 40, "hidden": 64},
        "rf": {"n_estimators": 20, "search_estimators": 10, "min_samples_leaf": (1,)},
        "gbm": {"max_iter": 30},
        "rf_hybrid": {"inner": {"n_estimators": 20, "search_estimators": 10,
                                "min_samples_leaf": (1,)}},
        "gbm_hybrid": {"inner": {"max_iter": 30}}}


def field(n=120, d=8, seed=0):
    """Points on a 20 km square with a smooth soil target seen through noisy features."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 20000, size=(n, 2))
    signal = np.c_[np.sin(coords[:, 0] / 4000), np.cos(coords[:, 1] / 5000)]
    features = np.c_[signal, rng.normal(size=(n, d - 2))] @ rng.normal(size=(d, d)) * 3 + 10
    pixels = signal + 0.1 * rng.normal(size=(n, 2))
    y = np.c_[8 + signal[:, 0] + 0.1 * rng.normal(size=n), 60 + 10 * signal[:, 1]]
    context = np.c_[pixels + 0.05 * rng.normal(size=(n, 2)), rng.uniform(0.1, 1, (n, 2))]
    return coords, {"features": features, "pixels": pixels, "context": context,
                    "compare": rng.normal(size=(n, 5))}, y


# ----------------------------------------------------------------------------- folds

def test_kmeans_folds_equal_sklearn_kmeans_of_coordinates():
    coords, _, _ = field(n=200)
    folds = spatial_folds(coords, n_folds=6, seed=3)
    expected = KMeans(n_clusters=6, random_state=3, n_init=10).fit_predict(coords)
    np.testing.assert_array_equal(folds, expected)
    # spatial: a fold is compact, far smaller than the whole area
    spread = np.mean([coords[folds == k].std(axis=0).mean() for k in range(6)])
    assert spread < 0.6 * coords.std(axis=0).mean()


def test_random_folds_are_balanced_and_seeded():
    coords, _, _ = field(n=100)
    a = spatial_folds(coords, n_folds=6, mode="random", seed=1)
    assert sorted(np.bincount(a).tolist()) == [16, 16, 17, 17, 17, 17]
    np.testing.assert_array_equal(a, spatial_folds(coords, 6, "random", seed=1))
    assert not np.array_equal(a, spatial_folds(coords, 6, "random", seed=2))


def test_too_few_points_and_tiny_folds_are_input_errors():
    coords, _, _ = field(n=11)
    with pytest.raises(InputError, match=r"11 points are too few for 6 folds: at least 12"):
        spatial_folds(coords, n_folds=6)
    clumped = np.r_[np.zeros((19, 2)) + np.arange(19)[:, None], [[1e7, 1e7]]]
    with pytest.raises(InputError, match=r"Fold sizes are \[.*\]: fold \d has 1 point"):
        spatial_folds(clumped, n_folds=2)
    with pytest.raises(InputError, match="Unknown FOLD_MODE"):
        spatial_folds(coords, n_folds=2, mode="blocks")


# ----------------------------------------------------------------------------- method rows

def test_method_specs_express_the_paper_table():
    rows = method_specs("all", compare=True)
    assert [r.label for r in rows] == ["rf_pixels", "rf_context", "mlp", "rf_features", "ridge",
                                       "rf_hybrid", "gbm_hybrid", "mlp [compare]",
                                       "rf_features [compare]", "ridge [compare]"]
    assert [r.features for r in rows] == ["pixels"] * 2 + ["features"] * 5 + ["compare"] * 3
    assert [r.blocks for r in rows[:7]] == [
        ("pixels",), ("pixels", "context"), ("features",), ("features",), ("features",),
        ("pixels", "features"), ("pixels", "features")]
    assert [r.label for r in method_specs("mlp")] == ["mlp"]
    assert MethodSpec("rf", "pixels", "RF RGB").label == "RF RGB"
    with pytest.raises(InputError, match="Unknown METHOD"):
        MethodSpec("svm")


# ----------------------------------------------------------------------------- leakage

def test_every_point_predicted_once_by_a_model_that_never_saw_it(spy):
    coords, _, y = field(n=60)
    ids = np.arange(60, dtype=float)[:, None]
    folds = spatial_folds(coords, n_folds=4)
    y[[3, 17], 0] = np.nan
    result = cross_validate({"features": ids}, y, folds, ["spy", ("spy", "features", "again")],
                            target_names=["pH", "Si"])
    assert len(spy.calls) == 2 * 2 * 4  # targets x rows x folds
    for t, valid in enumerate([np.isfinite(y[:, 0]), np.ones(60, bool)]):
        calls = spy.calls[t * 8:(t + 1) * 8]
        predicted = sorted(i for _, batch in calls for i in batch)
        assert predicted == sorted(np.flatnonzero(valid).tolist() * 2)  # once per row
        for seen, batch in calls:
            fold = folds[batch[0]]
            assert (folds[batch] == fold).all()
            assert seen == set(np.flatnonzero(valid & (folds != fold)).tolist())
    np.testing.assert_array_equal(result.oof("Si", "spy"), np.arange(60))


def test_held_out_fold_cannot_influence_its_own_predictions():
    """Decoy points and wild targets added to fold 0 change nothing for fold 0's points.

    If feature standardisation, target scaling, early stopping or the hyper-parameter
    search saw the held-out fold, fold 0's predictions would move.
    """
    coords, sets, y = field(n=90)
    folds = spatial_folds(coords, n_folds=3)
    X = sets["features"]
    rows = ["mlp", "ridge", "rf_features"]
    base = cross_validate({"features": X}, y[:, 0], folds, rows, head_options=FAST)

    held = folds == 0
    decoys = X[held][:10] * 50 + 1000
    X2 = np.r_[X, decoys]
    y2 = np.r_[np.where(held, y[:, 0] * 100 - 500, y[:, 0]), np.full(10, 1e4)]
    folds2 = np.r_[folds, np.zeros(10, dtype=folds.dtype)]
    moved = cross_validate({"features": X2}, y2, folds2, rows, head_options=FAST)
    for m in range(len(rows)):
        # equal up to float rounding of a larger prediction batch (a leak moves them by ~1)
        np.testing.assert_allclose(moved.predictions[0, m, :90][held],
                                   base.predictions[0, m][held], rtol=1e-6)
        # the same decoys do move the folds that train on them
        shift = np.abs(moved.predictions[0, m, :90] - base.predictions[0, m])[~held]
        assert shift.max() > 0.1


def test_all_rows_use_the_same_folds_and_match_independent_fits():
    coords, sets, y = field(n=90)
    folds = spatial_folds(coords, n_folds=3, seed=1)
    rows = method_specs("all", compare=True)
    result = cross_validate(sets, y[:, 1], folds, rows, target_names=["Si"], seed=2,
                            head_options=FAST)
    assert result.predictions.shape == (1, 10, 90) and np.isfinite(result.predictions).all()
    for m, spec in enumerate(rows):
        X = np.hstack([sets[b] for b in spec.blocks])
        for k in range(3):
            train, test = folds != k, folds == k
            opts = dict(FAST.get(heads.canonical_method(spec.method), {}))
            if spec.method in ("rf_hybrid", "gbm_hybrid"):
                opts["n_keep"] = 2  # the pixel columns before the features
            model = make_regressor(spec.method, seed=2, **opts).fit(X[train], y[train, 1])
            np.testing.assert_array_equal(result.predictions[0, m, test], model.predict(X[test]))


# ----------------------------------------------------------------------------- metrics

def test_fold_metrics_and_table_equal_sklearn():
    coords, sets, y = field(n=120)
    folds = spatial_folds(coords, n_folds=4)
    w = np.random.default_rng(5).uniform(0.5, 2.0, size=120)
    result = cross_validate(sets, y, folds, ["ridge", "rf_pixels"], target_names=["pH", "Si"],
                            weights=w, weighted_metrics=True, head_options=FAST)
    rows = result.table()
    assert [(r["target"], r["method"]) for r in rows] == [
        ("pH", "ridge"), ("pH", "rf_pixels"), ("Si", "ridge"), ("Si", "rf_pixels")]
    for t, target in enumerate(["pH", "Si"]):
        for m, label in enumerate(["ridge", "rf_pixels"]):
            pred = result.oof(target, label)
            per_fold = []
            for k in range(4):
                s = folds == k
                per_fold.append([root_mean_squared_error(y[s, t], pred[s], sample_weight=w[s]),
                                 mean_absolute_error(y[s, t], pred[s], sample_weight=w[s]),
                                 r2_score(y[s, t], pred[s], sample_weight=w[s])])
            per_fold = np.array(per_fold)
            np.testing.assert_allclose(result.fold_metrics[t, m], per_fold, rtol=1e-12)
            row = rows[2 * t + m]
            for j, name in enumerate(["rmse", "mae", "r2"]):
                assert row[f"{name}_mean"] == pytest.approx(per_fold[:, j].mean(), rel=1e-12)
                assert row[f"{name}_std"] == pytest.approx(per_fold[:, j].std(), rel=1e-12)
            assert row["r2_pooled"] == pytest.approx(r2_score(y[:, t], pred, sample_weight=w))
            assert row["n"] == 120
    assert rows[0]["r2_mean"] > 0.3  # features carry the pH signal


def test_regression_metrics_values():
    np.testing.assert_allclose(regression_metrics([1, 2, 3, 4], [1, 2, 3, 8]),
                               [2.0, 1.0, 1 - 16 / 5])
    assert np.isnan(regression_metrics([1.0], [2.0])[2])


def test_nan_targets_are_skipped_and_counted(spy):
    coords, _, y = field(n=60)
    y[[0, 5, 9], 0] = np.nan
    folds = spatial_folds(coords, n_folds=3)
    infos = []
    result = cross_validate({"features": np.arange(60.0)[:, None]}, y, folds, ["spy"],
                            target_names=["pH", "Si"], progress=Progress(on_info=infos.append))
    assert result.n_skipped.tolist() == [3, 0] and result.n_used.tolist() == [57, 60]
    assert np.isnan(result.oof("pH", "spy")[[0, 5, 9]]).all()
    assert np.isfinite(np.delete(result.oof("pH", "spy"), [0, 5, 9])).all()
    assert all({0, 5, 9}.isdisjoint(seen) for seen, _ in spy.calls[:3])
    assert "pH: 3 point(s) without a value skipped." in infos
    assert result.table()[0]["n"] == 57
    assert "pH: 3 point(s) without a value skipped." in result.format_table()


def test_target_with_too_few_training_values_is_an_input_error():
    coords, sets, y = field(n=60)
    folds = spatial_folds(coords, n_folds=3)
    y[folds != 0, 0] = np.nan
    with pytest.raises(InputError, match="leaves 0 training point"):
        cross_validate(sets, y[:, 0], folds, ["ridge"])


# ----------------------------------------------------------------------------- runs

def test_seeded_runs_are_identical():
    coords, sets, y = field(n=90)
    folds = spatial_folds(coords, n_folds=3)
    rows = ["mlp", "rf_features"]
    a = cross_validate(sets, y, folds, rows, seed=7, head_options=FAST)
    b = cross_validate(sets, y, folds, rows, seed=7, head_options=FAST)
    c = cross_validate(sets, y, folds, rows, seed=8, head_options=FAST)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    np.testing.assert_array_equal(a.fold_metrics, b.fold_metrics)
    assert a.format_table() == b.format_table()
    assert not np.array_equal(a.predictions[:, 0], c.predictions[:, 0])


def test_loss_and_weights_reach_the_heads(spy):
    coords, sets, y = field(n=60)
    folds = spatial_folds(coords, n_folds=3)
    result = cross_validate(sets, y[:, 0], folds, ["mlp"], loss="l1", keep_models=True,
                            weights=np.ones(60), head_options=FAST)
    models = result.fold_models[("target1", "mlp")]
    assert len(models) == 3 and all(m.loss == "l1" and m.hidden == 64 for m in models)
    k0 = folds == 0
    np.testing.assert_array_equal(models[0].predict(sets["features"][k0]),
                                  result.oof("target1", "mlp")[k0])
    with pytest.raises(InputError, match="Weights must be 60 finite non-negative"):
        cross_validate(sets, y[:, 0], folds, ["ridge"], weights=-np.ones(60))


def test_progress_reported_and_cancel_checked_between_fits():
    coords, sets, y = field(n=60)
    folds = spatial_folds(coords, n_folds=3)
    seen = []
    cross_validate(sets, y, folds, ["ridge", "rf_pixels"], head_options=FAST,
                   progress=Progress(on_progress=seen.append))
    assert len(seen) == 2 * 3 * 2 and seen == sorted(seen) and seen[-1] == pytest.approx(100)
    fits = []
    with pytest.raises(Cancelled):
        cross_validate(sets, y, folds, ["ridge"], head_options=FAST,
                       progress=Progress(on_progress=fits.append,
                                         is_cancelled=lambda: len(fits) >= 2))
    assert len(fits) == 2


def test_format_table_lists_every_row_with_mean_and_std():
    coords, sets, y = field(n=60)
    folds = spatial_folds(coords, n_folds=3)
    result = cross_validate(sets, y, folds, method_specs("ridge", compare=True),
                            target_names=["pH", "Si"])
    text = result.format_table()
    lines = text.splitlines()
    assert lines[0].startswith("Cross-validation: 3 folds of ")
    assert lines[1].split()[:4] == ["target", "method", "n", "RMSE"]
    assert len(lines) == 2 + 4
    row = result.table()[1]
    assert row["method"] == "ridge [compare]"
    assert f"{row['rmse_mean']:.3f} ± {row['rmse_std']:.3f}" in lines[3]
    with pytest.raises(InputError, match="No feature set 'pixels'"):
        cross_validate({"features": sets["features"]}, y, folds, ["rf_pixels"])
