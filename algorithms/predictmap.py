"""soilssl:predictmap: maps a fitted soil model over a raster with uncertainty and AOA."""
from qgis.core import QgsProcessingParameterFile, \
    QgsProcessingParameterRasterDestination

from .base import SoilSSLAlgorithm
from .styles import style_output


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

    def execute(self, parameters, context, feedback, progress):
        from ..core.inputs import model_inputs
        from ..core.soil import load_model, model_backbone, predict_map
        compute = self.compute(parameters, context)
        model = load_model(self.parameterAsFile(parameters, "MODEL", context))
        backbone = model_backbone(model, self.parameterAsFile(parameters, "BACKBONE", context)
                                  or None, compute["device"])
        outputs = {k: self.parameterAsOutputLayer(parameters, k, context) or None
                   for k in ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_AOA")}
        with self.source(parameters, context, model_inputs(model), progress) as src:
            s = predict_map(src, model, outputs["OUTPUT"], outputs["OUTPUT_UNCERTAINTY"],
                            outputs["OUTPUT_AOA"],
                            stride=self.parameterAsInt(parameters, "STRIDE", context),
                            backbone=backbone, progress=progress,
                            covariates=self.layer_paths(parameters, "COVARIATES", context),
                            **compute)
        for key, qml in (("OUTPUT", "prediction.qml"), ("OUTPUT_UNCERTAINTY", "uncertainty.qml"),
                         ("OUTPUT_AOA", "aoa.qml")):
            if outputs[key]:
                style_output(context, outputs[key], qml)
        feedback.pushInfo(f"{s['inside_aoa']} of {s['width'] * s['height']} tiles inside the "
                          f"area of applicability.")
        return {k: v for k, v in outputs.items() if v}
