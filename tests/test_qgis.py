"""The plugin inside a real headless QGIS: provider, processing.run, qgis_process."""
import os
import subprocess

import numpy as np
import pytest
import rasterio

from conftest import ROOT

EXPECTED = {"extractfeatures", "clustermap", "pcamap", "pretrain", "fitpoints", "predictmap"}


def test_provider_registers_every_algorithm(qgis_app):
    from qgis.core import QgsApplication
    provider = QgsApplication.processingRegistry().providerById("soilssl")
    assert provider is not None
    names = {a.name() for a in provider.algorithms()}
    assert EXPECTED <= names
    for alg in provider.algorithms():
        assert alg.shortHelpString() and "Tresson" in alg.shortHelpString()
        assert alg.group() and alg.groupId()
        assert alg.canExecute()[0]


def test_plugin_unload_removes_and_init_restores_provider(qgis_app):
    from qgis.core import QgsApplication
    registry = QgsApplication.processingRegistry()
    plugin = qgis_app.soilssl_plugin
    plugin.unload()
    assert registry.providerById("soilssl") is None
    plugin.initProcessing()
    assert registry.providerById("soilssl") is not None
    assert registry.algorithmById("soilssl:extractfeatures") is not None


def test_processing_run_chain(qgis_app, rgb, tiny_ckpt, tmp_path):
    import processing
    feat = processing.run("soilssl:extractfeatures", {
        "INPUT": rgb, "BANDS": [3, 2, 1], "BACKBONE": tiny_ckpt, "TILE_SIZE": 32,
        "DEVICE": "cpu", "OUTPUT": str(tmp_path / "f.tif")})
    assert feat["OUTPUT"] == str(tmp_path / "f.tif") and feat["TILES"] == 20
    with rasterio.open(feat["OUTPUT"]) as ds:
        assert (ds.width, ds.height, ds.count) == (5, 4, 192)
    k = processing.run("soilssl:clustermap", {"INPUT": feat["OUTPUT"], "K": 3,
                                              "OUTPUT": str(tmp_path / "k.tif")})
    with rasterio.open(k["OUTPUT"]) as ds:
        classes = set(np.unique(ds.read(1)).tolist())
    assert classes <= {0, 1, 2, 255} and len(classes - {255}) == 3
    p = processing.run("soilssl:pcamap", {"INPUT": feat["OUTPUT"],
                                          "OUTPUT": str(tmp_path / "p.tif")})
    with rasterio.open(p["OUTPUT"]) as ds:
        assert ds.count == 3
    assert len(p["EXPLAINED_VARIANCE"]) == 3


def test_engine_errors_become_processing_exceptions(qgis_app, rgb, tiny_ckpt, tmp_path):
    import processing
    from qgis.core import QgsProcessingException
    with pytest.raises(QgsProcessingException, match=r"out of range.*bands 1\.\.3"):
        processing.run("soilssl:extractfeatures", {
            "INPUT": rgb, "BANDS": "1,7", "BACKBONE": tiny_ckpt, "TILE_SIZE": 32,
            "OUTPUT": str(tmp_path / "bad.tif")})
    assert not [f for f in os.listdir(tmp_path) if "bad" in f]


def test_styles_are_valid_qml(qgis_app, tmp_path):
    from qgis.core import QgsRasterLayer
    from conftest import write_raster
    path = write_raster(tmp_path / "c.tif", np.arange(16, dtype=np.uint8).reshape(4, 4))
    layer = QgsRasterLayer(path, "c")
    msg, ok = layer.loadNamedStyle(os.path.join(ROOT, "resources", "styles", "clusters.qml"))
    assert ok, msg
    assert layer.renderer().type() == "paletted" and len(layer.renderer().classes()) == 16
    rgb = QgsRasterLayer(write_raster(tmp_path / "p.tif", np.ones((3, 4, 4), np.uint8)), "p")
    msg, ok = rgb.loadNamedStyle(os.path.join(ROOT, "resources", "styles", "pca.qml"))
    assert ok, msg
    assert rgb.renderer().type() == "multibandcolor"


def test_scripts_qgis_process_lists_and_runs(rgb, tiny_ckpt, tmp_path):
    script = os.path.join(ROOT, "scripts", "qgis_process")
    out = subprocess.run([script, "list"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for name in EXPECTED:
        assert f"soilssl:{name}" in out.stdout
    dest = tmp_path / "f.tif"
    run = subprocess.run([script, "run", "soilssl:extractfeatures", "--", f"INPUT={rgb}",
                          "BANDS=3,2,1", f"BACKBONE={tiny_ckpt}", "TILE_SIZE=32", "DEVICE=cpu",
                          f"OUTPUT={dest}"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    with rasterio.open(dest) as ds:
        assert ds.count == 192 and ds.res == (48.0, 48.0)
    bad = subprocess.run([script, "run", "soilssl:extractfeatures", "--", f"INPUT={rgb}",
                          "BANDS=9", f"BACKBONE={tiny_ckpt}", f"OUTPUT={tmp_path / 'bad.tif'}"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "out of range" in bad.stdout + bad.stderr
    assert not (tmp_path / "bad.tif").exists()


def test_sentinel2_stack_with_dem_and_dino_training_checkpoint(qgis_app, tmp_path):
    """An 11-band uint16 stack with nodata, BANDS=4,3,2, a float DEM in another CRS, and a
    DINO-format training checkpoint: the feature raster is georeferenced like the input."""
    import processing
    import torch
    from rasterio.transform import from_origin
    from conftest import TINY, write_raster
    from soilssl.core.backbone import create_model
    rng = np.random.default_rng(0)
    s2 = rng.integers(1, 4000, (11, 96, 128)).astype(np.uint16)
    s2[:, 64:, :] = 0  # a third of the scene is nodata
    img = write_raster(tmp_path / "s2.tif", s2, transform=from_origin(600000, 2800000, 10, 10),
                       nodata=0)
    # DEM in geographic coordinates covering the scene
    dem = write_raster(tmp_path / "dem.tif", rng.normal(500, 20, (60, 60)).astype(np.float32),
                       crs="EPSG:4326", transform=from_origin(39.99, 25.316, 0.0003, 0.0003),
                       nodata=-9999)
    torch.manual_seed(0)
    sd = create_model(TINY, 3, 32).state_dict()
    torch.save({"teacher": {"backbone." + k: v for k, v in sd.items()}, "epoch": 1},
               tmp_path / "checkpoint.pth")
    res = processing.run("soilssl:extractfeatures", {
        "INPUT": img, "BANDS": "4,3,2", "DEM": dem, "BACKBONE": str(tmp_path / "checkpoint.pth"),
        "TILE_SIZE": 32, "DEVICE": "auto", "OUTPUT": str(tmp_path / "f.tif")})
    with rasterio.open(res["OUTPUT"]) as ds:
        assert (ds.width, ds.height, ds.count) == (4, 3, 192)
        assert ds.transform == from_origin(600000, 2800000, 320, 320) and ds.crs.to_epsg() == 32637
        f = ds.read(1)
    assert np.isnan(f[2]).all() and np.isfinite(f[:2]).all()  # nodata rows stay nodata
    assert res["SKIPPED"] == 4


def test_fitpoints_and_predictmap_on_demo(qgis_app, tiny_ckpt, tmp_path):
    """The demo's points are in WGS84 (reprojected), 5 lie outside, si has NULLs."""
    import json
    import processing
    from qgis.core import QgsVectorLayer
    demo = os.path.join(ROOT, "resources", "demo")
    res = processing.run("soilssl:fitpoints", {
        "INPUT": os.path.join(demo, "rgb.tif"), "BACKBONE": tiny_ckpt, "TILE_SIZE": 32,
        "POINTS": os.path.join(demo, "points.geojson"), "FIELDS": ["ph_h2o", "si"],
        "METHOD": "ridge", "FOLDS": 6, "DEVICE": "cpu",
        "OUTPUT_POINTS": str(tmp_path / "oof.gpkg"), "OUTPUT_MODEL": str(tmp_path / "m.pth"),
        "OUTPUT_REPORT": str(tmp_path / "r.html")})
    table = json.loads(res["CV_TABLE"])
    assert [(r["target"], r["method"], r["n"]) for r in table] == [("ph_h2o", "ridge", 295),
                                                                 ("si", "ridge", 289)]
    oof = QgsVectorLayer(res["OUTPUT_POINTS"], "oof")
    assert oof.featureCount() == 295
    folds = {f["cv_fold"] for f in oof.getFeatures()}
    assert folds == set(range(6))
    resid = [f["res_ph_h2o_ridge"] for f in oof.getFeatures()]
    rmse = float(np.sqrt(np.mean(np.square(resid))))
    assert abs(rmse - table[0]["rmse_mean"]) < 0.2 * table[0]["rmse_mean"]
    html = open(res["OUTPUT_REPORT"], encoding="utf-8").read()
    assert "ph_h2o" in html and "data:image/png;base64" in html
    pred = processing.run("soilssl:predictmap", {
        "INPUT": os.path.join(demo, "rgb.tif"), "MODEL": res["OUTPUT_MODEL"], "STRIDE": 16,
        "DEVICE": "cpu", "OUTPUT": str(tmp_path / "p.tif"),
        "OUTPUT_UNCERTAINTY": str(tmp_path / "u.tif"), "OUTPUT_AOA": str(tmp_path / "a.tif")})
    with rasterio.open(pred["OUTPUT"]) as ds:
        assert ds.count == 2 and ds.descriptions == ("ph_h2o", "si") and ds.res == (24.0, 24.0)
        ph = ds.read(1, masked=True)
    assert 6.5 < float(ph.mean()) < 11
