"""ViT features of tiles: over a whole raster grid, or around points.

:func:`embed` is the single forward pass (inference mode, optional AMP,
CLS token or mean of patch tokens).  :func:`iter_grid_rows` streams one output
row of tile features at a time so that rasters of any size are mapped in
bounded memory; :func:`extract_features` writes them as a float32 GeoTIFF, one
band per feature dimension, one pixel per tile step.  :func:`point_features`
gives the features of the tile centred on each point (for soil heads).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from .backbone import Backbone, resolve_device, snap_tile
from .errors import InputError
from .progress import Progress, ensure
from .batches import iter_batches
from .raster import DEFAULT_MIN_VALID, Normalization, TileGrid, TileSource
from .writer import RasterWriter

POOLS = ("cls", "mean")
PATCH = "patch"  # one feature per ViT patch (core/patches.py), not a tile pooling
AMPS = ("auto", "none", "bf16", "fp16")


def autocast(device: torch.device, amp: str = "auto"):
    """Autocast context for ``amp`` (auto: fp16 on CUDA, none on CPU)."""
    amp = (amp or "auto").lower()
    if amp not in AMPS:
        raise InputError(f"Unknown AMP '{amp}': use one of {', '.join(AMPS)}.")
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "none"
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise InputError("AMP=fp16 needs CUDA; on CPU use bf16 or none.")
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def embed(backbone: Backbone, batch, device: torch.device, amp: str = "auto",
          pool: str = "cls") -> np.ndarray:
    """Forward a (B,C,T,T) batch -> float32 (B, D) features on the CPU."""
    if pool not in POOLS:
        raise InputError(f"Unknown POOL '{pool}': use one of {', '.join(POOLS)}.")
    with forward_tokens(backbone, batch, device, amp) as tokens:
        if pool == "cls":
            f = tokens[:, 0]
        else:
            f = tokens[:, getattr(backbone.model, "num_prefix_tokens", 1):].mean(dim=1)
        return f.float().cpu().numpy()


@contextlib.contextmanager
def forward_tokens(backbone: Backbone, batch, device: torch.device, amp: str = "auto"):
    """Context giving the (B, prefix + patches, D) tokens of a (B,C,T,T) batch (inference
    mode, AMP or the reduced-precision copy's dtype): the one forward of every feature."""
    x = torch.as_tensor(batch)
    if device.type == "cuda":
        x = (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    ctx = autocast(device, amp)
    dtype = getattr(next(backbone.model.parameters(), None), "dtype", None)
    if dtype in (torch.bfloat16, torch.float16):  # a reduced-precision copy (low_precision_copy)
        x, ctx = x.to(dtype), contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        yield backbone.model.forward_features(x)


def low_precision_copy(backbone: Backbone, device: torch.device, amp: str = "auto") -> Backbone:
    """The backbone to run many batches with: for AMP=bf16 on CPU, a copy whose weights are
    cast to bf16 once, so that :func:`embed` casts each batch once and runs it in bf16
    without autocast (autocast re-casts the weights and the activations around every
    layer: ~45 % of a ViT-S forward on CPU; this is ~1.8x faster, features within a
    cosine of 0.9995 of fp32).  Otherwise the backbone itself; it is never modified."""
    if device.type != "cpu" or (amp or "auto").lower() != "bf16":
        return backbone
    model = backbone.model
    memo = {id(p): torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
            for p in model.parameters() if p.is_floating_point()}
    memo.update({id(b): b.detach().to(torch.bfloat16) for b in model.buffers()
                 if b.is_floating_point()})
    return dataclasses.replace(backbone, model=copy.deepcopy(model, memo).eval())


def check_inputs(source: TileSource, backbone: Backbone, tile: int) -> None:
    if source.channels != backbone.in_chans:
        raise InputError(
            f"Channel mismatch: the backbone expects {backbone.in_chans} input channels but the "
            f"input gives {source.channels} ({len(source.bands)} band(s)"
            f"{' + DEM' if source.dem else ''}). Adjust BANDS/DEM.")
    check_tile_fits(source, tile)


def check_tile_fits(source: TileSource, tile: int) -> None:
    if tile > max(source.width, source.height):
        raise InputError(
            f"TILE_SIZE {tile} px is larger than the raster ({source.width} x {source.height} px): "
            f"use a smaller TILE_SIZE.")


def iter_grid_rows(source: TileSource, grid: TileGrid, norm: Normalization, backbone: Backbone,
                   device: torch.device, batch_size: int = 32, amp: str = "auto",
                   pool: str = "cls", min_valid: float = DEFAULT_MIN_VALID, workers: int = 2,
                   progress: Optional[Progress] = None,
                   rows: Optional[range] = None) -> Iterator[tuple]:
    """Yield ``(row, feats (n_cols, D) float32)`` for each grid row (of ``rows``, default
    all), NaN for skipped tiles."""
    progress = ensure(progress)
    d = backbone.embed_dim
    backbone = low_precision_copy(backbone, device, amp)
    row_buf = np.full((grid.n_cols, d), np.nan, np.float32)
    filled = 0
    rows = range(grid.n_rows) if rows is None else rows
    row = rows.start
    windows = grid.windows(None if len(rows) == grid.n_rows else
                           range(rows.start * grid.n_cols, rows.stop * grid.n_cols))
    n = len(windows)
    for start, batch, frac in iter_batches(source, windows, norm, batch_size,
                                           workers, progress=progress,
                                           pin=device.type == "cuda"):
        keep = np.flatnonzero(frac >= min_valid)
        feats = np.full((len(frac), d), np.nan, np.float32)
        if len(keep) == len(frac):  # no copy of a full batch
            feats[:] = embed(backbone, batch, device, amp, pool)
        elif len(keep):
            feats[keep] = embed(backbone, batch[keep], device, amp, pool)
        i = 0
        while i < len(frac):
            take = min(grid.n_cols - filled, len(frac) - i)
            row_buf[filled:filled + take] = feats[i:i + take]
            filled += take
            i += take
            if filled == grid.n_cols:
                yield row, row_buf.copy()
                row += 1
                filled = 0
        progress.set((start + len(frac)) / n)


def prepare(source: TileSource, backbone: Backbone, tile: Optional[int],
            normalization: Optional[dict] = None, progress: Optional[Progress] = None):
    """Shared set-up of every tile-based run: tile size, checks, normalisation."""
    tile = int(tile or backbone.tile_size)
    if tile % backbone.patch_size:  # silent when it snaps to the size the backbone was built at
        tile = snap_tile(tile, backbone.patch_size,
                         None if snap_tile(tile, backbone.patch_size) == backbone.tile_size
                         else progress)
    check_inputs(source, backbone, tile)
    norm = Normalization.from_dict(normalization or backbone.normalization)
    if norm is None:
        ensure(progress).info("Computing per-band normalisation from a sample of the raster...")
        norm = source.compute_normalization()
    if len(norm.mean) != source.channels:
        raise InputError(
            f"The backbone's normalisation has {len(norm.mean)} channels but the input gives "
            f"{source.channels}: use the bands (and DEM) the backbone was trained with.")
    return tile, norm


def feature_tags(source: TileSource, backbone: Backbone, pool: str, tile: int, stride: int,
                 norm: Normalization, min_valid: float) -> dict:
    """The metadata of a feature raster (what made it, normalisation)."""
    return {"soilssl_product": "features", "backbone": backbone.reference, "pool": pool,
            "tile_size": tile, "stride": stride, "bands": list(source.bands),
            "dem": source.dem or "", "normalization": norm.to_dict(), "min_valid": min_valid}


def extract_features(source: TileSource, backbone: Backbone, output: str,
                     tile: Optional[int] = None, stride: Optional[int] = None,
                     batch_size: int = 32, device: str = "auto", amp: str = "auto",
                     pool: str = "cls", min_valid: float = DEFAULT_MIN_VALID, workers: int = 2,
                     normalization: Optional[dict] = None,
                     progress: Optional[Progress] = None, margin: Optional[int] = None) -> dict:
    """Write the feature raster of ``source`` and return a summary dict.  ``pool="patch"``
    writes one pixel per ViT patch instead (see :mod:`.patches`; ``margin`` in patches)."""
    if pool == PATCH:
        from .patches import extract_patch_features
        return extract_patch_features(source, backbone, output, tile, margin, batch_size,
                                      device, amp, min_valid, workers, normalization, progress)
    progress = ensure(progress)
    tile, norm = prepare(source, backbone, tile, normalization, progress)
    stride = int(stride or tile)
    grid = TileGrid(source.width, source.height, tile, stride)
    dev = resolve_device(device)
    backbone.model.to(dev)
    tags = feature_tags(source, backbone, pool, tile, stride, norm, min_valid)
    progress.info(f"{len(grid)} tiles of {tile} px (stride {stride}) -> "
                  f"{grid.n_cols} x {grid.n_rows} px, {backbone.embed_dim} bands, on {dev}.")
    skipped = 0
    with RasterWriter(output, grid.n_cols, grid.n_rows, backbone.embed_dim, "float32",
                      source.crs, grid.out_transform(source.transform), nodata=float("nan"),
                      tags=tags, band_names=[f"f{i}" for i in range(backbone.embed_dim)],
                      tiled=False) as w:
        for row, feats in iter_grid_rows(source, grid, norm, backbone, dev, batch_size, amp,
                                         pool, min_valid, workers, progress):
            skipped += int(np.isnan(feats[:, 0]).sum())
            w.write(feats.T[:, None, :], ((row, row + 1), (0, grid.n_cols)))
    progress.info(f"Wrote {output}: {len(grid) - skipped} tiles, {skipped} skipped as nodata.")
    return {"output": output, "tiles": len(grid), "skipped": skipped, "width": grid.n_cols,
            "height": grid.n_rows, "bands": backbone.embed_dim}


def point_features(source: TileSource, backbone: Backbone, cols: Sequence[float],
                   rows: Sequence[float], tile: Optional[int] = None, batch_size: int = 32,
                   device: str = "auto", amp: str = "auto", pool: str = "cls",
                   normalization: Optional[dict] = None, workers: int = 2,
                   progress: Optional[Progress] = None) -> np.ndarray:
    """Features (N, D) of the tile centred on each pixel position (cols, rows)."""
    progress = ensure(progress)
    tile, norm = prepare(source, backbone, tile, normalization, progress)
    dev = resolve_device(device)
    backbone.model.to(dev)
    run = low_precision_copy(backbone, dev, amp)  # the same numerics as iter_grid_rows
    windows = [source.centred_window(c, r, tile) for c, r in zip(cols, rows)]
    out = np.empty((len(windows), backbone.embed_dim), np.float32)
    for start, batch, _ in iter_batches(source, windows, norm, batch_size, workers,
                                        progress=progress, pin=dev.type == "cuda"):
        out[start:start + len(batch)] = embed(run, batch, dev, amp, pool)
        progress.set((start + len(batch)) / max(1, len(windows)))
    return out


def pixel_values(source: TileSource, cols: Sequence[float], rows: Sequence[float]) -> np.ndarray:
    """Raw band (+DEM) values at each pixel position: the pixel baseline's covariates."""
    from rasterio.windows import Window
    out = np.empty((len(cols), source.channels), np.float32)
    for i, (c, r) in enumerate(zip(cols, rows)):
        arr, valid = source.read(Window(int(np.floor(c)), int(np.floor(r)), 1, 1))
        out[i] = arr[:, 0, 0] if valid[0, 0] else np.nan
    return out

