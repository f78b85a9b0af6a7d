"""fit_points / predict_map: skipping and counting points, model file, alignment, AOA."""
import os

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from conftest import write_raster
from soilssl.core.backbone import load_backbone
from soilssl.core.errors import InputError
from soilssl.core.progress import Progress
from soilssl.core.raster import TileSource
from soilssl.core.soil import PRED_NODATA, Points, fit_points, load_model, predict_map


@pytest.fixture
def scene(tmp_path):
    """Left 2/3: texture whose contrast follows y; right 1/3: a flat bright area."""
    rng = np.random.default_rng(0)
    h, w = 128, 192
    contrast = np.linspace(5, 120, h)[:, None]
    img = 128 + rng.normal(0, 1, (3, h, w)) * contrast
    img[:, :, 128:] = 250
    path = write_raster(tmp_path / "scene.tif", np.clip(img, 1, 255).astype(np.uint8), nodata=0)
    return path


@pytest.fixture
def vit(tiny_ckpt):
    return load_backbone(tiny_ckpt, tile_size=32)


def _points(src, n=48, seed=0, outside=0):
    rng = np.random.default_rng(seed)
    cols = rng.uniform(8, 120, n)
    rows = rng.uniform(8, 120, n)
    y = np.column_stack([rows / 10 + rng.normal(0, 0.1, n), rows])
    if outside:
        cols[:outside] = -50
    xs, ys = src.transform @ (cols, rows)
    return Points(xs, ys, src.crs.to_wkt(), y, ["ph", "si"])


def test_fit_points_counts_skips_and_writes_loadable_model(scene, vit, tmp_path):
    messages = []
    with TileSource(scene) as src:
        pts = _points(src, n=100, outside=3)
        pts.values[5, 1] = np.nan  # a NULL
        fit = fit_points(src, pts, vit, method="ridge", n_folds=4, seed=1,
                         model_path=str(tmp_path / "m.pth"), cache=str(tmp_path / "cache"),
                         progress=Progress(on_info=messages.append))
    assert fit.skipped["outside"] == 3 and fit.keep.sum() == 97
    assert any("3 of 100 points are outside" in m for m in messages)
    assert fit.cv.n_skipped.tolist() == [0, 1]
    assert fit.chosen == {"ph": "ridge", "si": "ridge"}
    model = torch.load(tmp_path / "m.pth", weights_only=True)
    assert model["targets"] == ["ph", "si"] and len(model["fold_heads"]["ph"]) == 4
    assert model["backbone"]["sha256"] == vit.checksum and model["tile_size"] == 32
    # texture contrast follows ph: the ViT's ridge probe does better than the mean
    row = [r for r in fit.cv.table() if r["target"] == "ph"][0]
    assert row["r2_pooled"] > 0.3


def test_all_points_outside_and_too_few_points(scene, vit):
    with TileSource(scene) as src:
        pts = _points(src, n=10, outside=10)
        with pytest.raises(InputError, match="All 10 points are outside"):
            fit_points(src, pts, vit, method="ridge")
        with pytest.raises(InputError, match="10 usable points for 6 folds: at least 12"):
            fit_points(src, _points(src, n=10), vit, method="ridge")


def test_point_features_are_cached(scene, vit, tmp_path, monkeypatch):
    import soilssl.core.soil as soil
    with TileSource(scene) as src:
        pts = _points(src)
        a = fit_points(src, pts, vit, method="ridge", n_folds=3, cache=str(tmp_path / "c"))

        def boom(*args, **kwargs):
            raise AssertionError("features recomputed")
        monkeypatch.setattr(soil, "point_features", boom)
        b = fit_points(src, pts, vit, method="ridge", n_folds=3, cache=str(tmp_path / "c"))
    np.testing.assert_array_equal(a.cv.predictions, b.cv.predictions)


def test_predict_map_alignment_uncertainty_and_aoa(scene, vit, tmp_path, tiny_ckpt):
    with TileSource(scene) as src:
        fit_points(src, _points(src, n=60), vit, method="ridge", n_folds=3,
                         model_path=str(tmp_path / "m.pth"))
        model = load_model(str(tmp_path / "m.pth"))
        s = predict_map(src, model, str(tmp_path / "p.tif"), str(tmp_path / "u.tif"),
                        str(tmp_path / "a.tif"), stride=16)
        t, src_bounds = src.transform, src.bounds
    with rasterio.open(tmp_path / "p.tif") as p, rasterio.open(tmp_path / "u.tif") as u, \
            rasterio.open(tmp_path / "a.tif") as a:
        assert (p.width, p.height, p.count) == (12, 8, 2) and p.dtypes[0] == "float32"
        # STRIDE 16 < TILE_SIZE 32: pixels of 16 input pixels from the input's origin, the
        # map covering exactly the input's extent
        assert p.transform == from_origin(t.c, t.f, 24.0, 24.0)
        assert p.bounds == src_bounds
        assert u.transform == p.transform == a.transform
        pred, unc, inside = p.read(1), u.read(1), a.read(1)
    assert np.isfinite(pred).all() and (unc > 0).any()
    # the flat bright third (never sampled) is outside the area of applicability
    assert (inside[:, 9:] == 0).all() and inside[:, :6].mean() > 0.8
    assert s["inside_aoa_targets"][model["targets"][0]] == int(inside.sum())
    # identical fold heads -> zero uncertainty everywhere
    model["fold_heads"] = {k: [model["heads"][k]] * 3 for k in model["heads"]}
    with TileSource(scene) as src:
        predict_map(src, model, str(tmp_path / "p2.tif"), str(tmp_path / "u2.tif"), stride=32)
    with rasterio.open(tmp_path / "u2.tif") as u:
        assert np.abs(u.read()).max() < 1e-6


def test_predict_map_maps_rf_pixels_and_refuses_band_mismatch(scene, vit, tmp_path):
    from soilssl.core.heads import load_regressor
    with TileSource(scene) as src:
        fit_points(src, _points(src), vit, method="rf_pixels", n_folds=3,
                   model_path=str(tmp_path / "m.pth"))
        old = load_model(str(tmp_path / "m.pth"))
        del old["pixel_names"]  # a model made before pixel covariates were recorded
        with pytest.raises(InputError, match="rf_pixels, a pixel baseline"):
            predict_map(src, old, str(tmp_path / "p.tif"))
        model = load_model(str(tmp_path / "m.pth"))
        assert model["blocks"] == {"ph": ["pixels"], "si": ["pixels"]}
        predict_map(src, model, str(tmp_path / "p.tif"), str(tmp_path / "u.tif"), stride=32)
    with rasterio.open(tmp_path / "p.tif") as p, rasterio.open(scene) as ds:
        pred, img, t = p.read(1), ds.read().astype(np.float32), p.transform
        assert pred.shape == (4, 6)
        # each cell: the pixel-value head at the input pixel under the cell's centre
        rows, cols = np.mgrid[0:4, 0:6]
        xs, ys = t @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
        c, r = ~ds.transform @ (np.asarray(xs), np.asarray(ys))
        pix = img[:, np.floor(r).astype(int), np.floor(c).astype(int)].T
    expected = load_regressor(model["heads"]["ph"]).predict(pix).reshape(4, 6)
    np.testing.assert_allclose(pred, expected, rtol=1e-6)
    assert pred[:, 4:].std() < 1e-6  # the flat bright third: one pixel value
    with TileSource(scene, bands=[1, 2]) as src:
        with pytest.raises(InputError, match=r"fitted on bands \[1, 2, 3\]"):
            predict_map(src, load_model(str(tmp_path / "m.pth")), str(tmp_path / "p2.tif"))
    assert not os.path.exists(tmp_path / "p2.tif")


def test_predict_map_one_and_three_targets_with_an_empty_row(scene, vit, tmp_path):
    """A grid row without any valid tile, AOA on, 1 and 3 targets (the AOA raster has 2
    bands per target: inside and DI)."""
    with rasterio.open(scene) as ds:
        img, profile = ds.read(), ds.profile
    img[:, 32:64] = 0  # nodata: tile row 1 (of 4) has no data
    path = str(tmp_path / "holes.tif")
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(img)
    rng = np.random.default_rng(0)
    with TileSource(path) as src:
        cols = rng.uniform(8, 120, 60)
        rows = np.r_[rng.uniform(8, 28, 30), rng.uniform(70, 120, 30)]
        xs, ys = src.transform @ (cols, rows)
        y = np.column_stack([rows / 10 + rng.normal(0, 0.1, 60), rows, cols])
        fit_points(src, Points(xs, ys, src.crs.to_wkt(), y, ["ph", "si", "cl"]), vit,
                   method="ridge", n_folds=3, model_path=str(tmp_path / "m3.pth"))
        three = load_model(str(tmp_path / "m3.pth"))
        one = dict(three, targets=["si"], **{k: {"si": three[k]["si"]}
                                             for k in ("methods", "heads", "fold_heads",
                                                       "aoa_targets")})
        for name, model in (("one", one), ("three", three)):
            out = {k: str(tmp_path / f"{name}_{k}.tif") for k in ("p", "u", "a")}
            s = predict_map(src, model, out["p"], out["u"], out["a"])
            n = len(model["targets"])
            with rasterio.open(out["p"]) as p, rasterio.open(out["u"]) as u, \
                    rasterio.open(out["a"]) as a:
                assert (p.count, u.count, a.count) == (n, n, 2 * n)
                assert list(p.descriptions) == model["targets"]
                assert list(a.descriptions[::2]) == [f"{t}: inside AOA (1/0)"
                                                     for t in model["targets"]]
                pred, unc, aoa = p.read(), u.read(), a.read()
            for arr in (pred, unc, aoa):
                assert (arr[:, 1] == PRED_NODATA).all()  # the empty row stays nodata
                assert (arr[:, [0, 2, 3]] != PRED_NODATA).all()
            assert set(np.unique(aoa[::2][:, [0, 2, 3]])) <= {0.0, 1.0}
            assert (aoa[1::2][:, [0, 2, 3]] >= 0).all()
            assert s["inside_aoa"] == int((aoa[::2] == 1).all(axis=0).sum())
            assert s["inside_aoa_targets"]["si"] == int((aoa[2 * model["targets"].index("si")]
                                                         == 1).sum())
        # the same predictions for "si" whatever the other targets
        with rasterio.open(tmp_path / "one_p.tif") as a, \
                rasterio.open(tmp_path / "three_p.tif") as b:
            np.testing.assert_array_equal(a.read(1), b.read(2))


def test_predict_map_aoa_without_uncertainty_and_bad_outputs(scene, vit, tmp_path):
    with TileSource(scene) as src:
        fit_points(src, _points(src, n=40), vit, method="ridge", n_folds=3,
                   model_path=str(tmp_path / "m.pth"))
        model = load_model(str(tmp_path / "m.pth"))
        predict_map(src, model, str(tmp_path / "p.tif"), aoa=str(tmp_path / "a.tif"))
        with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "p.tif") as p:
            assert a.count == 4 and p.count == 2
            assert set(np.unique(a.read(1))) <= {0.0, 1.0}
            inside, di = a.read(1), a.read(2)
        # the local point density band (CAST's LPD): 0 outside the AOA, >= 1 inside
        predict_map(src, model, str(tmp_path / "p.tif"), aoa=str(tmp_path / "a.tif"), lpd=True)
        with rasterio.open(tmp_path / "a.tif") as a:
            t = model["targets"][0]
            assert a.count == 6 and a.descriptions[:3] == (
                f"{t}: inside AOA (1/0)", f"{t}: dissimilarity index", f"{t}: local point density")
            np.testing.assert_array_equal(a.read(1), inside)
            np.testing.assert_allclose(a.read(2), di, rtol=1e-6)
            lpd = a.read(3)
            assert (lpd[inside == 0] == 0).all() and (lpd[inside == 1] >= 1).all()
        # a model without AOA state: refused before anything is written
        model["aoa"], model["aoa_targets"] = None, None
        with pytest.raises(InputError, match="area-of-applicability"):
            predict_map(src, model, str(tmp_path / "p2.tif"), str(tmp_path / "u2.tif"),
                        str(tmp_path / "a2.tif"))
    assert sorted(os.listdir(tmp_path)) == sorted(["a.tif", "p.tif", "m.pth", "tiny.pth",
                                                   "scene.tif"])
