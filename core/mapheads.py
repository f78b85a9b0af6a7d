"""A model's heads on map rows: :class:`MapHeads` (prediction, uncertainty, area of
applicability, trust maps, class products, kriged residuals), and :func:`row_blocks`, the
blocks of one map row besides its features (pixel covariates, the cells' centres).  Used by
:func:`~.soil.predict_map` and the sharded map (:mod:`.distributed`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import rasterio
from rasterio.warp import transform as warp_transform

from .aoa import MapAOA
from .classes import class_block, class_products, class_targets, load_head
from .covariates import PixelStack
from .errorprofile import aoa_state
from .cv import CONTEXT, FEATURES, PIXELS
from .errors import InputError
from .intervals import TrustMaps
from .kriging import ResidualKriging
from .patches import FeatureRows

PRED_NODATA = -9999.0
XY = "xy"  # the map block of the cells' coordinates (for residual kriging)


def map_block(name: str) -> str:
    """The map block that gives a fitted set: PIXELS and CONTEXT as they are, any ViT
    feature set (tile or patch pooling, "features") the map's FEATURES."""
    return name if name in (PIXELS, CONTEXT) else FEATURES


def model_blocks(model: dict) -> set:
    """The blocks (PIXELS, CONTEXT, FEATURES) the model's mapped methods use."""
    blocks = model.get("blocks") or {t: [FEATURES] for t in model["targets"]}
    folds = model.get("fold_blocks") or {}  # a stack's fold models (the uncertainty map)
    return {map_block(b) for t in model["targets"]
            for b in list(blocks[t]) + list(folds.get(t, []))}


def row_blocks(stack: Optional[PixelStack], model: dict, mapper: "MapHeads",
               rows: FeatureRows):
    """row -> the blocks of one map row besides FEATURES that ``mapper`` needs: the pixel
    covariates (PIXELS, CONTEXT) of ``stack``, and the cells' centres (XY, in the raster's
    CRS as the points were) for residual kriging; None when it needs neither."""
    covrows = stack and stack.map_blocks(rows.width, rows.height, rows.transform(),
                                         model["tile_size"],
                                         mapper.reads & {PIXELS, CONTEXT})
    if not (mapper.kriging or getattr(mapper, "fold_kriging", None)):
        return covrows or None
    transform, cols = rows.transform(), np.arange(rows.width) + 0.5
    # the points' CRS at fit time (the fitted raster's; models of the first kriging version
    # kept it in each field's state); a raster in another CRS is mapped with its cells'
    # centres reprojected there
    fitted = model.get("crs") or next(
        (s.get("crs") for s in (model.get("kriging") or {}).values() if s.get("crs")), None)
    to = rasterio.crs.CRS.from_user_input(fitted) if fitted else rows.source.crs

    def blocks(row: int) -> dict:
        xs, ys = transform @ (cols, np.full(len(cols), row + 0.5))
        if to != rows.source.crs:
            xs, ys = warp_transform(rows.source.crs, to, xs, ys)
        return {**(covrows(row) if covrows else {}), XY: np.column_stack([xs, ys])}
    return blocks


class MapHeads:
    """A model's heads applied to map rows: prediction, and optionally the uncertainty
    (std of the fold models), the area of applicability and (``trust``: error, lower, upper,
    level; see :class:`~.intervals.TrustMaps`) the expected error and interval bounds.
    ``products`` maps each asked product ("prediction", "uncertainty", "aoa", "error",
    "lower", "upper", "probability") to its raster's count, band names and tags; calling it
    on a dict of blocks of one output row, {PIXELS: (n, p), CONTEXT: (n, q), FEATURES:
    (n, D)} (an (n, D) array means {FEATURES: it}), gives {product: (count, n) float32
    block} for the same products (PRED_NODATA where a value is NaN), so blocks meet
    writers by name.  Each target's head gets its method's blocks (the model's ``blocks``;
    models without it map FEATURES) stacked in order."""

    def __init__(self, model: dict, uncertainty: bool = False, aoa: bool = False,
                 probability: bool = False, lpd: bool = False, **trust):
        self.model = model
        self.targets = targets = model["targets"]
        self.heads = [load_head(model["heads"][t]) for t in targets]
        self.folds = [[load_head(s) for s in model["fold_heads"][t]] for t in targets] \
            if uncertainty else None
        self.class_targets = class_targets(model)
        tags = {"soilssl_product": "prediction", "targets": targets, "methods": model["methods"],
                "backbone": model["backbone"],
                **({"classes": model["classes"]} if self.class_targets else {})}
        self.products = {"prediction": {"count": len(targets), "band_names": list(targets),
                                        "tags": tags}}
        if len(self.class_targets) == len(targets):  # a class raster: integer class indices
            self.products["prediction"]["dtype"] = "int16"
        self.products.update(class_products(model, tags, probability))
        if uncertainty:
            self.products["uncertainty"] = {
                "count": len(targets),  # class targets: share of fold models disagreeing
                "band_names": [f"{t} disagreement" if t in self.class_targets else f"{t} std"
                               for t in targets],
                "tags": dict(tags, soilssl_product="uncertainty")}
        # per target: inside, DI [, LPD] (core.aoa.MapAOA; one set for older models)
        self.aoa = MapAOA(model, lpd, tags, PRED_NODATA) if aoa else None
        if self.aoa is not None:
            self.products["aoa"] = self.aoa.product
        self.trust = TrustMaps(model, tags=tags, **trust)  # error, lower, upper (as asked)
        self.products.update(self.trust.products)
        blocks = model.get("blocks") or {}  # the sets each target's head reads, in order
        self.inputs = [[map_block(b) for b in blocks.get(t, [FEATURES])] for t in targets]
        # a stack's fold models read every candidate's blocks, its head only its members'
        folds = model.get("fold_blocks") or {}
        self.fold_inputs = [[map_block(b) for b in folds[t]] if t in folds else self.inputs[i]
                            for i, t in enumerate(targets)]
        self.needs = {b for bl in self.inputs for b in bl}  # the blocks a map row must give
        if uncertainty:
            self.needs |= {b for bl in self.fold_inputs for b in bl}
        # numeric targets whose stack adds kriged residuals (core/kriging.py): they need
        # the cells' map coordinates, the block XY
        self.kriging = {t: ResidualKriging.from_state(state)
                        for t, state in (model.get("kriging") or {}).items()}
        # the fold stacks' own fields: the fold models' spread includes them
        self.fold_kriging = {t: [None if s is None else ResidualKriging.from_state(s)
                                 for s in states]
                             for t, states in (model.get("fold_kriging") or {}).items()} \
            if uncertainty else {}

    @property
    def reads(self) -> set:
        """The blocks (PIXELS, CONTEXT, FEATURES) the asked products read: the heads, the
        fold models (the uncertainty map), and the DI of the AOA map or of the trust maps
        (an AOA state without a block record is on the features)."""
        states = [s for _, s in self.aoa.states] if self.aoa is not None else []
        if self.trust:
            states += [aoa_state(self.model, t) for t, profile in self.trust.profiles.items()
                       if profile is not None]
        return self.needs | {map_block(b) for s in states if s is not None
                             for b, _ in s.get("blocks") or [[FEATURES, 0]]}

    @property
    def reads_features(self) -> bool:
        """Whether any asked product reads the ViT features.  A stack of pixel covariates
        alone (plus kriging) does not, and its map runs no backbone."""
        return FEATURES in self.reads

    @property
    def inside_count(self) -> int:
        """Rows inside the AOA of every target."""
        return self.aoa.inside_all if self.aoa is not None else 0

    def __call__(self, feats) -> dict:
        data = feats if isinstance(feats, dict) else {FEATURES: feats}
        missing = sorted(self.needs - set(data))
        if missing:
            raise InputError(f"The model needs the {', '.join(missing)} block(s) on the map.")
        n = len(data[FEATURES] if FEATURES in data else data[next(iter(self.needs))])
        valid = {name: np.isfinite(data[name]).all(axis=1) for name in self.needs}
        ok = np.ones(n, bool)  # a cell is mapped where every block its heads read is valid
        for name in {b for bl in self.inputs for b in bl}:
            ok &= valid[name]
        blocks = {name: np.full((p["count"], n), PRED_NODATA, np.float32)
                  for name, p in self.products.items()}
        if not ok.any():
            return blocks
        for t in range(len(self.targets)):
            xt = np.hstack([data[b][ok] for b in self.inputs[t]])
            fo, xf = ok, xt  # the rows and inputs of the fold models (uncertainty)
            if self.folds and self.fold_inputs[t] != self.inputs[t]:
                fo = ok & np.logical_and.reduce([valid[b] for b in self.fold_inputs[t]])
                xf = np.hstack([data[b][fo] for b in self.fold_inputs[t]])
            if self.targets[t] in self.class_targets:
                pred, prob, ent, spread = class_block(
                    self.heads[t], self.folds[t] if self.folds else None, xt, xf, fo[ok])
                blocks["prediction"][t, ok] = pred
                if "probability" in blocks:
                    j = 2 * self.class_targets.index(self.targets[t])
                    blocks["probability"][j, ok], blocks["probability"][j + 1, ok] = prob, ent
                if spread is not None:
                    blocks["uncertainty"][t, fo] = spread
                continue
            pred = self.heads[t].predict(xt)
            if self.targets[t] in self.kriging:
                if XY not in data:
                    raise InputError("The model adds kriged residuals: the map rows need "
                                     "their cells' coordinates.")
                pred = pred + self.kriging[self.targets[t]].predict(data[XY][ok])
            blocks["prediction"][t, ok] = pred
            if "uncertainty" in blocks and fo.any():
                fields = self.fold_kriging.get(self.targets[t]) or [None] * len(self.folds[t])
                if any(fields) and XY not in data:
                    raise InputError("The model's fold stacks add kriged residuals: the map "
                                     "rows need their cells' coordinates.")
                blocks["uncertainty"][t, fo] = np.stack(
                    [f.predict(xf) + (0.0 if k is None else k.predict(data[XY][fo]))
                     for f, k in zip(self.folds[t], fields)]).std(axis=0)
        di = None
        if "aoa" in blocks:  # first: its DI serves the error map and the intervals too
            blocks["aoa"], di_all = self.aoa.measure(data)
            di = {k: v[ok] for k, v in di_all.items()}
        self.trust.fill(blocks, {k: v[ok] for k, v in data.items()}, ok, di)
        return blocks
