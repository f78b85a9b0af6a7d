"""Each ViT family's small model runs the whole chain through scripts/qgis_process:
extract features, continue DINO pretraining, fit soil heads comparing backbones, predict a map."""
import json
import math
import os
import subprocess

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from conftest import ROOT, write_raster
from test_families import FAMILIES, family_files

QGIS_PROCESS = os.path.join(ROOT, "scripts", "qgis_process")
PIX = 1.5


def qgis_process(alg, **params):
    """Run soilssl:<alg> headless; -> (results, log lines)."""
    args = [QGIS_PROCESS, "run", f"soilssl:{alg}", "--json", "--"] + \
        [f"{k}={v}" for k, v in params.items()]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    start = run.stdout.index("{")
    out = json.loads(run.stdout[start:])
    # every log line, whichever channel (tables go out as command info, spaces kept as NBSP)
    lines = [m for v in out.get("log", {}).values() if isinstance(v, list) for m in v]
    lines += run.stdout[:start].splitlines() + run.stderr.splitlines()
    return out["results"], [m.replace("\u00a0", " ") for m in lines]


def _scene(tmp_path, with_dem):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    a = np.stack([100 + 80 * np.sin(xx / 5.0), 100 + 80 * np.cos(yy / 7.0), 50 + xx + yy])
    a = np.clip(a + rng.normal(0, 5, a.shape), 1, 255).astype(np.uint8)
    geo = from_origin(500000.0, 2900000.0, PIX, PIX)
    img = write_raster(tmp_path / "img.tif", a, geo, nodata=0)
    dem = write_raster(tmp_path / "dem.tif", (300 + yy * 0.5).astype(np.float32), geo) \
        if with_dem else ""
    feats = []
    for col, row in rng.uniform(6, 90, (24, 2)):
        x, y = 500000.0 + PIX * col, 2900000.0 - PIX * row
        feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
                      "properties": {"ph": float(5 + row / 20 + rng.normal(0, 0.1))}})
    pts = tmp_path / "points.geojson"
    pts.write_text(json.dumps({"type": "FeatureCollection", "features": feats,
                               "crs": {"type": "name", "properties": {"name": "EPSG:32637"}}}))
    return img, dem, str(pts)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_chain_through_qgis_process(tmp_path, family):
    arch, patch, _ = FAMILIES[family]
    with_dem = family == "dinov3"  # RGB + DEM: the 4th channel's weights cloned from R
    img, dem, pts = _scene(tmp_path, with_dem)
    files, sd = family_files(tmp_path, arch)
    tile = 28 if patch == 14 else 32
    src = dict(INPUT=img, DEVICE="cpu", **({"DEM": dem} if dem else {}))

    # 1. features from the timm state dict
    res, log = qgis_process("extractfeatures", BACKBONE=files["timm"], ARCH=arch, TILE_SIZE=32,
                            OUTPUT=tmp_path / "f.tif", **src)
    n = math.ceil(96 / tile)
    # tiles centred on their stride cells: where 96 px is not a whole number of tiles, the
    # last row and column reach past the raster and hold too little image (MIN_VALID)
    assert res["TILES"] == n * n and res["SKIPPED"] == (0 if 96 % tile == 0 else 2 * n - 1)
    with rasterio.open(res["OUTPUT"]) as ds:
        assert (ds.count, ds.width, ds.height) == (64, n, n)
        assert ds.res == (tile * PIX, tile * PIX) and ds.crs.to_epsg() == 32637
        assert np.isfinite(ds.read(1)).sum() == n * n - res["SKIPPED"]
    snapped = [m for m in log if "not a multiple of the backbone's patch size" in m]
    assert bool(snapped) == (patch == 14), log

    # 2. DINO continues from the DINO-style training checkpoint
    res, log = qgis_process("pretrain", INIT=files["dino"], ARCH=arch, EPOCHS=1, TILE_SIZE=32,
                            STRIDE=16, OUT_DIM=16, LOCAL_CROPS=2, BATCH_SIZE=4, BUFFER=0,
                            OUTPUT=tmp_path / "ck.pth", **src)
    assert math.isfinite(res["FINAL_LOSS"]) and res["TILES"] > 0
    ck = torch.load(tmp_path / "ck.pth", weights_only=True)
    assert (ck["arch"], ck["tile_size"], ck["in_chans"]) == (arch, tile, 4 if with_dem else 3)
    assert not all(torch.equal(ck["backbone"][k][:, :3] if k == "patch_embed.proj.weight"
                               else ck["backbone"][k], sd[k]) for k in sd)  # it trained

    # 3. soil heads: the pretrained model vs the safetensors file vs random init, same folds
    res, log = qgis_process(
        "fitpoints", BACKBONE=tmp_path / "ck.pth", POINTS=pts, FIELDS="ph", METHOD="ridge",
        FOLDS=3, COMPARE_BACKBONES=f"{files['safetensors']}@{arch};random:{arch}",
        OUTPUT_POINTS=tmp_path / "oof.gpkg", OUTPUT_MODEL=tmp_path / "m.pth",
        OUTPUT_REPORT=tmp_path / "r.html", **src)
    table = json.loads(res["CV_TABLE"])
    assert [r["method"] for r in table] == ["ridge", "ridge [model]", f"ridge [random:{arch}]"]
    assert len({r["n"] for r in table}) == 1 and table[0]["n"] == 24
    ranking = json.loads(res["BACKBONE_RANKING"])
    assert sorted(r["rank"] for r in ranking) == [1, 2, 3]
    assert {r["backbone"] for r in ranking} == {"features", "model", f"random:{arch}"}
    assert "Backbones ranked" in open(tmp_path / "r.html", encoding="utf-8").read()
    assert any("Backbones ranked" in m for m in log)

    # 4. the map, with the pretrained backbone the model refers to
    res, log = qgis_process("predictmap", MODEL=tmp_path / "m.pth", OUTPUT=tmp_path / "p.tif",
                            **src)
    with rasterio.open(res["OUTPUT"]) as ds:
        assert (ds.count, ds.width, ds.height) == (1, n, n)
        assert ds.res == (tile * PIX, tile * PIX)
        ph = ds.read(1, masked=True)
    # the same tiles as the features: edge tiles with too little image are nodata
    assert int(ph.count()) == n * n - (0 if 96 % tile == 0 else 2 * n - 1)
    assert np.isfinite(ph.compressed()).all() and 3 < float(ph.mean()) < 12
