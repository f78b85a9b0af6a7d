"""The tiles DINO pretraining trains on (:func:`sample_tiles`).

Tiles of TILE_SIZE on a :class:`~.raster.TileGrid` (stride configurable); a tile whose
window comes within BUFFER pixels (Euclidean distance from the point to the window's
footprint) of any soil sample is excluded, as the paper leaves out tiles near its samples
(448 px); tiles with less than ``min_valid`` valid pixels are skipped (one read of the
candidate tiles through :func:`~.batches.iter_batches`).  :func:`buffer_advice` says what
to change when BUFFER leaves too few tiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch.distributed as dist

from .progress import Progress, ensure
from .batches import iter_batches
from .raster import DEFAULT_MIN_VALID, GridWindows, Normalization, TileGrid, TileSource


@dataclass
class TileSample:
    """The tiles a run trains on."""

    grid: TileGrid
    indices: np.ndarray          # kept tile indices into ``grid``, ascending
    total: int                   # tiles on the grid
    excluded_buffer: int         # within BUFFER of a point
    skipped_nodata: int          # valid fraction below min_valid
    points: int = 0              # points used for the buffer

    def windows(self, order: Optional[Sequence[int]] = None) -> GridWindows:
        """The kept tiles' windows (in ``order``: positions into ``indices``), made lazily."""
        idx = self.indices if order is None else self.indices[np.asarray(order, np.int64)]
        return self.grid.windows(idx)

    def counts(self) -> dict:
        return {"total": self.total, "kept": int(len(self.indices)),
                "excluded_buffer": self.excluded_buffer, "skipped_nodata": self.skipped_nodata,
                "points": self.points}


def buffer_excluded(grid: TileGrid, cols, rows, buffer: float) -> np.ndarray:
    """Boolean mask (len(grid),): tiles whose window is within ``buffer`` px of a point.

    Points are fractional pixel positions (col, row) in the raster grid; the
    distance is the Euclidean distance from the point to the window's
    footprint [c0, c0 + tile] x [r0, r0 + tile] (0 inside it; c0 = c * stride +
    ``grid.offset``, as :meth:`TileGrid.window`).  Non-finite positions are ignored.
    """
    excluded = np.zeros((grid.n_rows, grid.n_cols), bool)
    if cols is None or len(cols) == 0:
        return excluded.ravel()
    s, t, b, o = float(grid.stride), float(grid.tile), float(buffer), float(grid.offset)
    for px, py in zip(np.asarray(cols, float), np.asarray(rows, float)):
        if not (np.isfinite(px) and np.isfinite(py)):
            continue
        c_lo = max(0, math.ceil((px - b - t - o) / s))
        c_hi = min(grid.n_cols - 1, math.floor((px + b - o) / s))
        r_lo = max(0, math.ceil((py - b - t - o) / s))
        r_hi = min(grid.n_rows - 1, math.floor((py + b - o) / s))
        if c_lo > c_hi or r_lo > r_hi:
            continue
        x0 = np.arange(c_lo, c_hi + 1) * s + o
        y0 = np.arange(r_lo, r_hi + 1) * s + o
        dx = np.maximum(np.maximum(x0 - px, px - (x0 + t)), 0.0)
        dy = np.maximum(np.maximum(y0 - py, py - (y0 + t)), 0.0)
        excluded[r_lo:r_hi + 1, c_lo:c_hi + 1] |= (dy[:, None] ** 2 + dx[None, :] ** 2) <= b * b
    return excluded.ravel()


def tile_distances(grid: TileGrid, cols, rows, chunk: int = 4096) -> np.ndarray:
    """(len(grid),) distance in pixels from each tile's window to its nearest point (the
    measure :func:`buffer_excluded` compares with BUFFER; inf without points)."""
    pts = np.c_[np.asarray(cols, float), np.asarray(rows, float)] if cols is not None \
        else np.empty((0, 2))
    pts = pts[np.isfinite(pts).all(axis=1)]
    out = np.full(len(grid), np.inf)
    if not len(pts):
        return out
    s, t, o = float(grid.stride), float(grid.tile), float(grid.offset)
    idx = np.arange(len(grid))
    x0, y0 = (idx % grid.n_cols) * s + o, (idx // grid.n_cols) * s + o  # as TileGrid.window
    for a in range(0, len(grid), chunk):
        xs, ys = x0[a:a + chunk, None], y0[a:a + chunk, None]
        dx = np.maximum(np.maximum(xs - pts[:, 0], pts[:, 0] - (xs + t)), 0.0)
        dy = np.maximum(np.maximum(ys - pts[:, 1], pts[:, 1] - (ys + t)), 0.0)
        out[a:a + chunk] = np.sqrt(dx * dx + dy * dy).min(axis=1)
    return out


def buffer_advice(width: int, height: int, tile: int, stride: int, cols, rows, buffer: float,
                  needed: int, pixel_size: float) -> str:
    """What to change when BUFFER leaves too few tiles: the largest BUFFER (whole pixels)
    leaving ``needed`` grid tiles, and a smaller STRIDE if one leaves them at this BUFFER."""
    def metres(px):
        return f"{px * pixel_size:g} m"

    grid = TileGrid(width, height, int(tile), int(stride))
    dist = np.sort(tile_distances(grid, cols, rows))[::-1]
    needed = max(1, min(int(needed), len(grid)))
    largest = math.ceil(dist[needed - 1]) - 1  # excluded when distance <= BUFFER
    parts = [f"BUFFER {buffer:g} px ({metres(buffer)} at {pixel_size:g} m pixels) leaves "
             f"{int((dist > buffer).sum())} of the {len(grid)} tiles of {tile} px every "
             f"{stride} px."]
    if largest >= 0:
        parts.append(f"The largest BUFFER leaving {needed} tiles is {largest} px "
                     f"({metres(largest)}; {int((dist > largest).sum())} tiles).")
    for smaller in sorted({stride // 2, stride // 4} - {0}, reverse=True):
        left = int((tile_distances(TileGrid(width, height, int(tile), smaller), cols, rows)
                    > buffer).sum())
        if left >= needed:
            parts.append(f"Or keep BUFFER and set STRIDE {smaller} px: {left} tiles.")
            break
    return " ".join(parts)


def sample_tiles(source: TileSource, tile: int, stride: Optional[int] = None, cols=None,
                 rows=None, buffer: float = 448.0, min_valid: float = DEFAULT_MIN_VALID,
                 workers: int = 2, batch_size: int = 64, rank: int = 0, world: int = 1,
                 progress: Optional[Progress] = None) -> TileSample:
    """Grid tiles of ``source`` minus those near points (``cols``/``rows`` in pixels of
    ``source``) and those with a valid fraction below ``min_valid``.  Under DDP
    (``world`` > 1, process group initialised) each rank reads a share of the
    candidates and the results are gathered, so every rank gets the same sample."""
    progress = ensure(progress)
    grid = TileGrid(source.width, source.height, int(tile), int(stride or tile))
    near = buffer_excluded(grid, cols, rows, buffer)
    candidates = np.flatnonzero(~near)
    n_points = 0 if cols is None else int(np.isfinite(np.asarray(cols, float)).sum())
    if min_valid > 0 and len(candidates):
        share = candidates[rank::world]
        wins = grid.windows(share)
        dummy = Normalization([0.0] * source.channels, [1.0] * source.channels)
        ok = np.zeros(len(share), bool)
        for start, _, frac in iter_batches(source, wins, dummy, batch_size, workers,
                                           progress=progress):
            ok[start:start + len(frac)] = frac >= min_valid
            progress.set((start + len(frac)) / max(1, len(share)))
        kept = share[ok]
        if world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, kept.tolist())
            kept = np.asarray(sorted(i for p in parts for i in p), np.int64)
    else:
        kept = candidates
    kept = np.asarray(kept, np.int64)
    return TileSample(grid, kept, len(grid), int(near.sum()),
                      int(len(candidates) - len(kept)), n_points)
