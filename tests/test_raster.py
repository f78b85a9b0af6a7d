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
from soilssl.core.batches import iter_batches
from soilssl.core.raster import Normalization, TileGrid, TileSource
from soilssl.core.writer import RasterWriter


@pytest.mark.parametrize("w,h,tile,stride", [(150, 100, 32, 32), (64, 64, 64, 64),
                                             (100, 37, 32, 16), (65, 33, 32, 8),
                                             (50, 41, 31, 5), (50, 41, 32, 5), (50, 41, 31, 6)])
def test_grid_tiles_are_centred_on_their_stride_cells(tmp_path, w, h, tile, stride):
    grid = TileGrid(w, h, tile, stride)
    assert grid.n_cols == math.ceil(w / stride) and grid.n_rows == math.ceil(h / stride)
    path = write_raster(tmp_path / "g.tif", np.ones((1, h, w), np.uint8))
    with TileSource(path) as src:
        for idx in range(len(grid)):
            r, c = divmod(idx, grid.n_cols)
            win = grid.window(idx)
            assert win.width == tile and win.height == tile
            # centred on the centre of stride cell (r, c), to the half pixel an odd/even
            # size difference allows...
            cx, cy = win.col_off + tile / 2, win.row_off + tile / 2
            assert abs(cx - (c + 0.5) * stride) <= 0.5 and abs(cy - (r + 0.5) * stride) <= 0.5
            if (tile - stride) % 2 == 0:
                assert (cx, cy) == ((c + 0.5) * stride, (r + 0.5) * stride)
            # ...and the very tile a point at that centre gets (point features, fit_points)
            assert win == src.centred_window((c + 0.5) * stride, (r + 0.5) * stride, tile)
    # the output pixels are the stride cells: they tile the raster from its origin
    assert grid.window(0).col_off == stride // 2 - tile // 2
    if stride == tile:
        assert grid.window(0) == Window(0, 0, tile, tile)


def test_output_grid_covers_the_input_extent():
    t = from_origin(1000.0, 5000.0, 2.0, 2.0)
    g = TileGrid(100, 60, 32, 32)
    assert g.out_transform(t) == from_origin(1000.0, 5000.0, 64.0, 64.0)
    g = TileGrid(96, 64, 32, 8)  # STRIDE < TILE_SIZE: same origin, pixel = 8 input pixels
    ot = g.out_transform(t)
    assert ot == from_origin(1000.0, 5000.0, 16.0, 16.0)
    assert (g.n_cols, g.n_rows) == (12, 8)
    # the output's extent is exactly the input's (96 x 64 px of 2 m)
    assert ot @ (g.n_cols, g.n_rows) == t @ (96, 64) == (1192.0, 4872.0)
    for idx in (0, 5, len(g) - 1):
        r, c = divmod(idx, g.n_cols)
        win = g.window(idx)
        # each output pixel is centred on its tile's centre
        assert ot @ (c + 0.5, r + 0.5) == t @ (win.col_off + 16, win.row_off + 16)
    assert g.window(0) == Window(-12, -12, 32, 32)  # edge tiles run past the raster
    assert g.window(len(g) - 1) == Window(76, 44, 32, 32)


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
        # padding outside the raster counts as invalid: MIN_VALID is the share of the tile
        # that holds data
        win = Window(140, 90, 20, 20)
        arr, valid = src.read(win)
        assert valid.sum() == 100 and src.valid_fraction(win, valid) == 0.25
        win = Window(-10, 50, 20, 20)
        arr, valid = src.read(win)
        assert src.valid_fraction(win, valid) == 0.5


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


def test_writer_non_io_error_says_what_happened(tmp_path):
    out = tmp_path / "o.tif"
    with pytest.raises(ValueError) as info:
        with RasterWriter(out, 4, 4, 2, "float32", "EPSG:32637", from_origin(0, 4, 1, 1)) as w:
            w.write(np.ones((3, 1, 4), np.float32), Window(0, 0, 4, 1))
    message = str(info.value)
    assert "(3, 1, 4)" in message and "2 band" in message and "o.tif" in message
    assert "output location" not in message and "disk" not in message
    assert os.listdir(tmp_path) == []


# -- masks as GDAL defines them ----------------------------------------------------------
def _masked_raster(tmp_path, kind):
    """RGB uint8 20 x 30 px: 100 where valid; the left 10 columns and the top 4 rows are
    masked out by an alpha band, an internal mask or a nodata value (masked pixels hold 200,
    or the nodata value 7)."""
    bad = np.zeros((20, 30), bool)
    bad[:, :10] = True
    bad[:4] = True
    data = np.full((3, 20, 30), 100, np.uint8)
    data[:, bad] = 7 if kind == "nodata" else 200
    profile = dict(driver="GTiff", width=30, height=20, dtype="uint8", crs="EPSG:32637",
                   transform=from_origin(500000.0, 2900000.0, 1.0, 1.0))
    path = str(tmp_path / f"{kind}.tif")
    if kind == "alpha":  # an RGBA orthophoto
        alpha = np.where(bad, 0, 255).astype(np.uint8)
        with rasterio.open(path, "w", count=4, photometric="RGB", alpha="YES", **profile) as ds:
            ds.write(np.concatenate([data, alpha[None]]))
    elif kind == "internal_mask":  # e.g. a JPEG-compressed GeoTIFF with its mask
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(path, "w", count=3, **profile) as ds:
                ds.write(data)
                ds.write_mask(np.where(bad, 0, 255).astype(np.uint8))
        assert not os.path.exists(path + ".msk")
    else:
        with rasterio.open(path, "w", count=3, nodata=7, **profile) as ds:
            ds.write(data)
    return path, bad


@pytest.mark.parametrize("kind", ["alpha", "internal_mask", "nodata"])
def test_gdal_masks_make_pixels_invalid(tmp_path, kind):
    from soilssl.core.features import pixel_values
    path, bad = _masked_raster(tmp_path, kind)
    with rasterio.open(path) as ds:  # what GDAL says
        np.testing.assert_array_equal(ds.dataset_mask() > 0, ~bad)
    with TileSource(path, bands=[1, 2, 3]) as src:
        arr, valid = src.read(Window(0, 0, 30, 20))
        np.testing.assert_array_equal(valid, ~bad)
        win = Window(5, 2, 10, 10)  # 5 x 8 masked columns and rows
        _, valid = src.read(win)
        assert src.valid_fraction(win, valid) == pytest.approx(5 * 8 / 100)
        # the tile validity that extraction and pretraining use
        norm = Normalization([0.0] * 3, [1.0] * 3)
        wins = [Window(0, 0, 10, 10), Window(20, 10, 10, 10), win]
        fracs = np.concatenate([f for _, _, f in iter_batches(src, wins, norm, batch_size=2)])
        np.testing.assert_allclose(fracs, [0.0, 1.0, 0.4])
        # pixel values (the pixel baseline and the points on nodata)
        px = pixel_values(src, [2.5, 20.5, 20.5], [10.5, 1.5, 10.5])
        assert np.isnan(px[:2]).all() and px[2].tolist() == [100.0, 100.0, 100.0]
        # the normalisation only sees valid pixels
        norm = src.compute_normalization(n_windows=4, size=20)
        assert norm.mean == pytest.approx([100.0] * 3)


# -- reader handles ------------------------------------------------------------------------
def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def image_and_dem(tmp_path):
    rng = np.random.default_rng(0)
    img = write_raster(tmp_path / "img.tif", rng.integers(1, 255, (3, 64, 64), dtype=np.uint8),
                       transform=from_origin(1000, 2000, 1.0, 1.0), nodata=0)
    dem = write_raster(tmp_path / "dem.tif", rng.normal(100, 5, (40, 40)).astype(np.float32),
                       transform=from_origin(990, 2010, 2.0, 2.0))
    return img, dem


def test_iter_batches_releases_its_reader_handles(image_and_dem):
    img, dem = image_and_dem
    before = _open_files()
    norm = Normalization([0.0] * 4, [1.0] * 4)
    with TileSource(img, dem=dem) as src:
        wins = TileGrid(src.width, src.height, 16, 16).windows()

        def run(workers):
            return sum(len(b) for _, b, _ in iter_batches(src, wins, norm, batch_size=4,
                                                          workers=workers))
        for _ in range(3):  # warm-up (imports, GDAL drivers, allocator)
            run(2)
        files, rss = _open_files(), _rss()
        for i in range(50):
            assert run(2 if i % 2 else 0) == 16
            assert _open_files() == files, f"handles left open after call {i + 1}"
        assert _rss() - rss < 4 << 20
        # a generator left half-way (an error or a cancel in the consumer) closes its too
        it = iter_batches(src, wins, norm, batch_size=4, workers=2)
        next(it)
        it.close()
        assert _open_files() == files
        src.read(Window(0, 0, 8, 8))  # direct reads keep one handle set per thread...
    assert _open_files() == before  # ...until close()


def test_pretraining_keeps_open_files_and_memory_flat(image_and_dem, tmp_path, monkeypatch):
    """50 epochs of a tiny run (2-block, 48-dim ViT, 32 px, 4 tiles in 2 batches, image +
    DEM): every epoch reads through iter_batches with 2 threads.  Open files and RSS must not
    grow with the epochs (they grew by 4 files and 0.3 MB per epoch)."""
    import soilssl.core.backbone as backbone_module
    from conftest import TINY
    from soilssl.core.pretrain import PretrainConfig, pretrain
    real = backbone_module.create_model
    monkeypatch.setattr(backbone_module, "create_model",
                        lambda *a, **k: real(*a, depth=2, embed_dim=48, num_heads=3, **k))
    img, dem = image_and_dem
    seen = []

    def on_info(message):
        if message.startswith("Epoch "):
            seen.append((_open_files(), _rss()))
    cfg = PretrainConfig(input=img, dem=dem, output=str(tmp_path / "ck.pth"), arch=TINY,
                         tile_size=32, epochs=50, batch_size=2, out_dim=16, hidden_dim=16,
                         bottleneck_dim=8, local_crops_number=0, warmup_epochs=0, buffer=0,
                         workers=2, seed=0)
    summary = pretrain(cfg, progress=Progress(on_info=on_info))
    assert len(summary["loss_history"]) == 50 and len(seen) == 50
    files = [f for f, _ in seen]
    assert files[-1] == files[0], files
    rss = [r for _, r in seen]
    assert rss[-1] - rss[9] < 4 << 20, [round(r / 2 ** 20, 1) for r in rss]


def test_reader_threads_given_or_automatic(monkeypatch):
    """WORKERS left empty: 2 readers on the CPU, up to 8 when a GPU runs the model (there
    the readers are the limit); a given count is kept, 0 reads in the calling thread."""
    import os as _os
    from soilssl.core.batches import reader_threads
    assert reader_threads(3) == 3 and reader_threads(0) == 0 and reader_threads(3, gpu=True) == 3
    assert reader_threads(None) == 2
    monkeypatch.setattr(_os, "cpu_count", lambda: 16)
    assert reader_threads(None, gpu=True) == 8 and reader_threads(None) == 2
    monkeypatch.setattr(_os, "cpu_count", lambda: 4)
    assert reader_threads(None, gpu=True) == 2
