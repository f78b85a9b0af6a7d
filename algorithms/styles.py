"""QML styles from resources/styles applied to SoilSSL outputs."""
import os

from qgis.core import QgsProcessingLayerPostProcessorInterface

from .base import PLUGIN_DIR

STYLES = os.path.join(PLUGIN_DIR, "resources", "styles")
_post_processors = []  # QGIS keeps raw pointers: keep the Python objects alive


class _StyleLoader(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, qml):
        super().__init__()
        self.qml = qml

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        layer.loadNamedStyle(self.qml)
        stretch_to_data(layer)
        layer.triggerRepaint()


def stretch_to_data(layer):
    """Spread a pseudocolour style's ramp over the layer's own min..max (band 1)."""
    renderer = layer.renderer()
    if renderer is None or renderer.type() != "singlebandpseudocolor":
        return
    from qgis.core import QgsRasterBandStats
    stats = layer.dataProvider().bandStatistics(1, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
    lo, hi = stats.minimumValue, stats.maximumValue
    fn = renderer.shader().rasterShaderFunction()
    items = fn.colorRampItemList()
    old_lo, old_hi = items[0].value, items[-1].value
    for item in items:
        item.value = lo + (item.value - old_lo) / ((old_hi - old_lo) or 1.0) * (hi - lo)
        item.label = f"{item.value:.3f}"
    fn.setColorRampItemList(items)
    fn.setMinimumValue(lo)
    fn.setMaximumValue(hi)
    renderer.setClassificationMin(lo)
    renderer.setClassificationMax(hi)


def style_output(context, path, qml):
    """Style ``path`` with ``resources/styles/<qml>``: a sidecar ``<name>.qml`` (QGIS
    loads it whenever the raster is opened) and, when Processing loads the output, the
    same style on the loaded layer."""
    from qgis.core import QgsRasterLayer
    layer = QgsRasterLayer(path, "styled")
    if layer.isValid():
        layer.loadNamedStyle(os.path.join(STYLES, qml))
        stretch_to_data(layer)
        layer.saveNamedStyle(os.path.splitext(path)[0] + ".qml")
    if context.willLoadLayerOnCompletion(path):
        loader = _StyleLoader(os.path.join(STYLES, qml))
        _post_processors.append(loader)
        context.layerToLoadOnCompletionDetails(path).setPostProcessor(loader)
