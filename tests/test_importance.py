"""Permutation importance on held-out folds (core/importance.py) and the report's
importance, feature-space view and ViT-vs-pixels sentence (core/report.py)."""
import re
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from soilssl.core.cv import CVResult, MethodSpec, cross_validate
from soilssl.core.errors import InputError
from soilssl.core.importance import (COVARIATES, VIT, block_matrix, covariate_groups,
                                     grouped_importance, permutation_importance)


class Linear:
    """A fixed model y = X @ coef (no fitting: its importances are known)."""

    def __init__(self, coef):
        self.coef = np.asarray(coef, dtype=np.float64)

    def predict(self, X):
        return np.asarray(X) @ self.coef


class Sign:
    """A fixed classifier: class 1 where column 0 > 0."""

    def predict(self, X):
        return (np.asarray(X)[:, 0] > 0).astype(float)


def data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    X[:, 2] = 5.0  # constant column
    return X, np.arange(n) % 3


def test_irrelevant_columns_score_zero_relevant_ones_the_expected_rmse_increase():
    X, folds = data()
    y = 2.0 * X[:, 0]
    imp = permutation_importance([Linear([2.0, 0.0, 0.0])] * 3, X, y, folds, repeats=200,
                                 seed=1)
    assert imp.names == ["0", "1", "2"] and imp.scores.shape == (3, 200, 3)
    assert imp.baseline == 0.0
    assert imp.mean[1] == 0.0 and imp.mean[2] == 0.0  # the model ignores them
    # permuting x0 among the held-out rows: E[(x_perm - x)^2] = 2 var(x) n / (n - 1)
    expected = np.mean([2.0 * np.sqrt(2 * np.var(X[folds == k, 0]) * 30 / 29)
                        for k in range(3)])
    assert imp.mean[0] == pytest.approx(expected, rel=0.08)
    # each score is RMSE(permuted) - RMSE(unpermuted) on one fold's held-out rows
    assert (imp.scores[:, :, 0] > 0).all()


def test_seeded_batched_grouped_and_skipping_missing_targets():
    X, folds = data(seed=2)
    y = X[:, 0] + X[:, 1]
    y[::5] = np.nan  # rows without a value are not scored
    models = [Linear([1.0, 1.0, 0.0])] * 3
    groups = {"both": [0, 1], "first": [0], "none": [2]}
    a = permutation_importance(models, X, y, folds, groups=groups, repeats=4, seed=3)
    b = permutation_importance(models, X, y, folds, groups=groups, repeats=4, seed=3,
                               max_elements=7)  # one permuted copy per predict call
    np.testing.assert_array_equal(a.scores, b.scores)
    c = permutation_importance(models, X, y, folds, groups=groups, repeats=4, seed=4)
    assert not np.array_equal(a.scores, c.scores)
    assert a.mean[0] > a.mean[1] > 0 and a.mean[2] == 0
    # a fold with fewer than 2 held-out rows is skipped (NaN), the others still count
    y2 = y.copy()
    y2[folds == 2] = np.nan
    y2[np.flatnonzero(folds == 2)[0]] = 1.0
    d = permutation_importance(models, X, y2, folds, groups=groups, repeats=2, seed=0)
    assert np.isnan(d.scores[2]).all() and np.isfinite(d.scores[:2]).all()


def test_class_targets_lose_accuracy_or_kappa():
    X, folds = data(seed=5)
    y = (X[:, 0] > 0).astype(float)
    for metric in ("accuracy", "kappa"):
        imp = permutation_importance([Sign()] * 3, X, y, folds, repeats=10, metric=metric)
        assert imp.baseline == 1.0 and imp.metric == metric
        assert imp.mean[0] > 0.2 and imp.mean[1] == 0 and imp.mean[2] == 0


def test_bad_inputs():
    X, folds = data()
    y = X[:, 0]
    with pytest.raises(InputError, match="2 fold models for 3 folds"):
        permutation_importance([Linear([1, 0, 0])] * 2, X, y, folds)
    with pytest.raises(InputError, match="name columns"):
        permutation_importance([Linear([1, 0, 0])] * 3, X, y, folds, groups={"x": [3]})
    with pytest.raises(InputError, match="metric"):
        permutation_importance([Linear([1, 0, 0])] * 3, X, y, folds, metric="r2")
    with pytest.raises(InputError, match="at least one fold"):
        permutation_importance([Linear([1, 0, 0])] * 3, X, np.full(90, np.nan), folds)


def hybrid_cv(n=72, seed=0):
    """A CV row of a head on pixels + features (as the hybrids), fold models kept: the
    target depends mostly on the pixel covariates."""
    rng = np.random.default_rng(seed)
    P, F = rng.normal(size=(n, 2)), rng.normal(size=(n, 5))
    y = 3 * P[:, 0] + 0.5 * F[:, 0] + rng.normal(0, 0.1, n)
    folds = np.arange(n) % 4
    sets = {"pixels": P, "features": F}
    X, columns = block_matrix(sets, ("pixels", "features"))
    assert X.shape == (n, 7) and columns["features"].tolist() == [2, 3, 4, 5, 6]
    models = [LinearRegression().fit(X[folds != k], y[folds != k]) for k in range(4)]
    spec = SimpleNamespace(method="rf", label="rf_hybrid", features="features",
                           blocks=("pixels", "features"))
    pred = np.empty(n)
    for k in range(4):
        pred[folds == k] = models[k].predict(X[folds == k])
    cv = CVResult(["t"], [spec], folds, np.arange(4), y[:, None], pred[None, None],
                  np.zeros((1, 1, 4, 3)), np.zeros((1, 1)), {("t", "rf_hybrid"): models})
    return cv, sets


def test_grouped_importance_covariates_vs_vit_features():
    cv, sets = hybrid_cv()
    imp = grouped_importance(cv, sets, "t", "rf_hybrid", repeats=5, seed=0)
    assert imp.names == [COVARIATES, VIT]
    assert imp.mean[0] > 4 * imp.mean[1] > 0
    groups = covariate_groups({"pixels": np.arange(2), "context": np.arange(2, 4),
                               "features": np.arange(4, 9)})
    assert groups[COVARIATES].tolist() == [0, 1, 2, 3] and groups[VIT].tolist() == [4, 5, 6, 7, 8]
    with pytest.raises(InputError, match="No fold models"):
        grouped_importance(cv, sets, "t", "mlp")


# ----------------------------------------------------------------------------- report

def report_cv(n=60, seed=0, targets=("ph", "si")):
    """rf_pixels and ridge (BACKBONE's features and a compared backbone's) on the same
    folds: the features carry the target, the pixels only part of it."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1000, (n, 2))
    F = rng.normal(size=(n, 4))
    G = rng.normal(size=(n, 4))
    y = np.column_stack([2 * F[:, 0] + rng.normal(0, 0.2, n), F[:, 1] + rng.normal(0, 0.2, n)])
    y[::6, 1] = np.nan
    P = np.column_stack([F[:, 0] + rng.normal(0, 1.5, n), rng.normal(size=n)])
    sets = {"pixels": P, "features": F, "compare": G}
    folds = np.arange(n) % 3
    rows = [MethodSpec("rf_pixels"), MethodSpec("ridge"), MethodSpec("ridge", "compare")]
    y = y[:, :len(targets)]
    cv = cross_validate(sets, y, folds, rows, target_names=list(targets), keep_models=True,
                        head_options={"rf": {"n_estimators": 20, "search_estimators": 10,
                                             "n_jobs": 1}})
    return cv, sets, coords


def test_baseline_sentence_numbers_come_from_the_cv_table():
    from soilssl.core.report import baseline_comparison, baseline_sentence
    cv, sets, coords = report_cv()
    table = {(r["target"], r["method"]): r["rmse_mean"] for r in cv.table()}
    comp = baseline_comparison(cv)
    assert [r["target"] for r in comp] == ["ph", "si"]
    for r in comp:
        pix, ssl = table[(r["target"], "rf_pixels")], table[(r["target"], "ridge")]
        assert r["method"] == "ridge"  # "ridge [compare]" is not BACKBONE's features
        assert r["value"] == ssl and r["baseline"] == pix
        assert r["percent"] == pytest.approx(100 * (pix - ssl) / pix)
        assert r["better"] == (ssl < pix)
    sentence = baseline_sentence(cv)
    assert sentence.startswith("On this data the ViT features beat the pixel baseline")
    for r in comp:
        assert f"for {r['target']}, ridge has RMSE {r['value']:.4g} against " \
               f"{r['baseline']:.4g}, {abs(r['percent']):.1f} % lower" in sentence
    # the other way round: the features lose, the sentence says so with the % higher
    cv.fold_metrics[:, 1, :, 0] = cv.fold_metrics[:, 0, :, 0] * 1.25
    comp = baseline_comparison(cv)
    assert all(not r["better"] and r["percent"] == pytest.approx(-25.0) for r in comp)
    assert baseline_sentence(cv).startswith("On this data the ViT features do not beat")
    assert "25.0 % higher" in baseline_sentence(cv)
    # no pixel baseline row: no sentence
    cv2 = cross_validate(sets, cv.y, cv.folds, ["ridge"], target_names=["ph", "si"])
    assert baseline_sentence(cv2) is None


def test_report_has_the_sentence_importance_and_feature_view(tmp_path):
    from soilssl.core.report import baseline_sentence, importance_rows, write_report
    cv, sets, coords = report_cv(targets=("ph",))  # one target: fewer figures to draw
    chosen = {"ph": "ridge"}
    rows = importance_rows(cv, sets, chosen)
    assert [(r["target"], r["method"], r["names"]) for r in rows] == [("ph", "ridge", [VIT])]
    assert all(r["mean"][0] > 0 for r in rows)
    path = write_report(str(tmp_path / "r.html"), cv, coords, chosen, sets=sets)
    text = open(path, encoding="utf-8").read()
    assert baseline_sentence(cv).replace("'", "&#x27;") in text
    assert "Permutation importance: covariates vs ViT features" in text
    assert "Feature space" in text
    # 2 figures per target, the importance bars and the feature view
    assert text.count("data:image/png;base64,") == 2 + 2
    for r in rows:
        assert re.search(rf"<td>{r['target']}</td><td>ridge</td><td>rmse [0-9.]+</td>"
                         rf"<td>{VIT}</td><td>{r['mean'][0]:.3f} ± ", text)


def test_feature_view_is_pca_without_umap_one_panel_per_backbone_and_target():
    from soilssl.core.report import backbone_sets, embed_2d, feature_view
    cv, sets, _ = report_cv(n=30)
    assert backbone_sets(cv, sets) == ["features", "compare"]
    Y, how = embed_2d(sets["features"])
    try:
        import umap  # noqa: F401
        assert how == "UMAP"
    except ImportError:
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler
        assert how == "PCA"
        ref = PCA(2).fit_transform(StandardScaler().fit_transform(sets["features"]))
        np.testing.assert_allclose(np.abs(Y), np.abs(ref), atol=1e-9)
    fig = feature_view(cv, sets)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4 and f"compare ({how}) — si" in titles
    assert f"BACKBONE ({how}) — ph" in titles


def test_report_says_what_the_stack_mixes_and_its_honest_score(tmp_path):
    from soilssl.core.report import baseline_comparison, stack_sentence, write_report
    from soilssl.core.selection import nested_selection
    from soilssl.core.stacking import describe
    cv, sets, coords = report_cv(targets=("ph",))
    assert stack_sentence(cv) is None  # no stack without METHOD=all
    fast = {"rf": {"n_estimators": 20, "search_estimators": 10, "n_jobs": 1}}
    cv = nested_selection(cv, sets, ["rf_pixels", "ridge"], head_options=fast)
    table = {r["method"]: r["rmse_mean"] for r in cv.table()}
    sentence = stack_sentence(cv)
    weights = cv.stacks["ph"]
    gain = 100 * (table["rf_pixels"] - table["selected"]) / table["rf_pixels"]
    for label, w in weights.items():
        assert f"{w:.2f} {label}" in sentence
    assert f"nested-CV RMSE {table['selected']:.4g} against rf_pixels " \
           f"{table['rf_pixels']:.4g}, {abs(gain):.1f} % {'lower' if gain > 0 else 'higher'}" \
           in sentence
    # the stack is not counted as "the ViT features" in the baseline sentence
    assert all(r["method"] != "selected" for r in baseline_comparison(cv))
    path = write_report(str(tmp_path / "r.html"), cv, coords, {"ph": "selected"}, sets=sets)
    assert sentence.replace("'", "&#x27;") in open(path, encoding="utf-8").read()
    assert "kriging" not in sentence  # no coordinates given: no residual kriging
    kriged = nested_selection(report_cv(targets=("ph",))[0], sets, ["rf_pixels", "ridge"],
                              head_options=fast, coords=coords)
    text = stack_sentence(kriged)
    assert "out-of-fold residuals kriged (regression kriging)" in text
    field = kriged.kriging["ph"]["field"]
    assert (field is not None) == ("kriged residuals (range" in text)
    assert field is None or f"for ph, {describe(kriged.stacks['ph'])} + {field.describe()}" in text


def test_report_advises_rf_pixels_where_the_stack_scores_worse():
    from soilssl.core.report import STACK_BEHIND, stack_sentence
    from soilssl.core.selection import nested_selection
    cv, sets, coords = report_cv(targets=("ph", "si"))
    fast = {"rf": {"n_estimators": 20, "search_estimators": 10, "n_jobs": 1}}
    cv = nested_selection(cv, sets, ["rf_pixels", "ridge"], head_options=fast)
    assert "Map with METHOD=rf_pixels" not in stack_sentence(cv)  # the stack wins here
    m = cv.labels.index("selected")
    cv.fold_metrics[1, m, :, 0] = cv.fold_metrics[1, 0, :, 0] * (1 + 1.5 * STACK_BEHIND / 100)
    cv.stacks["si"] = {"rf_pixels": 0.7, "ridge": 0.3}
    text = stack_sentence(cv)
    assert text.endswith("For si the stack scores more than 2 % worse than rf_pixels: its "
                         "weights, fitted on few points, do not carry over to new ones. Map "
                         "with METHOD=rf_pixels there.")
    # a mapped stack that is rf_pixels alone already: nothing to change, and it says so
    cv.stacks["si"] = {"rf_pixels": 1.0}
    text = stack_sentence(cv)
    assert "Map with METHOD=rf_pixels" not in text
    assert text.endswith("For si the nested CV scores the stack more than 2 % worse than "
                         "rf_pixels because some folds' inner CV moved away from rf_pixels "
                         "and that did not carry over; the map uses rf_pixels alone already.")
    # ... unless it adds kriged residuals: then METHOD=rf_pixels is a change
    from types import SimpleNamespace
    cv.kriging = {"si": {"field": SimpleNamespace(describe=lambda: "0.50 × kriged residuals")}}
    assert stack_sentence(cv).endswith("Map with METHOD=rf_pixels there.")
