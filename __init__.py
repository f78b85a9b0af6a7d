"""SoilSSL QGIS plugin.

The package can be imported without QGIS (``soilssl.core`` is the QGIS-free
engine); the QGIS parts are imported only when QGIS loads the plugin.
"""
import os

# OpenMP threads that spin while waiting stall a whole forward pass as soon as another
# process (QGIS's own threads, a second run) takes a core: 2-8x slower on a busy laptop.
# Passive waiting costs nothing measurable on an idle machine.  Must precede torch's import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .deps.paths import activate_and_log
    activate_and_log()  # SoilSSL's own package folder on sys.path, before torch is imported
    # Before anything of SoilSSL can import torch: keep triton (a second LLVM, which kills
    # QGIS desktop next to Mesa's) out of QGIS's process.  Why and how: nativeguard.py.
    from .nativeguard import keep_out
    report = keep_out(log=False)
    from qgis.core import Qgis, QgsMessageLog
    QgsMessageLog.logMessage(report.message(), "SoilSSL",
                             Qgis.Warning if report.loaded else Qgis.Info)
    from .plugin import SoilSSLPlugin
    return SoilSSLPlugin(iface)
