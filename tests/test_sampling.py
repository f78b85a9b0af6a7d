"""Sampling design (core/sampling.py) without QGIS, and soilssl:samplingdesign through
processing.run."""
import os

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import write_geometries, write_raster

ORIGIN = (500000.0, 2900000.0)
PX = 10.0  # feature raster pixel (one tile) in metres
W = H = 30


def feature_raster(path, d=8, seed=0):
    """A W x H feature raster of four landscape units with their own mean feature, plus
    noise: unit 0 everywhere but three 10 x 10 tile corners (1: top right, 2: bottom left,
    3: bottom right); a nodata (NaN) strip on the last column."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (4, d))
    unit = np.zeros((H, W), int)
    unit[:10, 20:] = 1
    unit[20:, :10] = 2
    unit[20:, 20:] = 3
    f = means[unit].transpose(2, 0, 1) + rng.normal(0, 0.5, (d, H, W))
    f[:, :, -1] = np.nan
    path = write_raster(path, f.astype(np.float32),
                        transform=from_origin(*ORIGIN, PX, PX), nodata=float("nan"))
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(soilssl_product="features")
    return path, unit


def centre(row, col):
    return ORIGIN[0] + (col + 0.5) * PX, ORIGIN[1] - (row + 0.5) * PX


def existing_points(n=24, seed=1):
    """n samples in unit 0 only."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 20, n)
    cols = rng.integers(0, 20, n)
    xs, ys = centre(rows, cols)
    return np.asarray(xs), np.asarray(ys)


def unit_at(unit, xs, ys):
    cols = ((np.asarray(xs) - ORIGIN[0]) / PX).astype(int)
    rows = ((ORIGIN[1] - np.asarray(ys)) / PX).astype(int)
    return unit[rows, cols]


def box(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1),
                                                (x0, y0)]]}


def test_coverage_keeps_fixed_centres_and_fills_gaps():
    from soilssl.core.designs import coverage_design
    rng = np.random.default_rng(0)
    # three blobs in 2-D; the fixed centres sit on the first one
    blobs = np.array([[0, 0], [10, 0], [0, 10]], float)
    P = np.vstack([b + rng.normal(0, 0.5, (100, 2)) for b in blobs])
    fixed = blobs[:1] + rng.normal(0, 0.1, (3, 2))
    fixed_before = fixed.copy()
    xy = rng.uniform(0, 1000, (len(P), 2))
    res = coverage_design(P, fixed, 2, np.ones(len(P)), xy, np.ones(len(P), bool))
    assert np.array_equal(fixed, fixed_before)  # the existing samples never move
    picked_blobs = {int(np.argmin(((blobs - P[i]) ** 2).sum(axis=1))) for i in res["index"]}
    assert picked_blobs == {1, 2}  # each new site in a blob no sample represents
    assert sorted(res["size"].tolist()) == [100, 100]


def test_coverage_weights_pull_towards_heavy_tiles():
    from soilssl.core.designs import coverage_design
    P = np.concatenate([np.linspace(0, 1, 50), np.linspace(9, 10, 50)])[:, None]
    w = np.r_[np.ones(50), np.full(50, 25.0)]
    xy = np.column_stack([np.arange(100.0), np.zeros(100)])
    res = coverage_design(P, np.empty((0, 1)), 1, w, xy, np.ones(100, bool))
    assert P[res["index"][0], 0] > 8  # the weighted mean lies in the heavy group


def test_coverage_prefers_cheap_tiles_of_a_cluster():
    from soilssl.core.designs import coverage_design
    rng = np.random.default_rng(0)
    P = np.r_[rng.normal(0, 0.1, 50), rng.normal(10, 1.0, 50)][:, None]
    xy = np.column_stack([np.arange(100.0), np.zeros(100)])
    cost = np.where(np.arange(100) % 2 == 0, 100.0, 1.0)  # every other tile is costly
    fixed = np.zeros((1, 1))
    free = coverage_design(P, fixed, 1, np.ones(100), xy, np.ones(100, bool))
    paid = coverage_design(P, fixed, 1, np.ones(100), xy, np.ones(100, bool), cost=cost)
    assert P[free["index"][0], 0] > 7 and P[paid["index"][0], 0] > 7  # the uncovered cluster
    assert cost[free["index"][0]] == 100.0 and cost[paid["index"][0]] == 1.0
    assert abs(P[paid["index"][0], 0] - paid["centres"][0, 0]) < 1.5  # near its centre still


def test_min_distance_respected_and_impossible():
    from soilssl.core.errors import InputError
    from soilssl.core.designs import clhs_design, coverage_design
    rng = np.random.default_rng(3)
    P = rng.normal(size=(400, 3))
    xy = rng.uniform(0, 100, (400, 2))
    allowed = np.ones(400, bool)
    for res in (coverage_design(P, P[:5], 6, np.ones(400), xy, allowed, min_distance=20.0),
                clhs_design(P, P[:5], 6, xy, allowed, min_distance=20.0, iterations=300)):
        sites = xy[res["index"]]
        d = np.hypot(*(sites[:, None] - sites[None]).transpose(2, 0, 1))
        assert d[~np.eye(6, dtype=bool)].min() >= 20.0
    with pytest.raises(InputError, match="MIN_DISTANCE 90 .*impossible"):
        coverage_design(P, P[:5], 6, np.ones(400), xy, allowed, min_distance=90.0)
    with pytest.raises(InputError, match="MIN_DISTANCE 90 .*impossible"):
        clhs_design(P, P[:5], 6, xy, allowed, min_distance=90.0, iterations=50)


def test_clhs_fills_strata_keeps_existing_and_beats_random():
    from soilssl.core.designs import _Clhs, clhs_design
    rng = np.random.default_rng(0)
    V = rng.uniform(0, 1, (2000, 2))
    fixed = rng.uniform(0, 0.3, (4, 2))  # existing samples crowd the low corner
    xy = rng.uniform(0, 1000, (2000, 2))
    res = clhs_design(V, fixed, 6, xy, np.ones(2000, bool), iterations=2000, seed=1)
    lhs = _Clhs(V, fixed, 6)
    rand = lhs.objective(rng.choice(2000, 6, replace=False))
    assert res["objective"] < res["start"] and res["objective"] < rand
    # the new sites go where the existing samples are not: high values of both variables
    assert (V[res["index"]].max(axis=1) > 0.3).all()
    counts = lhs.counts(res["index"])  # 10 strata per variable, hardly any empty
    assert (counts == 0).sum() <= 4


def test_clhs_cost_constrained():
    from soilssl.core.designs import clhs_design
    rng = np.random.default_rng(0)
    V = rng.uniform(0, 1, (1000, 2))
    xy = rng.uniform(0, 1000, (1000, 2))
    cost = np.where(xy[:, 0] < 500, 1.0, 100.0)  # the east half is costly to reach
    free = clhs_design(V, np.empty((0, 2)), 8, xy, np.ones(1000, bool), iterations=1500)
    paid = clhs_design(V, np.empty((0, 2)), 8, xy, np.ones(1000, bool), cost=cost,
                       cost_weight=1.0, iterations=1500)
    assert cost[paid["index"]].mean() < cost[free["index"]].mean()
    assert (cost[paid["index"]] == 1.0).sum() >= 7


@pytest.mark.parametrize("method", ["coverage", "clhs"])
def test_design_on_raster_grows_the_aoa(tmp_path, method):
    from soilssl.core.sampling import sampling_design
    path, unit = feature_raster(tmp_path / "f.tif")
    xs, ys = existing_points()
    d = sampling_design(path, (xs, ys), "EPSG:32637", n=6, min_distance=25.0, method=method,
                        n_random=10, iterations=800, seed=0)
    assert len(d.x) == 6 and sorted(d.rank.tolist()) == list(range(1, 7))
    # sites on valid tiles (not the NaN column), at tile centres, spaced
    cols = (d.x - ORIGIN[0]) / PX - 0.5
    rows = (ORIGIN[1] - d.y) / PX - 0.5
    assert np.allclose(cols, np.round(cols)) and np.allclose(rows, np.round(rows))
    assert (cols < W - 1).all()
    pts = np.column_stack([d.x, d.y])
    dist = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
    assert dist[~np.eye(6, dtype=bool)].min() >= 25.0
    ex = np.column_stack([xs, ys])
    assert np.hypot(*(pts[:, None] - ex[None]).transpose(2, 0, 1)).min() >= 25.0
    # the existing samples cover unit 0 only: the design reaches the other units (cLHS
    # balances marginal strata, not units: at least two of them)
    assert len(set(unit_at(unit, d.x, d.y).tolist()) - {0}) >= (3 if method == "coverage" else 2)
    s = d.summary
    assert s["aoa_before"] < 0.75 and s["aoa_after"] > (0.95 if method == "coverage" else 0.85)
    assert len(s["aoa_random"]) == 10
    assert s["growth"] >= (1.5 if method == "coverage" else 1.0) * s["random_growth"]
    # rank 1 = most dissimilar; reasons name the AOA and the method's motive
    assert d.di[d.rank == 1][0] == d.di.max()
    assert all("AOA" in r for r in d.reason)
    assert all(("feature space" in r) if method == "coverage" else ("strata" in r)
               for r in d.reason)


def test_exclusion_and_cost_respected(tmp_path):
    from soilssl.core.sampling import sampling_design
    path, unit = feature_raster(tmp_path / "f.tif")
    xs, ys = existing_points()
    # exclude the bottom-right unit (3) entirely
    x0, y0 = ORIGIN[0] + 20 * PX, ORIGIN[1] - 20 * PX
    far = box(x0 + 0.1, ORIGIN[1] - H * PX - 50, ORIGIN[0] + W * PX + 50, y0 - 0.1)
    # a cost raster (finer, another grid) where the top-right unit (1) is inaccessible
    cost = np.ones((H * 2, W * 2), np.float32)
    cost[:20, 40:] = -1
    cpath = write_raster(tmp_path / "cost.tif", cost, transform=from_origin(*ORIGIN, 5.0, 5.0),
                         nodata=-1)
    d = sampling_design(path, (xs, ys), "EPSG:32637", n=4, exclude=[far],
                        exclude_crs="EPSG:32637", cost=cpath, n_random=3, seed=0)
    units = unit_at(unit, d.x, d.y)
    assert 3 not in units and 1 not in units  # excluded / inaccessible units avoided
    assert (units == 2).any()  # the one reachable unexplored unit gets sites
    assert np.allclose(d.values["cost"], 1.0)
    assert d.summary["excluded_tiles"] == 10 * 9


def test_design_errors_and_nothing_written(tmp_path):
    from soilssl.core.errors import InputError
    from soilssl.core.sampling import sampling_design
    path, _ = feature_raster(tmp_path / "f.tif")
    xs, ys = existing_points()
    with pytest.raises(InputError, match="N = 5000 is larger than the .* candidate tiles"):
        sampling_design(path, (xs, ys), None, n=5000)
    far = write_raster(tmp_path / "cost.tif", np.ones((10, 10), np.float32),
                       transform=from_origin(0.0, 100.0, 10.0, 10.0))
    with pytest.raises(InputError, match="cost raster does not overlap"):
        sampling_design(path, (xs, ys), None, n=3, cost=far)
    everything = box(ORIGIN[0] - 10, ORIGIN[1] - H * PX - 10, ORIGIN[0] + W * PX + 10,
                     ORIGIN[1] + 10)
    with pytest.raises(InputError, match="exclusion polygons cover every valid tile"):
        sampling_design(path, (xs, ys), None, n=3, exclude=[everything])
    with pytest.raises(InputError, match="MIN_DISTANCE .*impossible"):
        sampling_design(path, (xs, ys), None, n=8, min_distance=250.0)
    assert sorted(os.listdir(tmp_path)) == ["cost.tif", "f.tif"]


def test_design_with_model_values(tmp_path):
    """A model fitted on the feature raster's features gives predictions and fold spreads
    at the sites."""
    from soilssl.core.heads import make_regressor
    from soilssl.core.sampling import sampling_design
    path, unit = feature_raster(tmp_path / "f.tif")
    with rasterio.open(path) as ds:
        f = ds.read().reshape(ds.count, -1).T
    ok = np.isfinite(f).all(axis=1)
    y = unit.reshape(-1)[ok] * 2.0
    head = make_regressor("ridge")
    head.fit(f[ok], y)
    folds = []
    for k in range(3):
        h = make_regressor("ridge")
        h.fit(f[ok][k::3], y[k::3])
        folds.append(h.state_dict())
    model = {"targets": ["ph"], "methods": {"ph": "ridge"}, "heads": {"ph": head.state_dict()},
             "fold_heads": {"ph": folds}, "backbone": {}}
    xs, ys = existing_points()
    d = sampling_design(path, (xs, ys), None, n=3, model=model, n_random=2)
    expected = unit_at(unit, d.x, d.y) * 2.0
    assert np.allclose(d.values["pred_ph"], expected, atol=0.5)
    assert (d.values["spread_ph"] >= 0).all()


def test_report(tmp_path):
    from soilssl.core.sampling import sampling_design, write_design_report
    path, _ = feature_raster(tmp_path / "f.tif")
    xs, ys = existing_points()
    d = sampling_design(path, (xs, ys), None, n=3, n_random=4)
    out = write_design_report(str(tmp_path / "r.html"), d)
    text = open(out).read()
    assert "random sites, 4 draws" in text and "data:image/png" in text
    assert f"{d.summary['aoa_after']:.1%}" in text


# --------------------------------------------------------------------------- QGIS
def write_points(path, xs, ys, crs="EPSG:32637"):
    from osgeo import ogr, osr
    drv = ogr.GetDriverByName("GPKG")
    ds = drv.CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.SetFromUserInput(crs)
    lyr = ds.CreateLayer("pts", srs, ogr.wkbPoint)
    for x, y in zip(xs, ys):
        f = ogr.Feature(lyr.GetLayerDefn())
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint_2D(float(x), float(y))
        f.SetGeometry(g)
        lyr.CreateFeature(f)
    ds = None
    return str(path)


def write_polygons(path, polys, crs="EPSG:32637"):
    return write_geometries(path, polys, "zones", crs)


def test_processing_run_samplingdesign(qgis_app, tmp_path):
    import processing
    from qgis.core import QgsVectorLayer
    path, unit = feature_raster(tmp_path / "f.tif")
    xs, ys = existing_points()
    pts = write_points(tmp_path / "pts.gpkg", xs, ys)
    out = processing.run("soilssl:samplingdesign", {
        "INPUT": path, "POINTS": pts, "N": 5, "MIN_DISTANCE": 20.0, "METHOD": "coverage",
        "N_RANDOM": 5, "OUTPUT": str(tmp_path / "sites.gpkg"),
        "OUTPUT_REPORT": str(tmp_path / "design.html")})
    layer = QgsVectorLayer(out["OUTPUT"], "sites")
    assert layer.isValid() and layer.featureCount() == 5
    names = [f.name() for f in layer.fields()]
    assert {"rank", "di", "inside_aoa", "reason"} <= set(names)
    ranks = sorted(f["rank"] for f in layer.getFeatures())
    assert ranks == [1, 2, 3, 4, 5]
    xs_out = [f.geometry().asPoint().x() for f in layer.getFeatures()]
    ys_out = [f.geometry().asPoint().y() for f in layer.getFeatures()]
    assert len(set(unit_at(unit, xs_out, ys_out).tolist()) - {0}) == 3
    assert os.path.exists(out["OUTPUT_REPORT"])
    from soilssl.algorithms.styles import sites_style
    sites_style(layer)  # what Processing applies when it loads the layer
    assert layer.renderer().type() == "singleSymbol" and layer.labelsEnabled()
    assert layer.labeling().settings().fieldName == "rank"
    assert out["AOA_AFTER"] > out["AOA_BEFORE"]


def test_processing_samplingdesign_errors_leave_nothing(qgis_app, tmp_path):
    import processing
    from qgis.core import QgsProcessingException
    path, _ = feature_raster(tmp_path / "f.tif")
    xs, ys = existing_points()
    pts = write_points(tmp_path / "pts.gpkg", xs, ys)
    everything = write_polygons(tmp_path / "all.gpkg", [box(
        ORIGIN[0] - 10, ORIGIN[1] - H * PX - 10, ORIGIN[0] + W * PX + 10, ORIGIN[1] + 10)])
    before = sorted(os.listdir(tmp_path))
    cases = [({"N": 100000}, "larger than the"),
             ({"N": 3, "EXCLUDE": everything}, "cover every valid tile"),
             ({"N": 8, "MIN_DISTANCE": 250.0}, "impossible")]
    for extra, message in cases:
        with pytest.raises(QgsProcessingException, match=message):
            processing.run("soilssl:samplingdesign", {
                "INPUT": path, "POINTS": pts, "OUTPUT": str(tmp_path / "sites.gpkg"),
                "OUTPUT_REPORT": str(tmp_path / "r.html"), **extra})
    assert sorted(os.listdir(tmp_path)) == before


def test_sampling_chain_model(qgis_app, tmp_path):
    """resources/models/sampling_design.model3: fit -> predict -> sampling design, valid, and
    what scripts/make_model.py writes."""
    import sys
    from conftest import ROOT
    from qgis.core import QgsProcessingModelAlgorithm
    shipped = os.path.join(ROOT, "resources", "models", "sampling_design.model3")
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(shipped)
    assert model.validate()[0], model.validate()[1]
    children = model.childAlgorithms()
    assert {c: children[c].algorithmId() for c in children} == {
        "fitpoints": "soilssl:fitpoints", "predictmap": "soilssl:predictmap",
        "extractfeatures": "soilssl:extractfeatures", "samplingdesign": "soilssl:samplingdesign"}
    design = children["samplingdesign"].parameterSources()
    assert design["MODEL"][0].outputChildId() == "fitpoints"
    assert design["INPUT"][0].outputChildId() == "extractfeatures"
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import make_model
    finally:
        sys.path.pop(0)
    fresh = QgsProcessingModelAlgorithm()
    assert make_model.build_sampling().toFile(str(tmp_path / "fresh.model3"))
    assert fresh.fromFile(str(tmp_path / "fresh.model3"))
    assert fresh.toVariant() == model.toVariant()  # regenerate: scripts/make_model.py
