"""Issue 13 parts 2-3: DI error profile (expected-error map) and conformal prediction intervals."""
import math
import os

import numpy as np
import pytest
import rasterio
import torch

from conftest import feedback
from soilssl.core.aoa import fit_aoa
from soilssl.core.cv import cross_validate, spatial_folds
from soilssl.core.errorprofile import expected_error, fit_error_profile, window_rmse
from soilssl.core.errors import InputError
from soilssl.core.intervals import (conformal_quantile, fit_conformal, fit_trust,
                                    heldout_coverage, interval_factor)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "resources", "demo")


# ----------------------------------------------------------------------------- core

def test_window_rmse_and_isotonic_hand_case():
    di, rmse = window_rmse([0.4, 0.1, 0.3, 0.2], [4.0, 1.0, 3.0, 2.0], window=3)
    assert np.allclose(di, [0.2, 0.3])  # window centres, ordered by DI
    assert np.allclose(rmse, [math.sqrt((1 + 4 + 9) / 3), math.sqrt((4 + 9 + 16) / 3)])
    # window 1: isotonic regression of |error| on DI; 3 then 2 violate -> pooled to 2.5
    state = fit_error_profile([0.1, 0.2, 0.3, 0.4], [1.0, -3.0, 2.0, 4.0], window=1)
    assert np.allclose(expected_error(state, [0.1, 0.2, 0.3, 0.4]), [1.0, 2.5, 2.5, 4.0])
    assert np.allclose(expected_error(state, [0.0, 0.15, 9.0]), [1.0, 1.75, 4.0])  # clip
    assert np.isnan(expected_error(state, [np.nan]))[0]


def test_profile_is_monotone_and_uses_points_inside_the_aoa():
    rng = np.random.default_rng(0)
    di = rng.uniform(0, 2, 300)
    res = rng.normal(0, 0.2 + di)  # error grows with DI
    state = fit_error_profile(di, res, threshold=1.5)
    grid = np.linspace(-1, 3, 200)
    e = expected_error(state, grid)
    assert (np.diff(e) >= -1e-12).all() and e[-1] > 2 * e[0]
    assert state["n"] == int((di <= 1.5).sum()) and float(state["di"].max()) <= 1.5
    # the curve follows the known noise: sigma(DI) = 0.2 + DI
    assert abs(expected_error(state, [1.0])[0] - 1.2) < 0.3


def test_conformal_quantile_finite_sample_correction():
    scores = np.arange(1.0, 10.0)  # n = 9
    assert conformal_quantile(scores, 0.8) == 8.0          # ceil(10 * 0.8) = 8th
    assert conformal_quantile(scores[::-1], 0.5) == 5.0   # order does not matter
    assert math.isinf(conformal_quantile(scores, 0.95))   # ceil(9.5) = 10 > 9
    state = fit_conformal(scores, np.ones(9))
    assert interval_factor(state, 0.8) == 8.0
    with pytest.raises(InputError, match="LEVEL <= 0.900"):
        interval_factor(state, 0.95)
    with pytest.raises(InputError, match="between 0 and 1"):
        conformal_quantile(scores, 1.0)


def _synthetic_cv(n=480, seed=0):
    """Features with a linear signal plus noise whose std grows with |x0|; ridge under
    K-means spatial folds of the point coordinates."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1000, (n, 2))
    X = rng.normal(0, 1, (n, 6)) + coords[:, :1] / 1000
    sigma = 0.3 + 0.5 * np.abs(X[:, 0])
    y = X @ np.array([1.0, -0.5, 0.3, 0.0, 0.0, 0.2]) + rng.normal(0, 1, n) * sigma
    folds = spatial_folds(coords, 6)
    cv = cross_validate({"features": X}, y, folds, ["ridge"], target_names=["ph"])
    return X, folds, cv


@pytest.mark.parametrize("level", [0.8, 0.9])
def test_heldout_coverage_matches_level_on_known_noise(level):
    X, folds, cv = _synthetic_cv()
    aoa = fit_aoa(X, folds)
    res = cv.residuals("ph", "ridge")
    di = aoa["train_di"].numpy()
    scaled = heldout_coverage(di, res, folds, level, aoa["threshold"])
    plain = heldout_coverage(None, res, folds, level)
    for c in (scaled, plain):
        assert abs(c["coverage"] - level) <= 0.05, c
        assert c["n"] == len(res) and set(c["per_fold"]) == set(range(6))
    assert np.isfinite(scaled["mean_width"]) and scaled["mean_width"] > 0


def test_fit_trust_states_round_trip_weights_only(tmp_path):
    X, folds, cv = _synthetic_cv(n=120)
    model = {"targets": ["ph"], "methods": {"ph": "ridge"}, "aoa": fit_aoa(X, folds)}
    messages = []
    from soilssl.core.progress import Progress
    states = fit_trust(model, cv, Progress(on_info=messages.append))
    assert any("ph: prediction intervals" in m and "held-out" in m for m in messages)
    torch.save(states, tmp_path / "s.pth")
    back = torch.load(tmp_path / "s.pth", weights_only=True)
    cal = back["conformal"]["ph"]
    assert cal["scale"] == "error_profile" and cal["n"] == 120
    assert [h["level"] for h in cal["heldout"]] == [0.8, 0.9, 0.95]
    s = np.sort(cal["scores"].numpy())
    assert np.array_equal(s, cal["scores"].numpy())
    assert np.allclose(expected_error(back["error_profile"]["ph"], [0.0, 10.0]),
                       expected_error(states["error_profile"]["ph"], [0.0, 10.0]))
    # a per-target AOA (aoa_targets) whose train_di covers only the points with a value
    res = cv.residuals("ph", "ridge")
    res[:7] = np.nan
    cv.predictions[0, 0, :7] = np.nan
    cv.y[:7, 0] = np.nan
    Xt = X[7:]
    per_target = dict(model, aoa_targets={"ph": fit_aoa(Xt, folds[7:])})
    states = fit_trust(per_target, cv)
    assert states["conformal"]["ph"]["scale"] == "error_profile"
    assert states["conformal"]["ph"]["n"] == 113
    # a DI reference of other points: constant-scale intervals, no profile
    other = dict(model, aoa_targets={"ph": fit_aoa(X[:50], folds[:50])})
    states = fit_trust(other, cv)
    assert states["conformal"]["ph"]["scale"] == "constant" and not states["error_profile"]
    # a classification target (branch classes) gets neither
    model["kinds"] = {"ph": "classification"}
    assert fit_trust(model, cv) == {"error_profile": {}, "conformal": {}}


def test_mixed_model_maps_bounds_of_its_numeric_targets_only():
    """A model with a numeric and a class target (no calibration): the numeric target gets
    its error and bounds, the class target's bands stay nodata with a note; a model with
    no calibrated target at all is refused."""
    from soilssl.core.intervals import TrustMaps
    X, folds, cv = _synthetic_cv(n=120)
    model = {"targets": ["ph"], "methods": {"ph": "ridge"}, "aoa": fit_aoa(X, folds)}
    model.update(fit_trust(model, cv))
    mixed = dict(model, targets=["ph", "soil"], methods={"ph": "ridge", "soil": "rf_pixels"},
                 kinds={"ph": "regression", "soil": "classification"})
    maps = TrustMaps(mixed, error=True, lower=True, upper=True, level=0.9)
    assert any("soil" in n and "nodata" in n for n in maps.notes)
    assert set(maps.q) == {"ph"}
    n = 10
    ok = np.ones(n, bool)
    blocks = {name: np.full((2, n), -9999.0, np.float32) for name in maps.products}
    blocks["prediction"] = np.stack([np.full(n, 7.0), np.full(n, 2.0)]).astype(np.float32)
    maps.fill(blocks, X[:n], ok)
    assert (blocks["lower"][0] < 7.0).all() and (blocks["upper"][0] > 7.0).all()
    assert (blocks["error"][0] > 0).all()
    for name in ("lower", "upper", "error"):
        assert (blocks[name][1] == -9999.0).all()
    only_class = dict(mixed, targets=["soil"], methods={"soil": "rf_pixels"})
    with pytest.raises(InputError, match="No prediction intervals"):
        TrustMaps(only_class, lower=True)


# ----------------------------------------------------------------------------- QGIS

@pytest.fixture(scope="module")
def demo_model(tmp_path_factory, qgis_app):
    """fitpoints (ridge, 4 folds) on the demo with a 2-block ViT-Tiny at 32 px."""
    import processing
    from soilssl.core.backbone import create_model
    tmp = tmp_path_factory.mktemp("trust")
    torch.manual_seed(0)
    arch = "vit_tiny_patch16_224:depth=2"
    vit = create_model(arch, 3, 32)
    ckpt = tmp / "tiny.pth"
    torch.save(vit.state_dict(), ckpt)
    res = processing.run("soilssl:fitpoints", {
        "INPUT": os.path.join(DEMO, "rgb.tif"), "BACKBONE": str(ckpt), "ARCH": arch, "TILE_SIZE": 32,
        "POINTS": os.path.join(DEMO, "points.geojson"), "FIELDS": ["ph_h2o"],
        "METHOD": "ridge", "FOLDS": 4, "DEVICE": "cpu",
        "OUTPUT_POINTS": str(tmp / "oof.gpkg"), "OUTPUT_MODEL": str(tmp / "m.pth"),
        "OUTPUT_REPORT": str(tmp / "r.html")})
    return tmp, res


def test_predictmap_error_and_interval_outputs(demo_model):
    import processing
    tmp, fit = demo_model
    with open(fit["OUTPUT_REPORT"], encoding="utf-8") as f:
        html = f.read()
    assert "Expected error and prediction intervals" in html and "held-out" in html
    out = {k: str(tmp / f"{k}.tif") for k in ("OUTPUT", "OUTPUT_ERROR", "OUTPUT_LOWER",
                                              "OUTPUT_UPPER")}
    log = feedback()
    res = processing.run("soilssl:predictmap", {
        "INPUT": os.path.join(DEMO, "rgb.tif"), "MODEL": fit["OUTPUT_MODEL"], "STRIDE": 32,
        "DEVICE": "cpu", **out}, feedback=log)  # LEVEL: its default, 0.9
    assert any(m.startswith("ph_h2o: 90% prediction interval = prediction ± ") and
               m.endswith("× expected error.") for m in log.infos), log.infos
    arrays = {}
    for key in out:
        with rasterio.open(res[key]) as ds:
            arrays[key] = ds.read(1, masked=True)
            meta = (ds.crs, ds.transform, ds.width, ds.height, ds.nodata)
            if key == "OUTPUT":
                ref = meta
            assert meta == ref, key
        assert os.path.exists(os.path.splitext(res[key])[0] + ".qml")  # styled
    pred, err = arrays["OUTPUT"], arrays["OUTPUT_ERROR"]
    lo, hi = arrays["OUTPUT_LOWER"], arrays["OUTPUT_UPPER"]
    assert (pred.mask == lo.mask).all() and (pred.mask == hi.mask).all() \
        and (pred.mask == err.mask).all()
    assert pred.count() > 0 and (lo <= pred).all() and (pred <= hi).all() and (hi > lo).any()
    assert (err > 0).all()
    with rasterio.open(res["OUTPUT_LOWER"]) as ds:
        assert ds.descriptions == ("ph_h2o lower 90%",)
    # both bounds share one colour scale: lower's minimum .. upper's maximum
    from qgis.core import QgsRasterLayer
    for key in ("OUTPUT_LOWER", "OUTPUT_UPPER"):
        layer = QgsRasterLayer(res[key], key)
        layer.loadNamedStyle(os.path.splitext(res[key])[0] + ".qml")
        assert layer.renderer().classificationMin() == pytest.approx(float(lo.min()), rel=1e-4)
        assert layer.renderer().classificationMax() == pytest.approx(float(hi.max()), rel=1e-4)
    # a higher LEVEL widens the interval
    res95 = processing.run("soilssl:predictmap", {
        "INPUT": os.path.join(DEMO, "rgb.tif"), "MODEL": fit["OUTPUT_MODEL"], "STRIDE": 32,
        "DEVICE": "cpu", "LEVEL": 0.95, "OUTPUT": str(tmp / "p95.tif"),
        "OUTPUT_UPPER": str(tmp / "u95.tif")})
    with rasterio.open(res95["OUTPUT_UPPER"]) as ds:
        assert (ds.read(1, masked=True) >= hi).all()


def test_predictmap_refuses_model_without_residuals(demo_model):
    import processing
    from qgis.core import QgsProcessingException
    tmp, fit = demo_model
    model = torch.load(fit["OUTPUT_MODEL"], weights_only=True)
    for key in ("error_profile", "conformal"):
        model.pop(key)  # as a model file written before issue 13
    old = tmp / "old.pth"
    torch.save(model, old)
    for key in ("OUTPUT_ERROR", "OUTPUT_LOWER", "OUTPUT_UPPER"):
        target = tmp / f"old_{key}.tif"
        with pytest.raises(QgsProcessingException, match="no cross-validation residual"):
            processing.run("soilssl:predictmap", {
                "INPUT": os.path.join(DEMO, "rgb.tif"), "MODEL": str(old), "STRIDE": 32,
                "DEVICE": "cpu", "OUTPUT": str(tmp / "old_p.tif"), key: str(target)})
        assert not target.exists() and not (tmp / "old_p.tif").exists()
    # the old model still maps without the new outputs
    res = processing.run("soilssl:predictmap", {
        "INPUT": os.path.join(DEMO, "rgb.tif"), "MODEL": str(old), "STRIDE": 32,
        "DEVICE": "cpu", "OUTPUT": str(tmp / "old_p.tif")})
    assert os.path.exists(res["OUTPUT"])


def test_aoa_and_error_maps_share_one_dissimilarity_computation(monkeypatch):
    """Asked for the AOA and the error map / bounds together, a map block computes each
    target's DI once, and gets the same error and bounds as without the AOA."""
    import soilssl.core.aoa as aoa
    import soilssl.core.intervals as intervals
    from soilssl.core.heads import RidgeHead
    from soilssl.core.mapheads import MapHeads
    X, folds, cv = _synthetic_cv(n=120)
    head = RidgeHead().fit(X, cv.y[:, 0])
    model = {"targets": ["ph"], "methods": {"ph": "ridge"}, "kinds": {"ph": "regression"},
             "backbone": "test",
             "heads": {"ph": head.state_dict()}, "fold_heads": {"ph": []},
             "aoa": fit_aoa(X, folds)}
    model.update(fit_trust(model, cv))
    calls = []
    real = aoa.aoa_measures

    def counted(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)
    monkeypatch.setattr(aoa, "aoa_measures", counted)
    monkeypatch.setattr(intervals, "aoa_predict",
                        lambda state, x: counted(state, x)[:2])
    rows = np.r_[X[:40], X[:40] * 3]  # inside and far outside the training data
    trust = dict(error=True, lower=True, upper=True, level=0.9)
    alone = MapHeads(model, **trust)(rows)
    assert calls == [80]
    calls.clear()
    both = MapHeads(model, aoa=True, **trust)(rows)
    assert calls == [80]  # one DI computation for the AOA, the error and the bounds
    for name in ("prediction", "error", "lower", "upper"):
        np.testing.assert_array_equal(both[name], alone[name], err_msg=name)
    assert both["aoa"].shape == (2, 80) and (both["aoa"][0, 40:] == 0).any()
