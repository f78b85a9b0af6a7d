"""soilssl:fitpoints: soil heads on sample points under spatial cross-validation."""
import json

from qgis.core import (QgsProcessingOutputString, QgsProcessingParameterBoolean,
                       QgsProcessingParameterEnum,
                       QgsProcessingParameterFeatureSink,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterField,
                       QgsProcessingParameterFileDestination,
                       QgsProcessingParameterString, QgsProcessing)

from .base import POINT_FEATURES, SoilSSLAlgorithm
from .points import StagedSink, column, oof_fields, read_points, write_oof
from .styles import class_points_style, on_load, residual_style

METHODS = ["all", "mlp", "ridge", "rf_features", "rf_pixels", "rf_context", "rf_hybrid",
           "gbm_hybrid"]
FOLD_MODES = ["kmeans", "random", "knndm"]
LOSSES = ["mse", "huber", "l1"]
TARGET_TYPES = ["auto", "regression", "classification"]


def in_dialog(feedback):
    """Whether the run is the algorithm dialog's own (not a model's step, a script or
    qgis_process).  That dialog prints every result under "Results" (pprint of the
    whole dict), so the JSON outputs would show there as a raw dump; the CV table is in
    the log as a table and in the report instead."""
    return feedback is not None and \
        feedback.metaObject().className() == "QgsProcessingAlgorithmDialogFeedback"


class FitPoints(SoilSSLAlgorithm):
    NAME = "fitpoints"
    GROUP = "soil"

    def define(self):
        self.add_source_params()
        self.add_backbone_params()
        self.add_backbone_params("COMPARE_BACKBONE", "Comparison backbone (e.g. the ImageNet "
                                 "weights pretraining started from)", optional=True)
        self.add(QgsProcessingParameterString(
            "COMPARE_BACKBONES", "Backbones to compare (;-separated files, cached timm names, "
            "random:<arch>)", optional=True))
        self.add(QgsProcessingParameterFeatureSource("POINTS", "Soil sample points",
                                                     [QgsProcessing.TypeVectorPoint]))
        self.add(QgsProcessingParameterField("FIELDS", "Soil properties (numeric or class "
                                             "fields)",
                                             parentLayerParameterName="POINTS",
                                             allowMultiple=True))
        self.add_covariate_params()
        self.add(QgsProcessingParameterEnum("METHOD", "Method", METHODS, defaultValue=0))
        self.add(QgsProcessingParameterEnum("POINT_FEATURE", "Feature at each point",
                                            POINT_FEATURES, defaultValue=0))
        self.add_number("FOLDS", "Spatial CV folds", 6, minimum=2, maximum=50)
        self.add(QgsProcessingParameterEnum("FOLD_MODE", "Folds", FOLD_MODES, defaultValue=0),
                 True)
        self.add(QgsProcessingParameterEnum("LOSS", "MLP loss", LOSSES, defaultValue=0), True)
        self.add(QgsProcessingParameterEnum("TARGET_TYPE", "Target type", TARGET_TYPES,
                                            defaultValue=0), True)
        self.add(QgsProcessingParameterBoolean("CLASS_WEIGHTS", "Balanced class weights "
                                               "(class targets)", defaultValue=False), True)
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
                                                 "target and method; models and scripts)"))
        self.addOutput(QgsProcessingOutputString("METHODS", "Method refitted per target, for "
                                                 "METHOD=all the stack's weights (JSON)"))
        self.addOutput(QgsProcessingOutputString("BACKBONE_RANKING", "Backbones ranked per "
                                                 "target by CV RMSE (JSON; models and scripts)"))

    def execute(self, parameters, context, feedback, progress):
        from ..core.files import Outputs
        from ..core.report import write_report
        from ..core.backbone import load_compared, parse_backbone_list
        from ..core.covariates import open_covariates
        from ..core.soil import fit_points
        points_src = self.parameterAsSource(parameters, "POINTS", context)
        fields = self.parameterAsFields(parameters, "FIELDS", context)
        weight = self.parameterAsString(parameters, "WEIGHT_FIELD", context) or None
        points, feats = read_points(points_src, fields, weight,
                                    self.enum(parameters, "TARGET_TYPE", context))
        compute = self.compute(parameters, context)
        tile = self.parameterAsInt(parameters, "TILE_SIZE", context) or None
        model_path = self.parameterAsFileOutput(parameters, "OUTPUT_MODEL", context)
        report_path = self.parameterAsFileOutput(parameters, "OUTPUT_REPORT", context)
        covariates = open_covariates(self.layer_paths(parameters, "COVARIATES", context),
                                     self.layer_paths(parameters, "COVARIATES_CATEGORICAL",
                                                      context))
        # model, points layer and report are written to temporary files and published
        # together at the end: all of them or none
        with Outputs() as outputs, self.source(parameters, context) as src:
            backbone = self.backbone(parameters, context, in_chans=src.channels, tile=tile,
                                     device=compute["device"])
            compare = None
            if self.parameterAsString(parameters, "COMPARE_BACKBONE", context).strip():
                compare = self.backbone(parameters, context, "COMPARE_BACKBONE",
                                        in_chans=src.channels, tile=backbone.tile_size,
                                        device=compute["device"])
            several = self.parameterAsString(parameters, "COMPARE_BACKBONES", context)
            if parse_backbone_list(several):
                compare = {**({"compare": compare} if compare is not None else {}),
                           **load_compared(
                               several, self.parameterAsString(parameters, "ARCH",
                                                               context).strip() or None,
                               src.channels, backbone.tile_size, compute["device"],
                               self.parameterAsInt(parameters, "SEED", context),
                               taken=("pixels", "features", "compare"), progress=progress)}
            fit = fit_points(src, points, backbone, compare,
                             method=self.enum(parameters, "METHOD", context),
                             n_folds=self.parameterAsInt(parameters, "FOLDS", context),
                             fold_mode=self.enum(parameters, "FOLD_MODE", context),
                             loss=self.enum(parameters, "LOSS", context),
                             seed=self.parameterAsInt(parameters, "SEED", context), tile=tile,
                             point_feature=self.enum(parameters, "POINT_FEATURE", context),
                             class_weight="balanced" if self.parameterAsBool(
                                 parameters, "CLASS_WEIGHTS", context) else None,
                             distances=bool(report_path), covariates=covariates,
                             progress=progress, **compute)
            outputs.save(fit.model, model_path)
            out_fields = oof_fields(points_src.fields(), fit)
            sink = StagedSink(self, parameters, "OUTPUT_POINTS", context, out_fields,
                              points_src.wkbType(), points_src.sourceCrs(), outputs)
            write_oof(sink.sink, feats, fit, out_fields)
            sink.close()
            if report_path:
                outputs.write(report_path, lambda tmp: write_report(
                    tmp, fit.cv, fit.coords, fit.chosen, title="SoilSSL spatial cross-validation",
                    ranking=fit.ranking, model=fit.model, geodist=fit.geodist, sets=fit.sets,
                    seed=self.parameterAsInt(parameters, "SEED", context)))
            outputs.commit()
        sink_id = sink.published()
        target = fit.cv.target_names[0]  # points coloured by the first target's residual
        on_load(context, sink_id, residual_style(column(f"res_{target}_{fit.chosen[target]}"))
                if fit.cv.kind(target) == "regression" else  # or its predicted class
                class_points_style(column(f"pred_{target}_{fit.chosen[target]}"),
                                   fit.cv.classes[target]))
        results = {"OUTPUT_POINTS": sink_id, "OUTPUT_MODEL": model_path}
        if not in_dialog(feedback):  # the dialog prints every result raw under "Results"
            results.update(CV_TABLE=json.dumps(fit.cv.table()), METHODS=json.dumps(fit.methods),
                           BACKBONE_RANKING=json.dumps(fit.ranking))
        if report_path:
            results["OUTPUT_REPORT"] = report_path
        return results
