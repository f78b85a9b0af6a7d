"""soilssl:samplingdesign: where to sample next, and how much the AOA would grow."""
from qgis.core import (QgsCoordinateReferenceSystem, QgsFeature, QgsField, QgsFields,
                       QgsGeometry, QgsPointXY, QgsProcessing, QgsProcessingException,
                       QgsProcessingOutputNumber, QgsProcessingParameterEnum,
                       QgsProcessingParameterFeatureSink, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterFile, QgsProcessingParameterFileDestination,
                       QgsProcessingParameterMultipleLayers, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsWkbTypes)
from qgis.PyQt.QtCore import QVariant

from .base import SoilSSLAlgorithm
from .points import StagedSink, column, point_coordinates
from .similarity import geometries
from .styles import on_load, sites_style

METHODS = ["coverage", "clhs"]


def site_fields(values: dict) -> QgsFields:
    fields = QgsFields()
    fields.append(QgsField("rank", QVariant.Int))
    fields.append(QgsField("di", QVariant.Double))
    fields.append(QgsField("inside_aoa", QVariant.Int))
    for name in values:
        fields.append(QgsField(column(name), QVariant.Double))
    fields.append(QgsField("reason", QVariant.String))
    return fields


class SamplingDesign(SoilSSLAlgorithm):
    NAME = "samplingdesign"
    GROUP = "soil"

    def define(self):
        self.add(QgsProcessingParameterRasterLayer("INPUT", "Feature raster"))
        self.add(QgsProcessingParameterFeatureSource("POINTS", "Existing sample points",
                                                     [QgsProcessing.TypeVectorPoint]))
        self.add_number("N", "Number of new sites", 20, minimum=1)
        self.add_number("MIN_DISTANCE", "Minimum distance between sites (map units)", 0.0,
                        minimum=0.0)
        self.add(QgsProcessingParameterEnum("METHOD", "Method", METHODS, defaultValue=0))
        self.add(QgsProcessingParameterRasterLayer("COST", "Cost or access raster "
                                                   "(nodata = inaccessible)", optional=True))
        self.add(QgsProcessingParameterFeatureSource(
            "EXCLUDE", "Exclusion zones (polygons)", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.add(QgsProcessingParameterMultipleLayers(
            "COVARIATES", "Covariate rasters (cLHS)", QgsProcessing.TypeRaster, optional=True))
        self.add(QgsProcessingParameterFile("MODEL", "Soil model (predicted values at the "
                                            "sites)", fileFilter="SoilSSL model (*.pth *.pt);;"
                                            "All files (*)", optional=True))
        self.add(QgsProcessingParameterNumber("LEVEL", "Prediction interval level",
                                              QgsProcessingParameterNumber.Double, 0.9,
                                              minValue=0.5, maxValue=0.99), True)
        self.add_number("COST_WEIGHT", "Weight of the cost", 1.0, minimum=0.0, is_advanced=True)
        self.add_number("N_PCS", "Feature principal components", 10, minimum=1, maximum=100,
                        is_advanced=True)
        self.add_number("N_RANDOM", "Random designs to compare with", 20, minimum=0,
                        maximum=200, is_advanced=True)
        self.add_number("SEED", "Random seed", 0, is_advanced=True)
        self.addParameter(QgsProcessingParameterFeatureSink(
            "OUTPUT", "Proposed sample sites", QgsProcessing.TypeVectorPoint))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT_REPORT", "Sampling design report", "HTML files (*.html)", optional=True))
        for name, label in (("AOA_BEFORE", "Share of tiles inside the AOA now"),
                            ("AOA_AFTER", "Share inside the AOA with the proposed sites"),
                            ("AOA_RANDOM_MEAN", "Share inside the AOA with random sites (mean)"),
                            ("GROWTH_RATIO", "AOA growth of the design / of random designs")):
            self.addOutput(QgsProcessingOutputNumber(name, label))

    def execute(self, parameters, context, feedback, progress):
        from ..core.files import Outputs
        from ..core.sampling import sampling_design, write_design_report
        from ..core.soil import load_model
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException("INPUT is not a raster layer SoilSSL can read.")
        points = self.parameterAsSource(parameters, "POINTS", context)
        if points is None:
            raise QgsProcessingException("POINTS is not a vector layer SoilSSL can read.")
        xy, crs = point_coordinates(points)
        if not xy[0]:
            raise QgsProcessingException("The POINTS layer has no point with a geometry.")
        exclude = exclude_crs = None
        zones = self.parameterAsSource(parameters, "EXCLUDE", context)
        if zones is not None:
            exclude, exclude_crs = geometries(zones, "EXCLUDE")
        cost = self.parameterAsRasterLayer(parameters, "COST", context)
        covariates = [lyr.source() for lyr in
                      self.parameterAsLayerList(parameters, "COVARIATES", context)]
        model_path = self.parameterAsFile(parameters, "MODEL", context)
        model = load_model(model_path) if model_path else None
        design = sampling_design(
            layer.source(), xy, crs, n=self.parameterAsInt(parameters, "N", context),
            min_distance=self.parameterAsDouble(parameters, "MIN_DISTANCE", context),
            cost=cost.source() if cost else None, exclude=exclude, exclude_crs=exclude_crs,
            covariates=covariates, method=self.enum(parameters, "METHOD", context),
            model=model, level=self.parameterAsDouble(parameters, "LEVEL", context),
            n_pcs=self.parameterAsInt(parameters, "N_PCS", context),
            cost_weight=self.parameterAsDouble(parameters, "COST_WEIGHT", context),
            n_random=self.parameterAsInt(parameters, "N_RANDOM", context),
            seed=self.parameterAsInt(parameters, "SEED", context), progress=progress)
        report = self.parameterAsFileOutput(parameters, "OUTPUT_REPORT", context)
        fields = site_fields(design.values)
        with Outputs() as outputs:
            sink = StagedSink(self, parameters, "OUTPUT", context, fields, QgsWkbTypes.Point,
                              QgsCoordinateReferenceSystem.fromWkt(design.crs), outputs)
            for i in sorted(range(len(design.x)), key=lambda i: design.rank[i]):
                feat = QgsFeature(fields)
                feat.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(float(design.x[i]),
                                                                    float(design.y[i]))))
                feat.setAttributes([int(design.rank[i]), float(design.di[i]),
                                    int(bool(design.inside[i]))] +
                                   [float(v[i]) for v in design.values.values()] +
                                   [design.reason[i]])
                sink.sink.addFeature(feat)
            sink.close()
            if report:
                outputs.write(report, lambda tmp: write_design_report(tmp, design))
            outputs.commit()
        sink_id = sink.published()
        on_load(context, sink_id, sites_style)
        s = design.summary
        results = {"OUTPUT": sink_id, "AOA_BEFORE": s["aoa_before"], "AOA_AFTER": s["aoa_after"],
                   "AOA_RANDOM_MEAN": s["aoa_random_mean"], "GROWTH_RATIO": s["growth_ratio"]}
        if report:
            results["OUTPUT_REPORT"] = report
        return results
