"""Writes resources/models/soil_mapping.model3, the SoilSSL chain for the graphical modeler.

    .venv/bin/python scripts/make_model.py [OUTPUT]

The model is built with PyQGIS's own modeler classes (QgsProcessingModelAlgorithm,
QgsProcessingModelChildAlgorithm...) inside a headless QGIS with the SoilSSL provider, so
the file is what the Model Designer of QGIS >= 3.22 itself writes:

    raster (+ DEM), points --> soilssl:pretrain (DINO, tiles away from the points)
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
# Component centres (Model Designer scene coordinates), in layers: the pretraining inputs on
# the left, the shared inputs in the top row, each algorithm below what it reads, its own
# inputs to its left and its outputs to its right; no two boxes overlap (tests/test_qgis_ux).
LAYOUT = {
    "arch": (140, 60), "tile_size": (140, 120), "epochs": (140, 180), "buffer": (140, 240),
    "init": (140, 300), "out_dim": (140, 360), "local_crops": (140, 420),
    "raster": (470, 60), "dem": (770, 60), "points": (1070, 60), "device": (1370, 60),
    "batch_size": (1670, 60),
    "fields": (470, 700), "method": (470, 760), "folds": (470, 820), "clusters": (1370, 760),
    "pretrain": (580, 560), "fitpoints": (880, 900), "predictmap": (1180, 1240),
    "extractfeatures": (1440, 560), "clustermap": (1740, 900),
}


def build():
    """The model (needs a running QgsApplication with the SoilSSL provider registered)."""
    from qgis.core import (QgsProcessing, QgsProcessingModelAlgorithm,
                           QgsProcessingModelChildAlgorithm,
                           QgsProcessingModelChildParameterSource as Src,
                           QgsProcessingModelOutput, QgsProcessingModelParameter,
                           QgsProcessingParameterDefinition, QgsProcessingParameterEnum,
                           QgsProcessingParameterFeatureSource, QgsProcessingParameterField,
                           QgsProcessingParameterFile, QgsProcessingParameterNumber,
                           QgsProcessingParameterRasterLayer, QgsProcessingParameterString)
    from qgis.PyQt.QtCore import QPointF, QSizeF
    from soilssl.algorithms.base import DEVICES
    from soilssl.algorithms.fitpoints import METHODS
    from soilssl.algorithms.help import REFERENCE

    model = QgsProcessingModelAlgorithm("soil_mapping", "SoilSSL")
    integer, double = QgsProcessingParameterNumber.Integer, QgsProcessingParameterNumber.Double
    inputs = [  # (parameter, advanced, help)
        (QgsProcessingParameterRasterLayer("raster", "Image raster"), False,
         "The scene to learn from and to map (e.g. resources/demo/rgb.tif)."),
        (QgsProcessingParameterRasterLayer("dem", "DEM as extra channel", optional=True), True,
         "Optional elevation raster added as a 4th channel."),
        (QgsProcessingParameterFeatureSource("points", "Soil sample points",
                                             [QgsProcessing.TypeVectorPoint]), False,
         "Soil samples (any CRS); pretraining keeps BUFFER px away from them."),
        (QgsProcessingParameterField("fields", "Soil properties", "ph_h2o", "points",
                                     QgsProcessingParameterField.Any, True), False,
         "Numeric fields to predict (the demo: ph_h2o, ph_kcl, si)."),
        (QgsProcessingParameterString("arch", "ViT architecture", "vit_tiny_patch16_224"), False,
         "timm ViT (paper: vit_base_patch16_224)."),
        (QgsProcessingParameterNumber("tile_size", "Tile size (px)", integer, 32, minValue=16),
         False, "Tile size of pretraining, fitting and mapping (paper: 224)."),
        (QgsProcessingParameterNumber("epochs", "Pretraining epochs", integer, 5, minValue=1),
         False, "DINO epochs on the scene."),
        (QgsProcessingParameterNumber("buffer", "Buffer around the points (px)",
                                      double, 16.0, minValue=0.0), False,
         "Tiles this close to a sample point are not used for pretraining (paper: 448 px; the "
         "demo points are dense)."),
        (QgsProcessingParameterEnum("method", "Soil head", METHODS, defaultValue=0), False,
         "Method of Fit soil heads (all: compare every method, map with the best)."),
        (QgsProcessingParameterNumber("folds", "Spatial CV folds", integer, 6, minValue=2),
         False, "K-means folds of the point coordinates (paper: 6)."),
        (QgsProcessingParameterNumber("clusters", "Landscape classes (K)", integer, 8,
                                      minValue=2, maxValue=254), False,
         "K-means classes of the landscape map (paper: 8)."),
        (QgsProcessingParameterEnum("device", "Device", DEVICES, defaultValue=0), False,
         "auto: CUDA when available, else the CPU."),
        (QgsProcessingParameterFile("init", "Initial weights (optional)", optional=True), True,
         "A DINO/timm/SoilSSL checkpoint to start pretraining from; empty = random."),
        (QgsProcessingParameterNumber("out_dim", "DINO head output dimension", integer, 1024,
                                      minValue=16), True, "Smaller is faster."),
        (QgsProcessingParameterNumber("local_crops", "Local crops per tile", integer, 4,
                                      minValue=0), True, "Multi-crop local views."),
        (QgsProcessingParameterNumber("batch_size", "Batch size", integer, 32, minValue=1),
         True, "Tiles per step."),
    ]
    help_content = {"ALG_DESC": (
        "The SoilSSL chain: DINO self-supervised pretraining of a ViT on the scene (away from "
        "the soil points), soil-property heads fitted on the points under spatial "
        "cross-validation, the soil map with its uncertainty and area of applicability, and "
        "a K-means landscape map of the pretrained features. " + REFERENCE),
        "ALG_CREATOR": "SoilSSL", "ALG_HELP_CREATOR": "SoilSSL"}
    for i, (param, is_advanced, text) in enumerate(inputs):
        if is_advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        component = QgsProcessingModelParameter(param.name())
        component.setPosition(QPointF(*LAYOUT[param.name()]))
        component.setSize(QSizeF(WIDTH, 30))
        model.addModelParameter(param, component)
        help_content[param.name()] = text
    model.setHelpContent(help_content)

    def child(alg, child_id, position, sources, outputs=()):
        c = QgsProcessingModelChildAlgorithm(f"soilssl:{alg}")
        c.setChildId(child_id)
        c.setDescription(c.algorithm().displayName())
        c.setPosition(QPointF(*position))
        c.setSize(QSizeF(WIDTH, 30))
        for name, src in sources.items():
            c.addParameterSources(name, [src])
        for param in c.algorithm().parameterDefinitions():  # the rest at their defaults, as
            if param.name() not in sources and not param.isDestination() \
                    and param.defaultValue() is not None:   # the Model Designer does
                c.addParameterSources(param.name(), [Src.fromStaticValue(param.defaultValue())])
        model_outputs = {}
        for name, child_output, description in outputs:
            out = QgsProcessingModelOutput(name, description)
            out.setChildId(child_id)
            out.setChildOutputName(child_output)
            out.setPosition(QPointF(position[0] + WIDTH + 40,
                                    position[1] + 40 * len(model_outputs)))
            out.setSize(QSizeF(WIDTH, 30))
            model_outputs[name] = out
        c.setModelOutputs(model_outputs)
        model.addChildAlgorithm(c)

    p = Src.fromModelParameter
    fixed = Src.fromStaticValue
    raster = {"INPUT": p("raster"), "DEM": p("dem")}
    compute = {"DEVICE": p("device"), "BATCH_SIZE": p("batch_size")}
    backbone = Src.fromChildOutput("pretrain", "OUTPUT")
    child("pretrain", "pretrain", LAYOUT["pretrain"], {
        **raster, **compute, "POINTS": p("points"), "BUFFER": p("buffer"), "ARCH": p("arch"),
        "INIT": p("init"), "EPOCHS": p("epochs"), "TILE_SIZE": p("tile_size"),
        "OUT_DIM": p("out_dim"), "LOCAL_CROPS": p("local_crops")},
        [("backbone", "OUTPUT", "Pretrained backbone")])
    child("fitpoints", "fitpoints", LAYOUT["fitpoints"], {
        **raster, **compute, "BACKBONE": backbone, "POINTS": p("points"),
        "FIELDS": p("fields"), "METHOD": p("method"), "FOLDS": p("folds")},
        [("cv_points", "OUTPUT_POINTS", "Points with CV predictions"),
         ("soil_model", "OUTPUT_MODEL", "Soil model"),
         ("cv_report", "OUTPUT_REPORT", "Cross-validation report")])
    child("predictmap", "predictmap", LAYOUT["predictmap"], {
        **raster, **compute, "MODEL": Src.fromChildOutput("fitpoints", "OUTPUT_MODEL"),
        "STRIDE": fixed(0)},
        [("soil_map", "OUTPUT", "Soil map"),
         ("uncertainty", "OUTPUT_UNCERTAINTY", "Uncertainty"),
         ("aoa", "OUTPUT_AOA", "Area of applicability")])
    child("extractfeatures", "extractfeatures", LAYOUT["extractfeatures"], {
        **raster, **compute, "BACKBONE": backbone})
    child("clustermap", "clustermap", LAYOUT["clustermap"], {
        "INPUT": Src.fromChildOutput("extractfeatures", "OUTPUT"), "K": p("clusters")},
        [("clusters", "OUTPUT", "Landscape clusters")])
    model.updateDestinationParameters()
    return model


def main(argv):
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
    app = QgsApplication([], False)
    app.initQgis()
    import soilssl
    plugin = soilssl.classFactory(None)
    plugin.initProcessing()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    model = build()
    ok, errors = model.validate()
    if not ok:
        raise SystemExit("invalid model: " + "; ".join(errors))
    if not model.toFile(out):
        raise SystemExit(f"could not write {out}")
    print(f"wrote {out}")
    plugin.unload()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
