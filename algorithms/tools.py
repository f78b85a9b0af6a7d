"""soilssl:clearcache: empties the point-feature cache (Tools group)."""
from qgis.core import QgsProcessingAlgorithm, QgsProcessingOutputNumber, QgsProcessingOutputString

from .base import SoilSSLAlgorithm


class ClearCache(SoilSSLAlgorithm):
    NAME = "clearcache"
    GROUP = "tools"

    def flags(self):
        return super().flags() | QgsProcessingAlgorithm.FlagNoThreading

    def define(self):
        self.addOutput(QgsProcessingOutputString("FOLDER", "Cache folder"))
        self.addOutput(QgsProcessingOutputNumber("FILES", "Files removed"))
        self.addOutput(QgsProcessingOutputNumber("BYTES", "Bytes freed"))

    def execute(self, parameters, context, feedback, progress):
        from ..core.cache import clear_cache
        removed = clear_cache()
        feedback.pushInfo(f"Removed {removed['files']} cached point-feature file(s), "
                          f"{removed['bytes'] / 1e6:.1f} MB, from {removed['folder']}.")
        return {"FOLDER": removed["folder"], "FILES": removed["files"],
                "BYTES": removed["bytes"]}
