"""QGIS plugin entry: registers the SoilSSL Processing provider and the Plugins → SoilSSL
menu (Install dependencies…, Diagnostics…)."""
import os

from qgis.core import QgsApplication

MENU = "&SoilSSL"


class SoilSSLPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None
        self.actions = []
        self.links = None
        self.dialog = None

    def initProcessing(self):  # noqa: N802 (QGIS API name)
        from .algorithms.provider import SoilSSLProvider
        self.provider = SoilSSLProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        from .deps.dialogs import Links
        icon = QIcon(os.path.join(os.path.dirname(__file__), "resources", "icon.svg"))
        for text, slot in (("Install dependencies…", self.show_install),
                           ("Diagnostics…", self.show_diagnostics)):
            action = QAction(icon, text, self.iface.mainWindow())
            action.triggered.connect(slot)
            self.iface.addPluginToMenu(MENU, action)
            self.actions.append(action)
        # links in the algorithm dialogs' warning ("Plugins → SoilSSL → Install dependencies…")
        self.links = Links({"install-dependencies": self.show_install,
                            "diagnostics": self.show_diagnostics})

    def show_install(self):
        from .algorithms.base import missing_packages
        from .deps.dialogs import InstallDialog
        parent = self.iface.mainWindow() if self.iface else None
        self.dialog = InstallDialog(parent, missing=missing_packages())
        self.dialog.installed.connect(self.packages_installed)
        self.dialog.exec_()  # modal: also usable from an open 'cannot be run' message

    def packages_installed(self, manifest):
        if self.provider is not None:  # the Toolbox and dialogs re-check the packages
            self.provider.refreshAlgorithms()

    def show_diagnostics(self):
        from .deps.dialogs import DiagnosticsDialog, diagnostics_text
        parent = self.iface.mainWindow() if self.iface else None
        DiagnosticsDialog(diagnostics_text(), parent).exec_()

    def unload(self):
        if self.links is not None:
            self.links.remove()
            self.links = None
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
        self.actions = []
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
