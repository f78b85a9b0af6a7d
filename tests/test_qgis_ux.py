"""SoilSSL the way QGIS users meet it: Toolbox help, dialogs, styles, logging, missing
packages, batch processing, the graphical-modeler chain and the plugin zip."""
import html
import json
import logging
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import rasterio

from conftest import ROOT, TINY, feedback, write_raster

DEMO = os.path.join(ROOT, "resources", "demo")
MODEL = os.path.join(ROOT, "resources", "models", "soil_mapping.model3")
GROUPS = {"extractfeatures": "features", "clustermap": "features", "pcamap": "features",
          "pretrain": "training", "fitpoints": "soil", "predictmap": "soil"}


def algorithms():
    from qgis.core import QgsApplication
    return QgsApplication.processingRegistry().providerById("soilssl").algorithms()


@pytest.fixture
def features(tmp_path):
    """A small stand-in feature raster (8 float bands, a NaN nodata corner)."""
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(0, 1, (8, 12, 10)) + 3, rng.normal(0, 1, (8, 12, 10)) - 3],
                       axis=2).astype(np.float32)
    f[:, :2, :2] = np.nan
    return write_raster(tmp_path / "features.tif", f, nodata=float("nan"))


# ----------------------------------------------------------------------------- Toolbox
def test_every_algorithm_documents_each_parameter_group_icon_advanced(qgis_app):
    from qgis.core import QgsProcessingParameterDefinition as Def
    from soilssl.algorithms import help as texts
    assert set(GROUPS) <= {a.name() for a in algorithms()}
    for alg in algorithms():
        text = alg.shortHelpString()
        names = {p.name() for p in alg.parameterDefinitions()}
        shown = {html.escape(p.description(), quote=False) for p in alg.parameterDefinitions()}
        documented = set(re.findall(r"<li><b>(.*?)</b>: ", text))  # by the form's labels
        assert documented == shown, (alg.name(), shown ^ documented)
        assert "Tresson" in text and "Geoderma" in text
        assert alg.groupId() == GROUPS.get(alg.name(), alg.groupId())
        assert alg.group() == texts.GROUPS[alg.groupId()]
        assert not alg.icon().isNull()
        advanced = {p.name() for p in alg.parameterDefinitions() if p.flags() & Def.FlagAdvanced}
        assert {"AMP", "WORKERS", "SEED"} & names <= advanced, alg.name()
        for p in alg.parameterDefinitions():  # hidden by default: must work untouched
            if p.name() in advanced:
                assert p.flags() & Def.FlagOptional or p.defaultValue() is not None, p.name()
    ext = qgis_app.processingRegistry().algorithmById("soilssl:extractfeatures")
    text = ext.shortHelpString()
    assert "<b>Device</b>: auto picks CUDA when available, else the CPU. <i>Default: auto." in text
    assert "<b>Batch size</b>: Tiles per forward pass. <i>Default: 32." in text
    assert "<b>DEVICE</b>" not in text and "<b>BATCH_SIZE</b>" not in text


def test_algorithm_dialogs_open_headless(qgis_app, monkeypatch):
    import processing
    from processing.tools import general
    from qgis.PyQt.QtWidgets import QWidget

    class Iface:  # the QGIS main window does not exist headless
        def mainWindow(self):  # noqa: N802
            return None

    monkeypatch.setattr(general, "iface", Iface())
    for alg in algorithms():
        dlg = processing.createAlgorithmDialog(alg.id())
        try:
            panel = dlg.mainWidget()
            assert set(panel.wrappers) == {p.name() for p in alg.parameterDefinitions()}
            for name, wrapper in panel.wrappers.items():
                widget = wrapper.wrappedWidget() if hasattr(wrapper, "wrappedWidget") \
                    else wrapper.widget
                assert isinstance(widget, QWidget), (alg.id(), name)
            dlg.show()
            if "DEVICE" in panel.wrappers:  # widgets start at the parameters' defaults
                assert panel.wrappers["DEVICE"].parameterValue() == 0  # auto
        finally:
            dlg.close()
            dlg.deleteLater()


# ----------------------------------------------------------------------------- styles
def load_results(alg, params):
    """Run as the Toolbox does with 'Open output file after running' and return the
    project layers it loaded, by source path."""
    import processing
    from qgis.core import QgsProject
    QgsProject.instance().removeAllMapLayers()
    processing.runAndLoadResults(alg, params, feedback=feedback())
    return {os.path.normpath(lyr.source()): lyr
            for lyr in QgsProject.instance().mapLayers().values()}


def test_outputs_load_with_their_qml_styles(qgis_app, features, tmp_path):
    from qgis.core import QgsRasterLayer
    layers = load_results("soilssl:clustermap", {"INPUT": features, "K": 3,
                                                 "OUTPUT": str(tmp_path / "k.tif")})
    k = layers[str(tmp_path / "k.tif")]
    assert k.renderer().type() == "paletted"
    layers = load_results("soilssl:pcamap", {"INPUT": features, "OUTPUT": str(tmp_path / "p.tif")})
    assert layers[str(tmp_path / "p.tif")].renderer().type() == "multibandcolor"
    # the sidecar style also applies when the file is opened later, outside Processing
    assert QgsRasterLayer(str(tmp_path / "k.tif"), "k").renderer().type() == "paletted"


def test_prediction_uncertainty_aoa_styles(qgis_app, tmp_path):
    """predictmap's three outputs, styled by the same post-processor on load."""
    from processing.gui.Postprocessing import handleAlgorithmResults
    from qgis.core import QgsProcessingContext, QgsProject
    from soilssl.algorithms.styles import style_output
    QgsProject.instance().removeAllMapLayers()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    rng = np.random.default_rng(0)
    expected = {}
    for qml, data, renderer in [("prediction.qml", rng.uniform(6, 9, (1, 8, 8)),
                                 "singlebandpseudocolor"),
                                ("uncertainty.qml", rng.uniform(0, 1, (1, 8, 8)),
                                 "singlebandpseudocolor"),
                                ("aoa.qml", np.stack([rng.integers(0, 2, (8, 8)),
                                                      rng.uniform(0, 2, (8, 8))]), None)]:
        path = write_raster(tmp_path / qml.replace(".qml", ".tif"), data.astype(np.float32),
                            nodata=-9999.0)
        context.addLayerToLoadOnCompletion(path, QgsProcessingContext.LayerDetails(
            qml, QgsProject.instance(), "OUTPUT"))
        style_output(context, path, qml)
        expected[path] = renderer
    alg = qgis_app.processingRegistry().algorithmById("soilssl:predictmap")
    assert handleAlgorithmResults(alg, context, feedback(), False)
    loaded = {os.path.normpath(lyr.source()): lyr
              for lyr in QgsProject.instance().mapLayers().values()}
    for path, renderer in expected.items():
        layer = loaded[path]
        assert layer.renderer().type() in ({renderer} if renderer else
                                           {"singlebandpseudocolor", "paletted"})
        if renderer == "singlebandpseudocolor":  # the ramp spans the layer's own values
            lo = layer.renderer().classificationMin()
            hi = layer.renderer().classificationMax()
            with rasterio.open(path) as ds:
                band = ds.read(1)
            assert lo == pytest.approx(band.min(), rel=1e-4)
            assert hi == pytest.approx(band.max(), rel=1e-4)


# ----------------------------------------------------------------------------- logging
def test_logging_bridged_to_the_running_feedback_once(qgis_app, features, tmp_path):
    import processing
    from soilssl.algorithms.running import FeedbackHandler, bridge
    logger = logging.getLogger("soilssl")

    def bridges():
        return [h for h in logger.handlers if getattr(h, "soilssl_bridge", False)]

    seen = []
    for i in range(2):
        fb = feedback()
        processing.run("soilssl:clustermap", {"INPUT": features, "K": 3,
                                              "OUTPUT": str(tmp_path / f"k{i}.tif")}, feedback=fb)
        seen.append(fb)
        assert len(bridges()) == 1
    for fb in seen:  # each run's messages in its own log, once
        fitting = [m for m in fb.infos if m.startswith("Fitting K-means (K=3)")]
        assert len(fitting) == 1, fb.infos
    logger.info("a message outside any run")
    assert not any("outside any run" in m for fb in seen for m in fb.infos)

    class Stale(logging.Handler):  # left by an earlier load of the plugin (reload)
        soilssl_bridge = True

    logger.addHandler(Stale())
    handler = bridge()
    assert bridges() == [handler] and isinstance(handler, FeedbackHandler)


# ----------------------------------------------------------------------------- packages
MISSING_SCRIPT = r"""
import json, sys
for name in ("torch", "timm", "rasterio", "sklearn"):
    sys.modules[name] = None  # as if not installed: importing them fails
sys.path.insert(0, "/usr/share/qgis/python/plugins")
sys.path.insert(0, sys.argv[1])
from qgis.core import QgsApplication, QgsProcessingException
app = QgsApplication([], False)
app.initQgis()
from processing.core.Processing import Processing
Processing.initialize()
import processing, soilssl
plugin = soilssl.classFactory(None)
plugin.initProcessing()
provider = QgsApplication.processingRegistry().providerById("soilssl")
out = {"algorithms": sorted(a.name() for a in provider.algorithms()),
       "can_execute": sorted({str(a.canExecute()) for a in provider.algorithms()}),
       "warning": provider.warningMessage()}
try:
    processing.run("soilssl:clustermap", {"INPUT": sys.argv[2], "OUTPUT": sys.argv[3]})
except QgsProcessingException as exc:
    out["error"] = str(exc)
print("RESULT" + json.dumps(out))
"""


def test_missing_packages_plugin_loads_and_says_what_to_install(features, tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    r = subprocess.run([sys.executable, "-c", MISSING_SCRIPT, os.path.join(ROOT, ".build",
                        "plugins"), features, str(tmp_path / "k.tif")], capture_output=True,
                       text=True, timeout=300, env=env)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")]
    assert line, r.stdout + r.stderr
    out = json.loads(line[0][len("RESULT"):])
    hint = ("needs these Python packages, which QGIS's Python does not have: torch, timm, "
            "rasterio, scikit-learn. Install them with Plugins → SoilSSL → Install dependencies…")
    assert set(GROUPS) <= set(out["algorithms"])
    assert len(out["can_execute"]) == 1 and out["can_execute"][0].startswith("(False, ")
    assert hint in out["can_execute"][0]
    assert out["warning"] == "Missing packages: Plugins → SoilSSL → Install dependencies…"
    assert hint in out["error"] and not (tmp_path / "k.tif").exists()


def test_one_missing_package_is_named_alone(qgis_app, features, tmp_path, monkeypatch):
    import importlib.util
    import processing
    from qgis.core import QgsProcessingException
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else real(name, *a))
    alg = qgis_app.processingRegistry().algorithmById("soilssl:clustermap")
    ok, message = alg.canExecute()
    assert not ok and message.startswith("SoilSSL needs these Python packages, which QGIS's "
                                         "Python does not have: scikit-learn. Install them")
    with pytest.raises(QgsProcessingException, match="does not have: scikit-learn. Install"):
        processing.run("soilssl:clustermap", {"INPUT": features,
                                              "OUTPUT": str(tmp_path / "k.tif")})
    assert not (tmp_path / "k.tif").exists()


# ----------------------------------------------------------------------------- batch
def test_batch_dialog_runs_one_row_per_raster_outputs_named_per_input(qgis_app, tiny_ckpt,
                                                                      tmp_path):
    """The Batch Processing dialog itself: three rows (one raster each, one of them bad),
    outputs named with the input's name as its 'Fill with parameter values' does."""
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from processing.tools import dataobjects
    rng = np.random.default_rng(0)
    rasters = {}
    for name, bands in (("north", 3), ("south", 3), ("single_band", 1)):
        rasters[name] = write_raster(tmp_path / f"{name}.tif",
                                     rng.integers(1, 255, (bands, 64, 96), dtype=np.uint8))
    alg = qgis_app.processingRegistry().algorithmById("soilssl:extractfeatures")
    dlg = BatchAlgorithmDialog(alg.create())
    try:
        panel = dlg.mainWidget()
        panel.addRow(len(rasters) - 1)
        context = dataobjects.createContext()
        column = panel.parameter_to_column
        for row, (name, path) in enumerate(rasters.items()):
            for param, value in (("INPUT", path), ("BACKBONE", tiny_ckpt), ("TILE_SIZE", 32),
                                 ("DEVICE", 1)):
                panel.wrappers[row][column[param]].setParameterValue(value, context)
            panel.tblParameters.cellWidget(row + 1, column["OUTPUT"]).setValue(
                str(tmp_path / f"features_{name}.tif"))
        dlg.runAlgorithm()
        from qgis.PyQt.QtWidgets import QTextEdit
        log = "\n".join(w.toPlainText() for w in dlg.findChildren(QTextEdit))
        assert "Channel mismatch: the weights expect 3 input channels but 1 were given" in log
        assert "1 executions failed" in log
    finally:
        dlg.close()
        dlg.deleteLater()
    for name in ("north", "south"):
        with rasterio.open(tmp_path / f"features_{name}.tif") as ds:
            assert (ds.width, ds.height, ds.count) == (3, 2, 192)
    # the 1-band raster fails alone (channel mismatch), leaving nothing; the others ran
    assert not [f for f in os.listdir(tmp_path) if "single_band" in f and "features" in f]


# ----------------------------------------------------------------------------- modeler
def test_model_file_is_the_generators_output(qgis_app, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import make_model
    finally:
        sys.path.pop(0)
    from qgis.core import QgsProcessingModelAlgorithm
    assert make_model.build().toFile(str(tmp_path / "fresh.model3"))
    fresh, shipped = QgsProcessingModelAlgorithm(), QgsProcessingModelAlgorithm()
    assert fresh.fromFile(str(tmp_path / "fresh.model3")) and shipped.fromFile(MODEL)
    assert fresh.toVariant() == shipped.toVariant()  # regenerate: scripts/make_model.py


def test_model_opens_in_the_model_designer(qgis_app):
    from processing.modeler.ModelerDialog import ModelerDialog
    from qgis.core import QgsProcessingModelAlgorithm
    dlg = ModelerDialog.create()
    try:
        dlg.loadModel(MODEL)
        model = dlg.model()
        assert isinstance(model, QgsProcessingModelAlgorithm) and model.name() == "soil_mapping"
        assert len(model.childAlgorithms()) == 5
        assert all(c.algorithm() is not None for c in model.childAlgorithms().values())
        assert len(dlg.view().scene().items()) > 20  # inputs, algorithms, outputs, arrows
        assert "DINO self-supervised pretraining" in model.shortHelpString()
    finally:
        dlg.hide()
        dlg.deleteLater()


def test_modeler_chain_runs_headless_on_the_demo(qgis_app, tmp_path):
    import processing
    from qgis.core import QgsProcessingModelAlgorithm, QgsVectorLayer
    from soilssl.algorithms.fitpoints import METHODS
    from soilssl.core.backbone import load_backbone
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(MODEL)
    assert model.validate()[0], model.validate()[1]
    children = model.childAlgorithms()
    assert {c: children[c].algorithmId() for c in children} == {
        "pretrain": "soilssl:pretrain", "fitpoints": "soilssl:fitpoints",
        "predictmap": "soilssl:predictmap", "extractfeatures": "soilssl:extractfeatures",
        "clustermap": "soilssl:clustermap"}
    assert model.dependsOnChildAlgorithms("predictmap") == {"fitpoints", "pretrain"}
    assert model.dependsOnChildAlgorithms("clustermap") == {"extractfeatures", "pretrain"}
    outputs = {d.name() for d in model.destinationParameterDefinitions()}
    assert {"pretrain:backbone", "fitpoints:soil_model", "predictmap:soil_map",
            "predictmap:uncertainty", "predictmap:aoa", "clustermap:clusters"} <= outputs
    out = {name: str(tmp_path / f"{name.split(':')[1]}{ext}") for name, ext in [
        ("pretrain:backbone", ".pth"), ("fitpoints:soil_model", ".pth"),
        ("fitpoints:cv_points", ".gpkg"), ("predictmap:soil_map", ".tif"),
        ("predictmap:uncertainty", ".tif"), ("predictmap:aoa", ".tif"),
        ("clustermap:clusters", ".tif")]}
    # tiny settings; BUFFER 32 px leaves 43 of the demo's 1024 tiles to pretrain on (its
    # 300 points are dense), one step: the chain, not the learning, is under test here
    res = processing.run(model, {
        "raster": os.path.join(DEMO, "rgb.tif"), "points": os.path.join(DEMO, "points.geojson"),
        "fields": ["ph_h2o"], "arch": TINY, "tile_size": 32, "epochs": 1, "buffer": 32,
        "method": METHODS.index("ridge"), "folds": 6, "clusters": 4, **out}, feedback=feedback())
    for name, path in out.items():
        assert os.path.exists(path), name
    bb = load_backbone(out["pretrain:backbone"])
    assert (bb.arch, bb.tile_size, bb.in_chans) == (TINY, 32, 3)
    with rasterio.open(out["predictmap:soil_map"]) as ds:
        assert ds.descriptions == ("ph_h2o",) and ds.res == (48.0, 48.0) and ds.count == 1
        assert ds.crs.to_epsg() == 32637 and (ds.width, ds.height) == (32, 32)
        ph = ds.read(1, masked=True)
    assert 6.5 < float(ph.mean()) < 11 and ph.mask.sum() < 0.1 * ph.size
    with rasterio.open(out["predictmap:uncertainty"]) as ds:
        assert float(ds.read(1, masked=True).min()) >= 0
    with rasterio.open(out["predictmap:aoa"]) as ds:
        assert set(np.unique(ds.read(1, masked=True).compressed())) <= {0.0, 1.0}
    with rasterio.open(out["clustermap:clusters"]) as ds:
        classes = set(np.unique(ds.read(1)).tolist())
    assert classes <= {0, 1, 2, 3, 255} and len(classes - {255}) >= 2
    assert QgsVectorLayer(out["fitpoints:cv_points"], "cv").featureCount() == 295
    assert res["predictmap:soil_map"] == out["predictmap:soil_map"]


# ----------------------------------------------------------------------------- plugin zip
def test_make_zip_installs_into_a_fresh_profile(tmp_path, features):
    dest = tmp_path / "soilssl.zip"
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "make_zip.sh"), str(dest)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with zipfile.ZipFile(dest) as z:
        names = z.namelist()
        meta = z.read("soilssl/metadata.txt").decode()
    # what Install from ZIP does: the plugin's name from the first metadata.txt, then
    # pyplugin_installer's own unzip into the profile's plugins folder
    assert os.path.split(sorted(n for n in names if n.endswith("metadata.txt"))[0])[0] == \
        "soilssl"
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "qgis_unzip", "/usr/share/qgis/python/pyplugin_installer/unzip.py")
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    profile = tmp_path / "profile"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    installer.unzip(str(dest), str(plugins))
    assert all(n.startswith("soilssl/") for n in names)
    files = {n[len("soilssl/"):] for n in names if not n.endswith("/")}
    for needed in ("__init__.py", "plugin.py", "metadata.txt", "README.md",
                   "algorithms/provider.py", "core/raster.py", "resources/icon.svg",
                   "resources/styles/clusters.qml", "resources/models/soil_mapping.model3",
                   "resources/demo/rgb.tif", "resources/demo/points.geojson"):
        assert needed in files, needed
    for f in files:
        assert not f.startswith(("tests/", "scripts/", "docs/", ".venv/", ".build/", ".git",
                                 ".ci/", "dist/", "demo_out/", "bench_out/")), f
        assert "__pycache__" not in f and not f.endswith((".pyc", ".tmp", ".aux.xml")), f
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author",
                "email", "repository", "tracker", "homepage", "icon", "category",
                "hasProcessingProvider"):
        assert f"\n{key}=" in "\n" + meta, key
    icon = [l.split("=", 1)[1] for l in meta.splitlines() if l.startswith("icon=")][0]
    assert icon in files
    # QGIS from that profile alone: enable the plugin, list and run one algorithm
    site = subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_PLUGINPATH", "PYTHONPATH")}
    env.update(QGIS_CUSTOM_CONFIG_PATH=str(profile), PYTHONPATH=site, QT_QPA_PLATFORM="offscreen",
               HOME=str(tmp_path))
    qp = "/usr/bin/qgis_process.bin"
    r = subprocess.run([qp, "plugins", "enable", "soilssl"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([qp, "run", "soilssl:clustermap", "--", f"INPUT={features}", "K=3",
                        f"OUTPUT={tmp_path / 'k.tif'}"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr  # (the repository is not importable here)
    with rasterio.open(tmp_path / "k.tif") as ds:
        assert set(np.unique(ds.read(1)).tolist()) <= {0, 1, 2, 255}
