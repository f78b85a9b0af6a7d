"""POOL=patch: patch-resolution features, seamless tiling, point features, soil maps."""
import os

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

from conftest import TINY, write_raster
from soilssl.core.backbone import load_backbone
from soilssl.core.errors import InputError
from soilssl.core.features import extract_features
from soilssl.core.maps import cluster_map, pca_map
from soilssl.core.patches import (PatchGrid, default_margin, extract_patch_features,
                                  patch_point_features, patch_tokens)
from soilssl.core.raster import TileSource
from soilssl.core.soil import Points, fit_points, predict_map

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "resources", "demo", "rgb.tif")


@pytest.fixture
def vit64(tiny_ckpt):
    return load_backbone(tiny_ckpt, tile_size=64)  # 4 x 4 patches of 16 px


def test_grid_geometry_and_margin():
    g = PatchGrid(1000, 500, 224, 16, 2)
    assert (g.n, g.core, g.step) == (14, 10, 160)
    assert (g.out_width, g.out_height) == (63, 32)  # ceil(1000/16), ceil(500/16)
    assert (g.n_cols, g.n_rows) == (7, 4)
    # tile (1, 2) starts 2 patches before its core (row 10, col 20 of the patch grid)
    w = g.window(1 * 7 + 2)
    assert (w.col_off, w.row_off, w.width, w.height) == (20 * 16 - 32, 10 * 16 - 32, 224, 224)
    assert list(g.out_rows(3)) == [30, 31]
    index, i, j = g.locate([20 * 16 + 5], [10 * 16 + 15])
    assert (index[0], i[0], j[0]) == (9, 2, 2)  # the first core patch of tile (1, 2)
    assert [default_margin(n) for n in (2, 4, 14, 16, 37)] == [0, 1, 2, 2, 6]
    with pytest.raises(InputError, match="multiple of the patch size"):
        PatchGrid(100, 100, 72, 16, 1)
    with pytest.raises(InputError, match="no central patch"):
        PatchGrid(100, 100, 64, 16, 2)


def test_patch_raster_values_georeferencing_and_nodata(rgb, vit64, tmp_path):
    out = tmp_path / "p.tif"
    with TileSource(rgb) as src:
        s = extract_features(src, vit64, str(out), pool="patch", device="cpu", batch_size=5)
        assert (s["width"], s["height"], s["margin"], s["core"]) == (10, 7, 1, 2)
        with rasterio.open(rgb) as ds, rasterio.open(out) as f:
            assert f.crs == ds.crs and f.count == 192
            assert f.transform == ds.transform @ Affine.scale(16)  # same origin, 16 px
            feats = f.read()
            tags = f.tags()
        assert tags["pool"] == "patch" and tags["patch"] == "16" and tags["margin"] == "1"
        # the 40 x 40 nodata corner: patches (0..1, 0..1) fully nodata, (2, 2) valid
        assert np.isnan(feats[:, :2, :2]).all() and np.isfinite(feats[:, 2:, 2:]).all()
        # output patch (3, 4) = token (1 + 1, 1 + 0) of tile (1, 2), read here directly
        grid = PatchGrid.for_backbone(src.width, src.height, vit64, 64)
        norm = src.compute_normalization()
        arr, valid = src.read(grid.window(1 * grid.n_cols + 2))
        tok = patch_tokens(vit64, norm.apply(arr, valid)[None], torch.device("cpu"))
        assert tok.shape == (1, 192, 4, 4)
        np.testing.assert_allclose(feats[:, 3, 4], tok[0, :, 2, 1], rtol=1e-4, atol=1e-4)


def test_patch_point_features_equal_the_map(rgb, vit64, tmp_path):
    out = tmp_path / "p.tif"
    cols = np.array([50.5, 149.0, 17.0, 64.2, 100.0])
    rows = np.array([45.0, 99.0, 60.0, 31.9, 3.0])
    with TileSource(rgb) as src:
        extract_patch_features(src, vit64, str(out), device="cpu")
        pf = patch_point_features(src, vit64, cols, rows, device="cpu", batch_size=2)
    with rasterio.open(out) as f:
        feats = f.read()
    expected = feats[:, (rows // 16).astype(int), (cols // 16).astype(int)].T
    np.testing.assert_allclose(pf, expected, rtol=1e-4, atol=1e-4)


def _seam_ratio(values, core, axis):
    """Mean difference between neighbouring output pixels across tile-core edges over the
    mean across interior patch boundaries, along ``axis`` (1 rows, 2 columns): the feature
    distance for (D, H, W) features, the share of class changes for (H, W) labels."""
    if values.ndim == 2:
        d = np.diff(values, axis=axis - 1)
        d = np.where(np.isnan(d), np.nan, (d != 0).astype(float))
    else:
        d = np.linalg.norm(np.diff(values, axis=axis), axis=0)
    if axis == 1:
        d = d.T
    edge = (np.arange(d.shape[1]) + 1) % core == 0
    return np.nanmean(d[:, edge]) / np.nanmean(d[:, ~edge])


def test_demo_cluster_map_at_patch_resolution_has_no_tile_seams(vit64, tmp_path):
    """Neighbouring patches from two tiles differ no more than neighbours within a tile.
    Without the margin (each patch keeps the context of its own tile only) the same
    measure sees the tile edges: the check has teeth."""
    ratios = {}
    with TileSource(DEMO) as src:
        for margin in (None, 0):
            out = str(tmp_path / f"f{margin}.tif")
            s = extract_patch_features(src, vit64, out, margin=margin, device="cpu",
                                       batch_size=64)
            with rasterio.open(out) as f:
                feats = f.read()
            cluster_map(out, str(tmp_path / f"c{margin}.tif"), k=8)
            with rasterio.open(tmp_path / f"c{margin}.tif") as f:
                labels = f.read(1).astype(float)
            labels[labels == 255] = np.nan
            ratios[margin] = ([_seam_ratio(feats, s["core"], a) for a in (1, 2)],
                              [_seam_ratio(labels, s["core"], a) for a in (1, 2)])
            assert (s["width"], s["height"]) == (64, 64)
    (feat_default, clus_default), (feat_none, clus_none) = ratios[None], ratios[0]
    # measured (vit_tiny, random weights, 64 px tiles): margin 1: features 1.02 / 1.03,
    # classes 0.98 / 1.03; margin 0: features 1.12 / 1.12, classes 1.23 / 1.26
    assert max(feat_default) < 1.06 and max(clus_default) < 1.10, ratios
    assert min(feat_none) > 1.07 and min(clus_none) > 1.15, ratios  # seams without margin
    assert max(feat_default) - 1 < (min(feat_none) - 1) / 3, ratios


def test_pca_map_of_patch_features(rgb, vit64, tmp_path):
    with TileSource(rgb) as src:
        extract_patch_features(src, vit64, str(tmp_path / "p.tif"), device="cpu")
    pca_map(str(tmp_path / "p.tif"), str(tmp_path / "pca.tif"))
    with rasterio.open(tmp_path / "pca.tif") as f, rasterio.open(tmp_path / "p.tif") as p:
        rgb_out = f.read()
        assert f.transform == p.transform and (f.width, f.height) == (10, 7)
    assert (rgb_out[:, :2, :2] == 0).all() and (rgb_out[:, 2:, 2:] > 0).all()


def test_fit_points_compares_tile_and_patch_features_and_maps_at_patch_resolution(
        tmp_path, tiny_ckpt):
    """Texture contrast changes every 16 px column band: the patch under a point sees it, a
    64 px tile mixes four bands; the CV compares both on the same folds."""
    rng = np.random.default_rng(0)
    h, w = 128, 256
    contrast = np.repeat(rng.uniform(2, 120, w // 16), 16)[None, :]
    img = np.clip(128 + rng.normal(0, 1, (3, h, w)) * contrast, 1, 255).astype(np.uint8)
    path = write_raster(tmp_path / "bands.tif", img, nodata=0)
    vit = load_backbone(tiny_ckpt, tile_size=64)
    n = 120
    cols, rows = rng.uniform(0, w, n), rng.uniform(0, h, n)
    y = np.log(contrast[0, cols.astype(int)])[:, None]
    with TileSource(path) as src:
        xs, ys = src.transform @ (cols, rows)
        pts = Points(xs, ys, src.crs.to_wkt(), y, ["c"])
        fit = fit_points(src, pts, vit, method="ridge", n_folds=4, point_feature="both",
                         cache=str(tmp_path / "cache"), model_path=str(tmp_path / "m.pth"),
                         device="cpu")
        table = {(r["method"]): r for r in fit.cv.table()}
        assert set(table) == {"ridge", "ridge [patch]"}
        assert table["ridge [patch]"]["rmse_mean"] < table["ridge"]["rmse_mean"]
        assert fit.chosen == {"c": "ridge [patch]"}
        assert fit.model["pool"] == "patch" and fit.model["margin"] == 1
        s = predict_map(src, fit.model, str(tmp_path / "pred.tif"),
                        aoa=str(tmp_path / "aoa.tif"), backbone=vit, device="cpu")
    assert (s["width"], s["height"]) == (16, 8)
    with rasterio.open(tmp_path / "pred.tif") as f:
        pred = f.read(1)
        assert f.transform == src.transform @ Affine.scale(16)
    truth = np.log(contrast[0, 8::16])
    # the map follows the column bands: correlation of column means with the truth
    assert np.corrcoef(pred.mean(axis=0), truth)[0, 1] > 0.8


def test_patch_chain_through_processing(qgis_app, rgb, tiny_ckpt, tmp_path):
    """extractfeatures POOL=patch -> clustermap / pcamap; fitpoints POINT_FEATURE=both on the
    demo -> predictmap at patch resolution."""
    import json
    import processing
    feat = processing.run("soilssl:extractfeatures", {
        "INPUT": rgb, "BACKBONE": tiny_ckpt, "TILE_SIZE": 64, "POOL": "patch", "DEVICE": "cpu",
        "OUTPUT": str(tmp_path / "f.tif")})
    with rasterio.open(feat["OUTPUT"]) as ds:
        assert (ds.width, ds.height, ds.res) == (10, 7, (24.0, 24.0))
    k = processing.run("soilssl:clustermap", {"INPUT": feat["OUTPUT"], "K": 3,
                                              "OUTPUT": str(tmp_path / "k.tif")})
    p = processing.run("soilssl:pcamap", {"INPUT": feat["OUTPUT"],
                                          "OUTPUT": str(tmp_path / "p.tif")})
    for out in (k["OUTPUT"], p["OUTPUT"]):
        with rasterio.open(out) as ds:
            assert (ds.width, ds.height) == (10, 7)
    demo = os.path.join(ROOT, "resources", "demo")
    res = processing.run("soilssl:fitpoints", {
        "INPUT": os.path.join(demo, "rgb.tif"), "BACKBONE": tiny_ckpt, "TILE_SIZE": 64,
        "POINTS": os.path.join(demo, "points.geojson"), "FIELDS": ["ph_h2o"],
        "METHOD": "ridge", "POINT_FEATURE": "both", "FOLDS": 4, "DEVICE": "cpu",
        "OUTPUT_POINTS": str(tmp_path / "oof.gpkg"), "OUTPUT_MODEL": str(tmp_path / "m.pth")})
    table = json.loads(res["CV_TABLE"])
    assert [r["method"] for r in table] == ["ridge", "ridge [patch]"]
    chosen = json.loads(res["METHODS"])["ph_h2o"]
    best = min(table, key=lambda r: r["rmse_mean"])["method"]
    assert chosen == best
    pred = processing.run("soilssl:predictmap", {
        "INPUT": os.path.join(demo, "rgb.tif"), "MODEL": res["OUTPUT_MODEL"], "DEVICE": "cpu",
        "OUTPUT": str(tmp_path / "pred.tif")})
    with rasterio.open(pred["OUTPUT"]) as ds:
        assert ds.res == ((24.0, 24.0) if chosen == "ridge [patch]" else (96.0, 96.0))
        assert 6.5 < float(ds.read(1, masked=True).mean()) < 11
