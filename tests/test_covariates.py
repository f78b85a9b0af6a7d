"""Pixel covariates (core/covariates.py): every INPUT band plus covariate rasters in any CRS
and resolution, bilinear / nearest + one-hot, the CONTEXT window stats, model records and
moved files, and fitpoints -> predictmap with COVARIATES in QGIS."""
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from conftest import write_raster
from soilssl.core.backbone import load_backbone
from soilssl.core.covariates import Covariate, PixelStack, open_covariates
from soilssl.core.cv import CONTEXT, PIXELS
from soilssl.core.errors import BackboneError, InputError
from soilssl.core.raster import TileSource
from soilssl.core.soil import Points, fit_points, load_model, predict_map

ORIGIN = (500000.0, 2900000.0)  # conftest.write_raster's default, EPSG:32637, 1.5 m pixels


@pytest.fixture
def image(tmp_path):
    """A 5-band uint8 image, 64 x 64 px, nodata 0 in a 6 x 6 corner."""
    rng = np.random.default_rng(3)
    a = rng.integers(1, 255, (5, 64, 64)).astype(np.uint8)
    a[:, :6, :6] = 0
    return write_raster(tmp_path / "img.tif", a, nodata=0)


def _cover(tmp_path, name, crs, res, data_fn, dtype="float32", nodata=None, bands=1):
    """A raster in ``crs`` at ``res`` covering the image (64 px of 1.5 m) with a margin."""
    b = transform_bounds("EPSG:32637", crs, ORIGIN[0], ORIGIN[1] - 96, ORIGIN[0] + 96,
                         ORIGIN[1])
    x0, y1 = b[0] - 3 * res, b[3] + 3 * res
    w, h = int((b[2] - x0) / res) + 4, int((y1 - b[1]) / res) + 4
    data = np.stack([data_fn(h, w, i) for i in range(bands)])
    return write_raster(tmp_path / name, data, transform=from_origin(x0, y1, res, res),
                        crs=crs, nodata=nodata, dtype=dtype)


def _bilinear(path, x, y, crs="EPSG:32637"):
    """Hand-computed bilinear value at map point (x, y): the 4 pixel centres around it."""
    with rasterio.open(path) as ds:
        (px,), (py,) = warp_transform(crs, ds.crs, [x], [y])
        c, r = ~ds.transform @ (px, py)
        c, r = c - 0.5, r - 0.5
        c0, r0 = int(np.floor(c)), int(np.floor(r))
        v = ds.read(1, window=Window(c0, r0, 2, 2)).astype(float)
    fc, fr = c - c0, r - r0
    return (v[0, 0] * (1 - fc) * (1 - fr) + v[0, 1] * fc * (1 - fr) +
            v[1, 0] * (1 - fc) * fr + v[1, 1] * fc * fr)


def _nearest(path, x, y, crs="EPSG:32637"):
    with rasterio.open(path) as ds:
        (px,), (py,) = warp_transform(crs, ds.crs, [x], [y])
        r, c = ds.index(px, py)
        return float(ds.read(1, window=Window(c, r, 1, 1))[0, 0])


def test_continuous_covariate_in_another_crs_and_resolution_is_bilinear(image, tmp_path):
    rng = np.random.default_rng(0)
    elev = _cover(tmp_path, "elev.tif", "EPSG:3857", 5.0,
                  lambda h, w, i: rng.uniform(100, 900, (h, w)))
    cols = np.array([10.2, 33.7, 50.5, 61.1, 20.9])
    rows = np.array([12.4, 40.1, 7.8, 60.6, 55.3])
    with TileSource(image) as src, PixelStack(src, open_covariates([elev])) as stack:
        raw = stack.sample(cols, rows)
        assert stack.raw_names == [f"img_b{b}" for b in range(1, 6)] + ["elev"]
        xs, ys = src.transform @ (np.floor(cols) + 0.5, np.floor(rows) + 0.5)
    want = [_bilinear(elev, x, y) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(raw[:, 5], want, rtol=1e-4)
    with rasterio.open(image) as ds:  # every INPUT band at the point's pixel
        img = ds.read()
    np.testing.assert_array_equal(raw[:, :5], img[:, rows.astype(int), cols.astype(int)].T)


def test_categorical_covariate_is_nearest_and_one_hot(image, tmp_path):
    rng = np.random.default_rng(1)
    soil = _cover(tmp_path, "soil.tif", "EPSG:4326", 4e-5,
                  lambda h, w, i: rng.choice([3, 7, 9], (h, w)), dtype="int16")
    rng2 = np.random.default_rng(2)
    pts_c, pts_r = rng2.uniform(6, 64, 30), rng2.uniform(6, 64, 30)
    with TileSource(image) as src:
        stack = PixelStack(src, open_covariates([], [soil]))
        raw = stack.sample(pts_c, pts_r)
        xs, ys = src.transform @ (np.floor(pts_c) + 0.5, np.floor(pts_r) + 0.5)
        want = [_nearest(soil, x, y) for x, y in zip(xs, ys)]
        np.testing.assert_array_equal(raw[:, 5], want)
        stack.fit_categories(raw[:20])  # categories: those found at the (fitting) points
        cats = sorted(set(want[:20]))
        assert stack.pixel_names == [f"img_b{b}" for b in range(1, 6)] + \
            [f"soil={int(c)}" for c in cats]
        pix = stack.encode(raw)
        hot = pix[:, 5:]
        np.testing.assert_array_equal(hot, (raw[:, 5:6] == np.array(cats)[None]).astype(float))
        # a category unknown at fit time, or no data, gives all zeros; a point on a
        # categorical nodata pixel stays valid, on a continuous one not
        odd = raw[:3].copy()
        odd[0, 5], odd[1, 5], odd[2, 0] = 42, np.nan, np.nan
        enc = stack.encode(odd)
        assert (enc[:2, 5:] == 0).all() and np.isnan(enc[2, 0]) and (enc[2, 5:].sum() == 1)
        assert stack.valid(odd).tolist() == [True, True, False]
        # the record keeps the categories, resampling and checksum
        rec = stack.record()["covariates"][0]
        assert rec["categorical"] and rec["resampling"] == "nearest"
        assert rec["categories"] == [[float(c) for c in cats]] and len(rec["sha256"]) == 64
        assert stack.context_names == [f"img_b{b} mean" for b in range(1, 6)] + \
            [f"img_b{b} std" for b in range(1, 6)]  # no stats of a categorical band
        stack.close()


def test_context_is_the_window_mean_and_std_on_points_and_on_the_map(image, tmp_path):
    rng = np.random.default_rng(4)
    elev = _cover(tmp_path, "elev.tif", "EPSG:32637", 6.0,
                  lambda h, w, i: rng.uniform(0, 50, (h, w)), nodata=-1.0)
    with rasterio.open(elev, "r+") as ds:  # a nodata hole in the covariate
        a = ds.read(1)
        a[5:8, 5:8] = -1
        ds.write(a, 1)
    tile = 16
    with TileSource(image) as src, PixelStack(src, open_covariates([elev])) as stack:
        cols, rows = np.array([3.0, 30.5, 62.0, 20.0]), np.array([2.0, 31.2, 40.0, 20.0])
        ctx = stack.context(cols, rows, tile)
        assert ctx.shape == (4, 12)
        for i, (c, r) in enumerate(zip(cols, rows)):
            win = Window(int(c) - tile // 2, int(r) - tile // 2, tile, tile)
            arr = stack.read(win)  # NaN: nodata corner, padding, covariate hole
            np.testing.assert_allclose(ctx[i, :6], np.nanmean(arr, axis=(1, 2)), rtol=1e-5)
            np.testing.assert_allclose(ctx[i, 6:], np.nanstd(arr, axis=(1, 2)), rtol=1e-4,
                                       atol=1e-4)
        assert np.isnan(stack.read(Window(0, 0, 64, 64))[5]).any()  # the hole is there
        # the map's blocks at STRIDE 8 equal the points' at each output pixel's centre
        mb = stack.map_blocks(8, 8, src.transform @ src.transform.scale(8), tile)
        for row in (0, 3, 7):
            blocks = mb(row)
            assert blocks[PIXELS].shape == (8, 6) and blocks[CONTEXT].shape == (8, 12)
            centre_c, centre_r = np.arange(8) * 8 + 4, np.full(8, row * 8 + 4)
            np.testing.assert_allclose(blocks[CONTEXT], stack.context(centre_c, centre_r, tile),
                                       rtol=1e-4, atol=1e-3)
            np.testing.assert_array_equal(blocks[PIXELS],
                                          stack.encode(stack.sample(centre_c, centre_r)))


@pytest.fixture
def vit(tiny_ckpt):
    return load_backbone(tiny_ckpt, tile_size=32)


def _points(src, n=30, seed=0):
    rng = np.random.default_rng(seed)
    cols, rows = rng.uniform(8, 63, n), rng.uniform(8, 63, n)
    xs, ys = src.transform @ (cols, rows)
    return Points(xs, ys, src.crs.to_wkt(), (rows / 8 + rng.normal(0, 0.1, n))[:, None],
                  ["ph"])


def test_model_with_covariates_maps_and_finds_moved_files(image, tmp_path, vit):
    rng = np.random.default_rng(5)
    elev = _cover(tmp_path, "elev.tif", "EPSG:3857", 5.0,
                  lambda h, w, i: np.linspace(0, 80, h)[:, None] + rng.normal(0, 1, (h, w)))
    soil = _cover(tmp_path, "soil.tif", "EPSG:32637", 9.0,
                  lambda h, w, i: rng.choice([1, 2], (h, w)), dtype="uint8")
    with TileSource(image, bands=[1, 2, 3]) as src:
        fit = fit_points(src, _points(src), vit, method="rf_pixels", n_folds=3,
                         covariates=open_covariates([elev], [soil]),
                         model_path=str(tmp_path / "m.pth"))
        model = load_model(str(tmp_path / "m.pth"))
        assert model["pixel_names"] == [f"img_b{b}" for b in range(1, 6)] + \
            ["elev", "soil=1", "soil=2"]
        assert [c["path"] for c in model["covariates"]] == [elev, soil]
        assert model["pixel_input"] == {"bands": [1, 2, 3, 4, 5], "dem": False}
        assert model["blocks"] == {"ph": [PIXELS]} and fit.chosen == {"ph": "rf_pixels"}
        predict_map(src, model, str(tmp_path / "p.tif"), stride=8)
        with rasterio.open(tmp_path / "p.tif") as ds:
            first = ds.read(1, masked=True)
        assert first.shape == (8, 8) and first.count() > 40
        # the covariates move: a clear message; replacements in the recorded order work
        moved = tmp_path / "moved"
        moved.mkdir()
        for p in (elev, soil):
            shutil.move(p, moved / os.path.basename(p))
        with pytest.raises(InputError, match=r"covariate '.*elev.tif' is not found.*COVARIATES"):
            predict_map(src, model, str(tmp_path / "p2.tif"), stride=8)
        new = [str(moved / "elev.tif"), str(moved / "soil.tif")]
        predict_map(src, model, str(tmp_path / "p2.tif"), stride=8, covariates=new)
        with rasterio.open(tmp_path / "p2.tif") as ds:
            np.testing.assert_array_equal(ds.read(1, masked=True), first)
        # the sharded command line (one process here) maps the same with --covariates
        from soilssl.core.distributed import main
        assert main(["predict", "--input", image, "--model", str(tmp_path / "m.pth"),
                     "--output", str(tmp_path / "d.tif"), "--stride", "8", "--device", "cpu",
                     "--workers", "0", "--covariates", ";".join(new)]) == 0
        with rasterio.open(tmp_path / "d.tif") as ds:
            np.testing.assert_array_equal(ds.read(1, masked=True), first)
        # a replacement with another band count is refused, naming both
        two = write_raster(tmp_path / "two.tif", np.ones((2, 20, 20), np.float32))
        with pytest.raises(InputError, match=r"'.*two.tif' has 2 band\(s\) but the model's "
                                             r"covariate '.*elev.tif' it replaces has 1"):
            predict_map(src, model, str(tmp_path / "p3.tif"), stride=8,
                        covariates=[two, new[1]])
        with pytest.raises(InputError, match="gives 1 raster.*fitted with 2 covariate"):
            predict_map(src, model, str(tmp_path / "p3.tif"), stride=8, covariates=new[:1])
    assert not os.path.exists(tmp_path / "p3.tif")


def test_fit_points_gives_the_pixels_and_context_sets(image, tmp_path, vit, monkeypatch):
    """fit_points hands cross_validate PIXELS (every INPUT band, not only BANDS, plus the
    covariates) and, when a method row uses it, CONTEXT: the same values as the stack."""
    import soilssl.core.soil as soil
    with rasterio.open(image, "r+") as ds:  # band 5 is an alpha band: not a covariate
        ds.colorinterp = [ds.colorinterp[0]] * 4 + [rasterio.enums.ColorInterp.alpha]
    rng = np.random.default_rng(7)
    elev = _cover(tmp_path, "elev.tif", "EPSG:3857", 5.0,
                  lambda h, w, i: rng.uniform(0, 9, (h, w)))
    # a row reading the context (as rf_context does)
    spec = SimpleNamespace(method="rf_pixels", features=PIXELS, label="rf_context",
                           blocks=(PIXELS, CONTEXT))
    monkeypatch.setattr(soil, "method_specs", lambda method: [spec])
    seen = {}

    class Stop(Exception):
        pass

    def spy(sets, y, folds, specs, **kw):
        seen.update(sets)
        raise Stop

    monkeypatch.setattr(soil, "cross_validate", spy)
    with TileSource(image, bands=[1, 2, 3]) as src:
        pts = _points(src, n=12)
        with pytest.raises(Stop):
            fit_points(src, pts, vit, method="rf_pixels", n_folds=3, covariates=[elev])
        cols, rows = src.points_to_pixels(pts.xs, pts.ys)
        with PixelStack(src, open_covariates([elev])) as stack:
            assert stack.raw_names == ["img_b1", "img_b2", "img_b3", "img_b4", "elev"]
            np.testing.assert_array_equal(seen[PIXELS], stack.encode(stack.sample(cols, rows)))
            np.testing.assert_allclose(seen[CONTEXT], stack.context(cols, rows, 32), rtol=1e-6)
    assert seen[CONTEXT].shape == (12, 10) and np.isfinite(seen[CONTEXT]).all()


def test_covariate_errors(image, tmp_path):
    far = write_raster(tmp_path / "far.tif", np.ones((10, 10), np.float32),
                       transform=from_origin(1000, 1000, 1, 1))
    with TileSource(image) as src:
        with pytest.raises(InputError, match="does not overlap INPUT"):
            PixelStack(src, open_covariates([far]))
    with pytest.raises(InputError, match="is not found"):
        Covariate.open(str(tmp_path / "nope.tif"))
    two = write_raster(tmp_path / "terrain.tif", np.ones((2, 4, 4), np.float32))
    with rasterio.open(two, "r+") as ds:
        ds.set_band_description(1, "altitude")
    assert Covariate.open(two).names == ["altitude", "terrain_b2"]  # descriptions name bands
    with pytest.raises(InputError, match="has no CRS"):
        Covariate.open(write_raster(tmp_path / "nocrs.tif", np.ones((4, 4), np.float32),
                                    crs=None))


def test_fitpoints_and_predictmap_with_covariates_in_qgis(qgis_app, image, tiny_ckpt,
                                                         tmp_path):
    import json
    import processing
    from qgis.core import QgsFeature, QgsField, QgsGeometry, QgsPointXY, QgsVectorLayer
    from qgis.PyQt.QtCore import QVariant
    rng = np.random.default_rng(6)
    elev = _cover(tmp_path, "elev.tif", "EPSG:3857", 5.0,
                  lambda h, w, i: np.linspace(0, 80, h)[:, None] + rng.normal(0, 1, (h, w)))
    soil = _cover(tmp_path, "soil.tif", "EPSG:32637", 9.0,
                  lambda h, w, i: rng.choice([4, 5], (h, w)), dtype="uint8")
    layer = QgsVectorLayer("Point?crs=EPSG:32637", "pts", "memory")
    layer.dataProvider().addAttributes([QgsField("ph", QVariant.Double)])
    layer.updateFields()
    feats = []
    for c, r in zip(rng.uniform(8, 63, 30), rng.uniform(8, 63, 30)):
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(ORIGIN[0] + 1.5 * c,
                                                         ORIGIN[1] - 1.5 * r)))
        f["ph"] = float(r / 8)
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    res = processing.run("soilssl:fitpoints", {
        "INPUT": image, "BANDS": [1, 2, 3], "BACKBONE": tiny_ckpt, "TILE_SIZE": 32,
        "POINTS": layer, "FIELDS": ["ph"], "METHOD": "rf_pixels", "FOLDS": 3,
        "COVARIATES": [elev], "COVARIATES_CATEGORICAL": [soil], "DEVICE": "cpu",
        "OUTPUT_POINTS": str(tmp_path / "oof.gpkg"), "OUTPUT_MODEL": str(tmp_path / "m.pth")})
    assert json.loads(res["METHODS"]) == {"ph": "rf_pixels"}
    model = load_model(res["OUTPUT_MODEL"])
    assert model["pixel_names"][5:] == ["elev", "soil=4", "soil=5"]
    shutil.move(elev, tmp_path / "elev2.tif")
    from qgis.core import QgsProcessingException
    with pytest.raises(QgsProcessingException, match="give it, or its replacement, as "
                                                     "COVARIATES"):
        processing.run("soilssl:predictmap", {"INPUT": image, "MODEL": res["OUTPUT_MODEL"],
                                              "STRIDE": 8, "DEVICE": "cpu",
                                              "OUTPUT": str(tmp_path / "p.tif")})
    pred = processing.run("soilssl:predictmap", {
        "INPUT": image, "MODEL": res["OUTPUT_MODEL"], "STRIDE": 8, "DEVICE": "cpu",
        "COVARIATES": [str(tmp_path / "elev2.tif"), soil], "OUTPUT": str(tmp_path / "p.tif")})
    with rasterio.open(pred["OUTPUT"]) as ds:
        p = ds.read(1, masked=True)
    assert p.shape == (8, 8) and p.count() > 40
    # rf_pixels on the covariates follows the elevation gradient (ph ~ row)
    assert np.ma.corrcoef(np.ma.mean(p, axis=1), np.arange(8))[0, 1] > 0.8
    # a covariate model maps without its backbone file
    os.remove(tiny_ckpt)
    again = processing.run("soilssl:predictmap", {
        "INPUT": image, "MODEL": res["OUTPUT_MODEL"], "STRIDE": 8, "DEVICE": "cpu",
        "COVARIATES": [str(tmp_path / "elev2.tif"), soil], "OUTPUT": str(tmp_path / "q.tif")})
    with rasterio.open(again["OUTPUT"]) as ds:
        np.testing.assert_array_equal(ds.read(1, masked=True), p)


def test_a_map_of_pixel_covariates_alone_runs_no_backbone(image, tmp_path, vit, monkeypatch):
    """rf_pixels (or any stack without ViT-feature members) maps every product, AOA and
    error included, without computing a single tile's features, and gives the same rasters
    as the map that computes them; a ViT-feature head still runs the backbone."""
    import soilssl.core.features as features
    from soilssl.core.distributed import predict_job, run_sharded
    from soilssl.core.mapheads import MapHeads
    calls = []
    real_embed = features.embed
    monkeypatch.setattr(features, "embed", lambda *a, **k: calls.append(1) or real_embed(*a, **k))
    elev = _cover(tmp_path, "elev.tif", "EPSG:32637", 3.0,
                  lambda h, w, i: np.linspace(0, 80, h)[:, None] * np.ones((1, w)))
    outs = ("p", "u", "a", "e")

    def run(model, tag):
        paths = [str(tmp_path / f"{tag}_{o}.tif") for o in outs]
        predict_map(src, model, paths[0], uncertainty=paths[1], aoa=paths[2], error=paths[3],
                    stride=8)
        result = []
        for p in paths:
            with rasterio.open(p) as ds:
                result.append(ds.read())
        return result

    with TileSource(image, bands=[1, 2, 3]) as src:
        fit = fit_points(src, _points(src), vit, method="rf_pixels", n_folds=3,
                         covariates=open_covariates([elev]), model_path=str(tmp_path / "m.pth"))
        model = load_model(str(tmp_path / "m.pth"))
        assert not MapHeads(model, True, True, error=True).reads_features
        calls.clear()
        bare = run(model, "bare")
        assert calls == []
        run_sharded(predict_job(src, model, str(tmp_path / "m.pth"), str(tmp_path / "d.tif"),
                                stride=8, device="cpu"), block_rows=2)
        assert calls == []
        with monkeypatch.context() as m:  # the same map with the features computed
            m.setattr(MapHeads, "reads_features", property(lambda self: True))
            computed = run(model, "computed")
        assert len(calls) > 0
        for a, b in zip(bare, computed):
            assert a.shape == b.shape and (a != -9999).any()
            np.testing.assert_array_equal(a, b)
        with rasterio.open(tmp_path / "d.tif") as ds:
            np.testing.assert_array_equal(ds.read(), bare[0])
        # the prediction follows the elevation gradient: a real map, not nodata
        pred = np.ma.masked_equal(bare[0][0], -9999)
        assert np.corrcoef(np.arange(pred.shape[0]), pred.mean(axis=1))[0, 1] > 0.8
        # a head on ViT features runs the backbone
        ridge = fit_points(src, _points(src), vit, method="ridge", n_folds=3).model
        assert MapHeads(ridge).reads_features
        calls.clear()
        predict_map(src, ridge, str(tmp_path / "r.tif"), stride=8)
        assert len(calls) > 0
        # without the backbone file: the covariate model maps the same, the ridge one cannot
        os.remove(model["backbone"]["source"])
        predict_map(src, model, str(tmp_path / "nb.tif"), stride=8)
        with rasterio.open(tmp_path / "nb.tif") as ds:
            np.testing.assert_array_equal(ds.read(), bare[0])
        with pytest.raises(BackboneError, match="fitted with backbone"):
            predict_map(src, ridge, str(tmp_path / "r2.tif"), stride=8)
        assert not os.path.exists(tmp_path / "r2.tif")


def test_a_stack_of_pixel_members_maps_without_features_and_its_folds_with(
        image, tmp_path, vit, monkeypatch):
    """The mapped stack reads only its kept members' blocks (here rf_pixels alone): its
    head, AOA and map need no ViT feature.  Its fold stacks (other weights, a ViT-feature
    member) keep every candidate's blocks, so the uncertainty map computes the features;
    the prediction is the same either way."""
    import soilssl.core.features as features
    import soilssl.core.selection as selection
    import soilssl.core.soil as soil
    from soilssl.core.cv import FEATURES, MethodSpec
    from soilssl.core.mapheads import MapHeads
    monkeypatch.setattr(soil, "method_specs",
                        lambda method, compare=False: [MethodSpec("rf_pixels"),
                                                       MethodSpec("ridge")])
    n_points = 30

    def weights(P, y, groups, prior, sample_weight=None):  # folds: both; mapped: rf_pixels
        if len(y) == n_points:
            return np.asarray(prior, float), 1.0
        return np.array([0.5, 0.5]), 0.0
    monkeypatch.setattr(selection, "shrunk_weights", weights)
    calls = []
    real_embed = features.embed
    monkeypatch.setattr(features, "embed", lambda *a, **k: calls.append(1) or real_embed(*a, **k))
    elev = _cover(tmp_path, "elev.tif", "EPSG:32637", 3.0,
                  lambda h, w, i: np.linspace(0, 80, h)[:, None] * np.ones((1, w)))
    with TileSource(image, bands=[1, 2, 3]) as src:
        fit = fit_points(src, _points(src, n=n_points), vit, method="all", n_folds=3,
                         covariates=open_covariates([elev]), model_path=str(tmp_path / "m.pth"))
        model = load_model(str(tmp_path / "m.pth"))
        assert fit.chosen == {"ph": "selected"} and model["stacks"] == {"ph": {"rf_pixels": 1.0}}
        assert model["blocks"] == {"ph": [PIXELS]}
        assert model["fold_blocks"] == {"ph": [PIXELS, FEATURES]}
        assert [b for b, _ in model["aoa_targets"]["ph"]["blocks"]] == [PIXELS]
        assert all(set(s["labels"]) == {"rf_pixels", "ridge"}
                   for s in model["fold_heads"]["ph"])
        assert not MapHeads(model, aoa=True).reads_features
        assert MapHeads(model, uncertainty=True).reads_features
        calls.clear()
        predict_map(src, model, str(tmp_path / "p.tif"), aoa=str(tmp_path / "a.tif"), stride=8)
        assert calls == []
        predict_map(src, model, str(tmp_path / "pu.tif"), uncertainty=str(tmp_path / "u.tif"),
                    stride=8)
        assert calls
        # the mapped head is rf_pixels refitted on all points: its prediction at the cells
        mapper = MapHeads(model)
        with rasterio.open(tmp_path / "p.tif") as a, rasterio.open(tmp_path / "pu.tif") as b, \
                rasterio.open(tmp_path / "u.tif") as u:
            pred, again, spread = a.read(1), b.read(1), u.read(1)
        np.testing.assert_array_equal(pred, again)
        ok = pred != -9999
        assert ok.sum() > 40 and (spread[ok] > 0).mean() > 0.9
        assert mapper.heads[0].n_features == len(model["pixel_names"])


def test_a_class_stack_of_pixel_members_maps_its_fold_disagreement_on_their_blocks(
        image, tmp_path, vit, monkeypatch):
    """The same for a class target: the class map runs no backbone; the fold models'
    disagreement (which read the ViT features) does, and the class map is unchanged."""
    import soilssl.core.selection as selection
    import soilssl.core.soil as soil
    from soilssl.core.cv import FEATURES, MethodSpec
    from soilssl.core.mapheads import MapHeads
    monkeypatch.setattr(soil, "method_specs",
                        lambda method, compare=False: [MethodSpec("rf_pixels"),
                                                       MethodSpec("ridge")])
    n_points = 36
    monkeypatch.setattr(selection, "shrunk_weights",
                        lambda P, y, groups, prior, sample_weight=None:
                        (np.asarray(prior, float), 1.0) if len(y) == n_points
                        else (np.array([0.5, 0.5]), 0.0))
    elev = _cover(tmp_path, "elev.tif", "EPSG:32637", 3.0,
                  lambda h, w, i: np.linspace(0, 80, h)[:, None] * np.ones((1, w)))
    with TileSource(image, bands=[1, 2, 3]) as src:
        pts = _points(src, n=n_points)
        pts.values = np.digitize(pts.values, [3.0, 5.5]).astype(float)  # 3 classes by row
        pts.classes = {"ph": ["low", "mid", "high"]}
        fit_points(src, pts, vit, method="all", n_folds=3, covariates=open_covariates([elev]),
                   model_path=str(tmp_path / "m.pth"))
        model = load_model(str(tmp_path / "m.pth"))
        assert model["blocks"] == {"ph": [PIXELS]}
        assert model["fold_blocks"] == {"ph": [PIXELS, FEATURES]}
        assert not MapHeads(model, probability=True).reads_features
        assert MapHeads(model, uncertainty=True).reads_features
        predict_map(src, model, str(tmp_path / "c.tif"), stride=8,
                    probability=str(tmp_path / "p.tif"))
        predict_map(src, model, str(tmp_path / "cu.tif"), stride=8,
                    uncertainty=str(tmp_path / "u.tif"))
    with rasterio.open(tmp_path / "c.tif") as a, rasterio.open(tmp_path / "cu.tif") as b, \
            rasterio.open(tmp_path / "u.tif") as u:
        classes, again, spread = a.read(1), b.read(1), u.read(1)
    np.testing.assert_array_equal(classes, again)
    ok = spread != -9999
    assert ok.sum() > 40 and set(np.unique(classes[ok])) <= {0, 1, 2}
    assert ((spread[ok] >= 0) & (spread[ok] <= 1)).all()
    # the classes follow the rows, as the points' classes do
    assert np.corrcoef(np.nonzero(ok)[0], classes[ok])[0, 1] > 0.5
