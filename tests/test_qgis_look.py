"""What a person sees after running SoilSSL from its algorithm dialogs (issue 10, part 4).

Every run here goes through the real Processing dialog (``AlgorithmDialog.runAlgorithm``):
the algorithm runs in a background task as in the desktop, then Processing loads the
outputs ("Open output file after running") into the project, with a Layers panel model
(``QgsLayerTreeModel``) watching, and the dialog's own log records what it printed.
"""
import itertools
import os
import time

import numpy as np
import pytest
import rasterio

from conftest import write_raster


@pytest.fixture
def dialogs(qgis_app, monkeypatch):
    from processing.tools import general

    class Iface:  # the QGIS main window does not exist headless
        def mainWindow(self):  # noqa: N802
            return None

    monkeypatch.setattr(general, "iface", Iface())
    return run_dialog


class Run:
    def __init__(self, ok, results, log, layers, model):
        self.ok, self.results, self.log, self.layers, self.model = ok, results, log, layers, model

    def legend(self, layer):
        """The Layers panel's legend nodes of ``layer`` (as the panel shows them now)."""
        from qgis.core import QgsProject
        node = QgsProject.instance().layerTreeRoot().findLayer(layer.id())
        return self.model.layerLegendNodes(node)


def run_dialog(alg_id, params, timeout=240):
    """Run ``alg_id`` as its dialog's Run button does; -> Run."""
    import processing
    from qgis.core import QgsApplication, QgsLayerTreeModel, QgsProject
    from qgis.PyQt.QtWidgets import QTextEdit
    project = QgsProject.instance()
    project.removeAllMapLayers()
    model = QgsLayerTreeModel(project.layerTreeRoot())  # the Layers panel
    dlg = processing.createAlgorithmDialog(alg_id, params)
    done = []
    dlg.algorithmFinished.connect(lambda ok, res: done.append((ok, res)))
    try:
        dlg.runAlgorithm()
        start = time.time()
        while not done and time.time() - start < timeout:
            QgsApplication.processEvents()
            time.sleep(0.01)
        log = dlg.findChild(QTextEdit, "txtLog")
        text, html = log.toPlainText(), log.toHtml()
        fragments = []  # (text, font family) of each run of text in the log
        block = log.document().begin()
        while block.isValid():
            it = block.begin()
            while not it.atEnd():
                fragments.append((it.fragment().text(), it.fragment().charFormat().fontFamily()))
                it += 1
            block = block.next()
    finally:
        dlg.close()
        dlg.deleteLater()
    assert done and done[0][0], text
    layers = {lyr.name(): lyr for lyr in project.mapLayers().values()}
    run = Run(done[0][0], done[0][1], text, layers, model)
    run.html = html
    run.fragments = fragments
    return run


def painted(node):
    """The image the Layers panel paints for a legend node (Qt.DecorationRole): for a
    colour ramp, the ramp with its min and max labels."""
    return node.data(1).toImage()


def data_range(path, band=1):
    with rasterio.open(path) as ds:
        a = ds.read(band, masked=True)
    return float(a.min()), float(a.max())


# ----------------------------------------------------------------------------- data
@pytest.fixture
def scene(tmp_path):
    """A 3-band 128 x 128 UTM raster with a smooth pattern and 40 points whose 'ph' follows
    the pattern (7.6 .. 9.8)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    base = np.stack([xx, yy, xx * yy])
    img = (40 + 200 * base + rng.normal(0, 5, base.shape)).clip(1, 255).astype(np.uint8)
    raster = write_raster(tmp_path / "scene.tif", img)
    cols, rows = rng.uniform(4, 124, 40), rng.uniform(4, 124, 40)
    ph = 7.6 + 2.2 * (cols / 128 + rows / 128) / 2 + rng.normal(0, 0.05, 40)
    feats = [{"type": "Feature", "properties": {"ph": float(v)},
              "geometry": {"type": "Point", "coordinates": [500000 + 1.5 * c, 2900000 - 1.5 * r]}}
             for c, r, v in zip(cols, rows, ph)]
    import json
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "FeatureCollection", "crs": {
        "type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32637"}},
        "features": feats}))
    return raster, str(points)


@pytest.fixture
def soil_model(qgis_app, scene, tiny_ckpt, tmp_path):
    import processing
    raster, points = scene
    res = processing.run("soilssl:fitpoints", {
        "INPUT": raster, "BACKBONE": tiny_ckpt, "POINTS": points, "FIELDS": ["ph"],
        "METHOD": "ridge", "FOLDS": 3, "TILE_SIZE": 32, "DEVICE": "cpu",
        "OUTPUT_POINTS": str(tmp_path / "oof.gpkg"), "OUTPUT_MODEL": str(tmp_path / "m.pth")})
    return res


# ----------------------------------------------------------------------------- tests
def test_prediction_and_uncertainty_legends_show_the_data_range(dialogs, scene, soil_model,
                                                                tmp_path):
    """Issue 10: after predictmap from its dialog the Layers panel showed 0 ... 1 for data
    ranging 7.63-9.84: the ramp was stretched in place after the QML template's legend was
    built.  The panel's legend must be the one of the layer's real range."""
    from qgis.core import QgsLayerTreeModel, QgsProject, QgsRasterLayer
    raster, _ = scene
    out = {"OUTPUT": str(tmp_path / "ph.tif"), "OUTPUT_UNCERTAINTY": str(tmp_path / "sd.tif")}
    run = dialogs("soilssl:predictmap", dict(INPUT=raster, MODEL=soil_model["OUTPUT_MODEL"],
                                            DEVICE=1, **out))
    for name, path in (("Prediction", out["OUTPUT"]),
                       ("Uncertainty (std of fold models)", out["OUTPUT_UNCERTAINTY"])):
        layer = run.layers[name]
        lo, hi = data_range(path)
        assert hi > lo
        renderer = layer.renderer()
        assert renderer.type() == "singlebandpseudocolor"
        assert renderer.classificationMin() == pytest.approx(lo, rel=1e-4, abs=1e-6)
        assert renderer.classificationMax() == pytest.approx(hi, rel=1e-4, abs=1e-6)
        items = renderer.shader().rasterShaderFunction().colorRampItemList()
        assert items[0].value == pytest.approx(lo, rel=1e-4, abs=1e-6)
        assert items[-1].value == pytest.approx(hi, rel=1e-4, abs=1e-6)
        # what the panel paints = what a legend built now from the layer's renderer paints
        shown = run.legend(layer)
        assert type(shown[-1]).__name__ == "QgsColorRampLegendNode"
        other = QgsProject()
        other.addMapLayer(layer.clone())
        fresh_model = QgsLayerTreeModel(other.layerTreeRoot())
        fresh_node = other.layerTreeRoot().findLayers()[0]
        fresh = fresh_model.layerLegendNodes(fresh_node)
        assert painted(shown[-1]) == painted(fresh[-1])
        # and the file opened again later (sidecar .qml) shows the same range
        again = QgsRasterLayer(path, "again")
        assert again.renderer().classificationMin() == pytest.approx(lo, rel=1e-4, abs=1e-6)
        assert again.renderer().classificationMax() == pytest.approx(hi, rel=1e-4, abs=1e-6)
        del fresh_model, other


def test_feature_raster_grey_first_feature_then_clusters_list_k_classes(dialogs, scene,
                                                                        tiny_ckpt, tmp_path):
    raster, _ = scene
    feats = str(tmp_path / "features.tif")
    run = dialogs("soilssl:extractfeatures", {"INPUT": raster, "BACKBONE": tiny_ckpt,
                                              "TILE_SIZE": 32, "STRIDE": 16, "DEVICE": 1,
                                              "OUTPUT": feats})
    layer = run.layers["Features"]
    renderer = layer.renderer()  # not an RGB of three arbitrary feature dimensions
    assert renderer.type() == "singlebandgray" and renderer.grayBand() == 1
    with rasterio.open(feats) as ds:
        assert ds.descriptions[0] == "f0"
        f0 = ds.read(1, masked=True).compressed()
    ce = renderer.contrastEnhancement()
    assert ce.minimumValue() == pytest.approx(np.quantile(f0, 0.02), abs=0.1 * np.ptp(f0))
    assert ce.maximumValue() == pytest.approx(np.quantile(f0, 0.98), abs=0.1 * np.ptp(f0))
    assert f0.min() <= ce.minimumValue() < ce.maximumValue() <= f0.max()
    legend = [n.data(0) for n in run.legend(layer)]
    assert any("f0" in str(text) for text in legend), legend  # the feature's name

    run = dialogs("soilssl:clustermap", {"INPUT": feats, "K": 3,
                                         "OUTPUT": str(tmp_path / "k.tif")})
    layer = run.layers["Clusters"]
    assert layer.renderer().type() == "paletted"
    assert [c.value for c in layer.renderer().classes()] == [0, 1, 2]
    labels = [n.data(0) for n in run.legend(layer)]
    assert [t for t in labels if str(t).startswith("class ")] == ["class 0", "class 1", "class 2"]
    assert "not a SoilSSL feature raster" not in run.log
    # more classes than the template's 16 colours: each its own colour
    run = dialogs("soilssl:clustermap", {"INPUT": feats, "K": 20,
                                         "OUTPUT": str(tmp_path / "k20.tif")})
    classes = run.layers["Clusters"].renderer().classes()
    assert [c.value for c in classes] == list(range(20))
    assert len({c.color.name() for c in classes}) == 20


def test_clustermap_warns_on_a_plain_image(dialogs, scene, tmp_path):
    raster, _ = scene
    run = dialogs("soilssl:clustermap", {"INPUT": raster, "K": 3,
                                         "OUTPUT": str(tmp_path / "k.tif")})
    assert "is not a SoilSSL feature raster (3 band(s) of uint8, no feature metadata)" in run.log
    assert "Run Extract ViT features on the image first" in run.log


def test_fitpoints_log_table_results_and_residual_points(dialogs, scene, tiny_ckpt, tmp_path):
    import json

    import processing
    raster, points = scene
    params = {"INPUT": raster, "BACKBONE": tiny_ckpt, "POINTS": points, "FIELDS": ["ph"],
              "METHOD": 0, "FOLDS": 3, "TILE_SIZE": 32, "DEVICE": 1,
              "OUTPUT_POINTS": str(tmp_path / "oof.gpkg"),
              "OUTPUT_MODEL": str(tmp_path / "m.pth")}
    run = dialogs("soilssl:fitpoints", params)
    # the CV table in aligned columns, as the log widget shows it
    lines = run.log.splitlines()
    head = [i for i, l in enumerate(lines) if l.startswith("target") and "R² pooled" in l]
    assert len(head) == 1, run.log
    body = lines[head[0] + 1:]
    table = lines[head[0]:head[0] + 1 + next(i for i, l in enumerate(body)
                                             if not l.startswith("ph "))]
    assert {"mlp", "rf_features", "rf_pixels", "ridge", "rf_hybrid", "gbm_hybrid",
            "selected"} <= {l.split()[1] for l in table[1:]}
    for col in ("method", "RMSE", "MAE", "R²", "R² pooled"):
        at = table[0].index(col)
        assert all(l[at - 1] == " " and l[at] != " " for l in table[1:]), (col, table)
    # in the fixed-width font of the system (what <code> gets), its spacing kept
    from qgis.PyQt.QtGui import QFontDatabase
    fixed = QFontDatabase.systemFont(QFontDatabase.FixedFont).family()
    frag = [f for f in run.fragments if "R²\u00a0pooled" in f[0]]
    assert len(frag) == 1 and frag[0][1] == fixed
    # Results: no raw JSON; the outputs stay for models and scripts
    results = run.log[run.log.index("Results:"):]
    assert '"target"' not in results and "rmse_mean" not in results
    assert "CV_TABLE" not in run.results and "OUTPUT_MODEL" in run.results
    res = processing.run("soilssl:fitpoints", dict(params, METHOD="ridge",
                                                  OUTPUT_POINTS=str(tmp_path / "b.gpkg"),
                                                  OUTPUT_MODEL=str(tmp_path / "b.pth")))
    assert json.loads(res["CV_TABLE"])[0]["method"] == "ridge"
    assert json.loads(res["METHODS"]) == {"ph": "ridge"}
    # the out-of-fold points: a diverging ramp on the chosen method's residual, centred on 0
    layer = run.layers["Points with out-of-fold predictions"]
    renderer = layer.renderer()
    # METHOD=all maps with the stack: its residuals are the row 'selected'
    refit = [l for l in lines if "refitting" in l]
    assert len(refit) == 1 and refit[0].startswith("ph: refitting the stack "), refit
    assert renderer.type() == "graduatedSymbol"
    assert renderer.classAttribute() == "res_ph_selected"
    ranges = renderer.ranges()
    assert len(ranges) % 2 == 1
    res_values = [f["res_ph_selected"] for f in layer.getFeatures()]
    assert ranges[0].lowerValue() == pytest.approx(-ranges[-1].upperValue())
    assert ranges[0].lowerValue() <= min(res_values) and max(res_values) <= ranges[-1].upperValue()
    middle = ranges[len(ranges) // 2]
    assert middle.lowerValue() == pytest.approx(-middle.upperValue())  # straddles 0
    low, mid, high = (r.symbol().color() for r in (ranges[0], middle, ranges[-1]))
    assert low.red() > low.blue() and high.blue() > high.red()  # red below 0, blue above
    assert min(mid.red(), mid.green(), mid.blue()) > 200  # neutral, light at 0
    legend = [n.data(0) for n in run.legend(layer)]
    assert len([t for t in legend if " to " in str(t)]) == len(ranges)


# ----------------------------------------------------------------------------- Toolbox
def _algorithms():
    from qgis.core import QgsApplication
    return QgsApplication.processingRegistry().providerById("soilssl").algorithms()


def test_toolbox_names_fit_and_one_readable_icon_per_group(qgis_app):
    from qgis.PyQt.QtGui import QColor
    algs = _algorithms()
    for alg in algs:
        assert len(alg.displayName()) <= 30, alg.displayName()  # default Toolbox width
    by_group = {}
    for alg in algs:
        image = alg.icon().pixmap(16, 16).toImage()
        assert (image.width(), image.height()) == (16, 16), alg.name()
        opaque = [QColor(image.pixel(x, y)) for x in range(16) for y in range(16)
                  if QColor.fromRgba(image.pixel(x, y)).alpha() > 128]
        assert len(opaque) >= 64, alg.name()  # a shape, not a speck
        assert len({c.name() for c in opaque}) >= 2, alg.name()  # with some contrast
        by_group.setdefault(alg.groupId(), []).append(image)
    assert {"features", "training", "soil", "tools"} <= set(by_group)
    firsts = [images[0] for images in by_group.values()]
    for images in by_group.values():
        assert all(i == images[0] for i in images)  # one icon per group
    assert all(a != b for i, a in enumerate(firsts) for b in firsts[i + 1:])  # groups differ


def test_clear_feature_cache_from_the_toolbox(qgis_app, tmp_path, monkeypatch):
    import processing
    from soilssl.core.cache import cache_folder, cache_size
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = cache_folder()
    assert folder == str(tmp_path / "cache" / "soilssl" / "point-features")
    os.makedirs(folder)
    for i in range(3):
        np.save(os.path.join(folder, f"{i}.npy"), np.zeros(100, np.float32))
    with open(os.path.join(folder, "notes.txt"), "w") as f:  # not the cache's: kept
        f.write("mine")
    assert cache_size()["files"] == 3
    res = processing.run("soilssl:clearcache", {})
    assert res["FILES"] == 3 and res["BYTES"] == 3 * (128 + 400) and res["FOLDER"] == folder
    assert os.listdir(folder) == ["notes.txt"]
    assert processing.run("soilssl:clearcache", {})["FILES"] == 0
    alg = qgis_app.processingRegistry().algorithmById("soilssl:clearcache")
    assert alg.group() == "Tools" and "~/.cache/soilssl/point-features" in alg.shortHelpString()
    fit = qgis_app.processingRegistry().algorithmById("soilssl:fitpoints")
    assert "Clear feature cache" in fit.shortHelpString()


def test_model_designer_layout_boxes_apart_titles_whole(qgis_app):
    """The shipped model in the Model Designer: no two boxes overlap and every title fits
    its box on one line in the Designer's own font (it cuts what does not fit in two)."""
    from processing.modeler.ModelerDialog import ModelerDialog
    from qgis.PyQt.QtCore import QRectF
    from qgis.PyQt.QtGui import QFontMetricsF
    dlg = ModelerDialog.create()
    try:
        dlg.loadModel(os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources",
                                   "models", "soil_mapping.model3"))
        items = [i for i in dlg.view().scene().items() if hasattr(i, "component")
                 and hasattr(i, "font")]
        rects = []
        for item in items:
            comp = item.component()
            title = comp.description() if hasattr(comp, "description") else ""
            title = title or getattr(comp, "name", lambda: "")()
            size, pos = comp.size(), comp.position()
            assert QFontMetricsF(item.font()).horizontalAdvance(title) <= size.width() - 60, \
                title  # the icon and the buttons take the rest
            ports = 25 if hasattr(comp, "algorithmId") else 0  # an algorithm's In/Out
            rects.append((title, QRectF(pos.x() - size.width() / 2,
                                        pos.y() - size.height() / 2 - ports, size.width(),
                                        size.height() + 2 * ports)))
        assert len(rects) == 10 + 5 + 8  # inputs, algorithms, outputs
        for (a, ra), (b, rb) in itertools.combinations(rects, 2):
            assert not ra.intersects(rb), (a, b)
    finally:
        dlg.hide()
        dlg.deleteLater()


def shipped_model_and_crossing_count():
    import sys
    from qgis.core import QgsProcessingModelAlgorithm
    root = os.path.dirname(os.path.dirname(__file__))
    sys.path.insert(0, os.path.join(root, "scripts"))
    try:
        from make_model import link_crossings
    finally:
        sys.path.pop(0)
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(os.path.join(root, "resources", "models", "soil_mapping.model3"))
    return model, link_crossings


def test_model_designer_links_do_not_cross(qgis_app):
    """The shipped model's links, as the Model Designer draws them (curves from an output
    port to an input port), cross nowhere."""
    model, link_crossings = shipped_model_and_crossing_count()
    assert link_crossings(model) == []


def test_model_designer_link_crossings_are_found(qgis_app):
    """The crossing count finds two links that cross, from their real ports."""
    from qgis.PyQt.QtCore import QPointF
    model, link_crossings = shipped_model_and_crossing_count()
    # a bad layout: raster top left feeding Extract ViT features bottom right, the classes
    # (K) bottom left feeding Landscape clusters top right: those two links cross once
    for name, (x, y) in (("raster", (140, 60)), ("clusters", (140, 2000))):
        component = model.parameterComponent(name)
        component.setPosition(QPointF(x, y))
        model.setParameterComponent(component)
    for child_id, (x, y) in (("extractfeatures", (3000, 2100)), ("clustermap", (3000, 160))):
        child = model.childAlgorithm(child_id)
        child.setPosition(QPointF(x, y))
        model.setChildAlgorithm(child)
    starts = [{(round(a[0].x()), round(a[0].y())), (round(b[0].x()), round(b[0].y()))}
              for a, b, _ in link_crossings(model)]
    assert {(140 + 135, 60), (140 + 135, 2000)} in starts  # from the boxes' right edges


def test_fitpoints_all_maps_the_stack_through_predictmap(qgis_app, scene, tiny_ckpt, tmp_path,
                                                         monkeypatch):
    """METHOD=all in Processing: METHODS names the stack's weights, the model holds the
    stack, and predictmap maps it (with the fold models' spread) like any other head."""
    import json
    from functools import partial

    import processing
    import rasterio
    from soilssl.core import soil
    from soilssl.core.cv import cross_validate
    from soilssl.core.kriging import ResidualKriging
    from soilssl.core.selection import nested_selection
    from soilssl.core.stacking import describe
    rf = {"n_estimators": 15, "search_estimators": 8, "min_samples_leaf": (1,), "n_jobs": 1}
    fast = {"mlp": {"max_epochs": 30, "hidden": 32}, "rf": rf, "gbm": {"max_iter": 30},
            "rf_hybrid": {"inner": rf}, "gbm_hybrid": {"inner": {"max_iter": 30}}}
    monkeypatch.setattr(soil, "cross_validate", partial(cross_validate, head_options=fast))
    monkeypatch.setattr(soil, "nested_selection", partial(nested_selection, head_options=fast))
    monkeypatch.setattr(soil, "baseline_spread", partial(soil.baseline_spread, head_options=fast))
    raster, points = scene
    res = processing.run("soilssl:fitpoints", {
        "INPUT": raster, "BACKBONE": tiny_ckpt, "POINTS": points, "FIELDS": ["ph"],
        "METHOD": "all", "FOLDS": 3, "TILE_SIZE": 32, "DEVICE": "cpu",
        "OUTPUT_POINTS": str(tmp_path / "oof.gpkg"), "OUTPUT_MODEL": str(tmp_path / "m.pth")})
    model = soil.load_model(res["OUTPUT_MODEL"])
    weights = model["stacks"]["ph"]
    kriged = model["kriging"].get("ph")  # the stack's residual kriging, when it kept any
    assert json.loads(res["METHODS"]) == {"ph": "selected: " + describe(weights) + (
        f" + {ResidualKriging.from_state(kriged).describe()}" if kriged else "")}
    assert model["heads"]["ph"]["method"] == "stack" and model["methods"] == {"ph": "selected"}
    base = [r for r in json.loads(res["CV_TABLE"]) if r["method"] == "rf_pixels"]
    assert len(base) == 1 and base[0]["seed_sd_percent"] > 0  # rf_pixels' spread over seeds
    pred = processing.run("soilssl:predictmap", {
        "INPUT": raster, "MODEL": res["OUTPUT_MODEL"], "STRIDE": 16, "DEVICE": "cpu",
        "OUTPUT": str(tmp_path / "map.tif"), "OUTPUT_UNCERTAINTY": str(tmp_path / "sd.tif")})
    with rasterio.open(pred["OUTPUT"]) as ds, rasterio.open(pred["OUTPUT_UNCERTAINTY"]) as sd:
        band, spread = ds.read(1), sd.read(1)
    ok = band != soil.PRED_NODATA
    assert ok.mean() > 0.5 and np.isfinite(band[ok]).all()
    assert 7.0 < band[ok].min() and band[ok].max() < 10.5  # within reach of ph 7.6 .. 9.8
    assert (spread[ok] >= 0).all() and spread[ok].max() > 0
