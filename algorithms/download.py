"""soilssl:downloadbackbone: fetches a timm backbone checkpoint into the local cache."""
from qgis.core import (QgsProcessingOutputBoolean, QgsProcessingOutputFile,
                       QgsProcessingOutputString, QgsProcessingParameterBoolean,
                       QgsProcessingParameterString)

from .base import SoilSSLAlgorithm


class DownloadBackbone(SoilSSLAlgorithm):
    NAME = "downloadbackbone"
    GROUP = "features"

    def define(self):
        from ..core.download import RECOMMENDED
        self.add(QgsProcessingParameterString("NAME", "timm pretrained name",
                                              RECOMMENDED[0]["name"]))
        self.add(QgsProcessingParameterString("SHA256", "Expected SHA-256 (optional)",
                                              optional=True), True)
        self.add(QgsProcessingParameterBoolean("FORCE", "Download again even if cached", False),
                 True)
        self.addOutput(QgsProcessingOutputFile("OUTPUT", "Downloaded weights file"))
        self.addOutput(QgsProcessingOutputString("SHA256_OUT", "SHA-256 of the file"))
        self.addOutput(QgsProcessingOutputBoolean("DOWNLOADED", "Downloaded (false: was cached)"))

    def execute(self, parameters, context, feedback, progress):
        from ..core.download import download_backbone
        r = download_backbone(self.parameterAsString(parameters, "NAME", context),
                              self.parameterAsString(parameters, "SHA256", context) or None,
                              force=self.parameterAsBool(parameters, "FORCE", context),
                              progress=progress)
        feedback.pushInfo(f"Use BACKBONE={r['name']} (found offline from now on) or the file "
                          f"{r['path']}.")
        return {"OUTPUT": r["path"], "SHA256_OUT": r["sha256"], "DOWNLOADED": r["downloaded"]}
