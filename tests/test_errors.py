"""Issue 6's bad-input table: every row through processing.run, a few through qgis_process.

Each bad input must fail with a QgsProcessingException whose message names the problem and
the fix, before heavy work where it can be, and leave no output (nor temporary) file.
"""
import errno
import gc
import json
import os
import pickle
import shutil
import subprocess
import threading
import weakref

import numpy as np
import pytest
import rasterio

from conftest import ROOT, TINY, feedback, write_raster

QP = os.path.join(ROOT, "scripts", "qgis_process")
X0, Y0, PX = 500000.0, 2900000.0, 1.5  # the rgb fixture: 150 x 100 px UTM 37N, nodata corner


# ----------------------------------------------------------------------------- helpers
def run(alg, params, fb=None):
    import processing
    return processing.run(f"soilssl:{alg}", params, feedback=fb or feedback())


def fails(alg, params, match, fb=None):
    """Run, expect a QgsProcessingException matching ``match``; returns its message."""
    from qgis.core import QgsProcessingException
    with pytest.raises(QgsProcessingException, match=match) as info:
        run(alg, params, fb)
    return str(info.value)


def leftovers(folder, keep=()):
    """Files in ``folder`` other than ``keep`` (outputs or temporary files left behind)."""
    return sorted(f for f in os.listdir(folder) if f not in keep)


def write_points(path, cols_rows, crs="EPSG:32637", **fields):
    """A GeoJSON point layer at pixel positions of the rgb fixture (or lon/lat if
    ``crs`` is EPSG:4326, then ``cols_rows`` are coordinates)."""
    feats = []
    for i, (c, r) in enumerate(cols_rows):
        xy = [X0 + c * PX, Y0 - r * PX] if crs != "EPSG:4326" else [c, r]
        props = {"id": i, **{k: v[i] for k, v in fields.items()}}
        feats.append({"type": "Feature", "properties": props,
                      "geometry": {"type": "Point", "coordinates": xy}})
    epsg = crs.split(":")[1]
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection", "features": feats,
                   "crs": {"type": "name",
                           "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}}, f)
    return str(path)


GRID = [(c, r) for c in (50, 75, 100, 125, 145) for r in (10, 40, 70, 95)]  # 20 valid px


@pytest.fixture
def points(tmp_path):
    n = len(GRID)
    rng = np.random.default_rng(0)
    ph = rng.uniform(6, 9, n).round(2).tolist()
    return write_points(
        tmp_path / "pts.geojson", GRID, ph=ph, ph_text=[f"{v:.2f}".replace(".", ",") for v in ph],
        landcover=["dunes", "wadi"] * (n // 2), empty=[None] * n,
        some_null=[None, None, None] + ph[3:])


@pytest.fixture
def out(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def small(tmp_path):
    """64 x 64 px: 4 training tiles of 32 px (pretraining steps are the slow part)."""
    a = np.random.default_rng(2).integers(1, 255, (3, 64, 64), dtype=np.uint8)
    return write_raster(tmp_path / "small.tif", a)


@pytest.fixture
def embeds(monkeypatch):
    """Counts ViT forward passes: 'before heavy work' means none happened."""
    from soilssl.core import features
    calls = []
    real = features.embed

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(features, "embed", counting)
    return calls


def fit_params(raster, pts, out, **extra):
    p = {"INPUT": raster, "BACKBONE": extra.pop("BACKBONE"), "TILE_SIZE": 32, "POINTS": pts,
         "FIELDS": ["ph"], "METHOD": "ridge", "FOLDS": 2, "DEVICE": "cpu", "WORKERS": 0,
         "OUTPUT_POINTS": str(out / "oof.gpkg"), "OUTPUT_MODEL": str(out / "model.pth")}
    p.update(extra)
    return p


def extract_params(raster, ckpt, out, **extra):
    p = {"INPUT": raster, "BACKBONE": ckpt, "TILE_SIZE": 32, "DEVICE": "cpu", "WORKERS": 0,
         "OUTPUT": str(out / "f.tif")}
    p.update(extra)
    return p


# ----------------------------------------------------------------------------- points
def test_points_partly_outside_are_skipped_and_counted(qgis_app, rgb, tiny_ckpt, out, tmp_path):
    pts = write_points(tmp_path / "p.geojson", GRID + [(-30, 10), (200, 50), (60, 140)],
                       ph=list(np.linspace(6, 9, len(GRID) + 3)))
    fb = feedback()
    res = run("fitpoints", fit_params(rgb, pts, out, BACKBONE=tiny_ckpt), fb)
    assert json.loads(res["CV_TABLE"])[0]["n"] == len(GRID)
    assert any(f"3 of {len(GRID) + 3} points are outside the raster" in m for m in fb.infos)


def test_points_all_outside_is_an_error(qgis_app, rgb, tiny_ckpt, out, tmp_path, embeds):
    pts = write_points(tmp_path / "p.geojson", [(c + 1000, r) for c, r in GRID],
                       ph=[7.0] * len(GRID))
    fails("fitpoints", fit_params(rgb, pts, out, BACKBONE=tiny_ckpt,
                                  OUTPUT_REPORT=str(out / "report.html")),
          rf"All {len(GRID)} points are outside the raster: check that the points and the "
          r"raster cover the same area")
    assert leftovers(out) == [] and embeds == []


def test_points_in_another_crs_are_reprojected(qgis_app, rgb, tiny_ckpt, out, tmp_path):
    from rasterio.warp import transform
    lon, lat = transform("EPSG:32637", "EPSG:4326", [X0 + c * PX for c, _ in GRID],
                         [Y0 - r * PX for _, r in GRID])
    pts = write_points(tmp_path / "wgs84.geojson", list(zip(lon, lat)), crs="EPSG:4326",
                       ph=list(np.linspace(6, 9, len(GRID))))
    fb = feedback()
    res = run("fitpoints", fit_params(rgb, pts, out, BACKBONE=tiny_ckpt), fb)
    assert json.loads(res["CV_TABLE"])[0]["n"] == len(GRID)  # all inside once reprojected
    assert not any("outside" in m for m in fb.infos) and not fb.warnings


def test_geographic_raster_crs_warns_about_tile_ground_size(qgis_app, tiny_ckpt, out, tmp_path):
    from rasterio.transform import from_origin
    a = np.random.default_rng(0).integers(1, 255, (3, 64, 96), dtype=np.uint8)
    geo = write_raster(tmp_path / "geo.tif", a, crs="EPSG:4326",
                       transform=from_origin(39.0, 26.0, 0.0001, 0.0001))
    fb = feedback()
    run("extractfeatures", extract_params(geo, tiny_ckpt, out), fb)
    assert any("EPSG:4326" in w and "geographic" in w and "no fixed ground size" in w
               for w in fb.warnings)
    pts = write_points(tmp_path / "p.geojson", [(39.0002 + 0.0008 * i, 25.9998 - 0.0005 * j)
                                               for i in range(4) for j in range(3)],
                       crs="EPSG:4326", ph=list(np.linspace(6, 9, 12)))
    fb = feedback()
    run("fitpoints", fit_params(geo, pts, out, BACKBONE=tiny_ckpt), fb)
    assert any("geographic" in w and "no fixed ground size" in w for w in fb.warnings)


# ----------------------------------------------------------------------------- fields
@pytest.mark.parametrize("field, match", [
    ("nope", r"Field 'nope' is not in the points layer; its fields are: id, ph, ph_text"),
    ("landcover", r"Field 'landcover' is not numeric: feature \d+ holds 'dunes'.*to_real"),
    ("empty", r"Field 'empty' is NULL at every point"),
])
def test_bad_fields_are_named(qgis_app, rgb, tiny_ckpt, points, out, field, match, embeds):
    # TARGET_TYPE=regression: a text field is then an error (with auto it is a class target)
    fails("fitpoints", fit_params(rgb, points, out, BACKBONE=tiny_ckpt, FIELDS=[field],
                                  TARGET_TYPE=1), match)
    assert leftovers(out) == [] and embeds == []


def test_some_null_values_are_skipped_and_counted(qgis_app, rgb, tiny_ckpt, points, out):
    fb = feedback()
    res = run("fitpoints", fit_params(rgb, points, out, BACKBONE=tiny_ckpt,
                                      FIELDS=["some_null", "ph_text"]), fb)
    table = {r["target"]: r["n"] for r in json.loads(res["CV_TABLE"])}
    assert table == {"some_null": len(GRID) - 3, "ph_text": len(GRID)}  # "6,53" read as 6.53
    assert any(f"Field 'some_null': 3 of {len(GRID)} points are NULL" in m for m in fb.infos)


# ----------------------------------------------------------------------------- counts
def test_fewer_points_than_two_per_fold(qgis_app, rgb, tiny_ckpt, out, tmp_path, embeds):
    pts = write_points(tmp_path / "p.geojson", GRID[:5], ph=[7.0, 7.5, 8.0, 6.5, 7.2])
    fails("fitpoints", fit_params(rgb, pts, out, BACKBONE=tiny_ckpt, FOLDS=3),
          r"5 usable points for 3 folds: at least 6 are needed \(2 per fold\)\. Use fewer "
          r"FOLDS or more points")
    assert leftovers(out) == [] and embeds == []


def test_a_fold_with_fewer_than_two_points(qgis_app, rgb, tiny_ckpt, out, tmp_path, embeds):
    clump = [(100 + 0.5 * i, 50 + 0.3 * i) for i in range(10)]
    pts = write_points(tmp_path / "p.geojson", clump + [(45, 5), (148, 98)],
                       ph=list(np.linspace(6, 9, 12)))
    msg = fails("fitpoints", fit_params(rgb, pts, out, BACKBONE=tiny_ckpt, FOLDS=3),
                r"Fold sizes are \[.*\]: fold \d has 1 point\(s\), fewer than 2\. Use fewer "
                r"FOLDS")
    assert sorted(json.loads(msg[msg.index("["):msg.index("]") + 1])) == [1, 1, 10]
    assert leftovers(out) == [] and embeds == []


# ----------------------------------------------------------------------------- raster
def test_band_out_of_range_gives_the_valid_range(qgis_app, rgb, tiny_ckpt, out, embeds):
    fails("extractfeatures", extract_params(rgb, tiny_ckpt, out, BANDS="3,2,5"),
          r"Band number\(s\) \[5\] out of range: 'rgb.tif' has bands 1\.\.3")
    assert leftovers(out) == [] and embeds == []


def test_dem_not_overlapping_gives_both_extents(qgis_app, rgb, tiny_ckpt, out, tmp_path):
    from rasterio.transform import from_origin
    dem = write_raster(tmp_path / "dem.tif", np.ones((20, 20), np.float32),
                       transform=from_origin(600000, 2800000, 10, 10))
    fails("extractfeatures", extract_params(rgb, tiny_ckpt, out, DEM=dem),
          r"The DEM does not overlap the raster: DEM extent \(600000\.0, 2799800\.0, "
          r"600200\.0, 2800000\.0\) vs raster extent \(500000\.0, 2899850\.0, 500225\.0, "
          r"2900000\.0\)")
    assert leftovers(out) == []


def test_tile_larger_than_raster(qgis_app, rgb, tiny_ckpt, out, embeds):
    fails("extractfeatures", extract_params(rgb, tiny_ckpt, out, TILE_SIZE=256),
          r"TILE_SIZE 256 px is larger than the raster \(150 x 100 px\): use a smaller TILE_SIZE")
    assert leftovers(out) == [] and embeds == []


def test_all_nodata_tile_is_skipped_and_nodata_in_output(qgis_app, rgb, tiny_ckpt, out):
    fb = feedback()
    res = run("extractfeatures", extract_params(rgb, tiny_ckpt, out), fb)
    # the 40 x 40 px nodata corner, and the last row: 4 of its tiles' 32 px rows are on the
    # raster, the rest is padding, which is not data (MIN_VALID 0.5)
    assert (res["TILES"], res["SKIPPED"]) == (20, 6)
    with rasterio.open(res["OUTPUT"]) as ds:
        f = ds.read()
    assert np.isnan(f[:, 0, 0]).all() and np.isnan(f[:, 3, :]).all()
    finite = np.isfinite(f[0])
    finite[0, 0] = finite[3, :] = True
    assert finite.all()
    assert any("6 skipped as nodata" in m for m in fb.infos)


# ----------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("content", [b"these are not weights", b"not weights",
                                     bytes(np.random.default_rng(0).integers(0, 256, 300,
                                                                             dtype=np.uint8))])
def test_file_that_is_not_a_checkpoint(qgis_app, rgb, out, tmp_path, content):
    junk = tmp_path / "weights.pth"
    junk.write_bytes(content)
    fails("extractfeatures", extract_params(rgb, str(junk), out),
          r"'weights.pth' is not a PyTorch checkpoint")
    assert leftovers(out) == []


def test_arch_mismatch_says_expected_and_found(qgis_app, rgb, tiny_ckpt, out):
    fails("extractfeatures", extract_params(rgb, tiny_ckpt, out, ARCH="vit_small_patch16_224"),
          r"Architecture mismatch: 'vit_small_patch16_224' expects embedding dimension 384 but "
          r"the weights have 192 \(found vit_tiny_patch16_224\)")
    assert leftovers(out) == []


def test_channel_mismatch_says_expected_and_found(qgis_app, rgb, tiny_ckpt, out, tmp_path):
    fails("extractfeatures", extract_params(rgb, tiny_ckpt, out, BANDS="1,2"),
          r"Channel mismatch: the weights expect 3 input channels but 2 were given")
    from soilssl.core.backbone import create_model, save_backbone
    ck = save_backbone(str(tmp_path / "soilssl.pth"), create_model(TINY, 3, 32), TINY, 3, 32,
                       {"mean": [100.0] * 3, "std": [50.0] * 3})
    dem = write_raster(tmp_path / "dem.tif", np.ones((100, 150), np.float32))
    fails("extractfeatures", extract_params(rgb, ck, out, DEM=dem),
          r"normalisation has 3 channels but the input gives 4")
    assert leftovers(out) == []


def test_checkpoint_with_pickled_code_is_refused_not_run(qgis_app, rgb, out, tmp_path):
    import torch
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    with open(tmp_path / "evil2.pth", "wb") as f:  # a plain pickle (protocol 4)
        pickle.dump({"model": Payload()}, f, protocol=4)
    for name in ("evil.pth", "evil2.pth"):
        fails("extractfeatures", extract_params(rgb, str(tmp_path / name), out),
              rf"Refused to load '{name}': it carries pickled Python objects or code, which "
              r"SoilSSL never executes")
    assert not marker.exists() and leftovers(out) == []
    # ...while an official DINO training checkpoint, whose argparse arguments are plain data,
    # loads (its teacher backbone is used)
    import argparse
    from soilssl.core.backbone import create_model
    sd = {"backbone." + k: v for k, v in create_model(TINY, 3, 32).state_dict().items()}
    torch.save({"teacher": sd, "epoch": 100, "args": argparse.Namespace(arch="vit_tiny",
                                                                       out_dim=65536)},
               tmp_path / "checkpoint.pth")
    run("extractfeatures", extract_params(rgb, str(tmp_path / "checkpoint.pth"), out))
    assert leftovers(out) == ["f.qml", "f.tif"]  # the feature raster and its style


# ----------------------------------------------------------------------------- device
def test_cuda_without_cuda_is_a_clear_error_and_auto_uses_the_cpu(qgis_app, rgb, tiny_ckpt,
                                                                   out, monkeypatch, embeds):
    import torch
    from soilssl.core import backbone
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loads = []
    monkeypatch.setattr(backbone, "load_backbone", lambda *a, **k: loads.append(1))
    fails("extractfeatures", extract_params(rgb, tiny_ckpt, out, DEVICE="cuda"),
          r"DEVICE=cuda was asked for but CUDA is not available on this machine .*use "
          r"DEVICE=auto or cpu")
    assert leftovers(out) == [] and loads == [] and embeds == []  # before loading anything
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fb = feedback()
    run("extractfeatures", extract_params(rgb, tiny_ckpt, out, DEVICE="auto"), fb)
    assert any("on cpu" in m for m in fb.infos) and leftovers(out) == ["f.qml", "f.tif"]


# ----------------------------------------------------------------------------- training
def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(qgis_app, small, out,
                                                                    monkeypatch):
    import torch
    from soilssl.core import dino
    real = dino.DINOLoss.forward

    def diverging(self, student_out, teacher_out, epoch):
        loss = real(self, student_out, teacher_out, epoch)
        return loss * float("nan") if epoch >= 1 else loss

    monkeypatch.setattr(dino.DINOLoss, "forward", diverging)
    ckpt = out / "ssl.pth"
    fails("pretrain", {"INPUT": small, "ARCH": TINY, "TILE_SIZE": 32, "EPOCHS": 2, "OUT_DIM": 16,
                       "LOCAL_CROPS": 0, "BATCH_SIZE": 32, "DEVICE": "cpu", "WORKERS": 0,
                       "OUTPUT": str(ckpt)},
          r"Training diverged: the loss is nan at epoch 2, step 1; the checkpoint of epoch 1 "
          r"is kept in '.*ssl.pth'\. Lower the learning rate")
    assert leftovers(out) == ["ssl.pth"]
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert ck["pretrain"]["epoch"] == 1 and len(ck["pretrain"]["loss_history"]) == 1


# ----------------------------------------------------------------------------- writing
@pytest.fixture
def unwritable(tmp_path):
    """A folder outputs cannot be written into (root ignores permissions: then a path
    under a regular file, which no one can create)."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    os.chmod(ro, 0o500)
    if os.access(ro, os.W_OK):
        blocker = tmp_path / "not_a_folder"
        blocker.write_text("x")
        yield blocker
    else:
        yield ro
    os.chmod(ro, 0o700)


def test_unwritable_output_folder_fails_before_heavy_work(qgis_app, rgb, tiny_ckpt, points,
                                                          unwritable, out, embeds):
    fails("extractfeatures", extract_params(rgb, tiny_ckpt, unwritable),
          r"Cannot write into folder '.*': .*\. (Choose a writable output location|The folder "
          r"is not writable)")
    # fitpoints writes its model only after the CV: the folder is checked first
    fails("fitpoints", fit_params(rgb, points, out, BACKBONE=tiny_ckpt,
                                  OUTPUT_MODEL=str(unwritable / "m.pth")),
          r"Cannot write into folder")
    assert embeds == [] and leftovers(out) == []
    assert not os.path.isdir(unwritable) or leftovers(unwritable) == []


class _FullDisk:
    """A rasterio dataset whose writes fail as on a full disk."""

    def __init__(self, ds):
        self._ds = ds

    def write(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._ds, name)


def test_disk_full_while_writing_a_raster_leaves_nothing(qgis_app, rgb, tiny_ckpt, out,
                                                         monkeypatch):
    real_open = rasterio.open

    def full_disk_open(path, mode="r", *a, **k):
        ds = real_open(path, mode, *a, **k)
        return _FullDisk(ds) if mode == "w" else ds

    monkeypatch.setattr(rasterio, "open", full_disk_open)
    fails("extractfeatures", extract_params(rgb, tiny_ckpt, out),
          r"Writing '.*f\.tif' failed: \[Errno 28\] No space left on device.*The disk is full: "
          r"free some space or choose an output folder on another disk")
    assert leftovers(out) == []


def test_disk_full_while_saving_a_model_leaves_nothing(qgis_app, rgb, tiny_ckpt, points, out,
                                                       monkeypatch):
    import torch

    def full_disk_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"\0" * 100)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk_save)
    fails("fitpoints", fit_params(rgb, points, out, BACKBONE=tiny_ckpt),
          r"Writing '.*model\.pth' failed: .*No space left on device\. The disk is full.*"
          r"Nothing was written")
    assert leftovers(out) == []


# ----------------------------------------------------------------------------- cancel
def cancel_after(fb, n):
    """Cancel ``fb`` at its n-th progress report (what the Cancel button does)."""
    calls = []

    def on_progress(_):
        calls.append(1)
        if len(calls) == n:
            fb.cancel()

    fb.progressChanged.connect(on_progress)
    return calls


def test_cancel_stops_within_a_batch_leaves_nothing_and_frees_memory(qgis_app, tiny_ckpt, out,
                                                                     tmp_path, embeds,
                                                                     monkeypatch):
    a = np.random.default_rng(0).integers(1, 255, (3, 256, 256), dtype=np.uint8)
    big = write_raster(tmp_path / "big.tif", a)  # 64 tiles = 16 batches of 4
    from soilssl.core import backbone as bb_mod
    models = []
    real_load = bb_mod.load_backbone

    def tracked(*a, **k):
        bb = real_load(*a, **k)
        models.append(weakref.ref(bb.model))
        return bb

    monkeypatch.setattr(bb_mod, "load_backbone", tracked)
    fb = feedback()
    cancel_after(fb, 3)
    fails("extractfeatures", extract_params(big, tiny_ckpt, out, BATCH_SIZE=4, WORKERS=2),
          r"Cancelled by the user; no output was written", fb)
    assert 3 <= len(embeds) <= 5  # stopped at the next batch, not at the end (16)
    assert leftovers(out) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("soilssl-read")]
    gc.collect()
    assert models and models[0]() is None  # the ViT was released


def test_cancel_pretraining_keeps_no_partial_checkpoint(qgis_app, small, out):
    fb = feedback()
    # Cancel once the tiles are selected (5 %): the step under way finishes, then it stops
    fb.progressChanged.connect(lambda p: fb.cancel() if p >= 5 else None)
    fails("pretrain", {"INPUT": small, "ARCH": TINY, "TILE_SIZE": 32, "EPOCHS": 1, "OUT_DIM": 16,
                       "LOCAL_CROPS": 0, "BATCH_SIZE": 2, "DEVICE": "cpu", "WORKERS": 0,
                       "OUTPUT": str(out / "ssl.pth")},
          r"Cancelled during epoch 1 after step 1: no checkpoint was written", fb)
    assert leftovers(out) == []


# ----------------------------------------------------------------------------- qgis_process
def qgis_process(*args, prefix=(), env=None):
    e = dict(os.environ, **(env or {}))
    r = subprocess.run([*prefix, QP, "run", *args], capture_output=True, text=True, timeout=300,
                       env=e)
    return r.returncode, r.stdout + r.stderr


def can_unshare():
    return shutil.which("unshare") and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


def test_qgis_process_rows_exit_nonzero_with_the_message(rgb, tiny_ckpt, out, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_text("not weights")
    pts = write_points(tmp_path / "far.geojson", [(c + 1000, r) for c, r in GRID],
                       ph=[7.0] * len(GRID))
    rows = [
        (["soilssl:extractfeatures", "--", f"INPUT={rgb}", f"BACKBONE={junk}", "TILE_SIZE=32",
          f"OUTPUT={out / 'a.tif'}"], {}, "'junk.pth' is not a PyTorch checkpoint"),
        (["soilssl:fitpoints", "--", f"INPUT={rgb}", f"BACKBONE={tiny_ckpt}", "TILE_SIZE=32",
          f"POINTS={pts}", "FIELDS=ph", "FOLDS=2", f"OUTPUT_POINTS={out / 'oof.gpkg'}",
          f"OUTPUT_MODEL={out / 'm.pth'}"], {}, "points are outside the raster"),
        (["soilssl:extractfeatures", "--", f"INPUT={rgb}", f"BACKBONE={tiny_ckpt}",
          "TILE_SIZE=32", "DEVICE=cuda", f"OUTPUT={out / 'c.tif'}"],
         {"CUDA_VISIBLE_DEVICES": ""}, "CUDA is not available"),
    ]
    for args, env, message in rows:
        rc, text = qgis_process(*args, env=env)
        assert rc != 0 and message in text, text
    assert leftovers(out) == []


@pytest.mark.skipif(not can_unshare(), reason="needs unprivileged mount namespaces (unshare)")
def test_qgis_process_full_disk_and_read_only_folder(rgb, tiny_ckpt, tmp_path):
    """A real full file system (a 4 KiB tmpfs) and a read-only bind mount, in a private
    mount namespace: the run fails, says why, and leaves nothing."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    args = ["soilssl:extractfeatures", "--", f"INPUT={rgb}", f"BACKBONE={tiny_ckpt}",
            "TILE_SIZE=32", "DEVICE=cpu"]
    for folder, mount, message in [
            (full, f"mount -t tmpfs -o size=8k tmpfs {full}", "The disk is full"),
            (ro, f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro}",
             "The folder is not writable")]:
        # the folder is listed inside the namespace, where the mount still exists
        script = (f'{mount} || exit 99; "$0" "$@"; rc=$?; '
                  f'echo "LEFT:[$(ls -A {folder} | tr -s "\\n" " ")]"; exit $rc')
        rc, text = qgis_process(*args, f"OUTPUT={folder / 'f.tif'}",
                                prefix=("unshare", "-rm", "sh", "-c", script))
        if rc == 99:
            pytest.skip("mounting is not permitted in a user namespace here")
        assert rc != 0 and message in text, text
        assert "LEFT:[]" in text, text
