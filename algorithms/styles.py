"""Styles of SoilSSL outputs: the QML files of resources/styles, fitted to each output's data.

A style reaches the user two ways: a sidecar ``<name>.qml`` beside a raster (QGIS loads it
whenever the file is opened later) and, when Processing loads the output ("Open output
file after running"), a post-processor that styles the loaded layer.

The fitted renderer is always installed with ``layer.setRenderer``: QGIS rebuilds the
Layers panel legend on the renderer-changed signal only.  Editing the renderer in place
(as this module once did) left the legend of the QML's template, so a prediction ranging
7.63-9.84 showed a 0 ... 1 legend in the Layers panel until the file was reopened.
"""
import math
import os

from qgis.core import (QgsCategorizedSymbolRenderer, QgsContrastEnhancement,
                       QgsGraduatedSymbolRenderer, QgsRendererCategory,
                       QgsLimitedRandomColorRamp, QgsPalettedRasterRenderer,
                       QgsProcessingLayerPostProcessorInterface, QgsRasterBandStats,
                       QgsRasterLayer, QgsRendererRange, QgsSingleBandGrayRenderer, QgsStyle,
                       QgsSymbol)

from qgis.PyQt.QtGui import QColor

from .base import PLUGIN_DIR

STYLES = os.path.join(PLUGIN_DIR, "resources", "styles")
RESIDUAL_CLASSES = 7  # odd: the middle class straddles 0 and takes the ramp's neutral colour
_post_processors = []  # QGIS keeps raw pointers: keep the Python objects alive


class _Restyle(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, style):
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        self.style(layer)
        layer.triggerRepaint()


def _install(layer, renderer):
    """Give ``layer`` ``renderer`` so that its legend follows (see the module note)."""
    if renderer is not None:
        layer.setRenderer(renderer)


def qml_style(qml, fit=None):
    """A style: load ``resources/styles/<qml>``, then ``fit(layer, renderer)`` -> renderer
    (default: a pseudocolour ramp stretched over the data)."""
    fit = fit or stretch_to_data

    def style(layer):
        layer.loadNamedStyle(os.path.join(STYLES, qml))
        if fit is not None and layer.renderer() is not None:
            _install(layer, fit(layer, layer.renderer().clone()))
    return style


# -- raster renderers fitted to the data ---------------------------------------
def stretch_to_data(layer, renderer):
    """A pseudocolour renderer's ramp spread over the layer's own min..max (band 1)."""
    if renderer.type() != "singlebandpseudocolor":
        return renderer
    stats = layer.dataProvider().bandStatistics(1, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
    return _spread(renderer, stats.minimumValue, stats.maximumValue)


def _spread(renderer, lo, hi):
    """A pseudocolour renderer's ramp spread over lo..hi."""
    fn = renderer.shader().rasterShaderFunction()
    items = fn.colorRampItemList()
    old_lo, old_hi = items[0].value, items[-1].value
    for item in items:
        item.value = lo + (item.value - old_lo) / ((old_hi - old_lo) or 1.0) * (hi - lo)
        item.label = f"{item.value:.{fn.labelPrecision()}f}"
    fn.setColorRampItemList(items)
    fn.setMinimumValue(lo)
    fn.setMaximumValue(hi)
    renderer.setClassificationMin(lo)
    renderer.setClassificationMax(hi)
    return renderer


def band_range(path, band=1):
    """(min, max) of a raster band, or None if it cannot be read (leaves no .aux.xml)."""
    aux = path + ".aux.xml"
    had_aux = os.path.exists(aux)
    layer = QgsRasterLayer(path, "range")
    out = None
    if layer.isValid():
        stats = layer.dataProvider().bandStatistics(band, QgsRasterBandStats.Min |
                                                    QgsRasterBandStats.Max)
        out = stats.minimumValue, stats.maximumValue
    del layer
    if not had_aux and os.path.exists(aux):
        os.remove(aux)
    return out


def stretch_to_range(lo, hi):
    """A fit spreading a pseudocolour ramp over lo..hi: the interval bounds share one
    colour scale (each stretched to its own range, lower and upper would look alike)."""
    def fit(layer, renderer):
        if renderer.type() != "singlebandpseudocolor":
            return renderer
        return _spread(renderer, lo, hi)
    return fit


def first_classes(k):
    """A fit keeping the palette's first ``k`` classes (more colours if k exceeds it)."""
    def fit(layer, renderer):
        if renderer.type() != "paletted":
            return renderer
        classes = list(renderer.classes())[:k]
        extra = QgsLimitedRandomColorRamp.randomColors(max(0, k - len(classes)))
        for value, colour in zip(range(len(classes), k), extra):
            classes.append(QgsPalettedRasterRenderer.Class(value, colour, f"class {value}"))
        out = QgsPalettedRasterRenderer(layer.dataProvider(), renderer.band(), classes)
        out.setOpacity(renderer.opacity())
        return out
    return fit


def feature_style(layer):
    """A feature raster: single-band grey of its first feature (band 1, named by its
    description), stretched over the 2-98 % cumulative cut of its values."""
    provider = layer.dataProvider()
    renderer = QgsSingleBandGrayRenderer(provider, 1)
    lo, hi = provider.cumulativeCut(1, 0.02, 0.98)
    enhancement = QgsContrastEnhancement(provider.dataType(1))
    enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    enhancement.setMinimumValue(lo)
    enhancement.setMaximumValue(hi)
    renderer.setContrastEnhancement(enhancement)
    _install(layer, renderer)


def class_colours(n):
    """``n`` distinct colours for classes: QGIS's 'Set1'/'Paired' palettes, then random."""
    ramp = QgsStyle.defaultStyle().colorRamp("Paired" if n > 9 else "Set1")
    if ramp is not None and n <= 12:
        return [ramp.color(i / max(n - 1, 1)) for i in range(n)]
    return QgsLimitedRandomColorRamp.randomColors(n)


def class_style(names, band=1):
    """A class raster (class indices 0..C-1 in ``band``): a paletted renderer whose classes
    are labelled with the class names."""
    def style(layer):
        classes = [QgsPalettedRasterRenderer.Class(i, colour, str(name))
                   for i, (name, colour) in enumerate(zip(names, class_colours(len(names))))]
        _install(layer, QgsPalettedRasterRenderer(layer.dataProvider(), band, classes))
    return style


def write_categories(path, names, band=1):
    """Class names as the GDAL category names of ``band``, in the GDAL PAM sidecar
    ``<file>.aux.xml`` (where GDAL keeps a GeoTIFF's category names), so that gdalinfo and
    other GDAL tools list the names, not only the indices.  Written as XML here: the GDAL
    Python bindings beside rasterio's own GDAL are not safe in one process."""
    import xml.etree.ElementTree as ET
    aux = path + ".aux.xml"
    root = ET.parse(aux).getroot() if os.path.exists(aux) else ET.Element("PAMDataset")
    node = next((b for b in root.findall("PAMRasterBand") if b.get("band") == str(band)), None)
    if node is None:
        node = ET.SubElement(root, "PAMRasterBand", band=str(band))
    for old in node.findall("CategoryNames"):
        node.remove(old)
    cats = ET.SubElement(node, "CategoryNames")
    for name in names:
        ET.SubElement(cats, "Category").text = str(name)
    tmp = aux + ".tmp"
    ET.ElementTree(root).write(tmp, encoding="UTF-8")
    os.replace(tmp, aux)


# -- vector renderers -------------------------------------------------------------
def class_points_style(field, names):
    """Points coloured by a class field (e.g. the predicted class), one colour per name."""
    def style(layer):
        if layer.fields().indexOf(field) < 0:
            return
        categories = []
        for name, colour in zip(names, class_colours(len(names))):
            symbol = QgsSymbol.defaultSymbol(layer.geometryType())
            symbol.setColor(colour)
            categories.append(QgsRendererCategory(str(name), symbol, str(name)))
        _install(layer, QgsCategorizedSymbolRenderer(field, categories))
    return style



def residual_style(field):
    """Points coloured by ``field`` (observed - predicted): a diverging red-blue ramp over
    classes symmetric about 0 (to the largest |residual|), the middle one straddling 0 in
    the ramp's neutral colour."""
    def style(layer):
        index = layer.fields().indexOf(field)
        if index < 0:
            return
        values = [v for v in layer.uniqueValues(index) if isinstance(v, (int, float))]
        lim = max((abs(v) for v in values), default=0.0) or 1.0
        ramp = QgsStyle.defaultStyle().colorRamp("RdBu")
        n = RESIDUAL_CLASSES
        digits = max(0, 2 - math.floor(math.log10(lim)))
        ranges = []
        for i in range(n):
            lo, hi = -lim + 2 * lim * i / n, -lim + 2 * lim * (i + 1) / n
            symbol = QgsSymbol.defaultSymbol(layer.geometryType())
            symbol.setColor(ramp.color(i / (n - 1)))
            ranges.append(QgsRendererRange(lo, hi, symbol, f"{lo:.{digits}f} to {hi:.{digits}f}"))
        renderer = QgsGraduatedSymbolRenderer(field, ranges)
        renderer.setSourceColorRamp(ramp)
        _install(layer, renderer)
    return style


def sites_style(layer):
    """Proposed sample sites: red stars labelled with their rank (1 = sample first)."""
    from qgis.core import (QgsPalLayerSettings, QgsSingleSymbolRenderer,
                           QgsVectorLayerSimpleLabeling)
    symbol = QgsSymbol.defaultSymbol(layer.geometryType())
    symbol.setColor(QColor("#d7191c"))
    layer_symbol = symbol.symbolLayer(0)
    if hasattr(layer_symbol, "setShape"):
        from qgis.core import QgsSimpleMarkerSymbolLayerBase
        layer_symbol.setShape(QgsSimpleMarkerSymbolLayerBase.Star)
        layer_symbol.setSize(4.0)
    _install(layer, QgsSingleSymbolRenderer(symbol))
    if layer.fields().indexOf("rank") >= 0:
        settings = QgsPalLayerSettings()
        settings.fieldName = "rank"
        settings.enabled = True
        layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
        layer.setLabelsEnabled(True)


# -- wiring --------------------------------------------------------------------------
def on_load(context, layer_id, style):
    """Apply ``style(layer)`` to the output ``layer_id`` when Processing loads it."""
    if context.willLoadLayerOnCompletion(layer_id):
        post = _Restyle(style)
        _post_processors.append(post)
        context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(post)


def style_output(context, path, qml=None, fit=None, style=None):
    """Style the raster ``path``: with ``resources/styles/<qml>`` (then ``fit``), or with
    ``style(layer)``.  The style is fitted once, saved as the sidecar ``<name>.qml``, and
    the layer Processing loads gets that sidecar.  The statistics GDAL keeps while the style
    is fitted (``<file>.aux.xml``) are not left beside the output."""
    style = style or qml_style(qml, fit)
    sidecar = os.path.splitext(path)[0] + ".qml"
    aux = path + ".aux.xml"
    had_aux = os.path.exists(aux)
    layer = QgsRasterLayer(path, "styled")
    saved = False
    if layer.isValid():
        style(layer)
        saved = layer.saveNamedStyle(sidecar)[1]
    del layer  # closes the file: GDAL writes its .aux.xml now
    if not had_aux and os.path.exists(aux):
        os.remove(aux)
    on_load(context, path, (lambda lyr: lyr.loadNamedStyle(sidecar)) if saved else style)
