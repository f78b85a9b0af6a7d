"""soilssl:pretrain: continues DINO self-supervised training of a ViT on the user's raster."""
from qgis.core import (QgsProcessing, QgsProcessingOutputNumber,
                       QgsProcessingParameterFeatureSource, QgsProcessingParameterFile,
                       QgsProcessingParameterFileDestination,
                       QgsProcessingParameterString)

from .base import SoilSSLAlgorithm


class Pretrain(SoilSSLAlgorithm):
    NAME = "pretrain"
    GROUP = "training"
    WARN_GEOGRAPHIC = True

    def define(self):
        self.add_source_params()
        self.add(QgsProcessingParameterFeatureSource(
            "POINTS", "Soil sample points to keep away from (optional)",
            [QgsProcessing.TypeVectorPoint], optional=True))
        self.add_number("BUFFER", "Exclusion buffer around points (px)", 448.0, minimum=0.0)
        self.add(QgsProcessingParameterString("ARCH", "Architecture (timm ViT name)",
                                              "vit_base_patch16_224"))
        self.add_backbone_params("INIT", "Initial weights (empty = random initialisation)",
                                 optional=True)
        self.add_number("EPOCHS", "Epochs", 10, minimum=1)
        self.add_number("TILE_SIZE", "Tile size (px)", 224, minimum=16)
        self.add_number("STRIDE", "Grid stride (px; 0 = tile size)", 0, minimum=0, is_advanced=True)
        self.add_number("OUT_DIM", "DINO head output dimension", 4096, minimum=16, is_advanced=True)
        self.add_number("LOCAL_CROPS", "Local crops per tile", 8, minimum=0, is_advanced=True)
        self.add_number("LR", "Learning rate (per 256 tiles)", 0.0005, minimum=0.0,
                        is_advanced=True)
        self.add_number("SEED", "Random seed", 0, is_advanced=True)
        self.add(QgsProcessingParameterFile("RESUME", "Resume from checkpoint", optional=True,
                                            fileFilter="SoilSSL checkpoint (*.pth *.pt);;All files (*)"))
        self.add_compute_params(batch=16)
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Pretrained checkpoint", "SoilSSL checkpoint (*.pth)"))
        self.addOutput(QgsProcessingOutputNumber("TILES", "Training tiles"))
        self.addOutput(QgsProcessingOutputNumber("FINAL_LOSS", "Last epoch's mean loss"))

    def execute(self, parameters, context, feedback, progress):
        from ..core.pretrain import PretrainConfig, pretrain
        from .points import point_coordinates
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        dem = self.parameterAsRasterLayer(parameters, "DEM", context)
        compute = self.compute(parameters, context)
        cfg = PretrainConfig(
            input=layer.source(), output=self.parameterAsFileOutput(parameters, "OUTPUT", context),
            bands=self.band_list(parameters, context) or None,
            dem=dem.source() if dem else None,
            buffer=self.parameterAsDouble(parameters, "BUFFER", context),
            arch=self.parameterAsString(parameters, "ARCH", context).strip() or None,
            init=self.parameterAsString(parameters, "INIT", context).strip() or None,
            epochs=self.parameterAsInt(parameters, "EPOCHS", context),
            tile_size=self.parameterAsInt(parameters, "TILE_SIZE", context),
            stride=self.parameterAsInt(parameters, "STRIDE", context) or None,
            out_dim=self.parameterAsInt(parameters, "OUT_DIM", context),
            local_crops_number=self.parameterAsInt(parameters, "LOCAL_CROPS", context),
            lr=self.parameterAsDouble(parameters, "LR", context),
            seed=self.parameterAsInt(parameters, "SEED", context),
            resume=self.parameterAsFile(parameters, "RESUME", context) or None, **compute)
        xy, crs = point_coordinates(self.parameterAsSource(parameters, "POINTS", context))
        summary = pretrain(cfg, points_xy=xy, points_crs=crs, progress=progress)
        final = summary["final_loss"]
        return {"OUTPUT": cfg.output, "TILES": summary["tiles"]["kept"],
                "FINAL_LOSS": float("nan") if final is None else final}
