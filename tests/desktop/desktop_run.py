"""SoilSSL in the real QGIS desktop: run by ``qgis --code`` (see tests/desktop/run.sh).

What a user does, driven from QGIS's own event loop (QTimer.singleShot; nothing blocks it):
1. install the plugin from the ZIP through QGIS's plugin installer (Plugins > Manage and
   Install Plugins > Install from ZIP calls the same ``installFromZipFile``);
2. screenshots of the Processing Toolbox showing SoilSSL and of one algorithm dialog;
3. run every algorithm as the dialog's Run button does: a background
   ``QgsProcessingAlgRunnerTask`` with the outputs marked "Open output file" (destination
   project = this project) and loaded by Processing's ``handleAlgorithmResults``:
   extract -> clustermap -> pcamap -> pretrain (tiny) -> fitpoints -> predictmap on the demo
   (the starting backbone outputs/init.pth is made by run.sh, outside QGIS: torch is first
   imported in QGIS by extractfeatures' task, as for a user);
4. checks: QGIS alive, layers in the project with their names and renderers, legends and
   renderer min/max equal to the data's real range (read with GDAL);
5. screenshots of the main window and of the whole screen, ``results.json``, and
   ``os._exit(0)`` if every check passed, 1 if one failed, 3 on a time-out.

With SOILSSL_PHASE=fresh (run.sh's first start: QGIS without torch, a new user) it does
instead: install from the ZIP; check that torch cannot be imported, the provider's warning and
every ``canExecute()`` is False; double-click *Predict soil map* in the Toolbox ("This algorithm
cannot be run" with the Install dependencies link) and trigger Plugins > SoilSSL > Install
dependencies…; screenshots ``fresh_*.png`` and ``results_fresh.json``.

Environment: SOILSSL_PHASE (fresh or chain), SOILSSL_ZIP (the plugin ZIP), SOILSSL_DEMO (resources/demo),
SOILSSL_DESKTOP_OUT (where screenshots, outputs and results.json go), SOILSSL_TIMEOUT (s).
A crash (signal 11) ends the process before results.json is complete: the launcher and
the test see the exit status and the "step" last written.
"""
import json
import os
import subprocess
import time
import traceback

from osgeo import gdal
from qgis.core import (Qgis, QgsApplication, QgsProcessingAlgRunnerTask, QgsProcessingFeedback,
                       QgsProcessingOutputLayerDefinition, QgsProject, QgsRasterLayer,
                       QgsVectorLayer)
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.utils import iface

OUT = os.environ["SOILSSL_DESKTOP_OUT"]
ZIP = os.environ["SOILSSL_ZIP"]
DEMO = os.environ["SOILSSL_DEMO"]
TIMEOUT = float(os.environ.get("SOILSSL_TIMEOUT", "240"))
DATA = os.path.join(OUT, "outputs")
os.makedirs(DATA, exist_ok=True)
K = 5  # clusters asked for
T0 = time.time()
# "fresh": a new user's QGIS without torch (run.sh's first start; no PYTHONPATH); else the chain
PHASE = os.environ.get("SOILSSL_PHASE", "chain")
RESULTS = "results_fresh.json" if PHASE == "fresh" else "results.json"

results = {"step": "start", "checks": [], "runs": {}, "layers": {}, "screenshots": [],
           "messages": [], "errors": [], "finished": False}
_keep = []  # tasks, contexts, feedbacks, dialogs: alive until the end


def save():
    results["elapsed_s"] = round(time.time() - T0, 1)
    tmp = os.path.join(OUT, RESULTS + ".tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, os.path.join(OUT, RESULTS))


def step(name):
    results["step"] = name
    print(f"[desktop] {time.time() - T0:6.1f}s {name}", flush=True)
    save()


def check(name, ok, detail="", part=2):
    """One assertion of the desktop test (``part``: the section of issue 10 it checks)."""
    results["checks"].append({"name": name, "ok": bool(ok), "detail": detail, "part": part})
    print(f"[desktop]   {'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)


def finish(code=None):
    if code is None:
        code = 0 if results["checks"] and all(c["ok"] for c in results["checks"]) else 1
    results["finished"] = code != 3
    results["exit_code"] = code
    step("exit")
    os._exit(code)


def guarded(fn):
    """A step that raises records the error and ends the run (exit 1)."""
    def run(*args):
        try:
            fn(*args)
        except Exception:
            results["errors"].append(traceback.format_exc())
            print(traceback.format_exc(), flush=True)
            finish(1)
    return run


def later(fn, ms=200):
    QTimer.singleShot(ms, guarded(fn))


def on_message(message, tag, level):
    if tag in ("SoilSSL", "Python error", "Processing", "Plugins") or level >= Qgis.Critical:
        results["messages"].append({"tag": tag, "level": int(level), "message": message[:2000]})


def grab(widget, name):
    QgsApplication.processEvents()
    path = os.path.join(OUT, name)
    ok = widget.grab().save(path)
    check(f"screenshot {name}", ok and os.path.getsize(path) > 10000, path)
    results["screenshots"].append(path)


def screen(name):
    """The whole X screen as the window manager shows it (ImageMagick's import)."""
    path = os.path.join(OUT, name)
    proc = subprocess.run(["import", "-window", "root", path], capture_output=True, timeout=60)
    check(f"screenshot {name}", proc.returncode == 0 and os.path.exists(path),
          proc.stderr.decode()[-300:])
    results["screenshots"].append(path)


# -- 1. install ---------------------------------------------------------------------
def start():
    step("install")
    QgsApplication.messageLog().messageReceived.connect(on_message)
    iface.mainWindow().showMaximized()
    import pyplugin_installer
    import qgis.utils
    pyplugin_installer.instance().installFromZipFile(ZIP)
    check("plugin installed from the ZIP and started", "soilssl" in qgis.utils.active_plugins,
          str(qgis.utils.active_plugins))
    installed = os.path.join(qgis.utils.home_plugin_path, "soilssl", "metadata.txt")
    check("plugin files in the profile", os.path.exists(installed), installed)
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("soilssl")
    check("SoilSSL provider registered", provider is not None)
    import sys
    # the guard's mark: None in sys.modules (imported: a module; never looked at: missing)
    check("triton kept out of QGIS", "triton" in sys.modules and sys.modules["triton"] is None,
          repr(sys.modules.get("triton", "not marked")), part=1)
    results["guard_log"] = [m["message"] for m in results["messages"]
                            if m["tag"] == "SoilSSL" and "guard" in m["message"]]
    check("guard says what it did in the log", results["guard_log"], str(results["guard_log"]),
          part=1)
    later(toolbox, 500)


# -- 2. toolbox and dialog screenshots -------------------------------------------------
def show_soilssl_in_toolbox():
    """The Processing Toolbox shown, with SoilSSL's provider and groups expanded at its top:
    -> (toolbox, tree, model, SoilSSL's index or None)."""
    import qgis.utils
    box = qgis.utils.plugins["processing"].toolbox
    box.setUserVisible(True)
    box.raise_()
    tree = box.algorithmTree
    model = tree.model()
    found = next((model.index(r, 0) for r in range(model.rowCount())
                  if model.data(model.index(r, 0), Qt.DisplayRole) == "SoilSSL"), None)
    if found is not None:
        tree.expand(found)
        for row in range(model.rowCount(found)):
            tree.expand(model.index(row, 0, found))
        tree.scrollTo(found, tree.PositionAtTop)
    return box, tree, model, found


def toolbox():
    step("toolbox")
    box, tree, model, found = show_soilssl_in_toolbox()
    check("Toolbox lists the SoilSSL provider", found is not None)
    if found is not None:
        tree.setCurrentIndex(model.index(0, 0, found))
    names = []
    if found is not None:
        for row in range(model.rowCount(found)):
            group = model.index(row, 0, found)
            names += [model.data(model.index(r, 0, group), Qt.DisplayRole)
                      for r in range(model.rowCount(group))]
    results["toolbox_algorithms"] = names
    expected = sorted(a.displayName() for a in
                      QgsApplication.processingRegistry().providerById("soilssl").algorithms())
    check("Toolbox shows every SoilSSL algorithm", sorted(names) == expected and len(names) >= 6,
          str(names))
    later(lambda: (grab(box, "toolbox.png"), grab(iface.mainWindow(), "main_window_toolbox.png"),
                   later(dialog)), 800)


def dialog():
    step("dialog")
    import processing
    dlg = processing.createAlgorithmDialog("soilssl:predictmap", {
        "INPUT": os.path.join(DEMO, "rgb.tif"), "MODEL": os.path.join(DATA, "soil_model.pth"),
        "STRIDE": 32, "OUTPUT": os.path.join(DATA, "prediction.tif")})
    check("algorithm dialog opens", dlg is not None)
    _keep.append(dlg)
    dlg.resize(1000, 720)
    dlg.show()

    def shoot():
        grab(dlg, "dialog_predictmap.png")
        dlg.close()
        later(lambda: run_next(list(CHAIN)))
    later(shoot, 1000)


# -- 3. the chain, as the dialog runs it -------------------------------------------------
def rgb():
    return os.path.join(DEMO, "rgb.tif")


def crop():
    """The demo scene's top-left 256 x 256 px (64 tiles of 32 px), as a user clips a
    raster: one tiny epoch of DINO on all 1024 tiles of the scene takes minutes on a busy
    CI CPU; the algorithm, its task and its checkpoint are the same."""
    path = os.path.join(DATA, "rgb_crop.tif")
    if not os.path.exists(path):
        gdal.Translate(path, rgb(), srcWin=[0, 0, 256, 256])
    return path


def load(path):
    """An output the dialog would open in the project ("Open output file" ticked)."""
    return QgsProcessingOutputLayerDefinition(path, QgsProject.instance())


CHAIN = [
    ("extractfeatures", lambda: {
        "INPUT": rgb(), "BACKBONE": os.path.join(DATA, "init.pth"), "TILE_SIZE": 32,
        "STRIDE": 32, "DEVICE": 0, "BATCH_SIZE": 64,
        "OUTPUT": load(os.path.join(DATA, "features.tif"))}),
    ("clustermap", lambda: {"INPUT": os.path.join(DATA, "features.tif"), "K": K,
                            "OUTPUT": load(os.path.join(DATA, "clusters.tif"))}),
    ("pcamap", lambda: {"INPUT": os.path.join(DATA, "features.tif"),
                        "OUTPUT": load(os.path.join(DATA, "pca.tif"))}),
    ("pretrain", lambda: {
        "INPUT": crop(), "ARCH": "vit_tiny_patch16_224", "INIT": os.path.join(DATA, "init.pth"),
        "TILE_SIZE": 32, "STRIDE": 32, "EPOCHS": 1, "BATCH_SIZE": 64, "OUT_DIM": 256,
        "LOCAL_CROPS": 2, "BUFFER": 0, "DEVICE": 0,
        "OUTPUT": os.path.join(DATA, "ssl_backbone.pth")}),
    ("fitpoints", lambda: {
        "INPUT": rgb(), "BACKBONE": os.path.join(DATA, "ssl_backbone.pth"),
        "POINTS": os.path.join(DEMO, "points.geojson"), "FIELDS": ["ph_h2o"],
        "METHOD": 2, "FOLDS": 3, "DEVICE": 0,
        "OUTPUT_POINTS": load(os.path.join(DATA, "points_cv.gpkg")),
        "OUTPUT_MODEL": os.path.join(DATA, "soil_model.pth"),
        "OUTPUT_REPORT": os.path.join(DATA, "report.html")}),
    ("predictmap", lambda: {
        "INPUT": rgb(), "MODEL": os.path.join(DATA, "soil_model.pth"), "STRIDE": 32,
        "DEVICE": 0, "OUTPUT": load(os.path.join(DATA, "prediction.tif")),
        "OUTPUT_UNCERTAINTY": load(os.path.join(DATA, "uncertainty.tif")),
        "OUTPUT_AOA": load(os.path.join(DATA, "aoa.tif"))}),
]


class Feedback(QgsProcessingFeedback):
    """Keeps what the run tells the user (the dialog's Log tab)."""

    def __init__(self):
        super().__init__()
        self.log = []

    def pushInfo(self, info):  # noqa: N802
        self.log.append(info)
        super().pushInfo(info)

    def pushWarning(self, warning):  # noqa: N802
        self.log.append("WARNING " + warning)
        super().pushWarning(warning)

    def reportError(self, error, fatalError=False):  # noqa: N802,N803
        self.log.append("ERROR " + error)
        super().reportError(error, fatalError)


def run_next(chain):
    if not chain:
        later(checks, 500)
        return
    name, params = chain.pop(0)
    step(f"run {name}")
    from processing.gui.Postprocessing import handleAlgorithmResults
    from processing.tools import dataobjects
    alg = QgsApplication.processingRegistry().createAlgorithmById("soilssl:" + name)
    parameters = params()
    feedback = Feedback()
    context = dataobjects.createContext(feedback)
    ok, msg = alg.checkParameterValues(parameters, context)
    check(f"{name}: parameters accepted", ok, msg)
    if not ok:
        finish(1)
    started = time.time()
    task = QgsProcessingAlgRunnerTask(alg, parameters, context, feedback)
    _keep.extend([alg, feedback, context, task])

    def executed(ok, res):
        seconds = round(time.time() - started, 1)
        results["runs"][name] = {"ok": ok, "seconds": seconds, "log": feedback.log[-60:],
                                 "results": {k: str(v)[:300] for k, v in res.items()}}
        # What AlgorithmDialog.finish does: load the outputs marked for loading, styled.
        loaded = handleAlgorithmResults(alg, context, feedback, False, res) if ok else False
        check(f"{name} ran in a background task and its outputs loaded", ok and loaded,
              f"{seconds} s; " + " | ".join(feedback.log[-3:])[-600:])
        if not ok:
            finish(1)
        later(lambda: run_next(chain))

    task.executed.connect(guarded(executed))
    QgsApplication.taskManager().addTask(task)


# -- 4. what the project shows ---------------------------------------------------------
def data_range(path, band=1):
    ds = gdal.Open(path)
    lo, hi = ds.GetRasterBand(band).ComputeRasterMinMax(False)  # exact, nodata excluded
    return float(lo), float(hi)


def data_values(path):
    import numpy as np
    ds = gdal.Open(path)
    b = ds.GetRasterBand(1)
    a = b.ReadAsArray()
    nodata = b.GetNoDataValue()
    values = set(np.unique(a).tolist())
    return values - ({nodata} if nodata is not None else set())


def number(label):
    import re
    m = re.search(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", label)
    return float(m.group(0)) if m else None


def panel_legend_matches(lyr, name):
    """Does the Layers panel show the legend the layer's renderer gives now?  The panel
    caches its legend nodes; a renderer changed without telling the layer (no
    rendererChanged/legendChanged) leaves the old one there -- issue 10's "0 ... 1 while
    the data ran 7.63-9.84".  The ramp node's icon carries the min/max labels: the
    panel's icons are compared with those of a legend built from the renderer now,
    and both are kept as artefacts."""
    model = iface.layerTreeView().layerTreeModel()
    node = QgsProject.instance().layerTreeRoot().findLayer(lyr.id())
    fresh = lyr.legend().createLayerTreeModelLegendNodes(node)
    _keep.extend(fresh)

    def icons(nodes):
        out = []
        for n in nodes:
            d = n.data(Qt.DecorationRole)
            out.append(d.toImage() if hasattr(d, "toImage") else d)
        return out
    shown, wanted = icons(model.layerLegendNodes(node)), icons(fresh)
    for tag, images in (("panel", shown), ("renderer", wanted)):
        for i, im in enumerate(images):
            if im is not None and not im.isNull():
                im.save(os.path.join(OUT, f"legend_{name}_{tag}_{i}.png"))
    same = len(shown) == len(wanted) and all(
        (a is None and b is None) or (a is not None and b is not None and a == b)
        for a, b in zip(shown, wanted))
    return same


def layer(name):
    """The loaded output EXPECTED[name] names, found by its file: Processing names it after
    the file or after the output's description, depending on Settings > Processing >
    "Prefer output filename for layer names" (and on when Processing read that setting)."""
    filename = EXPECTED[name][0]
    for lyr in QgsProject.instance().mapLayers().values():
        if os.path.basename(lyr.source().split("|")[0]) == filename:
            return lyr
    return None


# output -> (file, renderer type); layers are found by their file (see layer()).
EXPECTED = {
    "features": ("features.tif", None),
    "clusters": ("clusters.tif", "paletted"),
    "pca": ("pca.tif", "multibandcolor"),
    "points_cv": ("points_cv.gpkg", None),
    "prediction": ("prediction.tif", "singlebandpseudocolor"),
    "uncertainty": ("uncertainty.tif", "singlebandpseudocolor"),
    "aoa": ("aoa.tif", "paletted"),
}


# the output descriptions Processing names layers by when it does not use file names
OUTPUT_TITLES = {
    "features": "Features", "clusters": "Clusters", "pca": "PCA colours",
    "points_cv": "Points with out-of-fold predictions", "prediction": "Prediction",
    "uncertainty": "Uncertainty (std of fold models)", "aoa": "Area of applicability",
}


def checks():
    step("checks")
    project = QgsProject.instance()
    results["layers"] = {
        lyr.name(): {"source": lyr.source(),
                     "renderer": lyr.renderer().type() if lyr.renderer() else None}
        for lyr in project.mapLayers().values()}
    print("[desktop] layers:", json.dumps(results["layers"]), flush=True)
    for name, (filename, renderer) in EXPECTED.items():
        lyr = layer(name)
        check(f"layer '{name}' in the project", lyr is not None and lyr.isValid(),
              str(sorted(results["layers"])))
        if lyr is None:
            continue
        check(f"'{name}' is {filename}", lyr.source().split("|")[0].endswith(filename),
              lyr.source())
        check(f"'{name}' is named after its file or its output", lyr.name() in (
            os.path.splitext(filename)[0], OUTPUT_TITLES[name]), lyr.name())
        if renderer:
            check(f"'{name}' renderer is {renderer}", lyr.renderer().type() == renderer,
                  lyr.renderer().type())
    for name in ("prediction", "uncertainty"):
        lyr = layer(name)
        if lyr is None or lyr.renderer().type() != "singlebandpseudocolor":
            continue
        lo, hi = data_range(lyr.source())
        r = lyr.renderer()
        tol = 1e-4 * max(1.0, abs(hi - lo))
        check(f"'{name}' renderer min/max = data range {lo:.4f}..{hi:.4f}",
              abs(r.classificationMin() - lo) <= tol and abs(r.classificationMax() - hi) <= tol,
              f"renderer {r.classificationMin():.4f}..{r.classificationMax():.4f}", part=4)
        labels = [label for label, _ in r.legendSymbologyItems()]
        first, last = number(labels[0]) if labels else None, number(labels[-1]) if labels else None
        ltol = 0.006 + 0.01 * (hi - lo)
        check(f"'{name}' legend runs over the data range {lo:.3f}..{hi:.3f}",
              first is not None and last is not None and abs(first - lo) <= ltol
              and abs(last - hi) <= ltol, f"legend {labels[:1]}..{labels[-1:]}", part=4)
        check(f"Layers panel shows '{name}' legend over the data range (not the style's 0..1)",
              panel_legend_matches(lyr, name), f"see legend_{name}_panel_*.png", part=4)
    lyr = layer("clusters")
    if lyr is not None and lyr.renderer().type() == "paletted":
        classes = [c.value for c in lyr.renderer().classes()]
        values = data_values(lyr.source())
        check("cluster legend covers every cluster in the data", values <= set(classes),
              f"data {sorted(values)}, legend {classes}")
        check(f"cluster legend lists exactly K={K} classes", len(classes) == K,
              f"{len(classes)} classes", part=4)
    lyr = layer("aoa")
    if lyr is not None and lyr.renderer().type() == "paletted":
        values = data_values(lyr.source())
        classes = [c.value for c in lyr.renderer().classes()]
        check("AOA legend covers the values in the data", values <= set(classes),
              f"data {sorted(values)}, legend {classes}")
    lyr = layer("pca")
    if lyr is not None and lyr.renderer().type() == "multibandcolor":
        r = lyr.renderer()
        spans = []
        for band, ce in ((r.redBand(), r.redContrastEnhancement()),
                         (r.greenBand(), r.greenContrastEnhancement()),
                         (r.blueBand(), r.blueContrastEnhancement())):
            lo, hi = data_range(lyr.source(), band)
            spans.append((band, lo, hi, ce.minimumValue(), ce.maximumValue()))
        # uint8 components: one grey level of slack (0 vs 1 cannot be seen)
        check("PCA stretch of each band = its data range (+-1 grey level)",
              all(abs(a - lo) <= 1 and abs(b - hi) <= 1 for _, lo, hi, a, b in spans),
              str(spans))
    points = layer("points_cv")
    if points is not None:
        check("out-of-fold points layer has the samples inside the image",
              isinstance(points, QgsVectorLayer) and points.featureCount() > 250,
              str(points.featureCount()))
    rasters = [lyr for lyr in project.mapLayers().values() if isinstance(lyr, QgsRasterLayer)]
    check("every raster layer valid", rasters and all(lyr.isValid() for lyr in rasters))
    check("QGIS alive after the chain", iface.mainWindow().isVisible())
    import sys
    with open("/proc/self/maps") as maps:
        libtriton = [line.split()[-1] for line in maps if line.rstrip().endswith("libtriton.so")]
    check("after the chain: torch loaded, triton still blocked, libtriton.so not mapped",
          "torch" in sys.modules and sys.modules.get("triton", "missing") is None
          and not libtriton, str(libtriton), part=1)
    iface.mapCanvas().zoomToFullExtent()
    iface.mapCanvas().refreshAllLayers()
    later(final_shots, 3000)


def final_shots():
    step("final screenshots")
    grab(iface.mainWindow(), "main_window.png")
    screen("screen.png")
    finish()


def watchdog():
    results["errors"].append(f"timed out after {TIMEOUT:.0f} s in step '{results['step']}'")
    finish(3)


# -- phase 1: a new user, plugin installed, no torch --------------------------------------
def on_modal(name, then, ms=1500):
    """Screenshot and close the modal dialog a click is about to open (its exec_() blocks
    the caller; this timer runs in the dialog's own event loop)."""
    def shoot():
        from qgis.PyQt.QtWidgets import QApplication
        modal = QApplication.activeModalWidget()
        results["modal_" + name] = None if modal is None else {
            "class": type(modal).__name__, "title": modal.windowTitle()}
        check(f"{name}: a modal dialog opened", modal is not None, str(results["modal_" + name]))
        if modal is not None:
            grab(modal, name)
            results["text_" + name] = widget_text(modal)
            modal.close()
        later(then, 300)
    QTimer.singleShot(ms, guarded(shoot))


def widget_text(widget):
    """What a dialog shows: its labels, text boxes and combo boxes, as plain text."""
    from qgis.PyQt.QtWidgets import QComboBox, QLabel, QTextEdit
    parts = [w.text() for w in widget.findChildren(QLabel)]
    parts += [w.toPlainText() for w in widget.findChildren(QTextEdit)]
    parts += [w.currentText() for w in widget.findChildren(QComboBox)]
    return "\n".join(parts)[:4000]


def fresh_start():
    step("fresh: install")
    QgsApplication.messageLog().messageReceived.connect(on_message)
    iface.mainWindow().showMaximized()
    import importlib.util
    check("no torch in this QGIS's Python", importlib.util.find_spec("torch") is None,
          str(importlib.util.find_spec("torch")), part=5)
    import pyplugin_installer
    import qgis.utils
    pyplugin_installer.instance().installFromZipFile(ZIP)
    check("plugin installed from the ZIP and started without torch",
          "soilssl" in qgis.utils.active_plugins, str(qgis.utils.active_plugins), part=5)
    provider = QgsApplication.processingRegistry().providerById("soilssl")
    check("SoilSSL provider registered without torch", provider is not None, part=5)
    warning = provider.warningMessage() if provider is not None else ""
    results["provider_warning"] = warning
    check("provider warns about missing packages and names the menu action",
          "Missing packages" in warning and "Install dependencies" in warning, warning, part=5)
    algs = provider.algorithms() if provider is not None else []
    results["can_execute"] = {a.id(): list(a.canExecute()) for a in algs}
    check("every algorithm: canExecute() is False, with the install hint",
          algs and all(not ok and "Install dependencies" in msg
                       for ok, msg in results["can_execute"].values()),
          str(sorted({ok for ok, _ in results["can_execute"].values()})), part=5)
    later(fresh_toolbox, 800)


def fresh_toolbox():
    step("fresh: toolbox")
    box, tree, model, soilssl = show_soilssl_in_toolbox()
    found = [soilssl] if soilssl is not None else []
    check("Toolbox lists SoilSSL without torch", found, part=5)
    if found:
        results["toolbox_tooltip"] = model.data(found[0], Qt.ToolTipRole)
    wanted = QgsApplication.processingRegistry().algorithmById("soilssl:predictmap").displayName()
    for group in ([model.index(r, 0, found[0]) for r in range(model.rowCount(found[0]))]
                  if found else []):
        for r in range(model.rowCount(group)):
            if model.data(model.index(r, 0, group), Qt.DisplayRole) == wanted:
                tree.setCurrentIndex(model.index(r, 0, group))
    check("Toolbox selects 'Predict map'", tree.selectedAlgorithm() is not None
          and tree.selectedAlgorithm().id() == "soilssl:predictmap", part=5)

    def shots():
        grab(box, "fresh_toolbox.png")
        if found:  # the README's crop: the search box, then SoilSSL's rows
            from qgis.PyQt.QtCore import QRect
            top = tree.viewport().mapTo(box, tree.visualRect(found[0]).topLeft()).y()
            rows = top + tree.indexRowSizeHint(found[0]) * 13
            crop = box.grab(QRect(0, top, box.width(), rows - top))
            path = os.path.join(OUT, "fresh_toolbox_soilssl.png")
            check("screenshot fresh_toolbox_soilssl.png", crop.save(path), path, part=5)
            results["screenshots"].append(path)
        grab(iface.mainWindow(), "fresh_main_window.png")
        # a double-click in the Toolbox: QGIS asks canExecute() and shows "cannot be run"
        on_modal("fresh_cannot_run.png", fresh_menu)
        box.executeAlgorithm()
    later(shots, 800)


def fresh_menu():
    step("fresh: Plugins > SoilSSL > Install dependencies…")
    text = results.get("text_fresh_cannot_run.png", "")
    check("'cannot be run' message names the missing packages and the menu action",
          "cannot be run" in text and "torch" in text and "Install dependencies" in text,
          text[:300], part=5)
    action = None
    for top in iface.pluginMenu().actions():
        if top.menu() is not None and top.text().replace("&", "") == "SoilSSL":
            for sub in top.menu().actions():
                if sub.text() == "Install dependencies…":
                    action = sub
    check("Plugins menu has SoilSSL → Install dependencies…", action is not None, part=5)
    if action is None:
        return finish(1)

    def after():
        text = results.get("text_fresh_install_dependencies.png", "")
        check("Install dependencies dialog shows the missing packages and the detected build",
              results["modal_fresh_install_dependencies.png"]["title"]
              == "SoilSSL — Install dependencies" and "(detected)" in text and "torch" in text,
              text[:400], part=5)
        finish()
    on_modal("fresh_install_dependencies.png", after)
    action.trigger()  # the menu item's click


QTimer.singleShot(int(TIMEOUT * 1000), watchdog)
QTimer.singleShot(1500, guarded(fresh_start if PHASE == "fresh" else start))
