"""Soil mapping: heads on sample points under spatial CV, and prediction maps.

:func:`fit_points` runs the paper's comparison (Table 2) on the user's points:
features of the tile centred on each point (cached), pixel values at the point,
K-means spatial folds, every method on the same folds, then refits the chosen
method on all points and writes a model file (weights_only-loadable) holding
the final head, the per-fold heads, the area-of-applicability state, the
backbone reference and the normalisation.  :func:`predict_map` maps a model
over a raster window by window: prediction, uncertainty (std of the fold
models) and area of applicability (Meyer & Pebesma 2021).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import rasterio

from .aoa import fit_model_aoa
from .backbone import Backbone, backbone_name, load_backbone, load_file, resolve_device
from .cache import FeatureCache, cache_dir, digest  # noqa: F401 (cache_dir: public here too)
from .classes import CLASSIFICATION, REGRESSION, choose_class_method
from .covariates import PixelStack, open_covariates, resolve_covariates
from .cv import (ALL_METHODS, COMPARE, CONTEXT, FEATURE_METHODS, FEATURES, HYBRID_METHODS,
                 PIXELS, SELECTED, MethodSpec, cross_validate, make_head, method_specs, spatial_folds,
                 stack_blocks)
from .errors import BackboneError, InputError
from .features import PATCH, check_tile_fits, point_features, prepare
from .files import atomic_save
from .intervals import TrustMaps, fit_trust
from .knndm import fold_distances, prediction_locations
from .mapheads import PRED_NODATA, MapHeads, model_blocks, row_blocks
from .progress import Progress, ensure
from .patches import FeatureRows, PatchGrid, patch_point_features
from .raster import TileSource
from .writer import RasterWriter, commit_all
from .selection import candidates, choose_best, class_inner, nested_selection
from .spread import baseline_spread, spread_text
from .ranking import format_ranking, rank_backbones  # noqa: F401 (public here too)
from .report import stack_advice
from .stacking import describe, stack_head, stack_text, union_blocks

MODEL_FORMAT = "soilssl-model"
METHODS = ("all",) + ALL_METHODS
POINT_FEATURES = ("tile", PATCH, "both")  # tile feature, patch under the point, or CV both


@dataclass
class Points:
    """Sample points as plain arrays (what the QGIS layer gives the engine)."""

    xs: np.ndarray
    ys: np.ndarray
    crs: object                      # anything rasterio.crs.CRS.from_user_input takes
    values: np.ndarray               # (N, T) float, NaN = NULL
    names: List[str]
    weights: Optional[np.ndarray] = None
    ids: Optional[np.ndarray] = None
    classes: Optional[dict] = None   # target -> class names; its values are class indices

    def __post_init__(self):
        self.xs = np.asarray(self.xs, float)
        self.ys = np.asarray(self.ys, float)
        self.values = np.asarray(self.values, float).reshape(len(self.xs), -1)
        if self.ids is None:
            self.ids = np.arange(len(self.xs))


def locate(source: TileSource, points: Points, progress: Optional[Progress] = None):
    """(cols, rows, keep mask): points reprojected to the raster, outside/nodata skipped."""
    progress = ensure(progress)
    if source.crs.is_geographic:
        progress.info("Warning: the raster CRS is geographic (degrees): tiles have no fixed "
                      "ground size. Reproject the raster to a projected CRS for soil mapping.")
    cols, rows = source.points_to_pixels(points.xs, points.ys, points.crs)
    inside = source.inside(cols, rows)
    if not inside.any():
        raise InputError(f"All {len(cols)} points are outside the raster: check that the "
                         f"points and the raster cover the same area.")
    if not inside.all():
        progress.info(f"{int((~inside).sum())} of {len(cols)} points are outside the raster "
                      f"and were skipped.")
    return cols, rows, inside


def _fingerprint(path: Optional[str]) -> list:
    if not path:
        return []
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, int(st.st_mtime)]


def precision(device, amp: Optional[str] = "auto") -> str:
    """The arithmetic a feature run really uses on ``device``: fp16 (AMP auto on CUDA),
    bf16, or fp32 (AMP none, or auto on the CPU)."""
    amp = (amp or "auto").lower()
    if amp == "auto":
        amp = "fp16" if resolve_device(str(device)).type == "cuda" else "none"
    return "fp32" if amp == "none" else amp


def cached_point_features(source: TileSource, backbone: Backbone, cols, rows, pool: str = "cls",
                          tile: Optional[int] = None, cache: Optional[str] = None,
                          progress: Optional[Progress] = None,
                          normalization: Optional[dict] = None, margin: Optional[int] = None,
                          **compute) -> np.ndarray:
    """point_features (or with ``pool="patch"`` the feature of the patch under each point,
    :func:`~.patches.patch_point_features`), cached by everything that changes them:
    backbone, raster, bands, DEM, tiling, normalisation, pool (and patch margin), precision
    (AMP) and device type, and the points (see :mod:`.cache` for the size limit)."""
    progress = ensure(progress)
    tile, norm = prepare(source, backbone, tile, normalization, progress)
    device = resolve_device(compute.get("device", "auto"))
    name = digest({
        "backbone": backbone.reference, "raster": _fingerprint(source.path),
        "bands": list(source.bands), "dem": _fingerprint(source.dem), "tile": tile,
        "pool": pool, "norm": norm.to_dict(), "device": device.type,
        "precision": precision(device, compute.get("amp")),
        **({"margin": margin} if pool == PATCH else {})}, cols, rows)
    store = FeatureCache(cache)
    if backbone.checksum:
        feats = store.get(name)
        if feats is not None:
            progress.info(f"Point features from the cache ({store.path(name)}).")
            return feats
    if pool == PATCH:
        feats = patch_point_features(source, backbone, cols, rows, tile=tile, margin=margin,
                                     normalization=norm.to_dict(), progress=progress, **compute)
    else:
        feats = point_features(source, backbone, cols, rows, tile=tile, pool=pool,
                               normalization=norm.to_dict(), progress=progress, **compute)
    if backbone.checksum:  # random weights are not reproducible by name: never cached
        try:
            store.put(name, feats)
        except (OSError, InputError):
            progress.info(f"Could not write the feature cache in {store.folder}; continuing.")
    return feats


@dataclass
class FitResult:
    cv: object                      # cv.CVResult
    keep: np.ndarray                # (N_input,) points used
    folds: np.ndarray               # (N_used,) fold id
    chosen: dict                    # target -> method label refitted for mapping
    coords: np.ndarray              # (N_used, 2) point coordinates in the raster CRS
    model: dict = field(repr=False, default_factory=dict)
    skipped: dict = field(default_factory=dict)
    ranking: list = field(default_factory=list)  # rank_backbones rows (with compared ones)
    geodist: Optional[object] = None  # knndm.GeoDist: CV vs map distances of each FOLD_MODE
    sets: dict = field(repr=False, default_factory=dict)  # the CV's feature sets (report)
    names: dict = field(default_factory=dict)    # set -> column names (PIXELS, CONTEXT)

    @property
    def methods(self) -> dict:
        """target -> what is mapped, in words: the method, or for the stack its members
        and weights ("selected: 0.62 rf_pixels + 0.38 rf_hybrid"), and its kriged residuals
        when it adds them ("... + 0.50 × kriged residuals (range ...)")."""
        stacks = getattr(self.cv, "stacks", None) or {}
        return {t: f"{label}: {stack_text(self.cv, t)}" if label == SELECTED and t in stacks
                else label for t, label in self.chosen.items()}


def _choose(cv, method: str, features: str = FEATURES) -> dict:
    """Per target: METHOD itself, or for 'all' the best of every candidate row (pixel
    covariates, context, ViT features on the set ``features``, hybrids) by mean RMSE over
    the folds of all points (:func:`~.selection.choose_best`)."""
    if method != "all":
        uses = method in FEATURE_METHODS + HYBRID_METHODS
        label = MethodSpec(method, features if uses else "").label
        return {t: label for t in cv.target_names}
    labels = candidates(cv, features)
    best = choose_best(cv, labels)  # regression: the lowest mean RMSE
    rows = [cv.labels.index(label) for label in labels]
    return {t: best[t] if cv.kind(t) == REGRESSION else choose_class_method(cv, i, rows)
            for i, t in enumerate(cv.target_names)}


def _choose_scale(cv, method: str) -> str:
    """Tile (FEATURES) or patch (PATCH) features, whichever the CV favours: the lower mean,
    over targets, of the best feature method's mean RMSE divided by the target's std
    (class targets: 1 - the best pooled out-of-fold kappa)."""
    mean, _ = cv.summary()
    scores = {}
    for features in (FEATURES, PATCH):
        rows = [m for m, s in enumerate(cv.methods) if s.features == features]
        scores[features] = np.mean([min(mean[i, m, 0] for m in rows) /
                                    max(np.nanstd(cv.y[:, i]), 1e-12)
                                    if cv.kind(t) == REGRESSION else
                                    1 - max(np.nan_to_num(cv.pooled_class_metrics(i, m)[2],
                                                          nan=0.0) for m in rows)
                                    for i, t in enumerate(cv.target_names)])
    return min(scores, key=scores.get)


def fit_points(source: TileSource, points: Points, backbone: Backbone,
               compare=None, method: str = "all", n_folds: int = 6,
               fold_mode: str = "kmeans", loss: str = "mse", seed: int = 0,
               pool: str = "cls", tile: Optional[int] = None, cache: Optional[str] = None,
               model_path: Optional[str] = None, progress: Optional[Progress] = None,
               point_feature: str = "tile", margin: Optional[int] = None,
               class_weight: Optional[str] = None, distances: Optional[bool] = None,
               covariates=None, **compute) -> FitResult:
    """Spatial CV of METHOD(s) on the points, then the model file for mapping.

    ``compare``: backbones whose feature methods join the same CV (same folds, same
    heads) and are ranked against ``backbone`` (see :func:`compared_sets`); the model
    file always maps with ``backbone``.
    ``point_feature``: ``tile`` (``pool`` of the tile centred on each point), ``patch`` (the
    feature of the patch under each point, as the POOL=patch map computes it; ``margin`` in
    patches) or ``both``: both sets on the same folds (rows "mlp" and "mlp [patch]"...), and
    the model maps with the one the CV favours (:func:`_choose_scale`).
    Targets named in ``points.classes`` are class targets (:mod:`.classes`), with
    ``class_weight`` (None | "balanced") in their heads.
    ``fold_mode`` knndm matches the folds to the raster's valid pixels (the map); with it, or
    ``distances``, FitResult.geodist compares every FOLD_MODE's CV distances to the map's.
    ``covariates``: covariate rasters (:class:`~.covariates.Covariate`, or paths of
    continuous ones): the PIXELS block is every band of INPUT (and the DEM) plus theirs at
    each point, and CONTEXT their window mean and std (:mod:`.covariates`)."""
    progress = ensure(progress)
    if method not in METHODS:
        raise InputError(f"Unknown METHOD '{method}': use one of {', '.join(METHODS)}.")
    if point_feature not in POINT_FEATURES:
        raise InputError(f"Unknown POINT_FEATURE '{point_feature}': use one of "
                         f"{', '.join(POINT_FEATURES)}.")
    pool = PATCH if point_feature == PATCH else pool
    cols, rows, keep = locate(source, points, progress)
    covariates = [c for c in covariates or [] if not isinstance(c, str)] + \
        open_covariates([c for c in covariates or [] if isinstance(c, str)])
    stack = PixelStack(source, covariates)
    pix = np.full((len(cols), stack.raw_count), np.nan, np.float32)
    pix[keep] = stack.sample(cols[keep], rows[keep])
    on_nodata = keep & ~stack.valid(pix)
    if on_nodata.any():
        progress.info(f"{int(on_nodata.sum())} points lie on nodata pixels"
                      f"{' (of INPUT or a covariate)' if covariates else ''} and were skipped.")
        keep &= ~on_nodata
    y = points.values[keep]
    if not np.isfinite(y).any(axis=0).all():
        empty = [n for n, ok in zip(points.names, np.isfinite(y).any(axis=0)) if not ok]
        raise InputError(f"Field(s) {empty} have no value at any point on the raster.")
    n = int(keep.sum())
    if n < 2 * n_folds:
        raise InputError(f"{n} usable points for {n_folds} folds: at least {2 * n_folds} are "
                         f"needed (2 per fold). Use fewer FOLDS or more points.")
    c, r = cols[keep], rows[keep]
    x_map, y_map = source.transform @ (c + 0.0, r + 0.0)
    # folds first: a fold with too few points is reported before any feature is computed
    coords = np.column_stack([x_map, y_map])
    prediction = prediction_locations(source, seed=seed) \
        if fold_mode == "knndm" or distances else None
    folds = spatial_folds(coords, n_folds, fold_mode, seed, prediction, progress.sub(0, 0.02))
    dist = None if prediction is None else \
        fold_distances(coords, prediction, n_folds, seed, {fold_mode: folds},
                       progress=progress.sub(0, 0.02))
    if dist is not None:
        progress.info(dist.summary())
    tile, norm = prepare(source, backbone, tile, None, progress)
    progress.info(f"{n} points; extracting features of their {tile} px tiles...")
    if PATCH in (pool, point_feature) or point_feature == "both":
        margin = PatchGrid.for_backbone(source.width, source.height, backbone, tile,
                                        margin).margin
    stack.fit_categories(pix[keep])
    names = stack.pixel_names
    progress.info(f"Pixel covariates ({len(names)} columns): {', '.join(names[:12])}"
                  f"{', ...' if len(names) > 12 else ''}.")
    sets = {PIXELS: stack.encode(pix[keep]),
            FEATURES: cached_point_features(source, backbone, c, r, pool, tile, cache,
                                            progress.sub(0.0, 0.3), norm.to_dict(),
                                            margin=margin, **compute)}
    compared = compared_sets(compare)
    for i, (name, bb) in enumerate(compared.items()):
        part = 0.1 / len(compared)
        progress.info(f"Compared backbone '{name}' ({bb.arch}): features of the same points...")
        sets[name] = cached_point_features(source, bb, c, r, pool, tile, cache,
                                           progress.sub(0.3 + i * part, 0.3 + (i + 1) * part),
                                           margin=margin, **compute)
    weights = None if points.weights is None else points.weights[keep]
    specs = method_specs(method)
    specs += [MethodSpec(s.method, name) for name in compared
              for s in specs if s.features == FEATURES and s.method in FEATURE_METHODS]
    if point_feature == "both":
        sets[PATCH] = cached_point_features(source, backbone, c, r, PATCH, tile, cache,
                                            progress.sub(0.0, 0.4), norm.to_dict(),
                                            margin=margin, **compute)
        specs += [MethodSpec(s.method, PATCH) for s in specs if s.features == FEATURES
                  and s.method in FEATURE_METHODS + HYBRID_METHODS]
    if any(CONTEXT in getattr(s, "blocks", ()) for s in specs):
        progress.info(f"Covariate context: mean and std over the {tile} px window of each "
                      f"point...")
        sets[CONTEXT] = stack.context(c, r, tile, progress.sub(0.3, 0.4))
    stack.close()
    specs = _available(specs, sets, method, progress)  # after every block is computed
    kinds = [CLASSIFICATION if t in (points.classes or {}) else REGRESSION
             for t in points.names]
    cv = cross_validate(sets, y, folds, specs, target_names=points.names, loss=loss,
                        weights=weights, seed=seed,
                        progress=progress.sub(0.4, 0.75 if method == "all" else 0.9),
                        keep_models=True, kinds=kinds, classes=points.classes,
                        class_weight=class_weight)
    if method != "all":
        progress.info(cv.format_table())
    scale = _choose_scale(cv, method) if point_feature == "both" and \
        method not in ("rf_pixels", "rf_context") else FEATURES
    if point_feature == "both":
        progress.info(f"Mapping with {'patch' if scale == PATCH else 'tile'} features (the "
                      f"lower CV error relative to each property's spread).")
    chosen = _choose(cv, method, scale)
    ranking = rank_backbones(cv, {FEATURES: backbone, **compared})
    if compared:
        progress.info(format_ranking(ranking))
    if method == "all":  # the stack of the candidates, scored by nested CV: row 'selected'
        cv = baseline_spread(cv, sets, seed, loss=loss, weights=weights,
                             class_weight=class_weight, progress=progress.sub(0.75, 0.78))
        cv = nested_selection(cv, sets, candidates(cv, scale), loss, weights, seed,
                              progress=progress.sub(0.78, 0.9),
                              inner={t: class_inner(len(names), class_weight)
                                     for t, names in (points.classes or {}).items()},
                              coords=coords)
        progress.info(cv.format_table())
        progress.info("Row 'selected': the weighted mean (stack) of the methods, each fold "
                      "predicted with weights from an inner CV on the other folds (the "
                      "honest score of what is mapped). The best single method on all folds: "
                      f"{_format_chosen(chosen)}. The map uses the stack: "
                      f"{_format_chosen({t: stack_text(cv, t) for t in cv.stacks})}.")
        chosen = {t: SELECTED for t in cv.target_names}
        for line in (spread_text(cv), stack_advice(cv)):
            if line:
                progress.info(line)
    model = _model_dict(source, backbone, cv, sets, y, weights, folds, chosen, loss, seed,
                        PATCH if scale == PATCH else pool, tile, norm.to_dict(),
                        progress.sub(0.9, 1.0), scale, margin, class_weight)
    model["fold_mode"] = fold_mode
    if dist is not None:
        model["geodist"] = dist.table()
    model.update(stack.record())
    if model_path:
        atomic_save(model, model_path)
    return FitResult(cv, keep, folds, chosen, coords, model,
                     {"outside": int((~source.inside(cols, rows)).sum()),
                      "on_nodata": int(on_nodata.sum())}, ranking, geodist=dist, sets=sets,
                     names={PIXELS: stack.pixel_names, CONTEXT: stack.context_names})



def _format_chosen(chosen: dict) -> str:
    return ", ".join(f"{t}: {label}" for t, label in chosen.items())


def _available(specs: list, sets: dict, method: str, progress: Progress) -> list:
    """The rows whose blocks exist; for METHOD=all a missing block (e.g. no context
    covariates) drops its rows with a message, for one METHOD it is an input error."""
    missing = [s for s in specs if not set(s.blocks) <= set(sets)]
    if missing and method != "all":
        need = sorted({b for s in missing for b in s.blocks} - set(sets))
        raise InputError(f"METHOD {method} needs the {', '.join(need)} covariates, which "
                         "this run does not have.")
    if missing:
        need = sorted({b for s in missing for b in s.blocks} - set(sets))
        progress.info(f"Not run (no {', '.join(need)} block): "
                      f"{', '.join(s.label for s in missing)}.")
    return [s for s in specs if s not in missing]


def compared_sets(compare) -> dict:
    """Feature-set name -> Backbone of the compared backbones: one Backbone (the former
    COMPARE_BACKBONE: set 'compare'), a sequence (named by :func:`backbone_name`) or a dict
    (e.g. from :func:`load_compared`)."""
    if compare is None:
        return {}
    if isinstance(compare, Backbone):
        return {COMPARE: compare}
    if isinstance(compare, dict):
        out = dict(compare)
    else:
        out = {}
        for bb in compare:
            label, n = backbone_name(bb.source), 2
            while label in out:
                label, n = f"{backbone_name(bb.source)} ({n})", n + 1
            out[label] = bb
    clash = [k for k in out if k in (PIXELS, FEATURES)]
    if clash:
        raise InputError(f"Compared backbone names {clash} are reserved: rename the file(s).")
    return out


def _model_dict(source, backbone, cv, sets, y, weights, folds, chosen, loss, seed, pool, tile,
                normalization, progress, scale=FEATURES, margin=None, class_weight=None) -> dict:
    heads, fold_heads, refitted, blocks, fold_blocks, used = {}, {}, {}, {}, {}, {}
    for t, target in enumerate(cv.target_names):
        label = chosen[target]
        spec = cv.methods[cv.labels.index(label)]
        ok = np.isfinite(y[:, t])

        def factory(member):
            return make_head(member, [sets[b].shape[1] for b in member.blocks], loss, seed,
                             None, cv.kind(target),
                             len((cv.classes or {}).get(target, ())) or 2, class_weight)
        used[target] = tuple(spec.blocks)
        if spec.method == SELECTED:  # the stack: its members refitted, its mapped weights,
            # on the blocks of its kept members only (a stack of pixel methods maps without
            # ViT features); its fold stacks keep the layout of every candidate
            kept = union_blocks([cv.methods[cv.labels.index(m)].blocks
                                 for m in cv.stacks[target]])
            used[target] = tuple(b for b in spec.blocks if b in kept)
            head = stack_head(cv, target, {b: sets[b].shape[1] for b in used[target]},
                              used[target], factory)
        else:
            head = factory(spec)
        what = f"the stack {describe(head.weight_map)}" if spec.method == SELECTED else label
        progress.info(f"{target}: refitting {what} on all {int(ok.sum())} points for mapping.")
        head.fit(stack_blocks(sets, used[target], ok), y[ok, t],
                 sample_weight=None if weights is None else weights[ok])
        heads[target] = head.state_dict()
        refitted[target] = head
        fold_heads[target] = [h.state_dict() for h in cv.fold_models[(target, label)]]
        # on the map the model's feature set (tile or patch pooling) is the FEATURES block
        blocks[target] = [FEATURES if b == scale else b for b in used[target]]
        if used[target] != tuple(spec.blocks):
            fold_blocks[target] = [FEATURES if b == scale else b for b in spec.blocks]
    model = {
        "soilssl": {"format": MODEL_FORMAT, "version": 1},
        "targets": list(cv.target_names), "methods": dict(chosen), "blocks": blocks,
        "fold_blocks": fold_blocks,  # where the fold models read other blocks than the head
        "stacks": {t: dict(cv.stacks[t]) for t in cv.target_names
                   if chosen[t] == SELECTED and cv.stacks},
        "crs": source.crs.to_wkt(),  # the fitted raster's: the points' (kriged fields) CRS
        "kriging": {t: k["field"].state_dict() for t, k in (cv.kriging or {}).items()
                    if chosen[t] == SELECTED and k["field"] is not None},
        # each fold stack's own kriged field (None: it kept none), for the fold models' spread
        "fold_kriging": {t: [None if f is None else f.state_dict()
                             for f in k.get("fold_fields", [])]
                         for t, k in (cv.kriging or {}).items()
                         if chosen[t] == SELECTED and any(k.get("fold_fields", []))},
        "loss": loss, "seed": seed,
        "backbone": backbone.reference, "bands": list(source.bands), "dem": bool(source.dem),
        "dem_path": os.path.abspath(source.dem) if source.dem else None,
        "pool": pool, "tile_size": int(tile), **({"margin": margin} if pool == PATCH else {}),
        "normalization": normalization,
        "heads": heads, "fold_heads": fold_heads,
        "aoa_targets": fit_model_aoa(cv, sets, chosen, refitted, seed, progress, used),
        "cv_table": cv.table(), "n_points": int(len(folds)),
        "kinds": {t: cv.kind(t) for t in cv.target_names},
        "classes": {t: list(names) for t, names in (cv.classes or {}).items()},
    }
    model.update(fit_trust(model, cv, progress))  # error_profile, conformal (issue 13)
    return model


def load_model(path: str) -> dict:
    obj = load_file(path)
    if not isinstance(obj, dict) or obj.get("soilssl", {}).get("format") != MODEL_FORMAT:
        raise BackboneError(f"'{os.path.basename(path)}' is not a SoilSSL model file (made by "
                            f"Fit soil heads on points).")
    return obj


def model_backbone(model: dict, override: Optional[str] = None, device: str = "cpu") -> Backbone:
    """The backbone a model was fitted with (checksum-checked), or ``override``."""
    ref = model["backbone"]
    spec = override or ref["source"]
    if ref.get("sha256") is None:
        raise BackboneError("The model was fitted with randomly initialised backbone weights, "
                            "which cannot be rebuilt for mapping: save the backbone to a file "
                            "and fit again.")
    try:
        bb = load_backbone(spec, arch=ref["arch"], in_chans=ref["in_chans"],
                           tile_size=ref["tile_size"], device=device)
    except BackboneError as exc:
        raise BackboneError(f"{exc} (the model was fitted with backbone '{ref['source']}'; give "
                            f"its path as BACKBONE if it moved).") from exc
    if ref.get("sha256") and bb.checksum != ref["sha256"]:
        raise BackboneError(f"Backbone '{spec}' is not the one the model was fitted with "
                            f"(sha256 {str(bb.checksum)[:12]}… vs {ref['sha256'][:12]}…).")
    return bb


def predict_map(source: TileSource, model: dict, output: str,
                uncertainty: Optional[str] = None, aoa: Optional[str] = None,
                stride: Optional[int] = None, backbone=None,
                batch_size: int = 32, device: str = "auto", amp: str = "auto", workers: int = 2,
                progress: Optional[Progress] = None, error: Optional[str] = None,
                lower: Optional[str] = None, upper: Optional[str] = None,
                level: float = 0.9, probability: Optional[str] = None,
                lpd: bool = False, covariates=None) -> dict:
    """Prediction (one band per target), uncertainty and AOA rasters, window by window;
    the AOA raster has per target the bands inside (1/0), DI and with ``lpd`` the local
    point density; ``error``: expected RMSE from the DI error profile, ``lower``/``upper``:
    conformal prediction interval bounds at ``level`` (:mod:`.intervals`).
    Class targets: the prediction band holds the class index (int16 when every target is a
    class target; names in the tags "classes"), uncertainty the share of fold models that
    disagree, and ``probability`` (class targets only) the mapped class's probability and
    the normalised entropy per class target (:func:`.classes.class_products`).
    ``covariates``: paths replacing the model's covariate rasters (see
    :func:`~.covariates.resolve_covariates`); by default the recorded files.
    ``backbone``: a :class:`~.backbone.Backbone`, or a path replacing the model's recorded
    one (:func:`model_rows`: not loaded at all when the map reads no ViT feature)."""
    progress = ensure(progress)
    check_model_input(source, model)
    trust = dict(error=bool(error), lower=bool(lower), upper=bool(upper), level=level)
    for note in TrustMaps(model, **trust).notes:  # a model without CV residuals fails here,
        progress.info(note)                       # before any feature is computed
    stack = pixel_stack(source, model, covariates, progress)
    dev = resolve_device(device)
    mapper = MapHeads(model, bool(uncertainty), bool(aoa), bool(probability), lpd=lpd, **trust)
    fr = model_rows(source, model, mapper, backbone, stride, dev, progress,
                    batch_size=batch_size, amp=amp, workers=workers)
    w, h = fr.width, fr.height
    extra = row_blocks(stack, model, mapper, fr)
    paths = {"prediction": output, "uncertainty": uncertainty, "aoa": aoa,
             "error": error, "lower": lower, "upper": upper, "probability": probability}
    writers = {}  # product name -> writer; blocks are paired with writers by that name
    try:
        for name, p in mapper.products.items():
            writers[name] = RasterWriter(paths[name], w, h, p["count"], p.get("dtype", "float32"),
                                         source.crs,
                                         fr.transform(), nodata=PRED_NODATA, tags=p["tags"],
                                         band_names=p["band_names"])
        for row, feats in fr.rows(progress=progress):
            blocks = {**({} if feats is None else {FEATURES: feats}),
                      **(extra(row) if extra else {})}
            for name, block in mapper(blocks).items():
                writers[name].write(block[:, None, :], ((row, row + 1), (0, w)))
        commit_all(list(writers.values()))
    finally:
        for wr in writers.values():
            if not wr.done:
                wr.abort()
        if stack:
            stack.close()
    return {"output": output, "uncertainty": uncertainty,
            "aoa": aoa if mapper.aoa is not None else None, "width": w, "height": h,
            "inside_aoa": mapper.inside_count,
            "inside_aoa_targets": dict(mapper.aoa.inside_counts) if mapper.aoa else {},
            "error": error, "lower": lower, "upper": upper,
            "interval_factor": dict(getattr(mapper.trust, "q", {})),
            "probability": probability, "classes": model.get("classes") or {}}


def check_model_input(source: TileSource, model: dict) -> None:
    """The raster gives the model's bands and DEM (every method maps, rf_pixels too)."""
    if list(source.bands) != list(model["bands"]) or bool(source.dem) != model["dem"]:
        raise InputError(f"The model was fitted on bands {model['bands']}"
                         f"{' + DEM' if model['dem'] else ''}; the input gives "
                         f"{list(source.bands)}{' + DEM' if source.dem else ''}.")
    bad = [t for t in model["targets"] if model["methods"][t] in ("rf_pixels", "rf_context")]
    if bad and "pixel_names" not in model:  # made before covariates: no pixel record
        raise InputError(f"The model maps {bad} with rf_pixels, a pixel baseline, and was made "
                         f"before SoilSSL recorded pixel covariates: fit it again, or fit with "
                         f"METHOD mlp, ridge, rf_features or all to map predictions.")


def pixel_stack(source: TileSource, model: dict, covariates=None,
                progress: Optional[Progress] = None) -> Optional[PixelStack]:
    """The model's pixel covariates on ``source`` (None when its methods use none): the
    recorded covariate files or their ``covariates`` replacements, INPUT's recorded bands,
    and the same PIXELS columns as at fit time (else :class:`InputError`)."""
    if not model_blocks(model) & {PIXELS, CONTEXT}:
        if covariates:
            ensure(progress).info("COVARIATES is not used: the model maps with ViT features "
                                  "only.")
        return None
    rec = model.get("pixel_input") or {}
    with rasterio.open(source.path) as ds:
        count = ds.count
    want = [int(b) for b in rec.get("bands", [])]
    if want and max(want) > count:
        raise InputError(f"The model uses INPUT bands {want} as pixel covariates; "
                         f"'{os.path.basename(source.path)}' has {count} band(s).")
    stack = PixelStack(source, resolve_covariates(model.get("covariates"), covariates,
                                                  progress), want or None)
    if len(stack.pixel_names) != len(model["pixel_names"]):
        stack.close()
        raise InputError(f"The pixel covariates differ from the model's: the model was fitted "
                         f"with {model['pixel_names']}, these give {stack.pixel_names}.")
    return stack


def model_rows(source: TileSource, model: dict, mapper: MapHeads, backbone=None,
               stride: Optional[int] = None, device="cpu", progress: Optional[Progress] = None,
               **compute) -> FeatureRows:
    """The feature rows ``mapper`` maps a model on: its tile pooling on a grid of STRIDE, or
    its patches.  ``backbone``: a Backbone, or a path replacing the model's own (loaded and
    checksum-checked).  When no product ``mapper`` makes reads ViT features, the same grid's
    rows come without running the backbone; for tile pooling, without loading it at all (a
    model of covariate methods maps without its backbone file)."""
    pool = model.get("pool", "cls")
    features = mapper.reads_features
    if not features:
        ensure(progress).info("The mapped methods read no ViT features (covariates only): "
                              f"the backbone is {'not' if pool == PATCH else 'neither loaded nor'}"
                              f" run over the raster.")
    if not features and pool != PATCH:
        tile = int(model["tile_size"])
        check_tile_fits(source, tile)
        return FeatureRows.create(source, None, None, pool, tile, stride, None, device,
                                  features=False, **compute)
    if not isinstance(backbone, Backbone):
        backbone = model_backbone(model, backbone or None, device=str(device))
    tile, norm = prepare(source, backbone, model["tile_size"], model["normalization"], progress)
    if pool == PATCH and stride:
        ensure(progress).info("The model uses patch features: the map has one pixel per "
                              "patch and STRIDE is ignored.")
    return FeatureRows.create(source, backbone, norm, pool, tile, stride,
                              model.get("margin"), device, features=features, **compute)
