"""Round trips between the tools (issue 11, defects 6 and 9): a model written by fitpoints
is read by predictmap whatever its extension, with the bands and DEM it was fitted on; a
SoilSSL checkpoint gives extractfeatures its bands and DEM; FIELDS takes 'a,b'; fitpoints
publishes its model, points layer and report together or not at all."""
import json
import os

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import TINY, feedback, write_raster

X0, Y0, PX = 500000.0, 2900000.0, 1.5  # the rgb fixture: 150 x 100 px UTM 37N
GRID = [(c, r) for c in (50, 75, 100, 125, 145) for r in (10, 40, 70, 95)]


def run(alg, params):
    import processing
    return processing.run(f"soilssl:{alg}", params, feedback=feedback())


def fails(alg, params, match):
    from qgis.core import QgsProcessingException
    with pytest.raises(QgsProcessingException, match=match) as info:
        run(alg, params)
    return str(info.value)


@pytest.fixture
def points(tmp_path):
    rng = np.random.default_rng(0)
    feats = []
    for i, (c, r) in enumerate(GRID):
        props = {"id": i, "ph": round(float(rng.uniform(6, 9)), 2), "clay": float(r)}
        feats.append({"type": "Feature", "properties": props, "geometry": {
            "type": "Point", "coordinates": [X0 + c * PX, Y0 - r * PX]}})
    path = tmp_path / "pts.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats, "crs": {
        "type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32637"}}}))
    return str(path)


@pytest.fixture
def dem(tmp_path):
    z = np.add.outer(np.arange(100.0), np.arange(150.0)).astype(np.float32)
    return write_raster(tmp_path / "dem.tif", z, from_origin(X0, Y0, PX, PX))


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def fit(raster, points, ckpt, out, **extra):
    p = {"INPUT": raster, "BACKBONE": ckpt, "TILE_SIZE": 32, "POINTS": points,
         "FIELDS": ["ph"], "METHOD": "ridge", "FOLDS": 2, "DEVICE": "cpu", "WORKERS": 0,
         "OUTPUT_POINTS": str(out / "oof.gpkg"), "OUTPUT_MODEL": str(out / "model.pth")}
    p.update(extra)
    return run("fitpoints", p)


def predict(raster, model, dest, **extra):
    p = {"INPUT": raster, "MODEL": model, "DEVICE": "cpu", "WORKERS": 0, "OUTPUT": str(dest)}
    p.update(extra)
    return run("predictmap", p)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read()


# ----------------------------------------------------------------------------- defect 6
def test_predictmap_reads_a_model_saved_as_pt_with_the_bands_it_was_fitted_on(
        qgis_app, rgb, tiny_ckpt, points, out, tmp_path):
    res = fit(rgb, points, tiny_ckpt, out, BANDS="3,1,2", OUTPUT_MODEL=str(out / "model.pt"))
    assert res["OUTPUT_MODEL"] == str(out / "model.pt") and os.path.isfile(out / "model.pt")
    # no BANDS: the model's 3,1,2 (the default 1,2,3 would be refused)
    implicit = predict(rgb, res["OUTPUT_MODEL"], tmp_path / "p1.tif")
    explicit = predict(rgb, res["OUTPUT_MODEL"], tmp_path / "p2.tif", BANDS="3,1,2")
    a, b = read(implicit["OUTPUT"]), read(explicit["OUTPUT"])
    assert np.isfinite(a).any() and np.array_equal(a, b)
    # an explicit mismatch names both
    fails("predictmap", {"INPUT": rgb, "MODEL": res["OUTPUT_MODEL"], "BANDS": "1,2,3",
                         "DEVICE": "cpu", "OUTPUT": str(tmp_path / "p3.tif")},
          r"\[3, 1, 2\].*\[1, 2, 3\]")
    assert not os.path.exists(tmp_path / "p3.tif")
    # any extension: the file is recognised by its content
    os.rename(out / "model.pt", out / "model.soil")
    assert predict(rgb, str(out / "model.soil"), tmp_path / "p4.tif")["OUTPUT"]
    fails("predictmap", {"INPUT": rgb, "MODEL": tiny_ckpt, "DEVICE": "cpu",
                         "OUTPUT": str(tmp_path / "p5.tif")}, "not a SoilSSL model file")


def test_files_written_by_one_tool_are_accepted_by_the_next_whatever_their_extension(qgis_app):
    from qgis.core import QgsApplication, QgsProcessingContext
    registry, context = QgsApplication.processingRegistry(), QgsProcessingContext()
    for alg, param in (("predictmap", "MODEL"), ("pretrain", "RESUME"), ("pretrain", "INIT"),
                       ("fitpoints", "BACKBONE"), ("extractfeatures", "BACKBONE")):
        definition = registry.algorithmById(f"soilssl:{alg}").parameterDefinition(param)
        for name in ("m.pth", "m.pt", "m.model", "checkpoint"):
            assert definition.checkValueIsAcceptable(f"/data/{name}", context), (alg, param, name)


def test_predictmap_takes_the_dem_from_the_model(qgis_app, rgb, tiny_ckpt, points, out, dem,
                                                 tmp_path):
    res = fit(rgb, points, tiny_ckpt, out, DEM=dem)
    implicit = predict(rgb, res["OUTPUT_MODEL"], tmp_path / "p1.tif")
    explicit = predict(rgb, res["OUTPUT_MODEL"], tmp_path / "p2.tif", DEM=dem)
    a, b = read(implicit["OUTPUT"]), read(explicit["OUTPUT"])
    assert np.isfinite(a).any() and np.array_equal(a, b)
    # the model's DEM has moved: say which file it was and what to do
    os.rename(dem, tmp_path / "moved.tif")
    fails("predictmap", {"INPUT": rgb, "MODEL": res["OUTPUT_MODEL"], "DEVICE": "cpu",
                         "OUTPUT": str(tmp_path / "p3.tif")}, r"dem\.tif.*DEM")
    # a DEM given to a model fitted without one
    res = fit(rgb, points, tiny_ckpt, out, OUTPUT_MODEL=str(out / "nodem.pth"))
    fails("predictmap", {"INPUT": rgb, "MODEL": res["OUTPUT_MODEL"], "DEVICE": "cpu",
                         "DEM": str(tmp_path / "moved.tif"), "OUTPUT": str(tmp_path / "p4.tif")},
          r"without a DEM.*moved\.tif")


def test_fields_take_commas_like_bands(qgis_app, rgb, tiny_ckpt, points, out):
    for fields in ("ph,clay", "ph, clay", "ph;clay"):
        res = fit(rgb, points, tiny_ckpt, out, FIELDS=fields)
        assert json.loads(res["METHODS"]) == {"ph": "ridge", "clay": "ridge"}, fields


def test_extract_takes_bands_and_dem_from_a_soilssl_checkpoint(qgis_app, rgb, dem, tmp_path):
    import torch
    from soilssl.core.backbone import backbone_checkpoint, create_model
    torch.manual_seed(0)
    norm = {"mean": [100.0, 110.0, 120.0, 150.0], "std": [50.0, 40.0, 30.0, 40.0]}
    ck = backbone_checkpoint(create_model(TINY, 4, 32), TINY, 4, 32, norm, pretrain={
        "kind": "dino-pretrain", "input": {"path": rgb, "bands": [3, 2, 1], "dem": dem}})
    torch.save(ck, tmp_path / "ssl.pth")
    res = run("extractfeatures", {"INPUT": rgb, "BACKBONE": str(tmp_path / "ssl.pth"),
                                  "DEVICE": "cpu", "WORKERS": 0,
                                  "OUTPUT": str(tmp_path / "f1.tif")})
    ref = run("extractfeatures", {"INPUT": rgb, "BACKBONE": str(tmp_path / "ssl.pth"),
                                  "BANDS": "3,2,1", "DEM": dem, "DEVICE": "cpu", "WORKERS": 0,
                                  "OUTPUT": str(tmp_path / "f2.tif")})
    from soilssl.core.writer import read_tags
    tags = read_tags(res["OUTPUT"])
    assert tags["bands"] == [3, 2, 1] and tags["dem"] == dem and tags["tile_size"] == 32
    assert tags["normalization"]["mean"] == norm["mean"]
    assert np.array_equal(read(res["OUTPUT"]), read(ref["OUTPUT"]), equal_nan=True)
    fails("extractfeatures", {"INPUT": rgb, "BACKBONE": str(tmp_path / "ssl.pth"),
                              "BANDS": "1,2,3", "DEM": dem, "DEVICE": "cpu",
                              "OUTPUT": str(tmp_path / "f3.tif")}, r"\[3, 2, 1\].*\[1, 2, 3\]")
    # on another image (which may order its bands otherwise) given bands are used as given
    import shutil
    other = str(shutil.copy(rgb, tmp_path / "other.tif"))
    res = run("extractfeatures", {"INPUT": other, "BACKBONE": str(tmp_path / "ssl.pth"),
                                  "BANDS": "1,2,3", "DEM": dem, "DEVICE": "cpu", "WORKERS": 0,
                                  "OUTPUT": str(tmp_path / "f4.tif")})
    assert read_tags(res["OUTPUT"])["bands"] == [1, 2, 3]


# ----------------------------------------------------------------------------- defect 9
def test_fitpoints_publishes_model_points_and_report_together(qgis_app, rgb, tiny_ckpt, points,
                                                              out):
    import processing
    from qgis.core import (QgsProcessingContext, QgsProcessingOutputLayerDefinition, QgsProject,
                           QgsVectorLayer)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    # as the dialog gives it: a layer to load into the project when the run ends
    dest = QgsProcessingOutputLayerDefinition(str(out / "oof.gpkg"), QgsProject.instance())
    res = processing.run("soilssl:fitpoints", {
        "INPUT": rgb, "BACKBONE": tiny_ckpt, "TILE_SIZE": 32, "POINTS": points,
        "FIELDS": ["ph"], "METHOD": "ridge", "FOLDS": 2, "DEVICE": "cpu", "WORKERS": 0,
        "OUTPUT_POINTS": dest, "OUTPUT_MODEL": str(out / "model.pth"),
        "OUTPUT_REPORT": str(out / "r.html")}, context=context, feedback=feedback())
    assert sorted(os.listdir(out)) == ["model.pth", "oof.gpkg", "r.html"]
    assert res["OUTPUT_POINTS"].startswith(str(out / "oof.gpkg"))
    assert [k.split("|")[0] for k in context.layersToLoadOnCompletion()] == [str(out / "oof.gpkg")]
    layer = QgsVectorLayer(res["OUTPUT_POINTS"], "oof")
    assert layer.isValid() and layer.featureCount() == 20
    assert {f["cv_fold"] for f in layer.getFeatures()} == {0, 1}
    from osgeo import ogr
    ds = ogr.Open(str(out / "oof.gpkg"))
    assert [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] == ["oof"]
    ds = None


@pytest.mark.parametrize("failing", ["report", "points"])
def test_fitpoints_failure_after_the_model_leaves_nothing(qgis_app, rgb, tiny_ckpt, points, out,
                                                         monkeypatch, failing):
    import errno
    import soilssl.algorithms.fitpoints as fitpoints
    import soilssl.core.report as report

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "report":
        monkeypatch.setattr(report, "write_report", full_disk)
    else:
        monkeypatch.setattr(fitpoints, "write_oof", full_disk)
    msg = fails("fitpoints", {
        "INPUT": rgb, "BACKBONE": tiny_ckpt, "TILE_SIZE": 32, "POINTS": points, "FIELDS": ["ph"],
        "METHOD": "ridge", "FOLDS": 2, "DEVICE": "cpu", "WORKERS": 0,
        "OUTPUT_POINTS": str(out / "oof.shp"), "OUTPUT_MODEL": str(out / "model.pth"),
        "OUTPUT_REPORT": str(out / "r.html")}, "No space left on device")
    assert os.listdir(out) == []
    if failing == "report":  # the message names the file the user asked for
        assert f"Writing '{out / 'r.html'}' failed" in msg and ".tmp" not in msg
