"""soilssl:fitpoints: soil heads on sample points under spatial cross-validation."""
import json

from qgis.core import (QgsProcessingOutputString, QgsProcessingParameterEnum,
                       QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterField,
                       QgsProcessingParameterFileDestination,
                       QgsProcessing)

from .base import POINT_FEATURES, SoilSSLAlgorithm
from .points import oof_fields, read_points, write_oof

METHODS = ["all", "mlp", "ridge", "rf_features", "rf_pixels"]
FOLD_MODES = ["kmeans", "random"]
LOSSES = ["mse", "huber", "l1"]


class FitPoints(SoilSSLAlgorithm):
    NAME = "fitpoints"
    GROUP = "soil"

    def define(self):
        self.add_source_params()
        self.add_backbone_params()
        self.add_backbone_params("COMPARE_BACKBONE", "Comparison backbone (e.g. the ImageNet "
                                 "weights pretraining started from)", optional=True)
        self.add(QgsProcessingParameterFeatureSource("POINTS", "Soil sample points",
                                                     [QgsProcessing.TypeVectorPoint]))
        self.add(QgsProcessingParameterField("FIELDS", "Soil properties (numeric fields)",
                                             parentLayerParameterName="POINTS",
                                             allowMultiple=True))
        self.add(QgsProcessingParameterEnum("METHOD", "Method", METHODS, defaultValue=0))
        self.add(QgsProcessingParameterEnum("POINT_FEATURE", "Feature at each point",
                                            POINT_FEATURES, defaultValue=0))
        self.add_number("FOLDS", "Spatial CV folds", 6, minimum=2, maximum=50)
        self.add(QgsProcessingParameterEnum("FOLD_MODE", "Folds", FOLD_MODES, defaultValue=0),
                 True)
        self.add(QgsProcessingParameterEnum("LOSS", "MLP loss", LOSSES, defaultValue=0), True)
        self.add(QgsProcessingParameterField("WEIGHT_FIELD", "Sample weight field",
                                             parentLayerParameterName="POINTS", optional=True,
                                             type=QgsProcessingParameterField.Numeric), True)
        self.add_number("SEED", "Random seed", 0, is_advanced=True)
        self.add_number("TILE_SIZE", "Tile size (px; 0 = backbone's)", 0, minimum=0,
                        is_advanced=True)
        self.add_compute_params()
        self.addParameter(QgsProcessingParameterFeatureSink(
            "OUTPUT_POINTS", "Points with out-of-fold predictions", QgsProcessing.TypeVectorPoint))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_MODEL", "Soil model", "SoilSSL model (*.pth)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_REPORT", "Cross-validation report", "HTML files (*.html)", optional=True))
        self.addOutput(QgsProcessingOutputString("CV_TABLE", "CV table (JSON: one object per "
                                                 "target and method)"))
        self.addOutput(QgsProcessingOutputString("METHODS", "Method refitted per target (JSON)"))

    def execute(self, parameters, context, feedback, progress):
        from ..core.report import write_report
        from ..core.soil import fit_points
        points_src = self.parameterAsSource(parameters, "POINTS", context)
        fields = self.parameterAsFields(parameters, "FIELDS", context)
        weight = self.parameterAsString(parameters, "WEIGHT_FIELD", context) or None
        points, feats = read_points(points_src, fields, weight)
        compute = self.compute(parameters, context)
        tile = self.parameterAsInt(parameters, "TILE_SIZE", context) or None
        model_path = self.parameterAsFileOutput(parameters, "OUTPUT_MODEL", context)
        report_path = self.parameterAsFileOutput(parameters, "OUTPUT_REPORT", context)
        with self.source(parameters, context) as src:
            backbone = self.backbone(parameters, context, in_chans=src.channels, tile=tile,
                                     device=compute["device"])
            compare = None
            if self.parameterAsString(parameters, "COMPARE_BACKBONE", context).strip():
                compare = self.backbone(parameters, context, "COMPARE_BACKBONE",
                                        in_chans=src.channels, tile=backbone.tile_size,
                                        device=compute["device"])
            fit = fit_points(src, points, backbone, compare,
                             method=self.enum(parameters, "METHOD", context),
                             n_folds=self.parameterAsInt(parameters, "FOLDS", context),
                             fold_mode=self.enum(parameters, "FOLD_MODE", context),
                             loss=self.enum(parameters, "LOSS", context),
                             seed=self.parameterAsInt(parameters, "SEED", context), tile=tile,
                             point_feature=self.enum(parameters, "POINT_FEATURE", context),
                             model_path=model_path, progress=progress, **compute)
        out_fields = oof_fields(points_src.fields(), fit)
        sink, sink_id = self.parameterAsSink(parameters, "OUTPUT_POINTS", context, out_fields,
                                             points_src.wkbType(), points_src.sourceCrs())
        write_oof(sink, feats, fit, out_fields)
        results = {"OUTPUT_POINTS": sink_id, "OUTPUT_MODEL": model_path,
                   "CV_TABLE": json.dumps(fit.cv.table()), "METHODS": json.dumps(fit.chosen)}
        if report_path:
            write_report(report_path, fit.cv, fit.coords, fit.chosen,
                         title="SoilSSL spatial cross-validation")
            results["OUTPUT_REPORT"] = report_path
        return results
