"""The point-feature cache (issue 11, defect 7): its key holds precision, device and pool;
its folder has a size limit with least-recently-used eviction."""
import os

import numpy as np
import pytest
import torch

from conftest import write_raster
from soilssl.core.backbone import load_backbone
from soilssl.core.progress import Progress
from soilssl.core.raster import TileSource


@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(0)
    return write_raster(tmp_path / "scene.tif", rng.integers(1, 255, (3, 96, 96), np.uint8))


@pytest.fixture
def vit(tiny_ckpt):
    return load_backbone(tiny_ckpt, tile_size=32)


COLS, ROWS = np.array([20.0, 50.0, 70.0]), np.array([30.0, 40.0, 60.0])


def test_features_are_not_reused_across_precision_device_or_pool(scene, vit, tmp_path,
                                                                  monkeypatch):
    import soilssl.core.soil as soil
    real, runs = soil.point_features, []

    def counted(source, backbone, cols, rows, **kw):
        runs.append((kw.get("device"), kw.get("amp"), kw.get("pool")))
        if kw.get("device") == "cuda":  # no GPU here: what a CUDA run would give
            return np.zeros((len(cols), backbone.embed_dim), np.float32)
        return real(source, backbone, cols, rows, **kw)

    monkeypatch.setattr(soil, "point_features", counted)
    cache = str(tmp_path / "cache")
    messages = []
    with TileSource(scene) as src:
        def feats(**kw):
            return soil.cached_point_features(src, vit, COLS, ROWS, cache=cache,
                                              progress=Progress(on_info=messages.append), **kw)
        fp32 = feats(device="cpu", amp="none")
        assert len(runs) == 1
        assert np.array_equal(feats(device="cpu", amp="auto"), fp32)  # auto is fp32 on a CPU
        assert len(runs) == 1 and "from the cache" in messages[-1]
        bf16 = feats(device="cpu", amp="bf16")  # bf16 features are not the fp32 ones
        assert len(runs) == 2 and not np.array_equal(bf16, fp32)
        np.testing.assert_allclose(bf16, fp32, atol=0.1 * np.abs(fp32).max())
        assert np.array_equal(feats(device="cpu", amp="none"), fp32)  # and fp32 stays fp32
        assert len(runs) == 2
        feats(device="cpu", amp="none", pool="mean")
        assert len(runs) == 3
        # another device type is another entry (auto AMP means fp16 on CUDA)
        monkeypatch.setattr(soil, "resolve_device",
                            lambda d="auto": torch.device("cuda" if d == "cuda" else "cpu"))
        feats(device="cuda", amp="auto")
        feats(device="cuda", amp="none")
        assert len(runs) == 5
        assert np.array_equal(feats(device="cpu", amp="none"), fp32) and len(runs) == 5
    assert len(os.listdir(cache)) == 5


def _times(path, t):
    os.utime(path, (t, t))


def test_cache_folder_keeps_to_its_size_limit_evicting_least_recently_used(tmp_path,
                                                                            monkeypatch):
    from soilssl.core.cache import DEFAULT_LIMIT_MB, FeatureCache, limit_bytes
    a = np.arange(1000, dtype=np.float32)  # 4000 bytes + a 128-byte .npy header
    store = FeatureCache(str(tmp_path), limit=3 * 4128)
    for i, name in enumerate("abc"):
        assert store.put(name, a + i)
        _times(store.path(name), 1000 + i)
    assert store.size() == 3 * 4128
    assert np.array_equal(store.get("a"), a)  # a hit: "a" is now the most recently used
    assert store.put("d", a + 3)
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "c.npy", "d.npy"]  # "b" was the oldest
    assert store.get("b") is None and store.size() <= store.limit
    assert not store.put("big", np.zeros(4000, np.float32))  # larger than the whole cache
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "c.npy", "d.npy"]
    # the limit comes from SOILSSL_CACHE_MB; 0 turns the cache off
    monkeypatch.delenv("SOILSSL_CACHE_MB", raising=False)
    assert limit_bytes() == DEFAULT_LIMIT_MB * 2 ** 20 and 100 <= DEFAULT_LIMIT_MB <= 1000
    monkeypatch.setenv("SOILSSL_CACHE_MB", "0.5")
    assert limit_bytes() == 2 ** 19
    monkeypatch.setenv("SOILSSL_CACHE_MB", "0")
    off = FeatureCache(str(tmp_path))
    assert off.get("a") is None and not off.put("e", a)
    monkeypatch.setenv("SOILSSL_CACHE_MB", "lots")
    from soilssl.core.errors import InputError
    with pytest.raises(InputError, match="SOILSSL_CACHE_MB='lots' is not a number"):
        limit_bytes()


def test_fit_points_cache_stays_under_the_limit(scene, vit, tmp_path, monkeypatch):
    import soilssl.core.soil as soil
    monkeypatch.setenv("SOILSSL_CACHE_MB", str(2.5 * 3 * 192 * 4 / 2 ** 20))  # ~2.5 entries
    cache = str(tmp_path / "cache")
    with TileSource(scene) as src:
        for i in range(4):
            soil.cached_point_features(src, vit, COLS + i, ROWS, cache=cache, device="cpu")
    names = os.listdir(cache)
    assert len(names) == 2
    assert sum(os.path.getsize(os.path.join(cache, n)) for n in names) <= 2.5 * 3 * 192 * 4
