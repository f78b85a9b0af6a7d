"""Sample points from a QGIS vector layer into the engine's plain arrays, and back."""
import logging
import math
import os
import re

from qgis.core import (NULL, QgsFeature, QgsField, QgsFields, QgsProcessingException,
                       QgsProcessingOutputLayerDefinition, QgsProperty, QgsWkbTypes)
from qgis.PyQt.QtCore import QVariant

log = logging.getLogger("soilssl")  # reaches the Processing log through the bridge


def _number(value, field, feature_id):
    if value is None or value == NULL:
        return math.nan
    try:
        v = float(str(value).replace(",", ".")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise QgsProcessingException(
            f"Field '{field}' is not numeric: feature {feature_id} holds '{value}'. Choose a "
            f"numeric field or convert it (Field calculator: to_real(\"{field}\")).")
    return v if math.isfinite(v) else math.nan


def field_names(fields, layer_names):
    """FIELDS as a list: QGIS splits 'a;b' itself; 'a,b' (as BANDS takes) is split here,
    unless the layer has a field of that very name."""
    out = []
    for f in fields or []:
        parts = [f] if f in layer_names else str(f).split(",")
        out += [p if p in layer_names else p.strip() for p in parts if p.strip()]
    return out


def _raw(value):
    return None if value is None or value == NULL or str(value).strip() == "" else value


def class_fields(source, fields, raw, target_type="auto"):
    """The FIELDS that are class targets (core.classes.is_class_field: TARGET_TYPE, a text
    field not holding numbers, an integer field with few distinct values)."""
    from ..core.classes import is_class_field
    from ..core.errors import InputError
    out = []
    for j, f in enumerate(fields):
        qf = source.fields().field(f)
        integer = qf.type() in (QVariant.Int, QVariant.LongLong, QVariant.UInt,
                                QVariant.ULongLong)
        try:
            if is_class_field([_raw(v[j]) for v in raw], qf.type() == QVariant.String,
                              integer, target_type):
                out.append(f)
        except InputError as exc:
            raise QgsProcessingException(str(exc)) from exc
    return out


def read_points(source, fields, weight_field=None, target_type="auto"):
    """-> (core.soil.Points, features list) from a QgsProcessingFeatureSource.  Class
    fields (:func:`class_fields`) become class indices with their names in Points.classes."""
    from ..core.classes import encode_classes
    from ..core.soil import Points
    if source is None:
        raise QgsProcessingException("POINTS is not a vector layer SoilSSL can read.")
    if QgsWkbTypes.geometryType(source.wkbType()) != QgsWkbTypes.PointGeometry:
        raise QgsProcessingException("POINTS must be a point layer.")
    names = [f.name() for f in source.fields()]
    fields = field_names(fields, names)
    if not fields:
        raise QgsProcessingException("Choose at least one numeric field in FIELDS.")
    for f in list(fields) + ([weight_field] if weight_field else []):
        if f not in names:
            raise QgsProcessingException(f"Field '{f}' is not in the points layer; its fields "
                                         f"are: {', '.join(names)}.")
    xs, ys, raw, weights, feats = [], [], [], [], []
    no_geometry = 0
    for feat in source.getFeatures():
        geom = feat.geometry()
        if geom is None or geom.isEmpty():
            no_geometry += 1
            continue
        pt = geom.centroid().asPoint() if geom.isMultipart() else geom.asPoint()
        xs.append(pt.x())
        ys.append(pt.y())
        raw.append([feat[f] for f in fields])
        if weight_field:
            weights.append(_number(feat[weight_field], weight_field, feat.id()))
        feats.append(feat)
    if not feats:
        raise QgsProcessingException("The points layer has no point with a geometry.")
    classes = {}
    for f in class_fields(source, fields, raw, target_type):
        j = fields.index(f)
        codes, classes[f] = encode_classes([_raw(v[j]) for v in raw])
        if 0 < len(classes[f]) < 2:
            raise QgsProcessingException(f"Class field '{f}' has a single class "
                                         f"('{classes[f][0]}'): nothing to predict.")
        for v, code in zip(raw, codes):
            v[j] = code
        log.info(f"Field '{f}' is a class target with {len(classes[f])} classes: "
                 f"{', '.join(classes[f][:20])}{' ...' if len(classes[f]) > 20 else ''}.")
    values = [[v[j] if f in classes else _number(v[j], f, feat.id())
               for j, f in enumerate(fields)] for v, feat in zip(raw, feats)]
    if no_geometry:
        log.info(f"{no_geometry} feature(s) without a geometry were skipped.")
    for j, f in enumerate(fields):
        nulls = sum(math.isnan(v[j]) for v in values)
        if nulls == len(values):
            raise QgsProcessingException(f"Field '{f}' is NULL at every point: choose a field "
                                         f"that holds the soil property's values.")
        if nulls:
            log.info(f"Field '{f}': {nulls} of {len(values)} points are NULL (or not finite) "
                     f"and are skipped for this field.")
    if weight_field and any(math.isnan(w) or w < 0 for w in weights):
        raise QgsProcessingException(f"Weight field '{weight_field}' must be a non-negative "
                                     f"number at every point.")
    pts = Points(xs, ys, source.sourceCrs().toWkt(), values, list(fields),
                 weights if weight_field else None, classes=classes or None)
    return pts, feats


def column(name):
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")


def oof_fields(base_fields, fit):
    """The output fields: the layer's, then fold and prediction/residual per target x method."""
    out = QgsFields(base_fields)
    out.append(QgsField("cv_fold", QVariant.Int))
    for t in fit.cv.target_names:
        for label in fit.cv.labels:
            if fit.cv.kind(t) == "classification":  # predicted class name, its probability
                out.append(QgsField(column(f"pred_{t}_{label}"), QVariant.String))
                out.append(QgsField(column(f"prob_{t}_{label}"), QVariant.Double))
                continue
            out.append(QgsField(column(f"pred_{t}_{label}"), QVariant.Double))
            out.append(QgsField(column(f"res_{t}_{label}"), QVariant.Double))
    return out


def write_oof(sink, feats, fit, fields):
    """Write every used point with its fold, out-of-fold predictions and residuals."""
    used = [f for f, k in zip(feats, fit.keep) if k]
    cv = fit.cv
    for i, feat in enumerate(used):
        attrs = list(feat.attributes()) + [int(fit.folds[i])]
        for t in range(len(cv.target_names)):
            for m in range(len(cv.methods)):
                p = cv.predictions[t, m, i]
                if cv.kind(cv.target_names[t]) == "classification":
                    names = cv.classes[cv.target_names[t]]
                    attrs += [None, None] if math.isnan(p) else \
                        [names[int(p)], float(cv.probabilities[cv.target_names[t]][m, i, int(p)])]
                    continue
                r = cv.y[i, t] - p
                attrs += [None if math.isnan(p) else float(p), None if math.isnan(r) else float(r)]
        out = QgsFeature(fields)
        out.setGeometry(feat.geometry())
        out.setAttributes(attrs)
        sink.addFeature(out)


def point_coordinates(source):
    """-> ((xs, ys), crs WKT) of an optional point source, or (None, None)."""
    if source is None:
        return None, None
    xs, ys = [], []
    for feat in source.getFeatures():
        geom = feat.geometry()
        if geom is None or geom.isEmpty():
            continue
        for part in geom.constParts():
            xs.append(part.x())
            ys.append(part.y())
    return (xs, ys), source.sourceCrs().toWkt()


class StagedSink:
    """A feature sink whose file is written into a temporary folder of ``outputs``
    (:class:`soilssl.core.files.Outputs`) and published with the other outputs: the layer
    appears together with them or not at all.  Destinations that are not files (memory
    layers, database tables) are written directly."""

    def __init__(self, alg, parameters, name, context, fields, wkb_type, crs, outputs):
        from ..core.files import is_local_file
        self.context, self.final, self.tmp = context, None, None
        dest = alg.parameterAsOutputLayer(parameters, name, context)
        params = parameters
        if is_local_file(dest):
            if not os.path.splitext(dest)[1]:
                dest += "." + alg.parameterDefinition(name).defaultFileExtension()
            self.final = os.path.abspath(dest)
            self.tmp = outputs.stage(self.final, folder=True)
            value = parameters.get(name)
            # a copy keeps the dialog's options (load into the project, encoding...)
            definition = QgsProcessingOutputLayerDefinition(value) \
                if isinstance(value, QgsProcessingOutputLayerDefinition) else \
                QgsProcessingOutputLayerDefinition(dest)
            definition.sink = QgsProperty.fromValue(self.tmp)
            params = dict(parameters, **{name: definition})
        self.sink, self._id = alg.parameterAsSink(params, name, context, fields, wkb_type, crs)
        if self.sink is None:
            raise QgsProcessingException(f"Cannot create the {name} layer at '{dest}'.")

    def close(self) -> None:
        """Flush and close the file (before it is published)."""
        self.sink = None

    def published(self) -> str:
        """The layer's id once ``outputs`` is committed: the final path, also where QGIS
        loads the layer from when the run ends."""
        if self.tmp is None:
            return self._id
        layers = self.context.layersToLoadOnCompletion()
        for key in list(layers):
            if self.tmp in key:
                layers[key.replace(self.tmp, self.final)] = layers.pop(key)
        self.context.setLayersToLoadOnCompletion(layers)
        return self._id.replace(self.tmp, self.final)
