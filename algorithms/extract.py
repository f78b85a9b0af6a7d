"""soilssl:extractfeatures: tiles a raster through a ViT into a feature raster."""
from qgis.core import (QgsProcessingParameterEnum, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterDestination)

from .base import POOLS, SoilSSLAlgorithm


class ExtractFeatures(SoilSSLAlgorithm):
    NAME = "extractfeatures"
    GROUP = "features"
    WARN_GEOGRAPHIC = True

    def define(self):
        self.add_source_params()
        self.add_backbone_params()
        self.add_tiling_params()
        self.add_compute_params()
        self.add(QgsProcessingParameterEnum("POOL", "Tile feature", POOLS, defaultValue=0), True)
        self.add(QgsProcessingParameterNumber("MIN_VALID", "Minimum valid share of a tile",
                                              QgsProcessingParameterNumber.Double, 0.5,
                                              minValue=0.0, maxValue=1.0), True)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Features"))

    def execute(self, parameters, context, feedback, progress):
        from ..core.features import extract_features
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        compute = self.compute(parameters, context)
        with self.source(parameters, context) as src:
            backbone = self.backbone(parameters, context, in_chans=src.channels,
                                     tile=self.parameterAsInt(parameters, "TILE_SIZE", context),
                                     device=compute["device"])
            summary = extract_features(
                src, backbone, output, stride=self.parameterAsInt(parameters, "STRIDE", context),
                pool=self.enum(parameters, "POOL", context),
                min_valid=self.parameterAsDouble(parameters, "MIN_VALID", context),
                progress=progress, **compute)
        return {"OUTPUT": output, "TILES": summary["tiles"], "SKIPPED": summary["skipped"]}
