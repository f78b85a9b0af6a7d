"""Feature rasters (georeferencing, nodata, determinism) and K-means / PCA maps."""
import os

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from conftest import TINY, write_raster
from soilssl.core.backbone import load_backbone
from soilssl.core.errors import Cancelled, InputError
from soilssl.core.features import embed, extract_features, pixel_values, point_features
from soilssl.core.maps import CLUSTER_NODATA, cluster_map, pca_map
from soilssl.core.progress import Progress
from soilssl.core.raster import Normalization, TileSource
from soilssl.core.writer import read_tags


@pytest.fixture
def backbone(tiny_ckpt):
    return load_backbone(tiny_ckpt, tile_size=32)


def test_feature_raster_georeferencing(rgb, backbone, tmp_path):
    out = str(tmp_path / "f.tif")
    with TileSource(rgb) as src:
        s = extract_features(src, backbone, out, batch_size=5, device="cpu")
        in_t, crs = src.transform, src.crs
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count) == (5, 4, 192)  # ceil(150/32), ceil(100/32)
        assert ds.crs == crs and ds.dtypes[0] == "float32"
        assert ds.transform == from_origin(in_t.c, in_t.f, 1.5 * 32, 1.5 * 32)
        f = ds.read()
    # the 40x40 nodata corner: tile (0,0) fully nodata -> NaN; the others hold features,
    # except the last row, whose tiles have 4 of their 32 rows on the raster: padding is
    # not data (MIN_VALID 0.5); the last column has 22 of 32 columns on it
    assert np.isnan(f[:, 0, 0]).all() and np.isnan(f[:, 3, :]).all()
    assert np.isfinite(f[:, 1:3, :]).all() and np.isfinite(f[:, :3, 2:]).all()
    assert s["skipped"] == int(np.isnan(f[0]).sum())
    tags = read_tags(out)
    assert tags["tile_size"] == 32 and tags["stride"] == 32
    assert len(tags["normalization"]["mean"]) == 3 and tags["backbone"]["arch"] == TINY


def test_features_equal_direct_forward_and_are_deterministic(rgb, backbone, tmp_path):
    with TileSource(rgb) as src:
        extract_features(src, backbone, str(tmp_path / "a.tif"), device="cpu", batch_size=7)
        extract_features(src, backbone, str(tmp_path / "b.tif"), device="cpu", batch_size=3,
                         workers=0)
        norm = Normalization.from_dict(read_tags(str(tmp_path / "a.tif"))["normalization"])
        from rasterio.windows import Window
        arr, valid = src.read(Window(64, 32, 32, 32))  # tile row 1, col 2
        direct = embed(backbone, norm.apply(arr, valid)[None], torch.device("cpu"))
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        fa, fb = a.read(), b.read()
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(fa[:, 1, 2], direct[0], rtol=1e-4, atol=1e-4)


def test_smaller_stride_covers_the_input_extent(rgb, backbone, tmp_path):
    out = str(tmp_path / "s.tif")
    with TileSource(rgb) as src:
        s = extract_features(src, backbone, out, stride=16, device="cpu")
        t, bounds = src.transform, src.bounds
        norm = read_tags(out)["normalization"]
        # each pixel is the tile centred on its 16 px cell: the tile a point there gets
        cols, rows = np.array([2, 5, 0, 8]), np.array([3, 1, 4, 5])
        points = point_features(src, backbone, (cols + 0.5) * 16, (rows + 0.5) * 16,
                                normalization=norm)
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height) == (10, 7)  # ceil(150/16), ceil(100/16)
        # same origin as the input, pixels of 16 x 1.5 m
        assert ds.transform == from_origin(t.c, t.f, 24.0, 24.0)
        assert ds.bounds.left == bounds[0] and ds.bounds.top == bounds[3]
        # the last column and row hang 10 and 12 px past the raster: no more
        assert ds.bounds.right - bounds[2] == 10 * 1.5 and bounds[1] - ds.bounds.bottom == 12 * 1.5
        f = ds.read()
    np.testing.assert_allclose(points, f[:, rows, cols].T, rtol=1e-4, atol=1e-4)
    # tiles of the last column have 14 of their 32 columns on the raster, those of the
    # last row 12: less than MIN_VALID 0.5 -> no values where there is (mostly) no imagery
    assert np.isnan(f[:, :, 9]).all() and np.isnan(f[:, 6, :]).all()
    assert np.isfinite(f[:, 3:6, 1:9]).all()
    assert s["skipped"] == int(np.isnan(f[0]).sum())


def test_mean_pool_differs_from_cls(rgb, backbone, tmp_path):
    with TileSource(rgb) as src:
        extract_features(src, backbone, str(tmp_path / "c.tif"), device="cpu")
        extract_features(src, backbone, str(tmp_path / "m.tif"), device="cpu", pool="mean")
    with rasterio.open(tmp_path / "c.tif") as c, rasterio.open(tmp_path / "m.tif") as m:
        assert not np.allclose(c.read(1)[1:], m.read(1)[1:])


def test_bf16_features_close_to_fp32(rgb, backbone):
    x = torch.randn(4, 3, 32, 32)
    f32 = embed(backbone, x, torch.device("cpu"), amp="none")
    f16 = embed(backbone, x, torch.device("cpu"), amp="bf16")
    cos = (f32 * f16).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(f16, axis=1)
    assert cos.min() > 0.99
    with pytest.raises(InputError, match="fp16 needs CUDA"):
        embed(backbone, x, torch.device("cpu"), amp="fp16")


def test_input_errors(rgb, backbone, tmp_path, tiny_ckpt):
    with TileSource(rgb, bands=[1, 2]) as src:
        with pytest.raises(InputError, match="expects 3 input channels but the input gives 2"):
            extract_features(src, backbone, str(tmp_path / "x.tif"))
    small = write_raster(tmp_path / "small.tif", np.ones((3, 20, 20), np.uint8))
    with TileSource(small) as src:
        with pytest.raises(InputError, match="larger than the raster"):
            extract_features(src, load_backbone(tiny_ckpt, tile_size=32), str(tmp_path / "y.tif"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith((".x", ".y", "x", "y"))]


def test_cancel_leaves_no_output(rgb, backbone, tmp_path):
    calls = []
    progress = Progress(on_progress=calls.append, is_cancelled=lambda: len(calls) >= 2)
    with TileSource(rgb) as src:
        with pytest.raises(Cancelled):
            extract_features(src, backbone, str(tmp_path / "f.tif"), batch_size=2,
                             progress=progress)
    assert sorted(os.listdir(tmp_path)) == ["rgb.tif", "tiny.pth"]


def test_point_features_match_centred_tiles(rgb, backbone, tmp_path):
    with TileSource(rgb) as src:
        out = str(tmp_path / "f.tif")
        extract_features(src, backbone, out, device="cpu")
        norm = read_tags(out)["normalization"]
        # a point at pixel (80, 48) has the tile [64..96) x [32..64) = grid tile (1, 2)
        feats = point_features(src, backbone, [80.0, 3.0], [48.0, 3.0], normalization=norm)
        px = pixel_values(src, [80.0, 3.0], [48.0, 3.0])
        with rasterio.open(rgb) as ds:
            assert px[0].tolist() == ds.read()[:, 48, 80].astype(float).tolist()
    assert np.isnan(px[1]).all()  # nodata corner
    with rasterio.open(out) as ds:
        np.testing.assert_allclose(feats[0], ds.read()[:, 1, 2], rtol=1e-4, atol=1e-4)


def _feature_raster(tmp_path):
    """4 well separated groups of 16-dim vectors, NaN nodata in one corner."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100).reshape(20, 20)
    centres = rng.normal(0, 10, (4, 16))
    f = centres[labels].transpose(2, 0, 1) + rng.normal(0, 0.1, (16, 20, 20))
    f[:, :3, :3] = np.nan
    return write_raster(tmp_path / "feat.tif", f.astype(np.float32), nodata=float("nan")), labels


def test_cluster_map_recovers_groups_and_keeps_nodata(tmp_path):
    path, labels = _feature_raster(tmp_path)
    s = cluster_map(path, str(tmp_path / "k.tif"), k=4, seed=1)
    with rasterio.open(tmp_path / "k.tif") as ds:
        k = ds.read(1)
        assert ds.nodata == CLUSTER_NODATA and ds.dtypes[0] == "uint8"
        assert ds.transform == rasterio.open(path).transform
    assert (k[:3, :3] == CLUSTER_NODATA).all()
    ok = k != CLUSTER_NODATA
    # same partition as the truth (labels may be permuted)
    pairs = set(zip(labels[ok].tolist(), k[ok].tolist()))
    assert len(pairs) == 4 and s["k"] == 4
    cluster_map(path, str(tmp_path / "k2.tif"), k=4, seed=1)
    assert np.array_equal(rasterio.open(tmp_path / "k2.tif").read(1), k)
    with pytest.raises(InputError, match="K must be"):
        cluster_map(path, str(tmp_path / "k3.tif"), k=1)


def test_pca_map_stretch_and_nodata(tmp_path):
    path, labels = _feature_raster(tmp_path)
    s = pca_map(path, str(tmp_path / "p.tif"))
    with rasterio.open(tmp_path / "p.tif") as ds:
        p = ds.read()
        assert ds.count == 3 and ds.dtypes[0] == "uint8" and ds.nodata == 0
    assert (p[:, :3, :3] == 0).all()
    valid = p[:, 3:, 3:]
    assert valid.min() >= 1 and valid.max() == 255
    assert sum(s["explained_variance_ratio"]) > 0.99  # 4 groups live in a 3-D subspace
    # red = PC1: pixels of one group share a colour, groups differ
    red = p[0][labels == 0]
    assert red.std() < 10


def test_all_nodata_raster_is_an_error(tmp_path):
    f = np.full((4, 5, 5), np.nan, np.float32)
    path = write_raster(tmp_path / "nan.tif", f, nodata=float("nan"))
    with pytest.raises(InputError, match="no valid pixel"):
        pca_map(path, str(tmp_path / "p.tif"))
    assert not os.path.exists(tmp_path / "p.tif")


def test_maps_follow_the_gdal_mask(tmp_path):
    """A feature raster whose nodata is an internal mask (not a value): masked pixels
    are neither sampled nor classified."""
    path, labels = _feature_raster(tmp_path)
    with rasterio.open(path) as ds:
        f, profile = ds.read(), ds.profile
    f[:, :3, :3] = 1e6  # no NaN, no nodata value: only the mask says these are not data
    profile.update(nodata=None)
    masked = str(tmp_path / "masked.tif")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(masked, "w", **profile) as ds:
            ds.write(f)
            mask = np.full(f.shape[1:], 255, np.uint8)
            mask[:3, :3] = 0
            ds.write_mask(mask)
    cluster_map(masked, str(tmp_path / "k.tif"), k=4, seed=1)
    pca_map(masked, str(tmp_path / "p.tif"))
    with rasterio.open(tmp_path / "k.tif") as k, rasterio.open(tmp_path / "p.tif") as p:
        k, p = k.read(1), p.read()
    assert (k[:3, :3] == CLUSTER_NODATA).all() and (p[:, :3, :3] == 0).all()
    ok = k != CLUSTER_NODATA
    assert ok.sum() == 400 - 9 and len(set(zip(labels[ok].tolist(), k[ok].tolist()))) == 4
