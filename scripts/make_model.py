"""Writes resources/models/soil_mapping.model3, the SoilSSL chain for the graphical modeler,
and resources/models/sampling_design.model3 (fit -> predict with error and intervals ->
sampling design, see build_sampling).

    .venv/bin/python scripts/make_model.py [OUTPUT] [--png PICTURE]

(--png also draws the model as the Model Designer shows it, to look at its layout.)

The model is built with PyQGIS's own modeler classes (QgsProcessingModelAlgorithm,
QgsProcessingModelChildAlgorithm...) inside a headless QGIS with the SoilSSL provider, so
the file is what the Model Designer of QGIS >= 3.22 itself writes:

    raster, points --> soilssl:pretrain (DINO, tiles away from the points)
        pretrained backbone --> soilssl:fitpoints (soil heads, spatial CV) --> soilssl:predictmap
        pretrained backbone --> soilssl:extractfeatures --> soilssl:clustermap

The defaults suit the demo (resources/demo: a 1024 px scene at 1.5 m with 300 dense points):
a ViT-Tiny on 32 px tiles, a few epochs and a 16 px buffer.  On real data raise TILE_SIZE
(paper: 224), EPOCHS and BUFFER (paper: 448 px).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "resources", "models", "soil_mapping.model3")


WIDTH = 270  # component boxes wide enough for every title (the Designer's 200 cut some)
# Component centres (Model Designer scene coordinates): no two boxes overlap; the raster on
# top, the pretraining settings below it, the points at the bottom, the chain going down and
# right, and no two links cross (tests/test_qgis_look.py counts them in the Designer's scene):
# the raster's links pass above pretraining, the points' below it; what pretraining feeds lies
# between them.
LAYOUT = {
    "raster": (140, 60), "arch": (140, 420), "tile_size": (140, 480), "epochs": (140, 540),
    "buffer": (140, 600), "points": (140, 1200), "pretrain": (600, 632),
    "pretrain:backbone": (950, 750), "extractfeatures": (900, 500), "clusters": (900, 640),
    "clustermap": (1300, 700), "clustermap:clusters": (1650, 770), "fields": (1000, 830),
    "method": (1000, 890), "folds": (1000, 950), "fitpoints": (2500, 1000),
    "fitpoints:cv_points": (2850, 1080), "fitpoints:soil_model": (2850, 1140),
    "fitpoints:cv_report": (2850, 1200), "predictmap": (3200, 1000),
    "predictmap:soil_map": (3550, 1000), "predictmap:uncertainty": (3550, 1060),
    "predictmap:aoa": (3550, 1120),
}
# What need not be a model input runs at the algorithms' defaults (device auto, batch size,
# no DEM, no initial weights) or at these settings for pretraining a small ViT quickly.
PRETRAIN_FIXED = {"OUT_DIM": 1024, "LOCAL_CROPS": 4}


def add_inputs(model, inputs, layout, description):
    """The model's inputs ((parameter, help) pairs) at their ``layout`` places, and its help
    (``description`` first)."""
    from qgis.core import QgsProcessingModelParameter
    from qgis.PyQt.QtCore import QPointF, QSizeF
    from soilssl.algorithms.help import REFERENCE
    help_content = {"ALG_DESC": description + " " + REFERENCE,
                    "ALG_CREATOR": "SoilSSL", "ALG_HELP_CREATOR": "SoilSSL"}
    for param, text in inputs:
        component = QgsProcessingModelParameter(param.name())
        component.setPosition(QPointF(*layout[param.name()]))
        component.setSize(QSizeF(WIDTH, 30))
        model.addModelParameter(param, component)
        help_content[param.name()] = text
    model.setHelpContent(help_content)


def add_child(model, layout, alg, child_id, sources, outputs=()):
    """Child ``child_id`` running soilssl:``alg`` at ``layout[child_id]``, its inputs from
    ``sources`` and the rest at their defaults (as the Model Designer sets them), and its
    ``outputs`` ((name, child output, description), placed at ``layout["child:name"]``) as
    model outputs."""
    from qgis.core import (QgsProcessingModelChildAlgorithm,
                           QgsProcessingModelChildParameterSource as Src,
                           QgsProcessingModelOutput)
    from qgis.PyQt.QtCore import QPointF, QSizeF
    c = QgsProcessingModelChildAlgorithm(f"soilssl:{alg}")
    c.setChildId(child_id)
    c.setDescription(c.algorithm().displayName())
    c.setPosition(QPointF(*layout[child_id]))
    c.setSize(QSizeF(WIDTH, 30))
    for name, src in sources.items():
        c.addParameterSources(name, [src])
    for param in c.algorithm().parameterDefinitions():
        if param.name() not in sources and not param.isDestination() \
                and param.defaultValue() is not None:
            c.addParameterSources(param.name(), [Src.fromStaticValue(param.defaultValue())])
    model_outputs = {}
    for name, child_output, description in outputs:
        out = QgsProcessingModelOutput(name, description)
        out.setChildId(child_id)
        out.setChildOutputName(child_output)
        out.setPosition(QPointF(*layout[f"{child_id}:{name}"]))
        out.setSize(QSizeF(WIDTH, 30))
        model_outputs[name] = out
    c.setModelOutputs(model_outputs)
    model.addChildAlgorithm(c)


def build():
    """The model (needs a running QgsApplication with the SoilSSL provider registered)."""
    from qgis.core import (QgsProcessing, QgsProcessingModelAlgorithm,
                           QgsProcessingModelChildParameterSource as Src,
                           QgsProcessingParameterEnum, QgsProcessingParameterFeatureSource,
                           QgsProcessingParameterField, QgsProcessingParameterNumber,
                           QgsProcessingParameterRasterLayer, QgsProcessingParameterString)
    from soilssl.algorithms.fitpoints import METHODS

    model = QgsProcessingModelAlgorithm("soil_mapping", "SoilSSL")
    integer, double = QgsProcessingParameterNumber.Integer, QgsProcessingParameterNumber.Double
    inputs = [  # (parameter, help)
        (QgsProcessingParameterRasterLayer("raster", "Image raster"),
         "The scene to learn from and to map (e.g. resources/demo/rgb.tif)."),
        (QgsProcessingParameterFeatureSource("points", "Soil sample points",
                                             [QgsProcessing.TypeVectorPoint]),
         "Soil samples (any CRS); pretraining keeps BUFFER px away from them."),
        (QgsProcessingParameterField("fields", "Soil properties", "ph_h2o", "points",
                                     QgsProcessingParameterField.Any, True),
         "Numeric fields to predict (the demo: ph_h2o, ph_kcl, si)."),
        (QgsProcessingParameterString("arch", "ViT architecture", "vit_tiny_patch16_224"),
         "timm ViT (paper: vit_base_patch16_224)."),
        (QgsProcessingParameterNumber("tile_size", "Tile size (px)", integer, 32, minValue=16),
         "Tile size of pretraining, fitting and mapping (paper: 224)."),
        (QgsProcessingParameterNumber("epochs", "Pretraining epochs", integer, 5, minValue=1),
         "DINO epochs on the scene."),
        (QgsProcessingParameterNumber("buffer", "Buffer around the points (px)",
                                      double, 16.0, minValue=0.0),
         "Tiles this close to a sample point are not used for pretraining (paper: 448 px; the "
         "demo points are dense)."),
        (QgsProcessingParameterEnum("method", "Soil head", METHODS, defaultValue=0),
         "Method of Fit soil heads (all: compare every method, map with their stack)."),
        (QgsProcessingParameterNumber("folds", "Spatial CV folds", integer, 6, minValue=2),
         "K-means folds of the point coordinates (paper: 6)."),
        (QgsProcessingParameterNumber("clusters", "Landscape classes (K)", integer, 8,
                                      minValue=2, maxValue=254),
         "K-means classes of the landscape map (paper: 8)."),
    ]
    add_inputs(model, inputs, LAYOUT, (
        "The SoilSSL chain: DINO self-supervised pretraining of a ViT on the scene (away from "
        "the soil points), soil-property heads fitted on the points under spatial "
        "cross-validation, the soil map with its uncertainty and area of applicability, and "
        "a K-means landscape map of the pretrained features."))

    def child(alg, child_id, sources, outputs=()):
        add_child(model, LAYOUT, alg, child_id, sources, outputs)

    p, fixed = Src.fromModelParameter, Src.fromStaticValue
    raster = {"INPUT": p("raster")}
    backbone = Src.fromChildOutput("pretrain", "OUTPUT")
    child("pretrain", "pretrain", {
        **raster, "POINTS": p("points"), "BUFFER": p("buffer"), "ARCH": p("arch"),
        "EPOCHS": p("epochs"), "TILE_SIZE": p("tile_size"),
        **{name: fixed(value) for name, value in PRETRAIN_FIXED.items()}},
        [("backbone", "OUTPUT", "Pretrained backbone")])
    child("fitpoints", "fitpoints", {
        **raster, "BACKBONE": backbone, "POINTS": p("points"),
        "FIELDS": p("fields"), "METHOD": p("method"), "FOLDS": p("folds")},
        [("cv_points", "OUTPUT_POINTS", "Points with CV predictions"),
         ("soil_model", "OUTPUT_MODEL", "Soil model"),
         ("cv_report", "OUTPUT_REPORT", "Cross-validation report")])
    child("predictmap", "predictmap", {
        **raster, "MODEL": Src.fromChildOutput("fitpoints", "OUTPUT_MODEL"),
        "STRIDE": fixed(0)},
        [("soil_map", "OUTPUT", "Soil map"),
         ("uncertainty", "OUTPUT_UNCERTAINTY", "Uncertainty"),
         ("aoa", "OUTPUT_AOA", "Area of applicability")])
    child("extractfeatures", "extractfeatures", {
        **raster, "BACKBONE": backbone})
    child("clustermap", "clustermap", {
        "INPUT": Src.fromChildOutput("extractfeatures", "OUTPUT"), "K": p("clusters")},
        [("clusters", "OUTPUT", "Landscape clusters")])
    model.updateDestinationParameters()
    return model


SAMPLING_OUTPUT = os.path.join(ROOT, "resources", "models", "sampling_design.model3")
SAMPLING_LAYOUT = {
    "points": (140, 60), "fields": (140, 120), "raster": (140, 220), "backbone": (140, 280),
    "level": (140, 700), "n_sites": (140, 780), "min_distance": (140, 840),
    "fitpoints": (600, 180), "fitpoints:soil_model": (950, 60),
    "fitpoints:cv_report": (950, 120), "extractfeatures": (600, 600), "predictmap": (1300, 300),
    "predictmap:soil_map": (1650, 180), "predictmap:expected_error": (1650, 240),
    "predictmap:lower": (1650, 300), "predictmap:upper": (1650, 360),
    "predictmap:aoa": (1650, 420), "samplingdesign": (1300, 720),
    "samplingdesign:sites": (1650, 680), "samplingdesign:design_report": (1650, 740),
}
# predictmap's expected error and interval outputs (issue 13, parts 2-3)
TRUST_OUTPUTS = [("expected_error", "OUTPUT_ERROR", "Expected error (RMSE)"),
                 ("lower", "OUTPUT_LOWER", "Prediction interval: lower bound"),
                 ("upper", "OUTPUT_UPPER", "Prediction interval: upper bound")]


def build_sampling():
    """The chain "fit -> predict with error and intervals -> sampling design" (needs a running
    QgsApplication with the SoilSSL provider registered):

        raster, backbone, points --> soilssl:fitpoints --> soilssl:predictmap (prediction,
            expected error, LEVEL interval, AOA)
        raster, backbone --> soilssl:extractfeatures --> soilssl:samplingdesign (with the
            points and the fitted model: the N sites where the map most needs samples)

    predictmap's OUTPUT_ERROR/OUTPUT_LOWER/OUTPUT_UPPER and LEVEL join the chain where this
    SoilSSL's predictmap has them."""
    from qgis.core import (QgsApplication, QgsProcessing, QgsProcessingModelAlgorithm,
                           QgsProcessingModelChildParameterSource as Src,
                           QgsProcessingParameterFeatureSource, QgsProcessingParameterField,
                           QgsProcessingParameterFile, QgsProcessingParameterNumber,
                           QgsProcessingParameterRasterLayer)
    predict = QgsApplication.processingRegistry().algorithmById("soilssl:predictmap")
    trust = [o for o in TRUST_OUTPUTS if predict.parameterDefinition(o[1]) is not None]
    has_level = predict.parameterDefinition("LEVEL") is not None
    model = QgsProcessingModelAlgorithm("sampling_design", "SoilSSL")
    integer, double = QgsProcessingParameterNumber.Integer, QgsProcessingParameterNumber.Double
    inputs = [
        (QgsProcessingParameterRasterLayer("raster", "Image raster"),
         "The scene to map (e.g. resources/demo/rgb.tif)."),
        (QgsProcessingParameterFile("backbone", "Backbone checkpoint"),
         "A SoilSSL checkpoint (from Pretrain backbone) or any backbone file."),
        (QgsProcessingParameterFeatureSource("points", "Soil sample points",
                                             [QgsProcessing.TypeVectorPoint]),
         "The existing soil samples (any CRS)."),
        (QgsProcessingParameterField("fields", "Soil properties", "ph_h2o", "points",
                                     QgsProcessingParameterField.Any, True),
         "Numeric fields to predict (the demo: ph_h2o, ph_kcl, si)."),
        (QgsProcessingParameterNumber("level", "Prediction interval level", double, 0.9,
                                      minValue=0.5, maxValue=0.99),
         "Level of the prediction intervals (0.9: the true value lies inside 9 times in 10)."),
        (QgsProcessingParameterNumber("n_sites", "New sample sites", integer, 20, minValue=1),
         "How many new sites to propose."),
        (QgsProcessingParameterNumber("min_distance", "Site spacing (map units)", double,
                                      0.0, minValue=0.0),
         "Spacing between new sites and from the existing samples."),
    ]
    add_inputs(model, inputs, SAMPLING_LAYOUT, (
        "Trust and act on the soil map: soil-property heads fitted on the points under "
        "spatial cross-validation, the soil map with its expected error, prediction "
        "intervals and area of applicability, and the N sites where new samples would make "
        "the map trustworthy where it is not (Sampling design on the feature raster, with "
        "the model's predicted value at each site)."))

    def child(alg, child_id, sources, outputs=()):
        add_child(model, SAMPLING_LAYOUT, alg, child_id, sources, outputs)

    p = Src.fromModelParameter
    fitted = Src.fromChildOutput("fitpoints", "OUTPUT_MODEL")
    child("fitpoints", "fitpoints", {
        "INPUT": p("raster"), "BACKBONE": p("backbone"), "POINTS": p("points"),
        "FIELDS": p("fields")},
        [("soil_model", "OUTPUT_MODEL", "Soil model"),
         ("cv_report", "OUTPUT_REPORT", "Cross-validation report")])
    child("predictmap", "predictmap", {
        "INPUT": p("raster"), "MODEL": fitted, **({"LEVEL": p("level")} if has_level else {})},
        [("soil_map", "OUTPUT", "Soil map"), *trust,
         ("aoa", "OUTPUT_AOA", "Area of applicability")])
    child("extractfeatures", "extractfeatures", {"INPUT": p("raster"), "BACKBONE": p("backbone")})
    child("samplingdesign", "samplingdesign", {
        "INPUT": Src.fromChildOutput("extractfeatures", "OUTPUT"), "POINTS": p("points"),
        "N": p("n_sites"), "MIN_DISTANCE": p("min_distance"), "MODEL": fitted,
        "LEVEL": p("level")},
        [("sites", "OUTPUT", "Proposed sample sites"),
         ("design_report", "OUTPUT_REPORT", "Sampling design report")])
    model.updateDestinationParameters()
    if len(trust) < len(TRUST_OUTPUTS) or not has_level:
        print("note: this predictmap has no " + ", ".join(
            [o[1] for o in TRUST_OUTPUTS if o not in trust] + ([] if has_level else ["LEVEL"]))
            + ": rerun make_model.py once it has them")
    return model


def designer_scene(model):
    """The model's scene as the Model Designer draws it (needs a QgsApplication with a GUI
    platform, offscreen will do): boxes, ports and the curved links."""
    from processing.modeler.ModelerScene import ModelerScene
    from qgis.core import QgsProcessingContext
    from qgis.PyQt.QtCore import QRectF
    scene = ModelerScene()
    scene.setSceneRect(QRectF(0, 0, 4000, 4000))  # the Designer's CANVAS_SIZE
    scene.createItems(model, QgsProcessingContext())
    return scene


def link_crossings(model):
    """The pairs of links of `model` that cross in the Model Designer: each link (its
    QgsModelArrowItem.path()) is the Designer's curve, flattened to line segments; two links cross
    where their segments intersect away from an end point they share (links from one output
    or into one input meet there by design, and within 12 px of it they cannot be told apart)."""
    import itertools
    from qgis.PyQt.QtCore import QLineF, QPointF  # copies: the polygons' points die with them
    from qgis.PyQt.QtWidgets import QGraphicsPathItem
    scene = designer_scene(model)
    links = []
    for item in scene.items():
        if isinstance(item, QGraphicsPathItem):  # a QgsModelArrowItem, as PyQt sees it
            points = [QPointF(p) for poly in item.path().toSubpathPolygons() for p in poly]
            links.append(([QLineF(a, b) for a, b in zip(points, points[1:])],
                          (points[0], points[-1])))
    crossings = []
    for (a, ends_a), (b, ends_b) in itertools.combinations(links, 2):
        shared = [p for p in ends_a for q in ends_b if (p - q).manhattanLength() < 1]
        for sa in a:
            for sb in b:
                kind, at = sa.intersects(sb)
                if kind == QLineF.BoundedIntersection and \
                        all((at - p).manhattanLength() > 12 for p in shared):
                    crossings.append((ends_a, ends_b, at))
                    break
            else:
                continue
            break
    return crossings


def render(model, png):
    """Draws the model as the Model Designer shows it into `png`."""
    from qgis.PyQt.QtCore import QRectF, Qt
    from qgis.PyQt.QtGui import QImage, QPainter
    scene = designer_scene(model)
    rect = scene.itemsBoundingRect().adjusted(-20, -20, 20, 20)
    image = QImage(int(rect.width()), int(rect.height()), QImage.Format_ARGB32)
    image.fill(Qt.white)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.Antialiasing)
    scene.render(painter, QRectF(image.rect()), rect)
    painter.end()
    return image.save(png)


def main(argv):
    argv = list(argv)
    png = None
    if "--png" in argv:
        png = os.path.abspath(argv.pop(argv.index("--png") + 1))
        argv.remove("--png")
    out = os.path.abspath(argv[1]) if len(argv) > 1 else OUTPUT
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["QT_HASH_SEED"] = "0"  # the same XML attribute order every time
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    plugins = os.path.join(ROOT, ".build", "plugins")  # the repo, imported as `soilssl`
    os.makedirs(plugins, exist_ok=True)
    if not os.path.islink(os.path.join(plugins, "soilssl")):
        os.symlink(ROOT, os.path.join(plugins, "soilssl"))
    sys.path.insert(0, plugins)
    from qgis.core import QgsApplication
    app = QgsApplication([], png is not None)  # drawing needs the GUI (offscreen will do)
    app.initQgis()
    import soilssl
    plugin = soilssl.classFactory(None)
    plugin.initProcessing()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    model = build()
    for chain, path in ((model, out), (build_sampling(), os.path.join(
            os.path.dirname(out), os.path.basename(SAMPLING_OUTPUT)))):
        ok, errors = chain.validate()
        if not ok:
            raise SystemExit("invalid model: " + "; ".join(errors))
        if not chain.toFile(path):
            raise SystemExit(f"could not write {path}")
        print(f"wrote {path}")
    if png:
        from processing.core.Processing import Processing
        Processing.initialize()  # the Designer's item classes
        print(f"{len(link_crossings(model))} link crossings; drawn: {png}" if render(model, png)
              else f"could not write {png}")
    plugin.unload()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
