"""Class targets (issue 12): detection, metrics, class heads, CV with a class missing from a
fold, model round trip, and fitpoints -> predictmap with a class field in QGIS."""
import io
import json
import subprocess

import numpy as np
import pytest
import rasterio
import torch
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, cohen_kappa_score,
                             f1_score)

from conftest import write_raster
from soilssl.core.classes import (CLASSIFICATION, REGRESSION, class_metrics, confusion,
                                  disagreement, encode_classes, entropy, is_class_field,
                                  load_head, make_target_head)
from soilssl.core.cv import cross_validate
from soilssl.core.errors import InputError
from soilssl.core.soil import _choose
from test_qgis_look import dialogs  # noqa: F401 (fixture: runs as the algorithm dialog)

TINY_MLP = {"hidden": 16, "max_epochs": 60, "lr": 0.01, "batch_size": 32}


# ----------------------------------------------------------------------------- detection
def test_detection_rules_and_encoding():
    many = list(range(40))
    assert is_class_field(["podzol", "gley", None], text=True)
    assert not is_class_field(["6.5", "7,1", None], text=True)  # text holding numbers
    assert is_class_field([1, 2, 3] * 13 + [None], integer=True)      # 3 values, 39 points
    assert not is_class_field([1, 2, 3, 4, 5] * 6, integer=True)      # 5 >= 10 % of 30
    assert not is_class_field(many * 2, integer=True)                 # 40 distinct values
    assert not is_class_field(list(range(21)) * 30, integer=True)     # > 20 classes
    assert not is_class_field([1.0, 2.0] * 30)                        # a real field
    assert is_class_field([1.5, 2.5] * 3, target_type="classification")
    assert not is_class_field(["a", "b"], text=True, target_type="regression")
    with pytest.raises(InputError, match="TARGET_TYPE"):
        is_class_field([1], target_type="ordinal")

    codes, names = encode_classes(["10", 2, None, "2", "", 10.0])
    assert names == ["2", "10"]  # numeric order, "2" == 2, 10.0 == "10"
    np.testing.assert_array_equal(codes, [1, 0, np.nan, 0, np.nan, 1])
    codes, names = encode_classes(["luvisol", "cambisol", "luvisol"])
    assert names == ["cambisol", "luvisol"] and codes.tolist() == [1, 0, 1]


# ----------------------------------------------------------------------------- metrics
def test_class_metrics_on_a_hand_case_match_sklearn():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    p = np.array([0, 1, 1, 1, 2, 0, 2, 0])
    # confusion by hand: observed 0 -> [2, 1, 0], 1 -> [0, 2, 0], 2 -> [1, 0, 2]
    np.testing.assert_array_equal(confusion(y, p, 4), [[2, 1, 0, 0], [0, 2, 0, 0],
                                                       [1, 0, 2, 0], [0, 0, 0, 0]])
    # kappa by hand: po = 6/8, pe = (3*3 + 2*3 + 3*2) / 64
    pe = 21 / 64
    hand = [0.75, (2 / 3 + 1 + 2 / 3) / 3, (0.75 - pe) / (1 - pe), (2 / 3 + 0.8 + 0.8) / 3]
    got = class_metrics(y, p)
    np.testing.assert_allclose(got, hand)
    np.testing.assert_allclose(got, [accuracy_score(y, p), balanced_accuracy_score(y, p),
                                     cohen_kappa_score(y, p), f1_score(y, p, average="macro")])
    assert np.isnan(class_metrics([1, 1], [1, 1])[2])  # kappa undefined: one class only
    np.testing.assert_allclose(entropy(np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]])), [0, 1],
                               atol=1e-9)
    np.testing.assert_allclose(disagreement(np.array([[0, 1], [0, 2], [1, 1], [0, 1]]),
                                            np.array([0, 1])), [0.25, 0.25])


# ----------------------------------------------------------------------------- heads
def _blobs(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(0, 1, (n, 4)) + np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]])[y]
    return X, y.astype(float)


RF = {"n_estimators": 20, "n_jobs": 1}
HEAD_OPTIONS = {"rf_features": RF, "mlp": TINY_MLP, "ridge": {}, "gbm": {"max_iter": 30},
                "rf_hybrid": {"n_keep": 2, "inner": RF},
                "gbm_hybrid": {"n_keep": 2, "inner": {"max_iter": 30}}}


@pytest.mark.parametrize("method", list(HEAD_OPTIONS))
def test_class_heads_missing_class_and_weights_only_round_trip(method):
    X, y = _blobs()
    opts = HEAD_OPTIONS[method]
    head = make_target_head(method, CLASSIFICATION, n_classes=4, seed=1, **opts)  # no class 3
    head.fit(X, y)
    proba = head.predict_proba(X)
    assert proba.shape == (90, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (proba[:, 3] == 0).all()
    assert (head.predict(X) == y).mean() > 0.85
    buf = io.BytesIO()
    torch.save(head.state_dict(), buf)
    buf.seek(0)
    again = load_head(torch.load(buf, weights_only=True))
    np.testing.assert_array_equal(again.predict_proba(X), proba)
    np.testing.assert_array_equal(again.predict(X), head.predict(X))
    if method == "rf_features":  # the stored trees predict exactly as scikit-learn
        np.testing.assert_allclose(proba[:, :3], head.forest_.predict_proba(X), atol=1e-12)
    if method == "gbm":
        np.testing.assert_allclose(proba[:, :3], head.model_.predict_proba(X), atol=1e-12)
    if method.endswith("hybrid"):  # covariates kept, features reduced by PCA in the fit
        assert head.head.n_features == 2 + head.pca_components.shape[0]
    with pytest.raises(InputError, match="class indices"):
        make_target_head(method, CLASSIFICATION, n_classes=2, **opts).fit(X, y)


def test_balanced_class_weights_recover_a_rare_class():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(190), np.ones(10)]
    X = rng.normal(0, 1, (200, 2)) + y[:, None] * 1.2
    plain = make_target_head("ridge", CLASSIFICATION, n_classes=2).fit(X, y)
    balanced = make_target_head("ridge", CLASSIFICATION, n_classes=2,
                                class_weight="balanced").fit(X, y)
    recall = [(h.predict(X)[y == 1] == 1).mean() for h in (plain, balanced)]
    assert recall[1] > recall[0] and recall[1] >= 0.6


# ----------------------------------------------------------------------------- CV
def test_cv_with_a_class_missing_from_one_training_fold():
    X, y = _blobs(60)
    folds = (np.arange(60) // 3) % 3  # every fold holds classes 0, 1, 2
    y[[0, 1, 9]] = 3  # class 3 only in fold 0: its training folds never see it
    ph = X[:, 0] * 2 + 5
    res = cross_validate({"features": X}, np.column_stack([y, ph]), folds,
                         ["ridge", "rf_features", "mlp"], target_names=["soil", "ph"],
                         kinds=[CLASSIFICATION, REGRESSION],
                         classes={"soil": ["a", "b", "c", "d"]},
                         head_options={"rf": {"n_estimators": 10, "n_jobs": 1,
                                              "max_features": ("sqrt",),
                                              "min_samples_leaf": (1,)},
                                       "mlp": dict(TINY_MLP, max_epochs=20, batch_size=64)})
    proba = res.probabilities["soil"]
    assert proba.shape == (3, 60, 4)
    np.testing.assert_allclose(proba.sum(axis=2), 1.0)
    assert (proba[:, folds == 0, 3] == 0).all()       # never trained on: probability 0
    assert (proba[:, folds != 0, 3] > 0).any()        # folds 1, 2 trained on it
    np.testing.assert_array_equal(res.predictions[0], proba.argmax(axis=2))
    rows = {(r["target"], r["method"]): r for r in res.table()}
    for m, label in enumerate(res.labels):
        row = rows[("soil", label)]
        p = res.predictions[0, m]
        assert row["kind"] == "classification" and row["classes"] == ["a", "b", "c", "d"]
        assert row["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
        assert row["kappa"] == pytest.approx(cohen_kappa_score(y, p))
        assert row["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
        assert np.sum(row["confusion"]) == 60 and np.array(row["confusion"])[3].sum() == 3
        assert "rmse_mean" not in row
        assert rows[("ph", label)]["kind"] == "regression"
        assert rows[("ph", label)]["rmse_mean"] < 2
    assert rows[("soil", "ridge")]["kappa"] > 0.7
    # METHOD=all maps each class target with the highest out-of-fold kappa
    kappas = {label: rows[("soil", label)]["kappa"] for label in res.labels}
    assert _choose(res, "all")["soil"] == max(kappas, key=kappas.get)
    assert "kappa" in res.format_table()


# ----------------------------------------------------------------------------- QGIS
@pytest.fixture
def class_scene(tmp_path):
    """A 3-band 128 x 128 UTM raster of 32 px blocks in three kinds (band k bright in kind
    k), and 45 points with a text 'soil' field of the kind under them (every kind in every
    part of the raster, so each spatial fold trains on all), an integer 'zone' and 'ph'."""
    rng = np.random.default_rng(4)
    kind = (np.add.outer(np.arange(128) // 32, 2 * (np.arange(128) // 32))) % 3
    img = np.where(kind[None] == np.arange(3)[:, None, None], 200, 60).astype(float)
    img = (img + rng.normal(0, 4, img.shape)).clip(1, 255).astype(np.uint8)
    raster = write_raster(tmp_path / "scene.tif", img)
    cols, rows = rng.uniform(6, 122, 45), rng.uniform(6, 122, 45)
    soil = np.array(["gley", "podzol", "luvisol"])[kind[rows.astype(int), cols.astype(int)]]
    feats = [{"type": "Feature",
              "properties": {"soil": str(s), "zone": int(c // 43), "ph": 6 + c / 64},
              "geometry": {"type": "Point",
                           "coordinates": [500000 + 1.5 * c, 2900000 - 1.5 * r]}}
             for c, r, s in zip(cols, rows, soil)]
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "FeatureCollection", "crs": {
        "type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32637"}},
        "features": feats}))
    return raster, str(points), soil


def test_fitpoints_predictmap_class_field_paletted_with_names(qgis_app, dialogs, class_scene,
                                                              tiny_ckpt, tmp_path):
    import processing
    from qgis.core import QgsRasterLayer, QgsVectorLayer
    raster, points, soil = class_scene
    res = processing.run("soilssl:fitpoints", {
        "INPUT": raster, "BACKBONE": tiny_ckpt, "POINTS": points, "FIELDS": ["soil", "ph"],
        "METHOD": "ridge", "FOLDS": 3, "TILE_SIZE": 32, "DEVICE": "cpu", "CLASS_WEIGHTS": True,
        "OUTPUT_POINTS": str(tmp_path / "oof.gpkg"), "OUTPUT_MODEL": str(tmp_path / "m.pth"),
        "OUTPUT_REPORT": str(tmp_path / "r.html")})
    table = json.loads(res["CV_TABLE"])
    soil_rows = {r["method"]: r for r in table if r["target"] == "soil"}
    assert set(soil_rows) == {"ridge"}
    row = soil_rows["ridge"]
    assert {"accuracy", "balanced_accuracy", "kappa", "macro_f1"} <= set(row)
    assert row["classes"] == ["gley", "luvisol", "podzol"]
    chosen = json.loads(res["METHODS"])
    assert chosen == {"soil": "ridge", "ph": "ridge"}
    assert "rmse_mean" in [r for r in table if r["target"] == "ph"][0]

    oof = QgsVectorLayer(res["OUTPUT_POINTS"], "oof")
    feats = list(oof.getFeatures())
    assert len(feats) == 45
    label = chosen["soil"]
    for f in feats:
        assert f[f"pred_soil_{label}"] in ("gley", "luvisol", "podzol")
        assert 1 / 3 - 1e-6 <= f[f"prob_soil_{label}"] <= 1
    right = np.mean([f["pred_soil_ridge"] == f["soil"] for f in feats])
    assert right == pytest.approx(row["accuracy"])
    with open(res["OUTPUT_REPORT"], encoding="utf-8") as f:
        report = f.read()
    assert "kappa" in report and "confusion matrix" in report and "podzol" in report

    out = {k: str(tmp_path / f"{k}.tif") for k in ("OUTPUT", "OUTPUT_UNCERTAINTY",
                                                    "OUTPUT_PROBABILITY", "OUTPUT_AOA")}
    run = dialogs("soilssl:predictmap", {"INPUT": raster, "MODEL": res["OUTPUT_MODEL"],
                                         "STRIDE": 16, "DEVICE": 1, **out})
    loaded = run.layers["Prediction"]  # as Processing loaded it: paletted, legend of names
    assert loaded.renderer().type() == "paletted"
    legend = [str(n.data(0)) for n in run.legend(loaded)]
    assert [t for t in legend if t in ("gley", "luvisol", "podzol")] == \
        ["gley", "luvisol", "podzol"]
    assert "Class probability and entropy (class targets)" in run.layers
    with rasterio.open(out["OUTPUT"]) as ds:
        assert ds.count == 2 and ds.descriptions == ("soil", "ph")
        cls = ds.read(1, masked=True)
        assert json.loads(ds.tags()["classes"]) == {"soil": ["gley", "luvisol", "podzol"]}
    assert set(np.unique(cls.compressed())) <= {0, 1, 2}
    with rasterio.open(out["OUTPUT_PROBABILITY"]) as ds:
        assert ds.descriptions == ("soil probability", "soil entropy")
        prob, ent = ds.read(1, masked=True), ds.read(2, masked=True)
    assert prob.min() >= 1 / 3 - 1e-6 and prob.max() <= 1 + 1e-6
    assert 0 <= ent.min() and ent.max() <= 1 + 1e-6
    with rasterio.open(out["OUTPUT_UNCERTAINTY"]) as ds:
        assert ds.descriptions == ("soil disagreement", "ph std")
        spread = ds.read(1, masked=True)
    assert spread.min() >= 0 and spread.max() <= 1
    info = json.loads(subprocess.run(["gdalinfo", "-json", out["OUTPUT"]], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["bands"][0]["categories"] == ["gley", "luvisol", "podzol"]
    assert "categories" not in info["bands"][1]  # ph
    layer = QgsRasterLayer(out["OUTPUT"], "classes")  # with its sidecar style
    renderer = layer.renderer()
    assert renderer.type() == "paletted" and renderer.band() == 1
    assert [(c.value, c.label) for c in renderer.classes()] == \
        [(0, "gley"), (1, "luvisol"), (2, "podzol")]
    assert len({c.color.name() for c in renderer.classes()}) == 3


def test_integer_field_auto_class_gives_an_integer_class_raster(qgis_app, class_scene,
                                                                tiny_ckpt, tmp_path):
    import processing
    raster, points, _ = class_scene
    common = {"INPUT": raster, "BACKBONE": tiny_ckpt, "POINTS": points, "FIELDS": ["zone"],
              "METHOD": "ridge", "FOLDS": 3, "TILE_SIZE": 32, "DEVICE": "cpu",
              "OUTPUT_POINTS": "TEMPORARY_OUTPUT"}
    res = processing.run("soilssl:fitpoints", dict(common,
                                                   OUTPUT_MODEL=str(tmp_path / "m.pth")))
    row = json.loads(res["CV_TABLE"])[0]
    assert row["kind"] == "classification" and row["classes"] == ["0", "1", "2"]
    forced = processing.run("soilssl:fitpoints", dict(common, TARGET_TYPE=1,
                                                      OUTPUT_MODEL=str(tmp_path / "r.pth")))
    assert json.loads(forced["CV_TABLE"])[0]["kind"] == "regression"
    out = str(tmp_path / "zone.tif")
    processing.run("soilssl:predictmap", {"INPUT": raster, "MODEL": res["OUTPUT_MODEL"],
                                          "STRIDE": 32, "DEVICE": "cpu", "OUTPUT": out})
    with rasterio.open(out) as ds:
        assert ds.dtypes == ("int16",) and ds.nodata == -9999
        assert set(np.unique(ds.read(1, masked=True).compressed())) <= {0, 1, 2}


def test_read_points_encodes_class_fields_by_target_type(qgis_app):
    from qgis.core import (QgsFeature, QgsField, QgsGeometry, QgsPointXY,
                           QgsProcessingException, QgsVectorLayer)
    from qgis.PyQt.QtCore import QVariant
    from soilssl.algorithms.points import read_points
    layer = QgsVectorLayer("Point?crs=EPSG:32637", "pts", "memory")
    layer.dataProvider().addAttributes([QgsField("soil", QVariant.String),
                                        QgsField("zone", QVariant.Int),
                                        QgsField("ph", QVariant.Double),
                                        QgsField("one", QVariant.String)])
    layer.updateFields()
    feats = []
    for i in range(40):
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(500000 + i, 2900000)))
        f.setAttributes([None if i == 5 else ["luvisol", "gley"][i % 2], i % 3 + 1,
                         6 + i / 40, "x"])
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    source = layer  # read_points only uses fields(), getFeatures(), wkbType(), sourceCrs()
    pts, _ = read_points(source, ["soil", "zone", "ph"])
    assert pts.classes == {"soil": ["gley", "luvisol"], "zone": ["1", "2", "3"]}
    assert np.isnan(pts.values[5, 0]) and pts.values[:4, 0].tolist() == [1, 0, 1, 0]
    assert pts.values[:4, 1].tolist() == [0, 1, 2, 0]
    assert pts.values[:2, 2].tolist() == [6.0, 6.025]
    pts, _ = read_points(source, ["zone", "ph"], target_type="regression")
    assert pts.classes is None and pts.values[:3, 0].tolist() == [1, 2, 3]
    pts, _ = read_points(source, ["ph", "zone"], target_type="classification")
    assert len(pts.classes["ph"]) == 40 and pts.classes["zone"] == ["1", "2", "3"]
    with pytest.raises(QgsProcessingException, match="not numeric"):
        read_points(source, ["soil"], target_type="regression")
    with pytest.raises(QgsProcessingException, match="single class"):
        read_points(source, ["one"])


@pytest.mark.parametrize("n_classes", [2, 5])
def test_gbm_in_memory_and_loaded_give_the_same_raw_scores(n_classes):
    """While fitted in memory the gbm heads predict with scikit-learn's compiled trees; once
    loaded, with the flat arrays: the scores are the same to the last bit."""
    from soilssl.core.hybrid import GBMHead, gbm_predict, gbm_raw
    rng = np.random.default_rng(n_classes)
    X = rng.normal(size=(150, 6))
    y = (np.abs(3 * X[:, 0] + X[:, 1]).astype(int)) % n_classes
    head = make_target_head("gbm", CLASSIFICATION, n_classes=n_classes, max_iter=40).fit(X, y)
    Xt = rng.normal(size=(300, 6))
    np.testing.assert_array_equal(head.raw(Xt), gbm_raw(head.arrays, Xt))
    again = load_head(head.state_dict())
    assert again.model_ is None
    np.testing.assert_array_equal(again.predict_proba(Xt), head.predict_proba(Xt))
    reg = GBMHead(max_iter=40).fit(X, X[:, 0] * 2 + rng.normal(0, 0.1, 150))
    np.testing.assert_array_equal(reg.predict(Xt), gbm_predict(reg.arrays, Xt))
