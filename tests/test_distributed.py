"""Sharded extraction and prediction (core/distributed.py): 2 gloo processes under torchrun
give the one-process raster, and a killed run resumes without recomputing finished blocks."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import torch

from conftest import TINY, write_raster
from soilssl.core import distributed
from soilssl.core.backbone import create_model, load_backbone
from soilssl.core.errors import InputError
from soilssl.core.features import extract_features
from soilssl.core.raster import TileSource
from soilssl.core.soil import Points, fit_points, predict_map


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                OMP_NUM_THREADS="1")


def _torchrun(args, nproc=2, nice=False, **kw):
    cmd = (["nice", "-n", "19"] if nice else []) + [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), "-m", "soilssl.core.distributed"] + [str(a) for a in args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _kill_tree(pid):
    """SIGKILL a process and all its descendants (torchrun starts its workers in sessions
    of their own), like a crash of the node."""
    children = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGSTOP)  # freeze first: nothing finishes while we kill
        except ProcessLookupError:
            pass
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, ds.tags(), ds.descriptions


@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(1, 255, (3, 150, 200), dtype=np.uint8)
    img[:, :30, :50] = 0  # nodata corner
    return write_raster(tmp_path / "scene.tif", img, nodata=0)


@pytest.fixture
def vit64(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vit64.pth"
    torch.save(create_model(TINY, 3, 64).state_dict(), path)
    return str(path)


def test_two_gloo_processes_give_the_one_process_patch_raster(scene, vit64, tmp_path):
    args = ["features", "--input", scene, "--backbone", vit64, "--tile-size", 64,
            "--pool", "patch", "--device", "cpu", "--batch-size", 8, "--block-rows", 2,
            "--workers", 1]
    one, two = tmp_path / "one" / "f.tif", tmp_path / "two" / "f.tif"
    assert distributed.main([str(a) for a in args + ["--output", one]]) == 0
    summary = _finish(_torchrun(args + ["--output", two]))
    # 200 x 150 px -> 13 x 10 patches; 2-patch cores -> 5 tile rows -> blocks of 2: 3 blocks
    assert summary["world_size"] == 2 and summary["blocks"] == 3
    assert summary["computed"] == [0, 1, 2] and summary["resumed"] == 0
    a, pa, ta, da = _read(one)
    b, pb, tb, db = _read(two)
    assert np.array_equal(a, b, equal_nan=True)  # bit for bit
    assert np.isnan(pa.pop("nodata")) and np.isnan(pb.pop("nodata"))
    assert pa == pb and ta == tb and da == db
    assert pb["tiled"] and pb["compress"] == "deflate" and pb["interleave"] == "band"
    assert (pb["width"], pb["height"], pb["count"]) == (13, 10, 192)
    assert os.listdir(two.parent) == ["f.tif"]  # parts, markers and temporaries removed
    # the same raster as the in-process extraction (batches differ: fp tolerance)
    with TileSource(scene) as src:
        extract_features(src, load_backbone(vit64, tile_size=64), str(tmp_path / "ref.tif"),
                         pool="patch", device="cpu")
    ref, pref, _, _ = _read(tmp_path / "ref.tif")
    assert pref["transform"] == pb["transform"] and pref["crs"] == pb["crs"]
    assert np.array_equal(np.isnan(ref), np.isnan(b)) and np.isnan(b[:, 0, 0]).all()
    np.testing.assert_allclose(b, ref, rtol=1e-4, atol=1e-4)


def test_two_gloo_processes_predict_like_predict_map(tmp_path, tiny_ckpt):
    rng = np.random.default_rng(0)
    h, w = 96, 128
    contrast = np.linspace(5, 120, h)[:, None]
    img = np.clip(128 + rng.normal(0, 1, (3, h, w)) * contrast, 1, 255).astype(np.uint8)
    scene = write_raster(tmp_path / "s.tif", img, nodata=0)
    vit = load_backbone(tiny_ckpt, tile_size=32)
    cols, rows = rng.uniform(4, 124, 60), rng.uniform(4, 92, 60)
    model_path = tmp_path / "m.pth"
    with TileSource(scene) as src:
        xs, ys = src.transform @ (cols, rows)
        pts = Points(xs, ys, src.crs.to_wkt(), np.column_stack([rows / 10]), ["ph"])
        fit_points(src, pts, vit, method="ridge", n_folds=4, model_path=str(model_path),
                   cache=str(tmp_path / "cache"), device="cpu")
        model = torch.load(model_path, weights_only=True)
        predict_map(src, model, str(tmp_path / "ref.tif"), str(tmp_path / "ref_u.tif"),
                    str(tmp_path / "ref_a.tif"), stride=16, backbone=vit, device="cpu")
    out = tmp_path / "d"
    summary = _finish(_torchrun(
        ["predict", "--input", scene, "--model", model_path, "--output", out / "p.tif",
         "--uncertainty", out / "u.tif", "--aoa", out / "a.tif", "--stride", 16,
         "--device", "cpu", "--block-rows", 2, "--workers", 1]))
    assert summary["blocks"] == 3 and sorted(os.listdir(out)) == ["a.tif", "p.tif", "u.tif"]
    for name, ref in (("p", "ref"), ("u", "ref_u"), ("a", "ref_a")):
        a, pa, ta, _ = _read(out / f"{name}.tif")
        r, pr, tr, _ = _read(tmp_path / f"{ref}.tif")
        assert a.shape == r.shape == (a.shape[0], 6, 8) and pa["transform"] == pr["transform"]
        assert ta == tr
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


def test_killed_run_resumes_without_recomputing_finished_blocks(tmp_path, vit64):
    rng = np.random.default_rng(1)
    scene = write_raster(tmp_path / "big.tif", rng.integers(1, 255, (3, 256, 512), np.uint8))
    out = tmp_path / "out" / "f.tif"
    work = tmp_path / "work"
    args = ["features", "--input", scene, "--backbone", vit64, "--tile-size", 64,
            "--stride", 16, "--device", "cpu", "--batch-size", 16, "--block-rows", 1,
            "--workers", 1, "--output", out, "--work-dir", work, "--keep-parts"]
    # niced, so that this process sees the markers as they appear and kills mid-way
    proc = _torchrun(args, nice=True)
    deadline = time.time() + 240
    while len(glob.glob(str(work / "*.done"))) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    _kill_tree(proc.pid)  # the whole run, mid-way
    proc.communicate()
    done = {p: (os.stat(p).st_mtime_ns, open(p).read())
            for p in glob.glob(str(work / "*.done"))}
    parts = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(work / "b*.tif"))}
    assert not out.exists() and 2 <= len(done) < 16  # 16 rows of tiles, one per block
    summary = _finish(_torchrun(args))
    finished = sorted(int(os.path.basename(p)[1:7]) for p in done)
    assert summary["resumed"] == len(done)
    assert sorted(summary["computed"] + finished) == list(range(16))
    for p, (mtime, text) in done.items():  # markers and parts of finished blocks untouched
        assert os.stat(p).st_mtime_ns == mtime and open(p).read() == text
    for p in parts:
        if int(os.path.basename(p)[1:7]) in finished:
            assert os.stat(p).st_mtime_ns == parts[p]
    assert not glob.glob(str(work / ".*"))  # temporaries of the killed blocks cleaned
    with TileSource(scene) as src:
        extract_features(src, load_backbone(vit64, tile_size=64), str(tmp_path / "ref.tif"),
                         stride=16, device="cpu")
    got, prof, _, _ = _read(out)
    ref, pref, _, _ = _read(tmp_path / "ref.tif")
    assert prof["transform"] == pref["transform"] and got.shape == (192, 16, 32)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _job(scene, vit64, out, stride=32):
    src = TileSource(scene)
    bb = load_backbone(vit64, tile_size=64)
    return src, distributed.features_job(src, bb, str(out), stride=stride, device="cpu",
                                         workers=0)


def test_damaged_block_is_recomputed_and_other_runs_refused(scene, vit64, tmp_path):
    work = tmp_path / "work"
    src, job = _job(scene, vit64, tmp_path / "f.tif")
    with src:
        s = distributed.run_sharded(job, str(work), block_rows=2, keep_parts=True)
        assert s["computed"] == [0, 1, 2] and s["resumed"] == 0
        first = _read(tmp_path / "f.tif")[0]
        with open(work / "b000001.p0.tif", "r+b") as f:  # a part damaged after its marker
            f.seek(-100, 2)
            f.write(b"\0" * 100)
        s = distributed.run_sharded(job, str(work), block_rows=2, keep_parts=True)
        assert s["computed"] == [1] and s["resumed"] == 2
        assert np.array_equal(_read(tmp_path / "f.tif")[0], first, equal_nan=True)
    src, other = _job(scene, vit64, tmp_path / "f.tif", stride=16)
    with src, pytest.raises(InputError, match="another run.*stride"):
        distributed.run_sharded(other, str(work), block_rows=2)
