"""The SoilSSL Processing provider (id ``soilssl``)."""
import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .base import PLUGIN_DIR, install_hint, missing_packages


class SoilSSLProvider(QgsProcessingProvider):
    def id(self):
        return "soilssl"

    def name(self):
        return "SoilSSL"

    def longName(self):  # noqa: N802
        return "SoilSSL: self-supervised ViTs for digital soil mapping"

    def icon(self):
        return QIcon(os.path.join(PLUGIN_DIR, "resources", "icon.svg"))

    def warningMessage(self):  # noqa: N802  (a one-line message bar; plain: also logged)
        missing = missing_packages()
        return install_hint(missing, short=True, link=False) if missing else ""

    def unload(self):
        from .running import remove_bridge
        remove_bridge()

    def loadAlgorithms(self):  # noqa: N802
        from .registry import ALGORITHMS
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())
