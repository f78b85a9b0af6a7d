"""Shared base of the SoilSSL algorithms: metadata, parameters, dependencies, running.

A subclass declares ``NAME``/``GROUP``, its parameters in ``define`` (``add_*`` helpers for
the shared ones) and does its work in ``execute`` with one call into ``soilssl.core``.
Engine errors become one ``QgsProcessingException``; see ``running.py`` for the rest.
"""
import importlib.util
import os

from qgis.core import (QgsProcessing, QgsProcessingAlgorithm, QgsProcessingException,
                       QgsProcessingFeedback,
                       QgsProcessingParameterBand, QgsProcessingParameterDefinition,
                       QgsProcessingParameterEnum, QgsProcessingParameterMultipleLayers,
                       QgsProcessingParameterFile, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString)
from qgis.PyQt.QtGui import QIcon

from . import help as texts

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = {"torch": "torch", "timm": "timm", "rasterio": "rasterio", "sklearn": "scikit-learn"}
DEVICES = ["auto", "cpu", "cuda"]
AMPS = ["auto", "none", "bf16", "fp16"]
POOLS = ["cls", "mean", "patch"]
POINT_FEATURES = ["tile", "patch", "both"]


def missing_packages():
    return [pip for mod, pip in REQUIRED.items() if importlib.util.find_spec(mod) is None]


INSTALL_ACTION = "Plugins → SoilSSL → Install dependencies…"
INSTALL_URL = "soilssl:install-dependencies"  # a link that opens the installer (plugin.py)


def install_hint(missing, short=False, link=None):
    """What to do about missing packages.  ``short``: one line that fits the message bar of an
    algorithm dialog at its default width (the bar shows one line).  ``link`` (default: in the QGIS desktop) makes the
    menu path a link that opens the installer."""
    if link is None:
        from qgis.utils import iface
        link = iface is not None
    action = f'<a href="{INSTALL_URL}">{INSTALL_ACTION}</a>' if link else INSTALL_ACTION
    if short:  # the names are in the longer message and in the installer
        return f"Missing packages: {action}"
    return (f"SoilSSL needs these Python packages, which QGIS's Python does not have: "
            f"{', '.join(missing)}. Install them with {action}, or by hand as 'Installing the "
            "deep-learning packages' in the SoilSSL README shows.")


class SoilSSLAlgorithm(QgsProcessingAlgorithm):
    NAME = ""
    GROUP = "features"
    WARN_GEOGRAPHIC = False  # True for algorithms that tile INPUT

    # -- metadata -----------------------------------------------------------
    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802
        return texts.title(self.NAME)

    def group(self):
        return texts.GROUPS[self.GROUP]

    def groupId(self):  # noqa: N802
        return self.GROUP

    def shortHelpString(self):  # noqa: N802
        params = self.parameterDefinitions()
        return texts.short_help(self.NAME, {p.name(): texts.default_text(p) for p in params},
                                {p.name(): p.description() for p in params})

    def icon(self):  # one per group, drawn for 16 px
        return QIcon(os.path.join(PLUGIN_DIR, "resources", "icons", self.GROUP + ".svg"))

    def createInstance(self):  # noqa: N802
        return type(self)()

    def canExecute(self):  # noqa: N802
        missing = missing_packages()
        return (False, install_hint(missing)) if missing else (True, "")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.define()

    def _enum_by_name(self, name, value):
        """Index of an enum option given by its text (DEVICE=cpu), else None."""
        param = self.parameterDefinition(name)
        if param is None or param.type() != "enum" or not isinstance(value, str):
            return None
        options = [o.lower() for o in param.options()]
        return options.index(value.strip().lower()) if value.strip().lower() in options else None

    def checkParameterValues(self, parameters, context):  # noqa: N802
        fixed = dict(parameters)
        for name, value in parameters.items():
            index = self._enum_by_name(name, value)
            if index is not None:
                fixed[name] = index
        return super().checkParameterValues(fixed, context)

    def enum(self, parameters, name, context):
        """The chosen option's text; accepts an index or the option's text."""
        index = self._enum_by_name(name, parameters.get(name))
        if index is None:
            index = self.parameterAsEnum(parameters, name, context)
        return self.parameterDefinition(name).options()[index]

    # -- running ------------------------------------------------------------
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        missing = missing_packages()
        if missing:
            raise QgsProcessingException(install_hint(missing, link=False))
        from ..core.errors import SoilSSLError
        from ..core.progress import Progress
        from .running import bridge, check_outputs, translated, warn_geographic
        feedback = feedback or QgsProcessingFeedback()
        progress = Progress(feedback.setProgress, feedback.isCanceled)  # info: via the log
        with bridge().routing(feedback):
            try:
                check_outputs(self, parameters)
                if self.WARN_GEOGRAPHIC:
                    warn_geographic(self, parameters, context, feedback)
                return self.execute(parameters, context, feedback, progress)
            except (SoilSSLError, OSError, QgsProcessingException) as exc:
                error = translated(exc)
            raise error  # unchained: QGIS keeps it alive, with the run's frames (tiles, ViT)

    def define(self):
        raise NotImplementedError

    def execute(self, parameters, context, feedback, progress):
        raise NotImplementedError

    # -- shared parameters --------------------------------------------------
    def add(self, param, is_advanced=False):
        if is_advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(param)

    def add_number(self, name, label, default, minimum=None, maximum=None, is_advanced=False):
        """An integer (int default) or decimal (float default) parameter."""
        kind = QgsProcessingParameterNumber.Double if isinstance(default, float) \
            else QgsProcessingParameterNumber.Integer
        bounds = {k: v for k, v in (("minValue", minimum), ("maxValue", maximum)) if v is not None}
        self.add(QgsProcessingParameterNumber(name, label, kind, default, **bounds), is_advanced)

    def add_source_params(self):
        self.add(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.add(QgsProcessingParameterBand("BANDS", "Bands (default: the first 3)", None,
                                            "INPUT", optional=True, allowMultiple=True))
        self.add(QgsProcessingParameterRasterLayer("DEM", "DEM as extra channel", optional=True))

    def add_covariate_params(self, categorical=True):
        """COVARIATES (raster layers, any CRS and resolution) and, for fitting, which of
        them are categorical (COVARIATES_CATEGORICAL)."""
        self.add(QgsProcessingParameterMultipleLayers(
            "COVARIATES", "Covariate rasters (terrain, climate...)", QgsProcessing.TypeRaster,
            optional=True))
        if categorical:
            self.add(QgsProcessingParameterMultipleLayers(
                "COVARIATES_CATEGORICAL", "Categorical covariate rasters (geology, soil "
                "map...: one-hot)", QgsProcessing.TypeRaster, optional=True))

    def layer_paths(self, parameters, name, context):
        """The files of a multiple-layers parameter (empty list when not given)."""
        layers = self.parameterAsLayerList(parameters, name, context) or []
        return [layer.source().split("|")[0] for layer in layers]

    def add_backbone_params(self, name="BACKBONE", label="Backbone checkpoint or timm name",
                            optional=False):
        self.add(QgsProcessingParameterFile(
            name, label, fileFilter="Checkpoints (*.pth *.pt *.ckpt *.bin *.safetensors);;"
            "All files (*)", optional=optional))
        if name == "BACKBONE":
            self.add(QgsProcessingParameterString("ARCH", "Architecture (when the file does not "
                                                  "say)", optional=True))

    def add_tiling_params(self):
        self.add_number("TILE_SIZE", "Tile size (px; 0 = backbone's)", 0, minimum=0)
        self.add_number("STRIDE", "Stride (px; 0 = tile size)", 0, minimum=0)

    def add_compute_params(self, batch=32):
        self.add(QgsProcessingParameterEnum("DEVICE", "Device", DEVICES, defaultValue=0))
        self.add_number("BATCH_SIZE", "Batch size", batch, minimum=1)
        self.add(QgsProcessingParameterEnum("AMP", "Mixed precision", AMPS, defaultValue=0), True)
        self.add(QgsProcessingParameterNumber(
            "WORKERS", "Reader threads (empty: automatic, 2 on the CPU, up to 8 with a GPU)",
            QgsProcessingParameterNumber.Integer, None, optional=True, minValue=0,
            maxValue=32), True)

    # -- reading shared parameters ------------------------------------------
    def source(self, parameters, context, recorded=None, progress=None):
        """The TileSource of INPUT, BANDS and DEM; BANDS/DEM left empty are taken from
        ``recorded`` (core.inputs: what a model or checkpoint was made from)."""
        from ..core.inputs import resolve_inputs
        from ..core.raster import TileSource
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException("INPUT is not a raster layer SoilSSL can read.")
        dem = self.parameterAsRasterLayer(parameters, "DEM", context)
        bands, dem = resolve_inputs(recorded, self.band_list(parameters, context) or None,
                                    dem.source() if dem else None, progress, layer.source())
        return TileSource(layer.source(), bands, dem)

    def band_list(self, parameters, context, name="BANDS"):
        """Band numbers from a list, repeated values, or text like '4,3,2'."""
        raw = parameters.get(name)
        if isinstance(raw, str) or (isinstance(raw, (list, tuple)) and raw and
                                    all(isinstance(v, str) for v in raw)):
            text = raw if isinstance(raw, str) else ",".join(raw)
            try:
                return [int(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v]
            except ValueError:
                raise QgsProcessingException(f"{name} must be band numbers like 4,3,2 "
                                             f"(got '{text}').")
        return self.parameterAsInts(parameters, name, context)

    def backbone(self, parameters, context, name="BACKBONE", in_chans=None, tile=None,
                 device="cpu"):
        from ..core.backbone import load_backbone
        spec = self.parameterAsString(parameters, name, context).strip()
        arch = self.parameterAsString(parameters, "ARCH", context).strip() or None
        return load_backbone(spec or None, arch=arch, in_chans=in_chans, tile_size=tile or None,
                             device=device)

    def compute(self, parameters, context):
        """The compute options; DEVICE is checked here, before any heavy work."""
        from ..core.backbone import resolve_device
        device = self.enum(parameters, "DEVICE", context)
        resolve_device(device)
        return dict(device=device,
                    batch_size=self.parameterAsInt(parameters, "BATCH_SIZE", context),
                    amp=self.enum(parameters, "AMP", context),
                    workers=None if parameters.get("WORKERS") in (None, "") else
                    self.parameterAsInt(parameters, "WORKERS", context))
