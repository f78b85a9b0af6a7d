"""soilssl:extractfeatures: tiles a raster through a ViT into a feature raster."""
from qgis.core import (QgsProcessingParameterEnum,
                       QgsProcessingParameterRasterDestination)

from .base import POOLS, SoilSSLAlgorithm
from .styles import feature_style, style_output


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
        self.add_number("MARGIN", "Patch context margin (patches; -1 = auto)", -1, minimum=-1,
                        is_advanced=True)
        self.add_number("MIN_VALID", "Minimum valid share of a tile", 0.5, minimum=0.0,
                        maximum=1.0, is_advanced=True)
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Features"))

    def execute(self, parameters, context, feedback, progress):
        from ..core.features import extract_features
        from ..core.inputs import checkpoint_inputs
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        compute = self.compute(parameters, context)
        recorded = checkpoint_inputs(self.parameterAsString(parameters, "BACKBONE",
                                                            context).strip())
        with self.source(parameters, context, recorded, progress) as src:
            backbone = self.backbone(parameters, context, in_chans=src.channels,
                                     tile=self.parameterAsInt(parameters, "TILE_SIZE", context),
                                     device=compute["device"])
            summary = extract_features(
                src, backbone, output, stride=self.parameterAsInt(parameters, "STRIDE", context),
                pool=self.enum(parameters, "POOL", context),
                min_valid=self.parameterAsDouble(parameters, "MIN_VALID", context),
                margin=self.margin(parameters, context), progress=progress, **compute)
        style_output(context, output, style=feature_style)
        return {"OUTPUT": output, "TILES": summary["tiles"], "SKIPPED": summary["skipped"]}

    def margin(self, parameters, context):
        margin = self.parameterAsInt(parameters, "MARGIN", context)
        return None if margin < 0 else margin
