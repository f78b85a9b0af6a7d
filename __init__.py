"""SoilSSL QGIS plugin.

The package can be imported without QGIS (``soilssl.core`` is the QGIS-free
engine); the QGIS parts are imported only when QGIS loads the plugin.
"""


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .plugin import SoilSSLPlugin
    return SoilSSLPlugin(iface)
