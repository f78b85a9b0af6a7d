"""Residual kriging of the stack (regression kriging): the field by hand, its share chosen
on left-out folds, no leakage in the nested CV, and the map adds it at the cells' centres."""
import io

import numpy as np
import pytest
import rasterio
import torch

from soilssl.core.cv import FEATURES, PIXELS, SELECTED, cross_validate, spatial_folds
from soilssl.core.errors import InputError
from soilssl.core.kriging import SHARES, ResidualKriging, choose_share, kriged_out_of_fold
from soilssl.core.selection import nested_selection

RF = {"n_estimators": 15, "search_estimators": 8, "min_samples_leaf": (1,), "n_jobs": 1}
FAST = {"rf": RF}


def smooth(xy):
    """A residual field with a range of a few hundred metres over a 2 km square."""
    return 3 * np.sin(xy[:, 0] / 300) + 2 * np.cos(xy[:, 1] / 400)


def test_field_is_simple_kriging_with_the_fitted_covariance_and_survives_its_state():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 2000, (120, 2))
    r = smooth(xy) + rng.normal(0, 0.3, 120)
    k = ResidualKriging.fit(xy, r, alpha=0.75)
    assert 0 < k.nugget < k.amplitude  # a structured field: most of the sill is spatial
    # by hand: C(h) = amplitude·exp(-h/range) (+ nugget on the diagonal), centred residuals
    x0 = np.array([[1000.0, 1000.0], [10.0, 1990.0], [2500.0, -300.0]])

    def cov(a, b):
        h = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
        return k.amplitude * np.exp(-h / k.length_scale)
    weights = np.linalg.solve(cov(xy, xy) + k.nugget * np.eye(120), r - r.mean())
    np.testing.assert_allclose(k.field(x0), cov(x0, xy) @ weights, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(k.predict(x0), 0.75 * k.field(x0))
    # it predicts the field: far better than the mean at new points
    new = rng.uniform(0, 2000, (200, 2))
    assert np.sqrt(np.mean((k.field(new) - (smooth(new) - r.mean())) ** 2)) < \
        0.4 * np.std(smooth(new))
    buf = io.BytesIO()
    torch.save(k.state_dict(), buf)
    buf.seek(0)
    back = ResidualKriging.from_state(torch.load(buf, weights_only=True))
    np.testing.assert_array_equal(back.predict(x0), k.predict(x0))
    with pytest.raises(InputError, match="at least 3 points"):
        ResidualKriging.fit(xy[:2], r[:2])
    with pytest.raises(InputError, match="another kind"):
        ResidualKriging.from_state(dict(k.state_dict(), nu=1.5))


def test_share_is_kept_for_a_spatial_field_and_zero_for_noise():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 2000, (150, 2))
    groups = spatial_folds(xy, n_folds=5)
    r = smooth(xy) + rng.normal(0, 0.3, 150)
    kriged = kriged_out_of_fold(xy, r, groups)
    for g in np.unique(groups):  # each group from the others only
        test = groups == g
        np.testing.assert_allclose(kriged[test],
                                   ResidualKriging.fit(xy[~test], r[~test]).field(xy[test]))
    alpha, losses = choose_share(xy, r, groups)
    assert alpha > 0 and losses.shape == (5, len(SHARES))
    assert losses[:, list(SHARES).index(alpha)].sum() < losses[:, 0].sum()
    noise_alpha, _ = choose_share(xy, rng.normal(0, 1, 150), groups)
    assert noise_alpha == 0.0


def _spatial_case(n=90, seed=0):
    """Pixels explain part of y; a smooth spatial residual that no block carries does the
    rest."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 2000, (n, 2))
    a = rng.normal(size=n)
    sets = {PIXELS: np.c_[a + 0.05 * rng.normal(size=n), rng.normal(size=n)],
            FEATURES: rng.normal(size=(n, 4))}
    y = 10 + 2 * a + smooth(xy) + 0.2 * rng.normal(size=n)
    return xy, sets, y


def test_nested_kriging_improves_the_stack_and_never_sees_the_held_out_fold():
    xy, sets, y = _spatial_case()
    folds = spatial_folds(xy, n_folds=3)
    rows = ["rf_pixels", "ridge"]
    cv = cross_validate(sets, y, folds, rows, head_options=FAST, keep_models=True)
    plain = nested_selection(cv, sets, rows, head_options=FAST)
    kriged = nested_selection(cv, sets, rows, head_options=FAST, coords=xy)
    assert plain.kriging is None
    info = kriged.kriging["target1"]
    assert len(info["fold_alpha"]) == 3 and max(info["fold_alpha"]) > 0
    assert info["field"] is not None and info["field"].alpha > 0
    from soilssl.core.soil import FitResult
    from soilssl.core.stacking import describe
    said = FitResult(kriged, None, folds, {"target1": SELECTED}, xy).methods["target1"]
    assert said == f"selected: {describe(kriged.stacks['target1'])} + {info['field'].describe()}"
    assert FitResult(plain, None, folds, {"target1": SELECTED}, xy).methods["target1"] == \
        f"selected: {describe(plain.stacks['target1'])}"
    m = kriged.labels.index(SELECTED)
    rmse = lambda p: np.sqrt(np.mean((p - y) ** 2))  # noqa: E731
    assert rmse(kriged.predictions[0, m]) < 0.9 * rmse(plain.predictions[0, m])
    # the folds whose share is 0 keep the stack's prediction exactly; the others add their
    # own field (kept for the fold models' spread on the map)
    for k, alpha in enumerate(info["fold_alpha"]):
        same = np.allclose(kriged.predictions[0, m, folds == k],
                           plain.predictions[0, m, folds == k])
        assert same == (alpha == 0)
        field = info["fold_fields"][k]
        assert (field is None) == (alpha == 0)
        if field is not None:
            assert field.alpha == alpha
            np.testing.assert_allclose(kriged.predictions[0, m, folds == k] -
                                       plain.predictions[0, m, folds == k],
                                       field.predict(xy[folds == k]), rtol=1e-9, atol=1e-12)
    # wild targets in fold 0 change nothing there: its field and share come from folds 1-2
    held = folds == 0
    wild = cv.y.copy()
    wild[held, 0] = wild[held, 0] * 100 - 500
    moved = nested_selection(type(cv)(**{**cv.__dict__, "y": wild}), sets, rows,
                             head_options=FAST, coords=xy)
    np.testing.assert_allclose(moved.predictions[0, m, held], kriged.predictions[0, m, held],
                               rtol=1e-9)
    assert moved.kriging["target1"]["fold_alpha"][0] == info["fold_alpha"][0]
    assert not np.allclose(moved.predictions[0, m, ~held], kriged.predictions[0, m, ~held])


def test_class_targets_are_not_kriged():
    xy, sets, y = _spatial_case(n=60)
    folds = spatial_folds(xy, n_folds=3)
    cls = (y > np.median(y)).astype(float)
    from soilssl.core.selection import class_inner
    cv = cross_validate(sets, cls, folds, ["rf_pixels", "rf_features"], head_options=FAST,
                        keep_models=True, kinds=["classification"],
                        classes={"target1": ["low", "high"]})
    out = nested_selection(cv, sets, ["rf_pixels", "rf_features"], head_options=FAST,
                           inner={"target1": class_inner(2)}, coords=xy)
    assert out.kriging == {}


def _noise_image(tmp_path, rng, height, width):
    """A 3-band uint8 noise image (nodata 0), written with conftest.write_raster."""
    from conftest import write_raster
    img = np.clip(128 + rng.normal(0, 30, (3, height, width)), 1, 255).astype(np.uint8)
    return write_raster(tmp_path / "s.tif", img, nodata=0)


def test_map_adds_the_share_of_the_field_at_each_cells_centre(tmp_path, tiny_ckpt):
    from soilssl.core.backbone import load_backbone
    from soilssl.core.raster import TileSource
    from soilssl.core.distributed import predict_job, run_sharded
    from soilssl.core.mapheads import PRED_NODATA, MapHeads
    from soilssl.core.soil import Points, fit_points, predict_map
    rng = np.random.default_rng(0)
    with TileSource(_noise_image(tmp_path, rng, 64, 96)) as src:
        cols, rows = rng.uniform(4, 92, 30), rng.uniform(4, 60, 30)
        xs, ys = src.transform @ (cols, rows)
        pts = Points(xs, ys, src.crs.to_wkt(), (rows / 10)[:, None], ["ph"])
        fit = fit_points(src, pts, load_backbone(tiny_ckpt, tile_size=32), method="ridge",
                         n_folds=3)
        field = ResidualKriging.fit(np.c_[xs, ys], rng.normal(size=30) + cols / 30,
                                    alpha=0.5)
        model = dict(fit.model, kriging={"ph": field.state_dict()})
        predict_map(src, fit.model, str(tmp_path / "plain.tif"), stride=16)
        predict_map(src, model, str(tmp_path / "kriged.tif"), stride=16)
        # the sharded map (scripts' multi-GPU path, one rank here) adds the same field
        torch.save(model, tmp_path / "m.pth")
        run_sharded(predict_job(src, model, str(tmp_path / "m.pth"), str(tmp_path / "d.tif"),
                                stride=16, device="cpu"), block_rows=1)
        with pytest.raises(InputError, match="coordinates"):
            MapHeads(model)({FEATURES: np.zeros((2, fit.sets[FEATURES].shape[1]))})
    with rasterio.open(tmp_path / "plain.tif") as a, rasterio.open(tmp_path / "kriged.tif") as b:
        plain, kriged, transform = a.read(1), b.read(1), b.transform
        assert a.transform == b.transform
    with rasterio.open(tmp_path / "d.tif") as d:
        assert d.transform == transform
        np.testing.assert_allclose(d.read(1), kriged, rtol=1e-5, atol=1e-5)
    ok = plain != PRED_NODATA
    assert ok.sum() > 10 and ((kriged != PRED_NODATA) == ok).all()
    r, c = np.nonzero(ok)
    centres = np.column_stack(transform @ (c + 0.5, r + 0.5))
    np.testing.assert_allclose(kriged[ok] - plain[ok], field.predict(centres), atol=1e-4)
    assert np.abs(field.predict(centres)).max() > 0.1


def test_the_fold_models_spread_adds_each_folds_own_field():
    """With kriged fold stacks, the uncertainty map is the std over folds of (fold model +
    its fold's field), at each cell's centre; folds without a field add nothing."""
    from soilssl.core.heads import make_regressor
    from soilssl.core.mapheads import XY, MapHeads
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(60, 3)), rng.normal(size=60)
    folds = [make_regressor("ridge").fit(X[i::3], y[i::3]) for i in range(3)]
    head = make_regressor("ridge").fit(X, y)
    pts = rng.uniform(0, 2000, (40, 2))
    fields = [ResidualKriging.fit(pts, smooth(pts), alpha=0.5), None,
              ResidualKriging.fit(pts, -smooth(pts), alpha=1.0)]
    model = {"targets": ["ph"], "methods": {"ph": "ridge"}, "backbone": {},
             "heads": {"ph": head.state_dict()},
             "fold_heads": {"ph": [f.state_dict() for f in folds]},
             "fold_kriging": {"ph": [None if f is None else dict(f.state_dict(), crs="EPSG:1")
                                     for f in fields]}}
    cells, xy = rng.normal(size=(25, 3)), rng.uniform(0, 2000, (25, 2))
    got = MapHeads(model, uncertainty=True)({FEATURES: cells, XY: xy})
    want = np.std([folds[0].predict(cells) + fields[0].predict(xy), folds[1].predict(cells),
                   folds[2].predict(cells) + fields[2].predict(xy)], axis=0)
    np.testing.assert_allclose(got["uncertainty"][0], want, rtol=1e-5)
    plain = np.std([f.predict(cells) for f in folds], axis=0)
    assert np.abs(got["uncertainty"][0] - plain).max() > 0.1
    # the prediction itself is the head's: the mapped stack keeps no field here
    np.testing.assert_allclose(got["prediction"][0], head.predict(cells), rtol=1e-5)
    with pytest.raises(InputError, match="coordinates"):
        MapHeads(model, uncertainty=True)({FEATURES: cells})
    # without the uncertainty map the fold fields are not read at all
    assert MapHeads(model).fold_kriging == {}


def test_map_rows_give_the_cells_centres_in_the_crs_the_points_had(tmp_path):
    """The field lives in the fitted raster's CRS: a raster in another CRS is mapped with its
    cells' centres reprojected there."""
    from types import SimpleNamespace

    from rasterio.warp import transform as warp

    from conftest import write_raster
    from soilssl.core.raster import TileSource
    from soilssl.core.mapheads import XY, row_blocks
    path = write_raster(tmp_path / "s.tif", np.full((3, 8, 12), 100, np.uint8))  # EPSG:32637
    field = ResidualKriging(np.zeros((3, 2)), np.zeros(3), 1.0, 1.0, 0.1)
    with TileSource(path) as src:
        rows = SimpleNamespace(transform=lambda: src.transform, width=src.width,
                               height=src.height, source=src)
        mapper = SimpleNamespace(kriging={"ph": field})
        centres = np.column_stack(src.transform @ (np.arange(12) + 0.5, np.full(12, 3.5)))
        for crs, want in ((src.crs.to_wkt(), centres),
                          ("EPSG:4326", np.column_stack(warp(src.crs, "EPSG:4326", *centres.T)))):
            # the model's CRS record, or (models of the first kriging version) the field's
            for model in ({"kriging": {"ph": field.state_dict()}, "crs": crs, "tile_size": 32},
                          {"kriging": {"ph": dict(field.state_dict(), crs=crs)},
                           "tile_size": 32}):
                got = row_blocks(None, model, mapper, rows)(3)[XY]
                np.testing.assert_allclose(got, want, rtol=1e-12)
        assert abs(want[0, 0]) < 180  # degrees: the reprojection happened
        assert row_blocks(None, model, SimpleNamespace(kriging={}), rows) is None


def test_fit_points_keeps_the_fold_fields_and_the_uncertainty_map_uses_them(
        tmp_path, tiny_ckpt, monkeypatch):
    import soilssl.core.soil as soil
    from soilssl.core.backbone import load_backbone
    from soilssl.core.cv import MethodSpec
    from soilssl.core.raster import TileSource
    from soilssl.core.soil import Points, fit_points, load_model, predict_map
    monkeypatch.setattr(soil, "method_specs",
                        lambda method, compare=False: [MethodSpec("rf_pixels"),
                                                       MethodSpec("ridge")])
    rng = np.random.default_rng(2)
    with TileSource(_noise_image(tmp_path, rng, 96, 96)) as src:
        cols, rows = rng.uniform(4, 92, 90), rng.uniform(4, 92, 90)
        xs, ys = src.transform @ (cols, rows)
        field = 3 * np.sin(cols / 12) + 2 * np.cos(rows / 15)  # pure spatial structure
        pts = Points(xs, ys, src.crs.to_wkt(), (field + 0.2 * rng.normal(size=90))[:, None],
                     ["ph"])
        fit_points(src, pts, load_backbone(tiny_ckpt, tile_size=32), method="all",
                   n_folds=4, model_path=str(tmp_path / "m.pth"))
        model = load_model(str(tmp_path / "m.pth"))
        folds = model["fold_kriging"]["ph"]
        assert len(folds) == 4 == len(model["fold_heads"]["ph"]) and any(folds)
        assert "ph" in model["kriging"]
        assert rasterio.crs.CRS.from_wkt(model["crs"]) == src.crs
        outs = {}
        for name, m in (("with", model), ("without", dict(model, fold_kriging={}))):
            predict_map(src, m, str(tmp_path / f"p_{name}.tif"), stride=8,
                        uncertainty=str(tmp_path / f"u_{name}.tif"))
            with rasterio.open(tmp_path / f"p_{name}.tif") as p, \
                    rasterio.open(tmp_path / f"u_{name}.tif") as u:
                outs[name] = p.read(1), u.read(1)
    np.testing.assert_array_equal(outs["with"][0], outs["without"][0])
    ok = outs["with"][1] != -9999
    assert ok.sum() > 50
    assert np.abs(outs["with"][1][ok] - outs["without"][1][ok]).max() > 0.05
