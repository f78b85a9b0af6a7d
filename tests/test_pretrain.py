"""DINO pretraining: tile sampling, training, checkpoints, resume, cancel, DDP."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

from conftest import TINY, write_raster
from soilssl.core.errors import Cancelled, TrainingError
from soilssl.core.pretrain import PretrainConfig, pretrain
from soilssl.core.pretrain_tiles import buffer_excluded, sample_tiles
from soilssl.core.progress import Progress
from soilssl.core.raster import TileGrid, TileSource

ORIGIN = (500000.0, 2900000.0)
PIX = 1.5


def _structured(path, size=96, seed=0, nodata_corner=0):
    """RGB uint8: four quadrants with their own palette and texture (stripes, checks,
    waves, noise); optional nodata (0) triangle in the bottom-left corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    q = (yy >= size // 2) * 2 + (xx >= size // 2)
    a = np.zeros((3, size, size), np.float32)
    a[0] = np.where(q == 0, 120 + 80 * ((xx // 3) % 2), 40)
    a[1] = np.where(q == 1, 130 + 70 * ((xx // 4 + yy // 4) % 2), 60)
    a[2] = np.where(q == 2, 150 + 60 * np.sin(yy / 2.0), 80)
    a[:, q == 3] = 60 + 150 * rng.random((3, int((q == 3).sum())))
    a = np.clip(a + rng.normal(0, 4, a.shape), 1, 255)
    if nodata_corner:
        a[:, (size - 1 - yy) + xx < nodata_corner] = 0
    return write_raster(path, a.astype(np.uint8), from_origin(*ORIGIN, PIX, PIX), nodata=0)


def _cfg(tmp_path, **kw):
    base = dict(input=str(tmp_path / "img.tif"), output=str(tmp_path / "ck.pth"), arch=TINY,
                tile_size=32, stride=16, epochs=2, batch_size=8, out_dim=64, hidden_dim=64,
                bottleneck_dim=32, local_crops_number=2, lr=0.004, warmup_epochs=0,
                buffer=0, workers=1, seed=0)
    base.update(kw)
    return PretrainConfig(**base)


def _window_point_dist(win, col, row):
    x0, y0 = win.col_off, win.row_off
    dx = max(x0 - col, col - (x0 + win.width), 0.0)
    dy = max(y0 - row, row - (y0 + win.height), 0.0)
    return math.hypot(dx, dy)


def test_buffer_hand_counts():
    grid = TileGrid(100, 100, 10, 10)
    for buffer, n in ((0, 4), (5, 4), (10, 12), (14.2, 16)):
        assert buffer_excluded(grid, [50.0], [50.0], buffer).sum() == n, buffer
    # a point outside the raster still excludes the tiles its buffer reaches
    assert buffer_excluded(grid, [-5.0], [50.0], 5).sum() == 2
    assert buffer_excluded(grid, [-5.0], [55.0], 5).sum() == 1
    assert buffer_excluded(grid, [np.nan], [5.0], 50).sum() == 0
    assert buffer_excluded(grid, [], [], 50).sum() == 0


def test_sampler_buffer_nodata_and_counts(tmp_path):
    path = _structured(tmp_path / "img.tif", size=160, nodata_corner=70)
    src = TileSource(path)
    rng = np.random.default_rng(3)
    cols, rows = rng.uniform(-20, 180, 6), rng.uniform(-20, 180, 6)
    # the points come in WGS84 and are reprojected onto the raster grid
    lon, lat = warp_transform("EPSG:32637", "EPSG:4326", ORIGIN[0] + cols * PIX,
                              ORIGIN[1] - rows * PIX)
    pc, pr = src.points_to_pixels(lon, lat, "EPSG:4326")
    np.testing.assert_allclose(pc, cols, atol=1e-3)
    np.testing.assert_allclose(pr, rows, atol=1e-3)
    buffer = 24
    s = sample_tiles(src, 32, 16, pc, pr, buffer=buffer, min_valid=0.5, workers=2)
    wins = s.windows()
    assert len(wins) > 0 and s.excluded_buffer > 0 and s.skipped_nodata > 0
    assert len(wins) + s.excluded_buffer + s.skipped_nodata == s.total == len(s.grid)
    for win in wins:  # never a kept tile within BUFFER of a point, and enough data
        assert min(_window_point_dist(win, c, r) for c, r in zip(cols, rows)) > buffer
        arr, valid = src.read(win)
        assert src.valid_fraction(win, valid) >= 0.5
    kept = set(s.indices.tolist())
    near = buffer_excluded(s.grid, pc, pr, buffer)
    for i in range(len(s.grid)):
        if i in kept:
            continue
        win = s.grid.window(i)
        d = min(_window_point_dist(win, c, r) for c, r in zip(cols, rows))
        arr, valid = src.read(win)
        # every dropped tile is near a point or mostly nodata
        assert (d <= buffer + 1e-3 and near[i]) or src.valid_fraction(win, valid) < 0.5
    src.close()


def test_loss_decreases_and_checkpoint_feeds_extract_features(tmp_path):
    from soilssl.core.backbone import load_backbone
    from soilssl.core.features import extract_features
    _structured(tmp_path / "img.tif", size=96)
    dem = (np.add.outer(np.arange(60), np.arange(60)) * 0.5).astype(np.float32)
    write_raster(tmp_path / "dem.tif", dem, from_origin(ORIGIN[0] - 3, ORIGIN[1] + 3, 2.5, 2.5))
    torch.manual_seed(1)
    from soilssl.core.backbone import create_model
    torch.save(create_model(TINY, 3, 32).state_dict(), tmp_path / "init.pth")  # RGB weights
    messages = []
    xy = ([ORIGIN[0] + 20 * PIX], [ORIGIN[1] - 20 * PIX])
    cfg = _cfg(tmp_path, dem=str(tmp_path / "dem.tif"), init=str(tmp_path / "init.pth"),
               epochs=4, buffer=8, lr=0.02, teacher_temp=0.02, warmup_teacher_temp=0.02)
    summary = pretrain(cfg, xy, "EPSG:32637", Progress(on_info=messages.append))
    hist = summary["loss_history"]
    assert len(hist) == 4 and all(np.isfinite(hist))
    assert hist[-1] < hist[0] - 0.3 and min(hist) < hist[0] - 0.5, hist
    assert summary["tiles"]["excluded_buffer"] > 0
    assert any("kept" in m and "excluded" in m for m in messages)

    ck = torch.load(cfg.output, map_location="cpu", weights_only=True)
    assert ck["in_chans"] == 4 and ck["tile_size"] == 32 and ck["arch"] == TINY
    ts = ck["train_state"]
    assert ts["epoch"] == 4 and ts["loss_history"] == pytest.approx(hist)
    # the exported backbone is the teacher's: an EMA of the student, not the student
    assert set(ck["backbone"]) == {k[len("backbone."):] for k in ts["student"]
                                   if k.startswith("backbone.")}
    assert not all(torch.equal(v, ts["student"]["backbone." + k])
                   for k, v in ck["backbone"].items())
    assert set(ts["teacher_head"]) == {k[len("head."):] for k in ts["student"]
                                       if k.startswith("head.")}
    assert ck["pretrain"]["tiles"] == summary["tiles"]
    with TileSource(cfg.input, dem=cfg.dem) as src:
        norm = src.compute_normalization(seed=0)
        assert ck["normalization"]["mean"] == pytest.approx(norm.mean)
        bb = load_backbone(cfg.output)
        assert bb.in_chans == 4 and bb.tile_size == 32 and bb.normalization == ck["normalization"]
        out = extract_features(src, bb, str(tmp_path / "feat.tif"), device="cpu", workers=1)
    with rasterio.open(out["output"]) as ds:
        f = ds.read()
    assert f.shape[0] == 192 and np.isfinite(f).all() and f.std() > 0


def _tensors(ck):
    ts = ck["train_state"]
    out = {"backbone." + k: v for k, v in ck["backbone"].items()}
    out.update({"student." + k: v for k, v in ts["student"].items()})
    out.update({"teacher_head." + k: v for k, v in ts["teacher_head"].items()})
    out["center"] = ts["dino_loss"]["center"]
    for pid, st in ts["optimizer"]["state"].items():
        for k, v in st.items():
            out[f"opt.{pid}.{k}"] = v
    return out


def _cancel_after_epoch(n):
    """A Progress whose user presses Cancel as soon as epoch ``n`` is logged as done."""
    state = {"cancel": False}

    def on_info(msg):
        state["cancel"] |= msg.startswith(f"Epoch {n}/")

    return Progress(is_cancelled=lambda: state["cancel"], on_info=on_info)


def test_resume_after_interruption_gives_uninterrupted_weights(tmp_path):
    _structured(tmp_path / "img.tif", size=80)
    full = _cfg(tmp_path, epochs=3, output=str(tmp_path / "full.pth"))
    ref = pretrain(full)
    steps = ref["steps_per_epoch"]
    assert steps >= 2
    part = _cfg(tmp_path, epochs=3, output=str(tmp_path / "part.pth"))
    # cancel in the middle of epoch 2: the checkpoint of epoch 1 stays, nothing partial
    with pytest.raises(Cancelled, match="during epoch 2 after step 1: .*epoch 1 is kept"):
        pretrain(part, progress=_cancel_after_epoch(1))
    ck1 = torch.load(part.output, weights_only=True)
    assert ck1["train_state"]["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["full.pth", "img.tif", "part.pth"]
    resumed = _cfg(tmp_path, epochs=3, output=str(tmp_path / "part.pth"), resume=part.output,
                   arch="vit_small_patch16_224", lr=1.0)  # ignored: the checkpoint's are used
    summary = pretrain(resumed)
    assert summary["start_epoch"] == 1 and summary["steps"] == 2 * steps
    a = _tensors(torch.load(full.output, weights_only=True))
    b = _tensors(torch.load(part.output, weights_only=True))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert summary["loss_history"] == ref["loss_history"]
    # a second resume with more epochs continues the run
    more = pretrain(_cfg(tmp_path, epochs=4, output=str(tmp_path / "part.pth"),
                         resume=part.output))
    assert more["start_epoch"] == 3 and len(more["loss_history"]) == 4


def test_non_finite_loss_raises_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    from soilssl.core import dino
    _structured(tmp_path / "img.tif", size=64)
    forward = dino.DINOLoss.forward

    def poisoned(self, s, t, epoch):
        loss = forward(self, s, t, epoch)
        return loss * float("nan") if epoch == 1 else loss

    monkeypatch.setattr(dino.DINOLoss, "forward", poisoned)
    cfg = _cfg(tmp_path, epochs=3)
    with pytest.raises(TrainingError, match="diverged"):
        pretrain(cfg)
    assert torch.load(cfg.output, weights_only=True)["train_state"]["epoch"] == 1


def test_few_tiles_lower_the_batch_size_and_no_tile_is_an_error(tmp_path):
    from soilssl.core.errors import InputError
    _structured(tmp_path / "img.tif", size=48)  # 3 x 3 tiles of 32 px every 16 px
    messages = []
    summary = pretrain(_cfg(tmp_path, epochs=1, batch_size=32),
                       progress=Progress(on_info=messages.append))
    assert summary["tiles"]["kept"] == 9 and summary["steps"] == 1
    assert torch.load(tmp_path / "ck.pth", weights_only=True)["train_state"]["config"][
        "batch_size"] == 9
    assert any("BATCH_SIZE lowered from 32 to 9" in m for m in messages)
    with pytest.raises(InputError, match="No tile is left"):
        pretrain(_cfg(tmp_path, epochs=1, buffer=100, output=str(tmp_path / "none.pth")),
                 ([ORIGIN[0] + 36], [ORIGIN[1] - 36]))
    assert not (tmp_path / "none.pth").exists()


def test_read_points_geojson_and_csv(tmp_path):
    from soilssl.core.pretrain import read_points
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [38.1, 26.6]}},
        {"type": "Feature", "geometry": None},
        {"type": "Feature", "geometry": {"type": "MultiPoint",
                                         "coordinates": [[38.2, 26.7], [38.3, 26.8]]}}]}))
    xs, ys, crs = read_points(str(tmp_path / "p.geojson"))
    assert xs.tolist() == [38.1, 38.2, 38.3] and ys.tolist() == [26.6, 26.7, 26.8]
    assert crs == "EPSG:4326"
    (tmp_path / "p.csv").write_text(
        "id,Easting,Northing\n1,500010.5,2899990\n2,,\n3,500020,2899980\n")
    xs, ys, crs = read_points(str(tmp_path / "p.csv"))
    assert xs.tolist() == [500010.5, 500020.0] and ys.tolist() == [2899990.0, 2899980.0]
    assert crs is None


def test_two_process_gloo_run_writes_one_checkpoint(tmp_path):
    from soilssl.core.backbone import load_backbone
    _structured(tmp_path / "img.tif", size=96)
    lon, lat = warp_transform("EPSG:32637", "EPSG:4326", [ORIGIN[0] + 30 * PIX],
                              [ORIGIN[1] - 30 * PIX])
    (tmp_path / "pts.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {},
         "geometry": {"type": "Point", "coordinates": [lon[0], lat[0]]}}]}))
    out = tmp_path / "run" / "ddp.pth"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "soilssl.core.pretrain", "--input", str(tmp_path / "img.tif"),
           "--output", str(out), "--arch", TINY, "--tile-size", "32", "--stride", "16",
           "--epochs", "1", "--batch-size", "4", "--out-dim", "32", "--hidden-dim", "32",
           "--bottleneck-dim", "16", "--local-crops-number", "1", "--workers", "1",
           "--points", str(tmp_path / "pts.geojson"), "--buffer", "10", "--device", "cpu"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert os.listdir(out.parent) == ["ddp.pth"]
    ck = torch.load(out, weights_only=True)
    ts = ck["train_state"]
    tiles = ck["pretrain"]["tiles"]
    assert ts["world_size"] == 2 and ts["epoch"] == 1 and tiles["excluded_buffer"] > 0
    assert ts["steps_per_epoch"] == math.ceil(tiles["kept"] / 2) // 4
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == ts["steps_per_epoch"]
    bb = load_backbone(str(out))
    assert bb.arch == TINY and bb.in_chans == 3


# ---------------------------------------------------------------------------- DINO heads
V = "last_layer.parametrizations.weight.original1"  # the head's weight-normalised last layer


def _dino_checkpoint(path, out_dim=64, seed=0):
    """A facebookresearch/dino ``checkpoint.pth``: DDP-wrapped student, plain teacher, the
    old ``weight_norm`` keys (weight_g/weight_v), the loss centre and argparse args."""
    import argparse
    from soilssl.core.backbone import create_model
    from soilssl.core.dino import DINOHead
    torch.manual_seed(seed)
    bb = create_model(TINY, 3, 32).state_dict()
    heads = {}
    for role in ("student", "teacher"):
        head = DINOHead(192, out_dim, hidden_dim=64, bottleneck_dim=32)
        with torch.no_grad():
            head.last_layer.parametrizations.weight.original0.uniform_(0.5, 2.0)
        sd = {k.replace("parametrizations.weight.original0", "weight_g")
              .replace("parametrizations.weight.original1", "weight_v"): v.clone()
              for k, v in head.state_dict().items()}
        heads[role] = head.state_dict()
        pre = "module." if role == "student" else ""
        heads[role + "_file"] = {**{f"{pre}backbone.{k}": v for k, v in bb.items()},
                                 **{f"{pre}head.{k}": v for k, v in sd.items()}}
    center = torch.randn(1, out_dim)
    torch.save({"student": heads["student_file"], "teacher": heads["teacher_file"],
                "optimizer": {}, "epoch": 100, "dino_loss": {"center": center},
                "args": argparse.Namespace(arch="vit_tiny", out_dim=out_dim)}, path)
    return heads["student"], heads["teacher"], center


def _teacher_after(t0, s, steps):
    """The teacher's EMA after ``steps`` steps of one epoch towards a student value ``s``
    that does not move (the head's last layer is frozen during the first epoch)."""
    from soilssl.core.dino import cosine_schedule
    keep = float(np.prod(cosine_schedule(0.996, 1.0, 1, steps)))
    return s + keep * (t0 - s)


def test_continuing_a_full_dino_checkpoint_keeps_both_heads(tmp_path):
    _structured(tmp_path / "img.tif", size=64)
    student, teacher, center = _dino_checkpoint(tmp_path / "checkpoint.pth")
    messages = []
    cfg = _cfg(tmp_path, init=str(tmp_path / "checkpoint.pth"), epochs=1, warmup_epochs=None)
    summary = pretrain(cfg, progress=Progress(on_info=messages.append))
    assert summary["head_continued"] and summary["warmup_epochs"] == 1
    assert any(m.startswith("Continuing INIT's DINO heads") for m in messages), messages
    ts = torch.load(cfg.output, weights_only=True)["train_state"]
    assert ts["config"]["warmup_epochs"] == 1
    # the student's last layer was frozen: it is the checkpoint's, exactly (g and v)
    for k in (V, V[:-1] + "0"):
        assert torch.equal(ts["student"]["head." + k], student[k]), k
    # the teacher's head is the checkpoint's teacher head moved by the EMA only
    steps = summary["steps_per_epoch"]
    torch.testing.assert_close(ts["teacher_head"][V], _teacher_after(teacher[V], student[V],
                                                                     steps))
    assert not torch.allclose(ts["teacher_head"][V], student[V])

    # SoilSSL's own checkpoint as INIT (a new run, not a resume) continues its heads too
    first = torch.load(cfg.output, weights_only=True)["train_state"]
    again = _cfg(tmp_path, init=cfg.output, arch=None, epochs=1, warmup_epochs=None,
                 output=str(tmp_path / "again.pth"))
    messages.clear()
    summary = pretrain(again, progress=Progress(on_info=messages.append))
    assert summary["head_continued"]
    ts = torch.load(again.output, weights_only=True)["train_state"]
    assert torch.equal(ts["student"]["head." + V], first["student"]["head." + V])
    torch.testing.assert_close(ts["teacher_head"][V], _teacher_after(
        first["teacher_head"][V], first["student"]["head." + V], summary["steps_per_epoch"]))


def test_a_head_that_does_not_fit_is_new_with_a_scaled_warmup(tmp_path):
    from soilssl.core.pretrain import _Run
    from soilssl.core.ranks import Ranks
    _structured(tmp_path / "img.tif", size=64)
    _dino_checkpoint(tmp_path / "checkpoint.pth", out_dim=64)

    def build(**kw):
        messages = []
        cfg = _cfg(tmp_path, init=str(tmp_path / "checkpoint.pth"), **dict(
            dict(warmup_epochs=None), **kw))
        with TileSource(cfg.input) as src:
            run = _Run(cfg, src, Ranks(), torch.device("cpu"), Progress(on_info=messages.append),
                       Progress())
            run.build(None)
        return run, [m for m in messages if m.startswith(("The DINO head", "Continuing INIT"))]

    run, said = build(out_dim=128, epochs=20)
    assert run.nets.head_continued is False and run.cfg.warmup_epochs == 2  # DINO: 10 of 100
    assert len(said) == 1 and said[0].startswith("The DINO head is new")
    assert "out_dim 64 (this run: 128)" in said[0] and "warm-up 2 epoch(s)" in said[0]
    run, said = build(out_dim=128, epochs=45)
    assert run.cfg.warmup_epochs == 5
    run, said = build(out_dim=128, epochs=45, warmup_epochs=3)  # given: kept as given
    assert run.cfg.warmup_epochs == 3 and "warm-up 3 epoch(s) (as set)" in said[0]
    run, said = build(out_dim=64, epochs=20)  # it fits: continued, a short warm-up
    assert run.nets.head_continued and run.cfg.warmup_epochs == 1
    # a backbone-only INIT has no head to continue
    from soilssl.core.backbone import create_model
    torch.save(create_model(TINY, 3, 32).state_dict(), tmp_path / "checkpoint.pth")
    run, said = build(out_dim=64, epochs=20)
    assert not run.nets.head_continued and "INIT carries no DINO head" in said[0]
