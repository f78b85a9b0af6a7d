"""soilssl:predictmap: maps a fitted soil model over a raster with uncertainty and AOA."""
from qgis.core import QgsProcessingParameterBoolean, QgsProcessingParameterFile, \
    QgsProcessingParameterNumber, \
    QgsProcessingParameterRasterDestination

from .base import SoilSSLAlgorithm
from .styles import band_range, class_style, stretch_to_range, style_output, write_categories

TRUST_OUTPUTS = (("OUTPUT_ERROR", "Expected error (RMSE, from the DI error profile)"),
                 ("OUTPUT_LOWER", "Prediction interval: lower bound"),
                 ("OUTPUT_UPPER", "Prediction interval: upper bound"))


class PredictMap(SoilSSLAlgorithm):
    NAME = "predictmap"
    GROUP = "soil"
    WARN_GEOGRAPHIC = True

    def define(self):
        self.add_source_params()
        # any extension: the model is recognised by its content (load_model)
        self.add(QgsProcessingParameterFile("MODEL", "Soil model (from Fit soil heads)",
                                            fileFilter="SoilSSL model (*.pth *.pt);;"
                                                       "All files (*)"))
        self.add(QgsProcessingParameterFile("BACKBONE", "Backbone (if it moved since fitting)",
                                            optional=True), True)
        self.add_covariate_params(categorical=False)
        self.add_number("STRIDE", "Stride (px; 0 = tile size)", 0, minimum=0)
        self.add_compute_params()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Prediction"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_UNCERTAINTY", "Uncertainty (std of fold models)", optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_AOA", "Area of applicability", optional=True))
        # optional (with its default): models saved before LEVEL existed stay valid
        self.add(QgsProcessingParameterNumber("LEVEL", "Prediction interval level",
                                              QgsProcessingParameterNumber.Double, 0.9,
                                              optional=True, minValue=0.5, maxValue=0.99))
        for key, label in TRUST_OUTPUTS:
            self.addParameter(QgsProcessingParameterRasterDestination(key, label, optional=True,
                                                                      createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_PROBABILITY", "Class probability and entropy (class targets)",
            optional=True))
        self.add(QgsProcessingParameterBoolean(
            "LPD", "Area of applicability: add the local point density band (per target)",
            False, optional=True), True)  # optional: saved models without it stay valid

    def execute(self, parameters, context, feedback, progress):
        from ..core.classes import class_targets
        from ..core.inputs import model_inputs
        from ..core.soil import load_model, predict_map
        compute = self.compute(parameters, context)
        model = load_model(self.parameterAsFile(parameters, "MODEL", context))
        # the model's backbone, or its replacement: loaded by the map only if it reads ViT
        # features (a model of covariate methods maps without it)
        backbone = self.parameterAsFile(parameters, "BACKBONE", context) or None
        # the probability raster exists for class targets only (else it is not made at all,
        # though the dialog asks for a temporary one by default)
        outputs = {k: self.parameterAsOutputLayer(parameters, k, context) or None
                   for k in ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_AOA",
                             *(key for key, _ in TRUST_OUTPUTS)) +
                   (("OUTPUT_PROBABILITY",) if class_targets(model) else ())}
        level = self.parameterAsDouble(parameters, "LEVEL", context)
        with self.source(parameters, context, model_inputs(model), progress) as src:
            s = predict_map(src, model, outputs["OUTPUT"], outputs["OUTPUT_UNCERTAINTY"],
                            outputs["OUTPUT_AOA"],
                            stride=self.parameterAsInt(parameters, "STRIDE", context),
                            backbone=backbone, progress=progress, **compute,
                            covariates=self.layer_paths(parameters, "COVARIATES", context),
                            error=outputs["OUTPUT_ERROR"], lower=outputs["OUTPUT_LOWER"],
                            upper=outputs["OUTPUT_UPPER"],
                            level=level, probability=outputs.get("OUTPUT_PROBABILITY"),
                            lpd=self.parameterAsBool(parameters, "LPD", context))
        for t, names in s["classes"].items():  # class names as the bands' GDAL categories
            write_categories(outputs["OUTPUT"], names, model["targets"].index(t) + 1)
        first = s["classes"].get(model["targets"][0])
        for key, qml in (("OUTPUT", "prediction.qml"), ("OUTPUT_UNCERTAINTY", "uncertainty.qml"),
                         ("OUTPUT_AOA", "aoa.qml"), ("OUTPUT_ERROR", "uncertainty.qml"),
                         ("OUTPUT_PROBABILITY", "uncertainty.qml")):
            if key == "OUTPUT" and first:  # a class raster: paletted, labelled by class name
                style_output(context, outputs[key], style=class_style(first))
            elif outputs.get(key):
                style_output(context, outputs[key], qml)
        bounds = [outputs[k] for k in ("OUTPUT_LOWER", "OUTPUT_UPPER") if outputs[k]]
        ranges = [r for r in map(band_range, bounds) if r]
        for path in bounds:  # one colour scale for both bounds
            style_output(context, path, "prediction.qml", stretch_to_range(
                min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None)
        for target, q in s["interval_factor"].items():
            scaled = target in (model.get("error_profile") or {})
            feedback.pushInfo(f"{target}: {level:.0%} prediction interval = prediction ± "
                              f"{q:.3f}{' × expected error' if scaled else ''}.")
        for target, inside in ((s.get("inside_aoa_targets") or {None: s["inside_aoa"]})
                               if outputs["OUTPUT_AOA"] else {}).items():
            feedback.pushInfo(f"{inside} of {s['width'] * s['height']} tiles inside the area of "
                              f"applicability{f' of {target}' if target else ''}.")
        return {k: v for k, v in outputs.items() if v}
