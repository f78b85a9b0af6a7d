"""Background tile reading: batches of tiles for the models, read while they compute.

:func:`iter_batches` reads tiles of a :class:`~.raster.TileSource` in background threads
(GDAL releases the GIL) with a bounded prefetch queue, so reading overlaps compute and
memory stays bounded whatever the raster size; each call opens its own dataset handles
and closes them when the iteration ends.  :func:`reader_threads` says how many threads.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional, Sequence

import numpy as np
from rasterio.windows import Window

from .progress import Progress, ensure
from .raster import Normalization, TileSource, open_raster


# GDAL's block cache (GDAL_CACHEMAX, 5 % of the RAM by default) is shared by every
# dataset and keeps decoded blocks until it is full: reading a large raster tile row by
# tile row fills it with blocks that are never read again (a 20k x 20k GeoTIFF peaked at
# 1.4 GB RSS).  While iter_batches runs it is capped, unless the user set GDAL_CACHEMAX,
# to what the tiles being read need: the blocks of two neighbouring tiles per reading
# thread, and at least _CACHE_FLOOR.  The cap does not depend on the raster's size (one
# sized to a band of tile rows grew with the raster's width: 16 MB of cache on a 2k x 2k
# raster, 82 MB on a 20k x 20k one); on wide rasters a block row shared by two tile rows
# is decoded twice instead.  Writers keep nothing dirty in it across rows (RasterWriter
# hands GDAL whole block rows).
_CACHE_FLOOR = 16 << 20
_cache_lock = threading.Lock()
_cache_caps: list = []   # caps of the iter_batches running now (any thread)
_cache_saved: list = []  # GDAL_CACHEMAX before the first of them


def _block_cache_cap(source: TileSource, tile_h: int, tile_w: int, workers: int = 2) -> int:
    """Bytes of decoded blocks that ``workers`` threads reading neighbouring tiles touch:
    two tiles' blocks per thread (and one more pair), at least the floor.  A raster
    stored in strips (blocks as wide as the raster) needs a band of tile rows instead."""
    with open_raster(source.path) as ds:
        block_h, block_w = (int(v) for v in ds.block_shapes[0])
        # a pixel-interleaved block holds every band, selected or not
        px = sum(np.dtype(t).itemsize for t in ds.dtypes)
    if source.dem:
        px += 8  # warped DEM blocks and, roughly, their source blocks
    rows = (-(-tile_h // block_h) + 1) * block_h  # the block rows a tile may touch
    if block_w >= source.width:
        return max(_CACHE_FLOOR, int(1.5 * (rows + block_h) * source.width * px))
    cols = (-(-tile_w // block_w) + 1) * block_w
    return max(_CACHE_FLOOR, 2 * (max(1, workers) + 1) * rows * cols * px)


class _CappedBlockCache:
    """Lower GDAL_CACHEMAX to ``limit`` bytes for the duration (the lowest cap of the
    concurrent users wins; the user's value comes back when the last one leaves)."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit

    @staticmethod
    def _apply() -> None:
        from rasterio.env import set_gdal_config
        set_gdal_config("GDAL_CACHEMAX", int(min(_cache_caps + _cache_saved)))

    def __enter__(self):
        if self.limit is None or "GDAL_CACHEMAX" in os.environ:
            self.limit = None
            return self
        from rasterio.env import get_gdal_config
        with _cache_lock:
            if not _cache_caps:
                saved = get_gdal_config("GDAL_CACHEMAX")
                if not isinstance(saved, int) or saved <= self.limit:
                    self.limit = None
                    return self
                _cache_saved[:] = [saved]
            _cache_caps.append(self.limit)
            self._apply()
        return self

    def __exit__(self, *exc):
        if self.limit is not None:
            with _cache_lock:
                _cache_caps.remove(self.limit)
                self._apply()
        return False


def reader_threads(workers: Optional[int] = None, gpu: bool = False) -> int:
    """Tile-reading threads: ``workers`` when given (0: read in the calling thread), else
    2 on the CPU, where the model needs the cores, and up to 8 when a GPU runs the model:
    there the readers are the limit (ViT-S fp16 on an H100, 16 cores: extraction at 0.70
    of the model-only rate with 2 readers, 0.91-0.97 with 6)."""
    if workers is not None:
        return max(0, int(workers))
    if not gpu:
        return 2
    return int(min(8, max(2, (os.cpu_count() or 2) - 2)))


def iter_batches(source: TileSource, windows: Sequence[Window], norm: Normalization,
                 batch_size: int = 32, workers: Optional[int] = 2, prefetch: int = 2,
                 progress: Optional[Progress] = None, pin: bool = False) -> Iterator[tuple]:
    """Yield ``(start, batch (B,C,T,T) float32, valid_fraction (B,))`` in order.

    Tiles are read and normalised by ``workers`` threads (None: :func:`reader_threads`);
    at most ``prefetch``
    batches are in flight beyond the one being consumed, so memory is bounded.
    GDAL's block cache is capped meanwhile to what the tiles being read need
    (``_block_cache_cap``), so memory does not grow with the raster's size.  With ``pin``
    (a CUDA run) each batch is written straight into page-locked memory (torch's caching
    host allocator), so the copy to the GPU needs no extra pinning pass in the thread that
    drives the GPU.  The reading threads open their own dataset handles, closed when the
    iteration ends (exhausted, closed, or left on an error), so repeated calls hold no
    files.  Cancel is checked before each batch.
    """
    progress = ensure(progress)
    workers = reader_threads(workers, pin)
    prefetch = max(prefetch, workers)  # every reader busy
    n = len(windows)
    starts = list(range(0, n, max(1, batch_size)))

    handles = source.handles()

    def load(start):
        wins = windows[start:start + batch_size]
        h = int(wins[0].height)
        w = int(wins[0].width)
        shape = (len(wins), source.channels, h, w)
        if pin:
            import torch  # only on the GPU path: the reader itself needs no torch
            batch = torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()
        else:
            batch = np.empty(shape, np.float32)
        frac = np.empty(len(wins), np.float32)
        for i, win in enumerate(wins):
            arr, valid = source.read(win, handles)
            batch[i] = norm.apply(arr, valid)
            frac[i] = source.valid_fraction(win, valid)
        return start, batch, frac

    limit = (_block_cache_cap(source, int(windows[0].height), int(windows[0].width), workers)
             if n else None)
    # the pool is shut down (its threads done) before the handles close
    with handles, _CappedBlockCache(limit):
        if workers <= 0:
            for s in starts:
                progress.check()
                yield load(s)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="soilssl-read") as pool:
            pending = []
            it = iter(starts)
            try:
                for s in it:
                    pending.append(pool.submit(load, s))
                    if len(pending) > prefetch:
                        break
                while pending:
                    progress.check()
                    fut = pending.pop(0)
                    result = fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(pool.submit(load, nxt))
                    yield result
            finally:
                for f in pending:
                    f.cancel()

