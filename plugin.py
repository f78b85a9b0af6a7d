"""QGIS plugin entry: registers the SoilSSL Processing provider."""
from qgis.core import QgsApplication


class SoilSSLPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS API name)
        from .algorithms.provider import SoilSSLProvider
        self.provider = SoilSSLProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
