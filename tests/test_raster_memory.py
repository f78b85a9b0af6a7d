"""Memory that must not grow with the raster: GDAL's block cache while tiles are read,
and the blocks a row-by-row writer leaves in it (the benchmark's extract_rss_ratio)."""
import numpy as np
import pytest
import rasterio
from rasterio.env import get_gdal_config
from rasterio.transform import from_origin
from rasterio.windows import Window

from soilssl.core.batches import _block_cache_cap, iter_batches
from soilssl.core.raster import Normalization, TileGrid, TileSource
from soilssl.core.writer import RasterWriter


def _blank(path, width, height, tiled=True):
    """A 3-band uint8 deflate GeoTIFF of zeros (tiny on disk, written by block rows)."""
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                   crs="EPSG:32637", transform=from_origin(0, height, 1, 1), compress="deflate")
    profile.update(dict(tiled=True, blockxsize=256, blockysize=256) if tiled else
                   dict(blockysize=16))
    with rasterio.Env(GDAL_CACHEMAX=32), rasterio.open(path, "w", **profile) as ds:
        block = np.zeros((3, 256, width), np.uint8)
        for r in range(0, height, 256):
            h = min(256, height - r)
            ds.write(block[:, :h], window=Window(0, r, width, h))
    return path


def test_block_cache_cap_does_not_grow_with_the_raster(tmp_path):
    narrow = TileSource(_blank(tmp_path / "n.tif", 2048, 300))
    wide = TileSource(_blank(tmp_path / "w.tif", 20480, 300))
    for tile, workers in ((224, 2), (448, 2), (448, 4)):
        cap = _block_cache_cap(narrow, tile, tile, workers)
        assert cap == _block_cache_cap(wide, tile, tile, workers)
        # the blocks that 2 tiles per reading thread touch, not a band of tile rows
        assert cap <= max(16 << 20, 2 * (workers + 1) * (tile + 512) ** 2 * 3)
        assert cap < 1.5 * tile * 20480 * 3
    # a 1024 px tile needs more than the floor, still whatever the width
    assert _block_cache_cap(narrow, 1024, 1024) == _block_cache_cap(wide, 1024, 1024) > 16 << 20
    # blocks as wide as the raster (strips): every tile touches a band of the raster's width
    strips = TileSource(_blank(tmp_path / "s.tif", 20480, 300, tiled=False))
    assert _block_cache_cap(strips, 448, 448) >= (448 + 16) * 20480 * 3


def test_iter_batches_caps_the_block_cache_while_reading(tmp_path, monkeypatch):
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    src = TileSource(_blank(tmp_path / "w.tif", 8192, 300))
    grid = TileGrid(src.width, src.height, 64, 64)
    norm = Normalization([0.0] * 3, [1.0] * 3)
    before = get_gdal_config("GDAL_CACHEMAX")
    seen = []
    for _, batch, _ in iter_batches(src, grid.windows(), norm, batch_size=64, workers=2):
        seen.append(get_gdal_config("GDAL_CACHEMAX"))
        assert batch.shape[1:] == (3, 64, 64)
    assert len(seen) == -(-len(grid) // 64)
    assert set(seen) == {min(before, _block_cache_cap(src, 64, 64, 2))}
    assert get_gdal_config("GDAL_CACHEMAX") == before
    src.close()


@pytest.mark.parametrize("rows_per_write", [1, 3])
def test_tiled_writer_hands_gdal_whole_block_rows(tmp_path, rows_per_write):
    """Written row by row under a block cache smaller than a block row (reads evict the
    writer's blocks in a real run), a tiled deflate output must hold the same values and
    take no more room than one written at once: no half-filled block is compressed and
    rewritten."""
    rng = np.random.default_rng(0)
    h, w = 600, 700
    data = rng.normal(size=(2, h, w)).astype(np.float32)
    data[:, :, :200] = 1.0  # some compressible area, so sizes differ per fill state
    args = ("EPSG:32637", from_origin(0, h, 1, 1))
    with rasterio.Env(GDAL_CACHEMAX=1):
        with RasterWriter(tmp_path / "once.tif", w, h, 2, "float32", *args) as wr:
            wr.write(data, Window(0, 0, w, h))
        with RasterWriter(tmp_path / "rows.tif", w, h, 2, "float32", *args) as wr:
            for r in range(0, h, rows_per_write):
                n = min(rows_per_write, h - r)
                wr.write(data[:, r:r + n], Window(0, r, w, n))
            assert wr.ds.block_shapes[0] == (256, 256)
    with rasterio.open(tmp_path / "rows.tif") as ds:
        np.testing.assert_array_equal(ds.read(), data)
    size_once = (tmp_path / "once.tif").stat().st_size
    assert (tmp_path / "rows.tif").stat().st_size <= 1.02 * size_once


def test_writer_mixed_windows_keep_write_order(tmp_path):
    """Rows gathered for a block row are written before a later, different window, so
    the last write wins as with direct writes."""
    h, w = 300, 300
    with RasterWriter(tmp_path / "o.tif", w, h, 1, "float32", "EPSG:32637",
                      from_origin(0, h, 1, 1)) as wr:
        wr.write(np.full((1, 10, w), 1, np.float32), Window(0, 0, w, 10))   # gathered
        wr.write(np.full((1, 5, 5), 2, np.float32), Window(3, 4, 5, 5))     # a patch on top
        wr.write(np.full((1, 290, w), 3, np.float32), Window(0, 10, w, 290))
    with rasterio.open(tmp_path / "o.tif") as ds:
        out = ds.read(1)
    assert (out[:10][out[:10] != 2] == 1).all() and (out[4:9, 3:8] == 2).all()
    assert (out[10:] == 3).all()
