"""Patch-resolution features (POOL=patch): one feature pixel per ViT patch.

A ViT computes one token per patch (16 px; 14 for DINOv2).  Instead of one
feature per tile, :func:`extract_patch_features` keeps the patch tokens: one
forward per tile gives ``(TILE/PATCH)²`` feature pixels, so a map at patch
resolution costs about ``1/core²`` of sliding windows at STRIDE = patch size.

Seamless tiling (:class:`PatchGrid`): tiles of ``n = TILE/PATCH`` patches
overlap by ``margin`` patches on every side and only their ``core = n -
2*margin`` central patches are kept, so every kept patch sees at least
``margin`` patches of context in each direction and neighbouring tiles share
most of their content.  Output patch (i, j) covers input pixels
``[j*PATCH, (j+1)*PATCH) x [i*PATCH, (i+1)*PATCH)``: the feature raster has the
input's origin and CRS and a pixel PATCH times the input pixel.  Tiles are read
with :func:`~.batches.iter_batches` (edge tiles padded), written with
:class:`~.writer.RasterWriter`; a patch whose valid share is below
``min_valid`` is nodata.

:func:`patch_point_features` gives, for soil points, the feature of the patch
under each point computed exactly as the map computes it (same tile, same
position in it), so heads fitted on points map consistently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

from .backbone import Backbone, resolve_device
from .errors import InputError
from .features import (PATCH, feature_tags, forward_tokens, iter_grid_rows, low_precision_copy,
                       prepare)
from .progress import Progress, ensure
from .batches import iter_batches
from .raster import DEFAULT_MIN_VALID, GridWindows, Normalization, TileGrid, TileSource
from .writer import RasterWriter


def patch_size(backbone: Backbone) -> int:
    """The backbone's patch size in pixels (square patches)."""
    embed = getattr(backbone.model, "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if size is None:
        raise InputError(f"'{backbone.arch}' has no patch embedding: POOL=patch needs a ViT.")
    size = size if isinstance(size, int) else size[0]
    return int(size)


def default_margin(n: int) -> int:
    """Context margin (patches) for tiles of ``n`` patches: about n/6, at least 1, leaving
    at least one central patch (2 for the paper's 14-patch tiles: 10 x 10 kept)."""
    return max(0, min((n - 1) // 2, max(1, n // 6)))


@dataclass(frozen=True)
class PatchGrid:
    """Overlapping tiles whose central patches tile the raster's patch grid.

    Tile (r, c) reads the ``tile`` px window at ``(c*step - margin*patch, r*step -
    margin*patch)`` with ``step = core*patch`` and fills output rows ``[r*core,
    (r+1)*core)`` and columns ``[c*core, (c+1)*core)`` (clipped to the output)."""

    width: int
    height: int
    tile: int
    patch: int
    margin: int

    def __post_init__(self):
        if self.tile % self.patch:
            raise InputError(f"TILE_SIZE ({self.tile} px) must be a multiple of the patch size "
                             f"({self.patch} px) for POOL=patch.")
        if self.margin < 0 or self.core < 1:
            raise InputError(f"MARGIN ({self.margin} patches) leaves no central patch in a "
                             f"{self.n}-patch tile: use a MARGIN below {(self.n + 1) // 2}.")

    @classmethod
    def for_backbone(cls, width: int, height: int, backbone: Backbone, tile: int,
                     margin: Optional[int] = None) -> "PatchGrid":
        patch = patch_size(backbone)
        n = tile // patch
        return cls(width, height, tile, patch,
                   default_margin(n) if margin is None or margin < 0 else int(margin))

    @property
    def n(self) -> int:
        return self.tile // self.patch

    @property
    def core(self) -> int:
        return self.n - 2 * self.margin

    @property
    def step(self) -> int:
        return self.core * self.patch

    @property
    def out_width(self) -> int:
        return math.ceil(self.width / self.patch)

    @property
    def out_height(self) -> int:
        return math.ceil(self.height / self.patch)

    @property
    def n_cols(self) -> int:
        return math.ceil(self.out_width / self.core)

    @property
    def n_rows(self) -> int:
        return math.ceil(self.out_height / self.core)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def window(self, index: int) -> Window:
        r, c = divmod(int(index), self.n_cols)
        off = self.margin * self.patch
        return Window(c * self.step - off, r * self.step - off, self.tile, self.tile)

    def windows(self, indices: Optional[Sequence[int]] = None) -> GridWindows:
        return GridWindows(self, indices)

    def out_rows(self, row: int) -> range:
        """Output rows filled by tile row ``row``."""
        return range(row * self.core, min((row + 1) * self.core, self.out_height))

    def out_transform(self, transform: Affine) -> Affine:
        return transform @ Affine.scale(self.patch)

    def locate(self, cols, rows) -> tuple:
        """Input pixel positions -> (tile index, row, col of the token in the tile)."""
        pc = np.floor(np.asarray(cols, float) / self.patch).astype(np.int64)
        pr = np.floor(np.asarray(rows, float) / self.patch).astype(np.int64)
        tr, ir = np.divmod(pr, self.core)
        tc, ic = np.divmod(pc, self.core)
        return tr * self.n_cols + tc, ir + self.margin, ic + self.margin

    def describe(self) -> dict:
        return {"tile_size": self.tile, "patch": self.patch, "margin": self.margin,
                "core": self.core}


def patch_tokens(backbone: Backbone, batch, device: torch.device, amp: str = "auto",
                 patch: Optional[int] = None) -> np.ndarray:
    """Forward a (B,C,T,T) batch -> float32 (B, D, T/p, T/p) patch tokens on the CPU
    (class, register and storage tokens dropped)."""
    batch = np.asarray(batch) if not torch.is_tensor(batch) else batch
    b, t = batch.shape[0], batch.shape[-1]
    n = t // (patch or patch_size(backbone))
    prefix = int(getattr(backbone.model, "num_prefix_tokens", 1))
    with forward_tokens(backbone, batch, device, amp) as tokens:
        grid = tokens[:, prefix:]
        if grid.shape[1] != n * n:
            raise InputError(f"The backbone gave {grid.shape[1]} patch tokens for a {t} px tile "
                             f"({n} x {n} expected).")
        out = grid.transpose(1, 2).reshape(b, grid.shape[2], n, n)
        return out.float().cpu().numpy()


def patch_valid(source: TileSource, grid: PatchGrid, rows: range,
                chunk: int = 4096) -> np.ndarray:
    """Valid share (len(rows), out_width) of the input pixels of each output patch (pixels
    outside the raster are not counted), read in column chunks."""
    p = grid.patch
    out = np.zeros((len(rows), grid.out_width), np.float32)
    if not len(rows):
        return out
    r0, r1 = rows.start * p, min(rows.stop * p, source.height)
    step = max(p, chunk // p * p)
    for c0 in range(0, source.width, step):
        c1 = min(c0 + step, source.width)
        _, valid = source.read(Window(c0, r0, c1 - c0, r1 - r0))
        h, w = math.ceil((r1 - r0) / p) * p, math.ceil((c1 - c0) / p) * p
        pad = np.zeros((h, w), np.float32)
        inside = np.zeros((h, w), np.float32)
        pad[:r1 - r0, :c1 - c0] = valid
        inside[:r1 - r0, :c1 - c0] = 1.0
        good = pad.reshape(h // p, p, w // p, p).sum(axis=(1, 3))
        total = inside.reshape(h // p, p, w // p, p).sum(axis=(1, 3))
        out[:, c0 // p:c0 // p + w // p] = good / np.maximum(total, 1.0)
    return out


def iter_patch_rows(source: TileSource, grid: PatchGrid, norm: Normalization,
                    backbone: Backbone, device: torch.device, batch_size: int = 32,
                    amp: str = "auto", min_valid: float = DEFAULT_MIN_VALID, workers: int = 2,
                    progress: Optional[Progress] = None,
                    rows: Optional[range] = None) -> Iterator[tuple]:
    """Yield ``(row0, feats (D, h, out_width) float32)`` for each tile row of ``rows``
    (default all): output rows ``row0 .. row0+h`` of the patch feature raster, NaN where a
    patch is mostly nodata."""
    progress = ensure(progress)
    rows = range(grid.n_rows) if rows is None else rows
    d, core, m, ow = backbone.embed_dim, grid.core, grid.margin, grid.out_width
    run = low_precision_copy(backbone, device, amp)
    windows = grid.windows(range(rows.start * grid.n_cols, rows.stop * grid.n_cols))
    n = len(windows)
    tile_row = rows.start
    buf = np.full((d, core, grid.n_cols * core), np.nan, np.float32)
    filled = 0
    for start, batch, frac in iter_batches(source, windows, norm, batch_size, workers,
                                           progress=progress,
                                           pin=torch.device(device).type == "cuda"):
        keep = np.flatnonzero(frac > 0)  # a tile with no valid pixel has no valid patch
        tokens = None
        if len(keep):
            tokens = patch_tokens(run, batch if len(keep) == len(frac) else batch[keep], device,
                                  amp, grid.patch)
        pos = {int(k): i for i, k in enumerate(keep)}
        for i in range(len(frac)):
            col = filled * core
            if i in pos:
                buf[:, :, col:col + core] = tokens[pos[i], :, m:m + core, m:m + core]
            else:
                buf[:, :, col:col + core] = np.nan
            filled += 1
            if filled == grid.n_cols:
                out_rows = grid.out_rows(tile_row)
                feats = buf[:, :len(out_rows), :ow].copy()
                ok = patch_valid(source, grid, out_rows) >= max(min_valid, 1e-9)
                feats[:, ~ok] = np.nan
                yield out_rows.start, feats
                tile_row += 1
                filled = 0
        progress.set((start + len(frac)) / max(1, n))


def patch_tags(source: TileSource, backbone: Backbone, grid: PatchGrid,
               norm: Normalization, min_valid: float) -> dict:
    return dict(feature_tags(source, backbone, PATCH, grid.tile, grid.patch, norm, min_valid),
                patch=grid.patch, margin=grid.margin)


def extract_patch_features(source: TileSource, backbone: Backbone, output: str,
                           tile: Optional[int] = None, margin: Optional[int] = None,
                           batch_size: int = 32, device: str = "auto", amp: str = "auto",
                           min_valid: float = DEFAULT_MIN_VALID, workers: int = 2,
                           normalization: Optional[dict] = None,
                           progress: Optional[Progress] = None) -> dict:
    """Write the patch-resolution feature raster of ``source``; return a summary dict."""
    progress = ensure(progress)
    tile, norm = prepare(source, backbone, tile, normalization, progress)
    grid = PatchGrid.for_backbone(source.width, source.height, backbone, tile, margin)
    dev = resolve_device(device)
    backbone.model.to(dev)
    progress.info(f"{len(grid)} tiles of {tile} px, {grid.core} x {grid.core} central patches "
                  f"of {grid.patch} px kept (margin {grid.margin}) -> {grid.out_width} x "
                  f"{grid.out_height} px, {backbone.embed_dim} bands, on {dev}.")
    skipped = 0
    with RasterWriter(output, grid.out_width, grid.out_height, backbone.embed_dim, "float32",
                      source.crs, grid.out_transform(source.transform), nodata=float("nan"),
                      tags=patch_tags(source, backbone, grid, norm, min_valid),
                      band_names=[f"f{i}" for i in range(backbone.embed_dim)],
                      tiled=False) as w:
        for row0, feats in iter_patch_rows(source, grid, norm, backbone, dev, batch_size, amp,
                                           min_valid, workers, progress):
            skipped += int(np.isnan(feats[0]).sum())
            w.write(feats, Window(0, row0, grid.out_width, feats.shape[1]))
    total = grid.out_width * grid.out_height
    progress.info(f"Wrote {output}: {total - skipped} patches, {skipped} nodata.")
    return {"output": output, "tiles": len(grid), "patches": total, "skipped": skipped,
            "width": grid.out_width, "height": grid.out_height, "bands": backbone.embed_dim,
            **grid.describe()}


def iter_patch_grid_rows(source: TileSource, grid: PatchGrid, norm: Normalization,
                         backbone: Backbone, device: torch.device, batch_size: int = 32,
                         amp: str = "auto", min_valid: float = DEFAULT_MIN_VALID,
                         workers: int = 2, progress: Optional[Progress] = None,
                         rows: Optional[range] = None) -> Iterator[tuple]:
    """:func:`iter_patch_rows` one output row at a time, as ``(row, feats (out_width, D))``
    like :func:`~.features.iter_grid_rows` (what prediction maps consume)."""
    for row0, feats in iter_patch_rows(source, grid, norm, backbone, device, batch_size, amp,
                                       min_valid, workers, progress, rows):
        for i in range(feats.shape[1]):
            yield row0 + i, np.ascontiguousarray(feats[:, i, :].T)


def patch_point_features(source: TileSource, backbone: Backbone, cols: Sequence[float],
                         rows: Sequence[float], tile: Optional[int] = None,
                         margin: Optional[int] = None, batch_size: int = 32,
                         device: str = "auto", amp: str = "auto",
                         normalization: Optional[dict] = None, workers: int = 2,
                         progress: Optional[Progress] = None) -> np.ndarray:
    """Features (N, D) of the patch under each pixel position, from the same tile and token
    position as :func:`extract_patch_features` (each needed tile is forwarded once)."""
    progress = ensure(progress)
    tile, norm = prepare(source, backbone, tile, normalization, progress)
    grid = PatchGrid.for_backbone(source.width, source.height, backbone, tile, margin)
    dev = resolve_device(device)
    backbone.model.to(dev)
    run = low_precision_copy(backbone, dev, amp)
    index, ti, tj = grid.locate(cols, rows)
    tiles, inverse = np.unique(index, return_inverse=True)
    out = np.empty((len(index), backbone.embed_dim), np.float32)
    windows = grid.windows(tiles)
    for start, batch, _ in iter_batches(source, windows, norm, batch_size, workers,
                                        progress=progress, pin=dev.type == "cuda"):
        tok = patch_tokens(run, batch, dev, amp, grid.patch)
        sel = np.flatnonzero((inverse >= start) & (inverse < start + len(batch)))
        out[sel] = tok[inverse[sel] - start, :, ti[sel], tj[sel]]
        progress.set((start + len(batch)) / max(1, len(tiles)))
    return out


@dataclass
class FeatureRows:
    """The feature rows of a raster at tile resolution (``pool`` cls/mean on a
    :class:`~.raster.TileGrid`) or patch resolution (``pool`` patch on a :class:`PatchGrid`),
    in *units* that sharded runs split: a grid row of tiles, which gives one output row
    (tile pools) or ``core`` output rows (patch)."""

    source: TileSource
    backbone: Backbone
    norm: Normalization
    pool: str
    grid: object
    device: torch.device
    batch_size: int = 32
    amp: str = "auto"
    min_valid: float = DEFAULT_MIN_VALID
    workers: int = 2
    features: bool = True  # False: the grid's rows without running the backbone

    @classmethod
    def create(cls, source: TileSource, backbone: Backbone, norm: Normalization, pool: str,
               tile: int, stride: Optional[int] = None, margin: Optional[int] = None,
               device: torch.device = torch.device("cpu"), **compute) -> "FeatureRows":
        if pool == PATCH:
            grid = PatchGrid.for_backbone(source.width, source.height, backbone, tile, margin)
        else:
            grid = TileGrid(source.width, source.height, tile, int(stride or tile))
        return cls(source, backbone, norm, pool, grid, device, **compute)

    @property
    def patch(self) -> bool:
        return isinstance(self.grid, PatchGrid)

    @property
    def width(self) -> int:
        return self.grid.out_width if self.patch else self.grid.n_cols

    @property
    def height(self) -> int:
        return self.grid.out_height if self.patch else self.grid.n_rows

    @property
    def units(self) -> int:
        return self.grid.n_rows

    def out_rows(self, units: range) -> range:
        """Output rows that grid rows ``units`` fill."""
        if not self.patch:
            return units
        return range(units.start * self.grid.core,
                     min(units.stop * self.grid.core, self.grid.out_height))

    def transform(self) -> Affine:
        return self.grid.out_transform(self.source.transform)

    def tags(self) -> dict:
        if self.patch:
            return patch_tags(self.source, self.backbone, self.grid, self.norm, self.min_valid)
        return feature_tags(self.source, self.backbone, self.pool, self.grid.tile,
                            self.grid.stride, self.norm, self.min_valid)

    def rows(self, units: Optional[range] = None,
             progress: Optional[Progress] = None) -> Iterator[tuple]:
        """Yield ``(row, feats (width, D))`` for the output rows of grid rows ``units``;
        ``(row, None)`` when ``features`` is off (a map whose heads read no ViT feature
        runs no backbone)."""
        if not self.features:
            return self._bare_rows(range(self.units) if units is None else units,
                                   ensure(progress))
        args = (self.source, self.grid, self.norm, self.backbone, self.device, self.batch_size,
                self.amp)
        if self.patch:
            return iter_patch_grid_rows(*args, self.min_valid, self.workers, progress, units)
        return iter_grid_rows(*args, self.pool, self.min_valid, self.workers, progress, units)

    def _bare_rows(self, units: range, progress: Progress) -> Iterator[tuple]:
        out = self.out_rows(units)
        for i, row in enumerate(out):
            progress.check()
            yield row, None
            progress.set((i + 1) / len(out))
