"""What a person sees after running SoilSSL from its algorithm dialogs (issue 10, part 4).

Every run here goes through the real Processing dialog (``AlgorithmDialog.runAlgorithm``):
the algorithm runs in a background task as in the desktop, then Processing loads the
outputs ("Open output file after running") into the project, with a Layers panel model
(``QgsLayerTreeModel``) watching, and the dialog's own log records what it printed.
"""
import os
import time

import numpy as np
import pytest
import rasterio

from conftest import TINY, write_raster


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
    finally:
        dlg.close()
        dlg.deleteLater()
    assert done and done[0][0], text
    layers = {lyr.name(): lyr for lyr in project.mapLayers().values()}
    run = Run(done[0][0], done[0][1], text, layers, model)
    run.html = html
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
