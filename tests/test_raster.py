"""Tiling, band selection, DEM warping, nodata, normalisation and atomic writing."""
import math
import os

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from conftest import write_raster
from soilssl.core.errors import Cancelled, InputError
from soilssl.core.progress import Progress
from soilssl.core.raster import Normalization, RasterWriter, TileGrid, TileSource, iter_batches


@pytest.mark.parametrize("w,h,tile,stride", [(150, 100, 32, 32), (64, 64, 64, 64),
                                             (100, 37, 32, 16), (65, 33, 32, 8)])
def test_grid_covers_raster_exactly(w, h, tile, stride):
    grid = TileGrid(w, h, tile, stride)
    assert grid.n_cols == math.ceil(w / stride) and grid.n_rows == math.ceil(h / stride)
    covered = np.zeros((h, w), int)
    for win in grid.windows():
        assert win.width == tile and win.height == tile
        r0, c0 = int(win.row_off), int(win.col_off)
        covered[r0:r0 + tile, c0:c0 + tile] += 1
    assert covered.min() >= 1  # every pixel is in some tile
    last = grid.window(len(grid) - 1)
    assert last.col_off < w <= last.col_off + tile or w <= last.col_off + tile
    assert last.col_off < w and last.row_off < h  # no tile entirely outside


def test_output_transform_matches_tile_centres():
    t = from_origin(1000.0, 5000.0, 2.0, 2.0)
    g = TileGrid(100, 60, 32, 32)
    assert g.out_transform(t) == from_origin(1000.0, 5000.0, 64.0, 64.0)
    g = TileGrid(100, 60, 32, 8)
    ot = g.out_transform(t)
    for idx in (0, 5, len(g) - 1):
        r, c = divmod(idx, g.n_cols)
        win = g.window(idx)
        centre_px = (win.col_off + 16, win.row_off + 16)
        assert ot @ (c + 0.5, r + 0.5) == pytest.approx(t @ centre_px)
        assert ot.a == 16.0


def test_stride_larger_than_tile_is_refused():
    with pytest.raises(InputError, match="STRIDE"):
        TileGrid(10, 10, 8, 16)


def test_band_selection_and_edge_padding(tmp_path):
    data = np.stack([np.full((20, 30), v, np.uint16) for v in (10, 20, 30, 40)])
    path = write_raster(tmp_path / "s2.tif", data)
    with TileSource(path, bands=[4, 2]) as src:
        assert src.channels == 2
        arr, valid = src.read(Window(20, 10, 16, 16))  # runs past both edges
    assert arr.shape == (2, 16, 16)
    assert (arr[0, :10, :10] == 40).all() and (arr[1, :10, :10] == 20).all()
    assert valid[:10, :10].all() and not valid[10:, :].any() and not valid[:, 10:].any()
    assert (arr[:, 10:, :] == 0).all()


def test_band_out_of_range_names_valid_range(rgb):
    with pytest.raises(InputError, match=r"\[5\].*1\.\.3"):
        TileSource(rgb, bands=[1, 5])


def test_nodata_mask_and_valid_fraction(rgb):
    with TileSource(rgb) as src:
        arr, valid = src.read(Window(0, 0, 40, 40))
        assert not valid.any()
        arr, valid = src.read(Window(30, 30, 20, 20))
        assert valid.sum() == 400 - 100
        # padding outside the raster does not count as nodata
        win = Window(140, 90, 20, 20)
        arr, valid = src.read(win)
        assert src.valid_fraction(win, valid) == 1.0


def test_float_nan_nodata_is_invalid(tmp_path):
    a = np.ones((1, 10, 10), np.float32)
    a[0, 0, 0] = np.nan
    path = write_raster(tmp_path / "f.tif", a)
    with TileSource(path) as src:
        _, valid = src.read(Window(0, 0, 10, 10))
    assert valid.sum() == 99


def test_dem_is_warped_onto_image_grid(tmp_path):
    img = write_raster(tmp_path / "img.tif", np.ones((3, 40, 40), np.uint8),
                       transform=from_origin(1000, 2000, 1.0, 1.0))
    # DEM on a coarser, shifted grid: z = x coordinate (a plane), so bilinear is exact
    xs = 990 + 2.0 * (np.arange(40) + 0.5)
    dem = np.tile(xs, (40, 1)).astype(np.float32)
    dem_path = write_raster(tmp_path / "dem.tif", dem, transform=from_origin(990, 2010, 2.0, 2.0))
    with TileSource(img, dem=dem_path) as src:
        assert src.channels == 4
        arr, valid = src.read(Window(0, 0, 40, 40))
    centres = 1000 + np.arange(40) + 0.5
    np.testing.assert_allclose(arr[3, 20], centres, atol=1e-3)
    assert valid.all()


def test_dem_outside_raster_names_extents(tmp_path):
    img = write_raster(tmp_path / "img.tif", np.ones((3, 10, 10), np.uint8))
    dem = write_raster(tmp_path / "dem.tif", np.ones((10, 10), np.float32),
                       transform=from_origin(100, 50, 1, 1))
    with pytest.raises(InputError, match="does not overlap.*DEM extent"):
        TileSource(img, dem=dem)


def test_normalisation_uses_valid_pixels_only(tmp_path):
    a = np.zeros((2, 64, 64), np.float32)
    a[0] = 10.0
    a[1, :, :32] = 2.0
    a[1, :, 32:] = 4.0
    a[:, :8, :] = -9999
    path = write_raster(tmp_path / "n.tif", a, nodata=-9999)
    with TileSource(path, bands=[1, 2]) as src:
        norm = src.compute_normalization(n_windows=4, size=64)
    assert norm.mean == pytest.approx([10.0, 3.0])
    assert norm.std == pytest.approx([1.0, 1.0])  # zero std replaced by 1
    out = norm.apply(np.full((2, 2, 2), 10.0, np.float32), np.array([[True, False], [True, True]]))
    assert out[0, 0, 1] == 0 and out[1, 0, 0] == pytest.approx(7.0)


def test_iter_batches_in_order_and_cancellable(rgb):
    norm = Normalization([0, 0, 0], [1, 1, 1])
    with TileSource(rgb) as src:
        grid = TileGrid(src.width, src.height, 32, 32)
        wins = grid.windows()
        starts = []
        for start, batch, frac in iter_batches(src, wins, norm, batch_size=4, workers=2):
            starts.append(start)
            ref, _ = src.read(wins[start])
            np.testing.assert_array_equal(batch[0], ref)
        assert starts == list(range(0, len(wins), 4))
        calls = []
        progress = Progress(is_cancelled=lambda: len(calls) > 0)
        with pytest.raises(Cancelled):
            for item in iter_batches(src, wins, norm, batch_size=2, progress=progress):
                calls.append(item)
        assert len(calls) == 1


def test_writer_publishes_atomically(tmp_path):
    out = tmp_path / "o.tif"
    with pytest.raises(RuntimeError):
        with RasterWriter(out, 4, 4, 1, "float32", "EPSG:32637",
                          from_origin(0, 4, 1, 1)) as w:
            w.write(np.ones((1, 2, 4), np.float32), Window(0, 0, 4, 2))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with RasterWriter(out, 4, 4, 1, "float32", "EPSG:32637", from_origin(0, 4, 1, 1),
                      tags={"a": {"b": 1}}) as w:
        w.write(np.ones((1, 4, 4), np.float32), Window(0, 0, 4, 4))
    assert os.listdir(tmp_path) == ["o.tif"]
    with rasterio.open(out) as ds:
        assert ds.read().sum() == 16 and ds.tags()["a"] == '{"b": 1}'


def test_writer_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "o.tif"
    else:
        target = ro / "o.tif"
    with pytest.raises(InputError, match="Cannot write into folder"):
        RasterWriter(target, 4, 4, 1, "float32", "EPSG:32637", from_origin(0, 4, 1, 1))
