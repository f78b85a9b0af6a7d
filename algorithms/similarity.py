"""soilssl:similaritymap: cosine similarity of every tile to reference places' mean feature."""
import json

from qgis.core import (QgsProcessing, QgsProcessingException, QgsProcessingOutputNumber,
                       QgsProcessingParameterBoolean,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer)

from .base import SoilSSLAlgorithm
from .styles import style_output


def geometries(source, name):
    """-> (GeoJSON-like geometries, CRS WKT) of a feature source."""
    if source is None:
        raise QgsProcessingException(f"{name} is not a vector layer SoilSSL can read.")
    geoms = []
    for feat in source.getFeatures():
        geom = feat.geometry()
        if geom is not None and not geom.isEmpty():
            geoms.append(json.loads(geom.asJson()))
    if not geoms:
        raise QgsProcessingException(f"The {name} layer has no feature with a geometry.")
    return geoms, source.sourceCrs().toWkt()


def optional_number(alg, parameters, name, context):
    """A number parameter left empty -> None."""
    raw = parameters.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return alg.parameterAsDouble(parameters, name, context)


class SimilarityMap(SoilSSLAlgorithm):
    NAME = "similaritymap"
    GROUP = "features"

    def define(self):
        self.add(QgsProcessingParameterRasterLayer("INPUT", "Feature raster"))
        self.add(QgsProcessingParameterFeatureSource(
            "REFERENCES", "Reference places (points or polygons)",
            [QgsProcessing.TypeVectorAnyGeometry]))
        self.add(QgsProcessingParameterNumber(
            "THRESHOLD", "Similarity threshold for the mask (-1..1)",
            QgsProcessingParameterNumber.Double, None, True, -1.0, 1.0))
        self.add(QgsProcessingParameterBoolean("CENTRE", "Centre on the scene's mean feature",
                                               True), True)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Similarity"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT_MASK", "Similar places (threshold mask)", optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("REFERENCE_TILES", "Reference tiles"))
        self.addOutput(QgsProcessingOutputNumber("SIMILAR_TILES", "Tiles at or above THRESHOLD"))

    def execute(self, parameters, context, feedback, progress):
        from ..core.similarity import similarity_map
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException("INPUT is not a raster layer SoilSSL can read.")
        geoms, crs = geometries(self.parameterAsSource(parameters, "REFERENCES", context),
                                "REFERENCES")
        threshold = optional_number(self, parameters, "THRESHOLD", context)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        mask = self.parameterAsOutputLayer(parameters, "OUTPUT_MASK", context) or None
        if mask and threshold is None:
            raise QgsProcessingException("OUTPUT_MASK needs a THRESHOLD: the similarity "
                                         "(-1..1) from which a tile counts as similar.")
        s = similarity_map(layer.source(), output, geoms, crs, threshold,
                           mask if threshold is not None else None,
                           self.parameterAsBoolean(parameters, "CENTRE", context), progress)
        style_output(context, output, "similarity.qml")
        results = {"OUTPUT": output, "REFERENCE_TILES": s["reference_tiles"]}
        if s["mask"]:
            style_output(context, s["mask"], "similarity_mask.qml")
            results["OUTPUT_MASK"] = s["mask"]
        if threshold is not None:
            results["SIMILAR_TILES"] = s["above_threshold"]
        return results
