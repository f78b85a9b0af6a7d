"""kNNDM folds and geodist (core/knndm.py), the geodist report figure, FOLD_MODE=knndm."""
import os

import numpy as np
import pytest

from conftest import write_raster
from soilssl.core.cv import spatial_folds
from soilssl.core.errors import InputError
from soilssl.core.knndm import (cv_distances, fold_distances, geodist, knndm_folds,
                                prediction_distances, prediction_locations, sample_distances,
                                wasserstein)
from soilssl.core.raster import TileSource


def clustered(n_clusters=10, per=30, radius=2.0, size=100.0, seed=0):
    """``n_clusters`` tight clusters of ``per`` points spread over a size × size area."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1 * size, 0.9 * size, (n_clusters, 2))
    return (centres[:, None, :] + rng.normal(0, radius, (n_clusters, per, 2))).reshape(-1, 2)


def grid(size=100.0, n=40):
    g = (np.arange(n) + 0.5) * size / n
    xx, yy = np.meshgrid(g, g)
    return np.column_stack([xx.ravel(), yy.ravel()])


# ----------------------------------------------------------------------------- distances

def test_distances_by_hand():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [5.0, 0.0]])
    assert sample_distances(pts).tolist() == [1.0, 1.0, 0.0, 0.0]  # duplicates: 0
    assert prediction_distances(pts, [[0.0, 2.0], [9.0, 3.0]]).tolist() == [2.0, 5.0]
    # folds {0, 1} | {2, 3}: each held-out point's nearest point in the other fold
    assert cv_distances(pts, [0, 0, 1, 1]).tolist() == [5.0, 4.0, 4.0, 4.0]
    assert cv_distances(pts, [0, 1, 0, 1]).tolist() == [1.0, 1.0, 0.0, 0.0]
    # W = area between the ECDFs: {0, 1} vs {2}: (2 - 0)·½ + (2 - 1)·½ = 1.5
    assert wasserstein([0.0, 1.0], [2.0]) == pytest.approx(1.5)
    assert wasserstein([3.0, 1.0], [1.0, 3.0]) == 0.0
    with pytest.raises(InputError, match="2 folds"):
        cv_distances(pts, [0, 0, 0, 0])
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        sample_distances(np.zeros((4, 3)))


# ----------------------------------------------------------------------------- kNNDM

def test_knndm_beats_kmeans_folds_on_clustered_samples():
    """Tight clusters over a larger area: random folds test far too short distances
    (neighbours in the same cluster), K-means folds of 5 far too long ones; kNNDM matches
    the map's distances better than both."""
    xy, pred = clustered(), grid()
    res = knndm_folds(xy, pred, k=5, seed=0)
    assert res.clustered and res.nk is not None and res.nk >= 5
    km, rnd = spatial_folds(xy, 5, "kmeans", 0), spatial_folds(xy, 5, "random", 0)
    gd = geodist(xy, pred, {"kmeans": km, "random": rnd, "knndm": res.folds}, "knndm")
    assert gd.W["knndm"] == pytest.approx(res.W)
    assert gd.W["knndm"] < 0.7 * gd.W["kmeans"]
    assert gd.W["knndm"] < 0.7 * gd.W["random"]
    assert res.W == pytest.approx(min(res.candidates.values()))
    # random folds: each point's nearest other-fold neighbour is in its own cluster
    assert np.median(gd.cv["random"]) < 0.2 * np.median(gd.prediction)
    np.testing.assert_allclose(res.Gjstar, cv_distances(xy, res.folds))
    np.testing.assert_allclose(res.Gij, gd.prediction)


def test_knndm_on_random_samples_is_random_cv():
    rng = np.random.default_rng(3)
    xy, pred = rng.uniform(0, 100, (200, 2)), grid()
    res = knndm_folds(xy, pred, k=5, seed=4)
    assert not res.clustered and res.nk is None and res.method == "random CV"
    np.testing.assert_array_equal(res.folds, spatial_folds(xy, 5, "random", 4))
    gd = fold_distances(xy, pred, 5, seed=4)
    assert gd.W["knndm"] == pytest.approx(gd.W["random"])
    assert gd.notes and "not clustered" in gd.summary()
    assert gd.W["knndm"] < gd.W["kmeans"]


@pytest.mark.parametrize("k,clustering", [(2, "hierarchical"), (4, "hierarchical"),
                                          (7, "kmeans")])
def test_fold_count_and_sizes(k, clustering):
    xy = clustered(n_clusters=6, per=15, seed=k)
    res = knndm_folds(xy, grid(n=20), k=k, clustering=clustering, n_candidates=30, seed=1)
    sizes = np.bincount(res.folds)
    assert res.folds.dtype == np.int64 and len(res.folds) == len(xy)
    assert len(sizes) == k and sizes.min() >= 2
    assert sizes.max() <= (0.5 if k > 2 else 0.6) * len(xy)
    again = knndm_folds(xy, grid(n=20), k=k, clustering=clustering, n_candidates=30, seed=1)
    np.testing.assert_array_equal(res.folds, again.folds)  # deterministic


def test_knndm_reports_progress_and_honours_cancel():
    from soilssl.core.errors import Cancelled
    from soilssl.core.progress import Progress
    xy, pred = clustered(n_clusters=5, per=8), grid(n=10)
    seen = []
    knndm_folds(xy, pred, k=3, progress=Progress(on_progress=seen.append))
    assert seen[0] == 0.0 and seen[-1] == 100.0 and seen == sorted(seen) and len(seen) > 10
    calls = []
    with pytest.raises(Cancelled):
        knndm_folds(xy, pred, k=3, progress=Progress(
            on_progress=calls.append, is_cancelled=lambda: len(calls) >= 3))
    assert len(calls) == 3


def test_merge_keeps_big_clusters_and_deals_out_the_rest():
    """CAST's merge: clusters ordered along the first principal component (here x); one of
    at least N/k points keeps a fold of its own, the others are dealt out in turn."""
    from soilssl.core.knndm import _merge
    xs = [0.0] * 5 + [1.0] + [2.0] + [3.0] * 4 + [4.0] + [5.0]  # 13 points, 6 clusters
    labels = np.array([9] * 5 + [1] + [2] + [3] * 4 + [4] + [5])
    coords = np.column_stack([xs, np.zeros(13)])
    folds = _merge(labels, coords, np.array([1.0, 0.0]), k=3)
    # N/k = 4.33: the cluster of 5 (x = 0) keeps fold 0; the rest (x = 1, 2, 3, 4, 5)
    # go in turn to folds 1, 2, 1, 2, 1
    assert folds.tolist() == [0] * 5 + [1] + [2] + [1] * 4 + [2] + [1]


def test_knndm_bad_inputs():
    xy, pred = clustered(n_clusters=3, per=4), grid(n=10)
    with pytest.raises(InputError, match="too few"):
        knndm_folds(xy, pred, k=7)
    with pytest.raises(InputError, match="clustering"):
        knndm_folds(xy, pred, k=3, clustering="dbscan")
    with pytest.raises(InputError, match="maxp"):
        knndm_folds(xy, pred, k=3, maxp=0.3)
    with pytest.raises(InputError, match="prediction locations"):
        knndm_folds(xy, np.zeros((0, 2)), k=3)
    with pytest.raises(InputError, match="prediction locations"):
        spatial_folds(xy, 3, "knndm")
    folds = spatial_folds(xy, 3, "knndm", prediction=pred)
    assert sorted(np.unique(folds)) == [0, 1, 2]


# ----------------------------------------------------------------------------- raster

def test_prediction_locations_are_valid_seeded_pixel_centres(rgb, tmp_path):
    src = TileSource(rgb)  # 150 x 100 px of 1.5 m; nodata in the top-left 40 x 40
    a = prediction_locations(src, 300, seed=2)
    b = prediction_locations(src, 300, seed=2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (300, 2) and len(np.unique(a, axis=0)) == 300
    cols, rows = src.points_to_pixels(a[:, 0], a[:, 1])
    assert src.inside(cols, rows).all()
    np.testing.assert_allclose(cols % 1, 0.5)  # pixel centres
    assert not ((cols < 40) & (rows < 40)).any()
    assert not np.array_equal(a, prediction_locations(src, 300, seed=3))
    empty = TileSource(write_raster(tmp_path / "nd.tif", np.zeros((1, 10, 10), np.uint8),
                                    nodata=0))
    with pytest.raises(InputError, match="nodata"):
        prediction_locations(empty, 50)


# ----------------------------------------------------------------------------- report

def test_geodist_report_section(tmp_path):
    from soilssl.core.cv import cross_validate
    from soilssl.core.report import geodist_figure, write_report
    xy, pred = clustered(n_clusters=6, per=10), grid(n=20)
    res = knndm_folds(xy, pred, k=3)
    gd = fold_distances(xy, pred, 3, given={"knndm": res.folds})
    assert list(gd.cv) == ["kmeans", "random", "knndm"] and gd.used == "knndm"
    assert gd.notes == []  # clustered: kNNDM's own folds
    assert [r["used"] for r in gd.table()] == [False, False, True]
    fig = geodist_figure(gd)
    ecdf, dens = fig.axes
    labels = [t.get_text() for t in ecdf.get_legend().get_texts()]
    assert labels[:2] == ["sample-to-sample", "prediction-to-sample"]
    assert f"CV, knndm folds (W = {gd.W['knndm']:.3g}) — used" in labels
    assert len(ecdf.lines) == 5 and len(dens.lines) == 5
    y = np.random.default_rng(0).normal(size=len(xy))
    cv = cross_validate({"pixels": xy}, y, res.folds, ["rf_pixels"],
                        head_options={"rf": {"n_estimators": 5}})
    path = write_report(str(tmp_path / "r.html"), cv, xy, {"target1": "rf_pixels"},
                        geodist=gd)
    with open(path, encoding="utf-8") as f:
        html = f.read()
    assert "kNNDM: test-to-training distances" in html
    assert "Do the folds test the map?" in html and f"{gd.W['kmeans']:.4g}" in html
    assert html.count("data:image/png;base64") == 3


# ----------------------------------------------------------------------------- QGIS

def test_fitpoints_fold_mode_knndm(qgis_app, rgb, tiny_ckpt, tmp_path):
    """Three tight clusters of points in a 150 x 100 px raster: FOLD_MODE=knndm gives the
    points 3 folds, logs and reports the W of the three fold modes, stores them in the
    model."""
    import processing
    import torch
    from qgis.core import QgsVectorLayer
    from test_errors import X0, Y0, PX, write_points
    from conftest import feedback
    rng = np.random.default_rng(0)
    centres = [(60, 60), (120, 30), (130, 85), (80, 90)]
    cr = np.concatenate([np.array(c) + rng.uniform(-3, 3, (8, 2)) for c in centres])
    pts = write_points(tmp_path / "p.geojson", cr.tolist(),
                       ph=rng.normal(6, 1, len(cr)).round(2).tolist())
    fb = feedback()
    res = processing.run("soilssl:fitpoints", {
        "INPUT": rgb, "BACKBONE": tiny_ckpt, "TILE_SIZE": 32, "POINTS": pts, "FIELDS": ["ph"],
        "METHOD": "ridge", "FOLDS": 3, "FOLD_MODE": 2, "DEVICE": "cpu", "WORKERS": 0,
        "OUTPUT_POINTS": str(tmp_path / "oof.gpkg"), "OUTPUT_MODEL": str(tmp_path / "m.pth"),
        "OUTPUT_REPORT": str(tmp_path / "r.html")}, feedback=fb)
    oof = QgsVectorLayer(res["OUTPUT_POINTS"], "oof")
    folds = np.array([f["cv_fold"] for f in oof.getFeatures()])
    assert sorted(set(folds.tolist())) == [0, 1, 2] and np.bincount(folds).min() >= 2
    # the folds are kNNDM's for the raster's valid pixels (same seed, same locations)
    src = TileSource(rgb)
    xy = np.column_stack([X0 + cr[:, 0] * PX, Y0 - cr[:, 1] * PX])
    pred = prediction_locations(src, seed=0)
    np.testing.assert_array_equal(folds, knndm_folds(xy, pred, 3).folds)
    model = torch.load(res["OUTPUT_MODEL"], weights_only=True)
    assert model["fold_mode"] == "knndm"
    rows = {r["folds"]: r for r in model["geodist"]}
    assert set(rows) == {"kmeans", "random", "knndm"} and rows["knndm"]["used"]
    gd = fold_distances(xy, pred, 3, given={"knndm": folds})
    assert rows["kmeans"]["W"] == pytest.approx(gd.W["kmeans"])
    assert any("Nearest-neighbour distance match" in m for m in fb.infos)
    with open(res["OUTPUT_REPORT"], encoding="utf-8") as f:
        html = f.read()
    assert "Do the folds test the map?" in html and "kNNDM" in html
    assert os.path.getsize(res["OUTPUT_MODEL"]) > 0
