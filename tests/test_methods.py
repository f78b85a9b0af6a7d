"""METHOD=all rows (issue 12): rf_context, rf_hybrid, gbm_hybrid; blocks stacked per row;
nested selection ('selected'); MapHeads on a dict of blocks; leakage of every new method."""
import io

import numpy as np
import pytest
import rasterio
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingRegressor

from soilssl.core.cv import (CONTEXT, FEATURES, PIXELS, SELECTED, MethodSpec, cross_validate,
                             make_head, method_specs, regression_metrics, spatial_folds)
from soilssl.core.errors import InputError
from soilssl.core.heads import load_regressor, make_regressor
from soilssl.core.hybrid import GBMHead, gbm_arrays, gbm_predict
from soilssl.core.selection import (candidates, choose_best, inner_predictions, inner_scores,
                                    nested_selection)
from soilssl.core.stacking import shrunk_weights, simplex_weights
from soilssl.core.mapheads import PRED_NODATA, MapHeads

# Small heads: every test runs in seconds on a busy 2-core machine.
RF = {"n_estimators": 15, "search_estimators": 8, "min_samples_leaf": (1,), "n_jobs": 1}
FAST = {"mlp": {"max_epochs": 30, "hidden": 32}, "rf": RF, "gbm": {"max_iter": 30},
        "rf_hybrid": {"inner": RF}, "gbm_hybrid": {"inner": {"max_iter": 30}}}
NEW = ["rf_context", "rf_hybrid", "gbm_hybrid"]


def weights_only_copy(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def field(n=90, d=12, seed=0):
    """Pixels carry one soil signal, the features (d dims, 3 latent) another."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 20000, size=(n, 2))
    a, b = np.sin(coords[:, 0] / 4000), np.cos(coords[:, 1] / 5000)
    pixels = np.c_[a + 0.05 * rng.normal(size=n), rng.normal(size=n)]
    latent = np.c_[b, rng.normal(size=(n, 2))]
    features = latent @ rng.normal(size=(3, d)) * 3 + 0.01 * rng.normal(size=(n, d)) + 10
    context = np.c_[pixels + 0.1 * rng.normal(size=(n, 2)), rng.uniform(0.1, 1, (n, 2))]
    y = 5 + 2 * a + 3 * b + 0.1 * rng.normal(size=n)
    return coords, {PIXELS: pixels, CONTEXT: context, FEATURES: features}, y


# ----------------------------------------------------------------------------- heads

def test_gbm_node_arrays_predict_exactly_as_sklearn_and_round_trip():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6))
    y = X[:, 0] * 2 + np.sin(3 * X[:, 1]) + 0.1 * rng.normal(size=200)
    head = GBMHead(max_iter=60).fit(X, y)
    Xt = rng.normal(size=(300, 6))
    Xt[::7, 2] = np.nan  # missing values follow the stored missing_go_to_left
    np.testing.assert_array_equal(gbm_predict(head.arrays, Xt), head.model_.predict(Xt))
    again = load_regressor(weights_only_copy(head.state_dict()))
    assert isinstance(again, GBMHead) and again.n_iter_ == head.n_iter_ > 5
    np.testing.assert_array_equal(again.predict(Xt[~np.isnan(Xt).any(axis=1)]),
                                  head.model_.predict(Xt[~np.isnan(Xt).any(axis=1)]))
    # the same arrays from a plain sklearn model
    ref = HistGradientBoostingRegressor(max_iter=10, random_state=0).fit(X, y)
    np.testing.assert_array_equal(gbm_predict(gbm_arrays(ref), X), ref.predict(X))


@pytest.mark.parametrize("method", ["rf_hybrid", "gbm_hybrid"])
def test_hybrid_pca_is_fitted_on_the_training_data_and_round_trips(method):
    _, sets, y = field(n=120)
    X = np.c_[sets[PIXELS], sets[FEATURES]]
    head = make_regressor(method, n_keep=2, **FAST[method]).fit(X[:80], y[:80])
    # 3 latent directions explain > 90 % of the features' variance: 3 or fewer components
    pca = PCA(svd_solver="full").fit(sets[FEATURES][:80])
    k = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), 0.9) + 1)
    assert head.components == k <= 3
    np.testing.assert_allclose(head.pca_mean, sets[FEATURES][:80].mean(axis=0))
    np.testing.assert_allclose(np.abs(head.pca_components), np.abs(pca.components_[:k]),
                               atol=1e-8)
    # covariates kept as they are, PCs after them
    Z = head.reduce(X[80:])
    np.testing.assert_array_equal(Z[:, :2], X[80:, :2])
    assert Z.shape == (40, 2 + k)
    state = weights_only_copy(head.state_dict())
    assert state["params"]["n_keep"] == 2
    np.testing.assert_array_equal(load_regressor(state).predict(X[80:]), head.predict(X[80:]))
    # both signals (pixels and features) are used
    assert np.corrcoef(head.predict(X[80:]), y[80:])[0, 1] > 0.8


def test_hybrid_component_cap_and_bad_layout():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 50))  # white noise: 90 % needs about 40 components
    head = make_regressor("rf_hybrid", n_keep=1, max_components=20, inner=RF).fit(X, X[:, 0])
    assert head.components == 20
    few = make_regressor("rf_hybrid", n_keep=1, inner=RF).fit(X[:8], X[:8, 0])
    assert few.components <= 7  # at most n - 1
    with pytest.raises(InputError, match="needs feature columns after its 50"):
        make_regressor("gbm_hybrid", n_keep=50).fit(X, X[:, 0])


def test_method_rows_stack_their_blocks():
    coords, sets, y = field()
    folds = spatial_folds(coords, 3)
    rows = [s for s in method_specs("all")]
    assert [s.label for s in rows] == ["rf_pixels", "rf_context", "mlp", "rf_features",
                                       "ridge", "rf_hybrid", "gbm_hybrid"]
    result = cross_validate(sets, y, folds, rows, head_options=FAST, keep_models=True)
    assert np.isfinite(result.predictions).all()
    # rf_context and the hybrids: one head on the stacked blocks, same folds
    for label, width in (("rf_context", 6), ("rf_hybrid", 14), ("gbm_hybrid", 14)):
        spec = result.methods[result.labels.index(label)]
        for k, model in enumerate(result.fold_models[("target1", label)]):
            assert model.n_features == width
            test = folds == k
            X = np.hstack([sets[b][test] for b in spec.blocks])
            np.testing.assert_array_equal(result.oof("target1", label)[test], model.predict(X))
    hyb = result.fold_models[("target1", "rf_hybrid")][0]
    assert hyb.n_keep == 2
    mean, _ = result.summary()
    rmse = dict(zip(result.labels, mean[0, :, 0]))
    # y needs both the pixel and the feature signal: the hybrids beat either alone
    assert rmse["rf_hybrid"] < min(rmse["rf_pixels"], rmse["rf_features"])
    with pytest.raises(InputError, match="No feature set 'context'"):
        cross_validate({PIXELS: sets[PIXELS]}, y, folds, ["rf_context"])


# ----------------------------------------------------------------------------- leakage

def test_held_out_fold_cannot_influence_its_own_predictions_new_methods_and_selection():
    """Decoys and wild targets in fold 0 change nothing for fold 0: PCA, scalers, GBM early
    stopping, the forest's OOB search and the nested selection (with residual kriging: the
    decoys sit at fold 0's places) see training folds only."""
    coords, sets, y = field(n=60)
    folds = spatial_folds(coords, n_folds=3)
    rows = NEW + ["ridge", "rf_pixels"]
    base = cross_validate(sets, y, folds, rows, head_options=FAST, keep_models=True)
    base = nested_selection(base, sets, rows, head_options=FAST, coords=coords)

    held = folds == 0
    rng = np.random.default_rng(9)
    sets2 = {k: np.r_[v, v[held][:10] * 50 + 1000 + rng.normal(size=(10, v.shape[1]))]
             for k, v in sets.items()}
    y2 = np.r_[np.where(held, y * 100 - 500, y), np.full(10, 1e4)]
    folds2 = np.r_[folds, np.zeros(10, dtype=folds.dtype)]
    moved = cross_validate(sets2, y2, folds2, rows, head_options=FAST, keep_models=True)
    moved = nested_selection(moved, sets2, rows, head_options=FAST,
                             coords=np.r_[coords, coords[held][:10]])
    assert moved.kriging["target1"]["fold_alpha"][0] == base.kriging["target1"]["fold_alpha"][0]
    assert moved.labels[-1] == base.labels[-1] == SELECTED
    for m, label in enumerate(moved.labels):
        np.testing.assert_allclose(moved.predictions[0, m, :60][held],
                                   base.predictions[0, m][held], rtol=1e-6, err_msg=label)
        shift = np.abs(moved.predictions[0, m, :60] - base.predictions[0, m])[~held]
        assert shift.max() > 0.1, label  # the decoys do move the folds trained on them
    assert moved.selection["target1"][0] == base.selection["target1"][0]


def test_inner_cv_fits_never_see_the_outer_or_inner_held_out_fold(spy):
    coords, _, y = field(n=60)
    folds = spatial_folds(coords, n_folds=4)
    ids = {FEATURES: np.arange(60.0)[:, None]}
    y[[4, 9]] = np.nan
    valid = np.isfinite(y)
    inner_scores(ids, y, folds, [MethodSpec("spy", FEATURES)])
    assert len(spy.calls) == 2 * 6  # each of the 6 pairs of folds predicts both folds
    for seen, batch in spy.calls:
        fold = folds[batch[0]]
        assert (folds[batch] == fold).all() and valid[batch].all()
        excluded = set(range(4)) - {int(folds[i]) for i in seen}
        assert len(excluded) == 2 and fold in excluded  # trained without 2 folds, one scored
        assert seen == set(np.flatnonzero(valid & np.isin(folds, sorted(set(range(4)) -
                                                                          excluded))).tolist())


def test_inner_scores_equal_a_hand_computed_inner_cv():
    coords, sets, y = field(n=80)
    folds = spatial_folds(coords, n_folds=4)
    specs = [MethodSpec("ridge"), MethodSpec("rf_pixels")]
    scores = inner_scores(sets, y, folds, specs, head_options=FAST)
    assert scores.shape == (4, 2)
    for k in range(4):
        for m, spec in enumerate(specs):
            per_fold = []
            for j in set(range(4)) - {k}:
                train, test = ~np.isin(folds, [k, j]), folds == j
                opts = {"rf": RF}
                head = make_head(spec, [sets[b].shape[1] for b in spec.blocks],
                                 options=opts).fit(sets[spec.blocks[0]][train], y[train])
                per_fold.append(regression_metrics(y[test], head.predict(
                    sets[spec.blocks[0]][test]))[0])
            assert scores[k, m] == pytest.approx(np.mean(per_fold), rel=1e-12)


def test_selected_row_is_the_stack_weighted_by_each_folds_inner_cv():
    coords, sets, y = field(n=60)
    folds = spatial_folds(coords, n_folds=3)
    y_pix = 5 + 2 * sets[PIXELS][:, 0] + 0.05 * np.random.default_rng(3).normal(size=60)
    Y = np.c_[y, y_pix]
    rows = ["ridge", "rf_pixels"]
    specs = [MethodSpec(r) for r in rows]
    cv = cross_validate(sets, Y, folds, rows, target_names=["mix", "pix"], head_options=FAST,
                        keep_models=True)
    out = nested_selection(cv, sets, rows, head_options=FAST)
    assert out.labels == rows + [SELECTED]
    assert out.methods[-1].blocks == (FEATURES, PIXELS)  # the union of the members' blocks
    row = [r for r in out.table() if r["method"] == SELECTED]
    assert [r["target"] for r in row] == ["mix", "pix"]
    X = np.hstack([sets[FEATURES], sets[PIXELS]])
    for t, target in enumerate(["mix", "pix"]):
        inner = inner_predictions(sets, Y[:, t], folds, specs, head_options=FAST)
        assert inner.shape == (3, 60, 2)
        for k in range(3):
            test = folds == k
            assert np.isnan(inner[k, test]).all() and np.isfinite(inner[k, ~test]).all()
            wk, _ = shrunk_weights(inner[k, ~test], Y[~test, t], folds[~test], [0, 1])
            expected = cv.predictions[t][:2][:, test].T @ wk
            np.testing.assert_allclose(out.oof(target, SELECTED)[test], expected, rtol=1e-12)
            # the fold model is the stack of the outer fold-k models with those weights
            stack = out.fold_models[(target, SELECTED)][k]
            assert stack.weight_map == pytest.approx(
                {rows[m]: wk[m] for m in range(2) if wk[m] > 0})
            np.testing.assert_allclose(stack.predict(X[test]), expected, rtol=1e-9)
        scores = inner_scores(sets, Y[:, t], folds, specs, predictions=inner)
        assert out.inner_best[target] == [rows[int(np.argmin(s))] for s in scores]
        # the mapped weights: the outer out-of-fold predictions of all points
        final, _ = shrunk_weights(cv.predictions[t, :2].T, Y[:, t], folds, [0, 1])
        assert out.stacks[target] == pytest.approx(
            {rows[m]: final[m] for m in range(2) if final[m] > 0})
    # the pixel-only target: rf_pixels carries (nearly) all of the weight
    assert out.stacks["pix"].get("rf_pixels", 0) > 0.9
    np.testing.assert_allclose(out.fold_metrics[:, :2], cv.fold_metrics)
    mean, _ = out.summary()
    assert np.isfinite(mean[:, 2]).all()
    # a stack is at least as good as its best member on the points it was weighted on
    for t in range(2):
        final = simplex_weights(cv.predictions[t, :2].T, Y[:, t])
        mix = cv.predictions[t, :2].T @ final
        assert np.mean((mix - Y[:, t]) ** 2) <= min(
            np.mean((cv.predictions[t, m] - Y[:, t]) ** 2) for m in range(2)) + 1e-12
    with pytest.raises(InputError, match="already has a 'selected' row"):
        nested_selection(out, sets, rows)


def test_candidates_and_choice_of_the_mapped_method():
    coords, sets, y = field(n=60)
    sets["compare"] = sets[FEATURES][:, :5]
    folds = spatial_folds(coords, n_folds=3)
    rows = method_specs("ridge") + method_specs("rf_pixels") + [MethodSpec("ridge", "compare")]
    cv = nested_selection(cross_validate(sets, y, folds, rows, head_options=FAST),
                          sets, ["ridge", "rf_pixels"], head_options=FAST)
    assert candidates(cv, FEATURES) == ["ridge", "rf_pixels"]  # no compared/selected row
    mean, _ = cv.summary()
    best = ["ridge", "rf_pixels"][int(np.argmin(mean[0, :2, 0]))]
    assert choose_best(cv, candidates(cv, FEATURES)) == {"target1": best}


# ----------------------------------------------------------------------------- map heads

def _model(sets, y, labels):
    targets = [f"t{i}" for i in range(len(labels))]
    model = {"targets": targets, "methods": {}, "heads": {}, "fold_heads": {}, "blocks": {},
             "backbone": {}, "aoa": None}
    for t, label in zip(targets, labels):
        spec = MethodSpec(label)
        head = make_head(spec, [sets[b].shape[1] for b in spec.blocks], options=FAST)
        head.fit(np.hstack([sets[b] for b in spec.blocks]), y)
        model["methods"][t] = label
        model["heads"][t] = weights_only_copy(head.state_dict())
        model["fold_heads"][t] = [model["heads"][t]] * 2
        model["blocks"][t] = list(spec.blocks)
    return model


def test_map_heads_feed_each_target_its_blocks():
    _, sets, y = field(n=80)
    model = _model(sets, y, ["rf_hybrid", "rf_pixels", "ridge"])
    mapper = MapHeads(model, uncertainty=True)
    assert mapper.needs == {PIXELS, FEATURES}
    rows = {PIXELS: sets[PIXELS][:20].astype(np.float32),
            FEATURES: sets[FEATURES][:20].astype(np.float32)}
    rows[PIXELS][3, 1] = np.nan  # a nodata pixel: that cell is nodata for every target
    out = mapper(rows)
    assert out["prediction"].shape == (3, 20) and out["prediction"].dtype == np.float32
    ok = np.arange(20) != 3
    for t, spec in enumerate([MethodSpec("rf_hybrid"), MethodSpec("rf_pixels"),
                              MethodSpec("ridge")]):
        X = np.hstack([rows[b][ok].astype(np.float64) for b in spec.blocks]) \
            if len(spec.blocks) > 1 else rows[spec.blocks[0]][ok]
        expected = load_regressor(model["heads"][f"t{t}"]).predict(X)
        np.testing.assert_allclose(out["prediction"][t, ok], expected, rtol=1e-6)
    assert (out["prediction"][:, 3] == PRED_NODATA).all()
    assert np.abs(out["uncertainty"][:, ok]).max() < 1e-6  # identical fold heads
    with pytest.raises(InputError, match="needs the pixels block"):
        mapper({FEATURES: rows[FEATURES]})
    # a model written before blocks existed maps FEATURES, given as a plain array
    old = _model(sets, y, ["ridge"])
    del old["blocks"]
    legacy = MapHeads(old)
    assert legacy.needs == {FEATURES}
    np.testing.assert_allclose(legacy(rows[FEATURES])["prediction"][0],
                               load_regressor(old["heads"]["t0"]).predict(rows[FEATURES]),
                               rtol=1e-6)


def test_fit_points_all_maps_the_chosen_method_with_pixels_and_features(tmp_path, tiny_ckpt,
                                                                       monkeypatch):
    from functools import partial

    import soilssl.core.soil as soil
    from conftest import write_raster
    from soilssl.core.backbone import load_backbone
    from soilssl.core.raster import TileSource
    from soilssl.core.soil import Points, fit_points, load_model, predict_map
    rng = np.random.default_rng(0)
    h, w = 64, 96
    img = np.clip(120 + rng.normal(0, 1, (3, h, w)) * np.linspace(5, 100, h)[:, None]
                  + np.linspace(0, 60, w)[None, None, :], 1, 255).astype(np.uint8)
    path = write_raster(tmp_path / "s.tif", img, nodata=0)
    # small heads in the CV and the nested selection (the refit for the map is full size)
    monkeypatch.setattr(soil, "cross_validate", partial(cross_validate, head_options=FAST))
    monkeypatch.setattr(soil, "nested_selection", partial(nested_selection, head_options=FAST))
    monkeypatch.setattr(soil, "baseline_spread", partial(soil.baseline_spread, head_options=FAST))
    with TileSource(path) as src:
        cols, rows = rng.uniform(4, 92, 36), rng.uniform(4, 60, 36)
        xs, ys = src.transform @ (cols, rows)
        pts = Points(xs, ys, src.crs.to_wkt(), (rows / 10 + cols / 20)[:, None], ["ph"])
        messages = []
        from soilssl.core.progress import Progress
        fit = fit_points(src, pts, load_backbone(tiny_ckpt, tile_size=32), method="all",
                         n_folds=3, model_path=str(tmp_path / "m.pth"),
                         progress=Progress(on_info=messages.append))
        labels = fit.cv.labels
        assert labels == ["rf_pixels", "rf_context", "mlp", "rf_features", "ridge",
                          "rf_hybrid", "gbm_hybrid", "selected"]
        # METHOD=all maps with the stack whose honest score is the row 'selected'
        assert fit.chosen["ph"] == "selected"
        # and measures how far rf_pixels moves by itself (4 more seeds), for the log
        assert len(fit.cv.spread["ph"]["scores"]) == 5
        assert sum(m.startswith("How far rf_pixels moves by itself") for m in messages) == 1
        assert len(fit.cv.selection["ph"]) == 3
        weights = fit.cv.stacks["ph"]
        assert set(weights) <= set(labels[:-1]) and sum(weights.values()) == pytest.approx(1)
        assert fit.methods["ph"].startswith("selected: ")
        assert all(label in fit.methods["ph"] for label in weights)
        model = load_model(str(tmp_path / "m.pth"))
        assert model["methods"] == fit.chosen and model["stacks"]["ph"] == weights
        assert "selected" in {r["method"] for r in model["cv_table"]}
        from soilssl.core.classes import load_head
        head = load_head(model["heads"]["ph"])
        assert head.weight_map == pytest.approx(weights)
        assert len(model["fold_heads"]["ph"]) == 3
        union = fit.cv.methods[-1].blocks
        assert model["blocks"]["ph"] == list(union)
        X = np.hstack([fit.sets[b] for b in union])
        members = sum(w * load_head(s).predict(X[:, c]) for w, s, c in zip(
            head.weights, model["heads"]["ph"]["members"], head.columns))
        np.testing.assert_allclose(head.predict(X), members, rtol=1e-9)
        predict_map(src, model, str(tmp_path / "stack.tif"), stride=32)
        with rasterio.open(tmp_path / "stack.tif") as ds:
            stacked = ds.read(1)
        assert stacked.shape == (2, 3) and np.isfinite(stacked).all() and \
            (stacked != PRED_NODATA).all()
        # force the hybrid: the map gets the pixel and the feature block
        for name, label in (("hyb", "rf_hybrid"), ("pix", "rf_pixels")):
            spec = fit.cv.methods[labels.index(label)]
            m = dict(model, methods={"ph": label}, blocks={"ph": list(spec.blocks)},
                     heads={"ph": fit.cv.fold_models[("ph", label)][0].state_dict()},
                     fold_heads={"ph": [h.state_dict()
                                        for h in fit.cv.fold_models[("ph", label)]]})
            predict_map(src, m, str(tmp_path / f"{name}.tif"), stride=32)
            with rasterio.open(tmp_path / f"{name}.tif") as ds:
                pred = ds.read(1)
            assert pred.shape == (2, 3) and (pred != PRED_NODATA).all()
            assert np.isfinite(pred).all() and pred.std() > 0


def test_rows_without_their_blocks_are_dropped_for_all_and_refused_alone():
    from soilssl.core.progress import Progress
    from soilssl.core.soil import _available
    sets = {PIXELS: np.zeros((4, 2)), FEATURES: np.zeros((4, 3))}
    messages = []
    kept = _available(method_specs("all"), sets, "all", Progress(on_info=messages.append))
    assert [s.label for s in kept] == ["rf_pixels", "mlp", "rf_features", "ridge",
                                       "rf_hybrid", "gbm_hybrid"]
    assert messages == ["Not run (no context block): rf_context."]
    with pytest.raises(InputError, match="METHOD rf_context needs the context covariates"):
        _available(method_specs("rf_context"), sets, "rf_context", Progress())
    assert _available(method_specs("rf_context"), dict(sets, context=np.zeros((4, 4))),
                      "rf_context", Progress()) == method_specs("rf_context")
