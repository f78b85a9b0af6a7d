#!/usr/bin/env python3
"""SoilSSL benchmark (issues 7, 11): the pipeline against the model alone, with targets
that fail when the matching regression is planted.

    make bench                      # = .venv/bin/python scripts/bench.py
    .venv/bin/python scripts/bench.py --quick                  # smoke test (vit_tiny)
    .venv/bin/python scripts/bench.py --plant no_bf16          # must FAIL bf16_speedup
    .venv/bin/python scripts/bench.py --arch vit_base_patch16_224 --device cuda

The ratios compare numbers taken on the same machine at the same time (interleaved, or
bracketed by the reference); raw rates are reported beside them.  Exit status: 0 all
targets met, 3 a target failed, 1 a section raised.

* ``extract``: extract_features on a generated deflate GeoTIFF, once per precision; after
  each of its batches (progress callback) one model-only batch (same ``embed``, same model
  copy) and a slice of the naive loop run, timed apart.  ``extract_ratio`` = end-to-end
  rate / model-only rate.  ``batch_speedup_fp32`` = SoilSSL fp32 / the naive fp32 loop
  (SoilSSL's own TileSource reads and normalisation, one tile at a time, batch 1, in the
  same seconds).  ``bf16_speedup`` = bf16 / fp32 model-only, interleaved batch by batch
  (judged only where bf16 runs natively: CUDA, AVX512-BF16 or AMX).
* ``e2e``: ``scripts/qgis_process run soilssl:extractfeatures`` on a generated RGB scene,
  wall clock from outside, against a standalone model-only process (same checkpoint,
  batch, precision, tile count) run just before and after it: ``extract_ratio_e2e``.  A
  sitecustomize probe records where the QGIS process spends its time (start-up, engine
  import, model load, extraction, time inside the forward, exit).
* ``rss``: extract_features on a 2k x 2k and a 20k x 20k GeoTIFF, each in a fresh process;
  ``extract_rss_ratio`` = the extraction's own peak memory (VmHWM minus the floor after
  the torch/timm imports and the model load), large / small.
* ``cv``: fitpoints' spatial CV (6 K-means folds; mlp, ridge, rf with its out-of-bag grid
  search) of 1,000 points with 768-d features; ``cv_ratio`` = CV seconds / (folds x the
  final fit of the same heads on all points, timed just before and after the CV).
* ``pretrain``: core.pretrain for one epoch of ``--pretrain-steps`` steps (the first is
  warm-up): ``pretrain_ratio`` = loop rate / student forward+backward on the same crops
  (run between the steps), over ``pretrain_steps`` timed steps.
* ``cosine``: bf16 vs fp32 features of the backbone that the pretrain run DINO-trained,
  two extract_features runs: ``bf16_cosine_centred`` = min over tiles of the cosine after
  removing the mean feature.

Writes ``bench_out/bench.json`` and prints a table.  No download: backbones are random
(timm init) unless ``--backbone`` names a local checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG_DIR = ROOT / ".build" / "plugins"


def _bootstrap() -> None:
    """Import the repository as ``soilssl`` whatever its folder is called."""
    PKG_DIR.mkdir(parents=True, exist_ok=True)
    link = PKG_DIR / "soilssl"
    if not link.is_symlink() and not link.exists():
        os.symlink(ROOT, link)
    if str(PKG_DIR) not in sys.path:
        sys.path.insert(0, str(PKG_DIR))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PYTHONPATH", str(PKG_DIR))


_bootstrap()


def _omp_wait_policy() -> None:
    """Idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, unless the
    environment or --omp-wait-policy says otherwise).  It must be set before torch loads
    libgomp.  On a machine shared with other processes a spinning team member that loses
    its core stalls every parallel region: measured here under load, vit_tiny/64 px
    patches ran at 5-7 img/s spinning vs 44 img/s passive, ViT-S at 3.5 vs 4.1-5.0."""
    policy = "PASSIVE"
    for i, a in enumerate(sys.argv):
        if a.startswith("--omp-wait-policy"):
            policy = a.split("=", 1)[1] if "=" in a else sys.argv[i + 1]
    if policy.lower() != "default":
        os.environ.setdefault("OMP_WAIT_POLICY", policy.upper())


_omp_wait_policy()


def _plant_flag() -> None:
    """``--plant a,b`` = SOILSSL_BENCH_PLANT=a,b, for this process and its children; read
    before the engine is imported because the plants patch it on import."""
    for i, a in enumerate(sys.argv):
        if a.startswith("--plant"):
            value = a.split("=", 1)[1] if "=" in a else sys.argv[i + 1]
            os.environ["SOILSSL_BENCH_PLANT"] = value


_plant_flag()

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.windows import Window  # noqa: E402

import bench_plants  # noqa: E402  (scripts/, beside this file)

bench_plants.apply("soilssl")  # SOILSSL_BENCH_PLANT / --plant: regressions the targets must catch

import soilssl.core.features as F  # noqa: E402  (module attributes: plants patch them)
from soilssl.core.backbone import load_backbone, resolve_device, save_backbone  # noqa: E402
from soilssl.core.progress import Progress  # noqa: E402
from soilssl.core.raster import Normalization, TileGrid, TileSource  # noqa: E402

CRS = "EPSG:32637"

# key -> (comparison, CPU target, GPU target, what it is); a None target is reported only
TARGETS = {
    "extract_ratio": (">=", 0.90, 0.85,
                      "extract_features / model-only forward, interleaved in one process"),
    "extract_ratio_e2e": (">=", 0.93, 0.85,
                          "qgis_process extractfeatures / standalone model-only process, "
                          "wall clock from outside"),
    "batch_speedup_fp32": (">=", 1.15, 1.5,
                           "SoilSSL batched fp32 / naive fp32 one-tile loop (same reader)"),
    "bf16_speedup": (">=", 1.3, 1.3, "bf16 / fp32 model-only (target only with bf16 hardware)"),
    "extract_rss_ratio": ("<=", 1.3, 1.3,
                          "extraction's own peak RSS (peak - import floor), 20k^2 / 2k^2"),
    "bf16_cosine_centred": (">=", 0.98, 0.98,
                            "min centred cosine bf16 vs fp32 tile features, DINO-trained ViT"),
    "pretrain_ratio": (">=", 0.75, 0.75, "DINO loop / student forward+backward"),
    "pretrain_steps": (">=", 10, 10, "timed DINO steps behind pretrain_ratio"),
    "cv_ratio": ("<=", 1.8, 1.8,
                 "spatial CV / (folds x the final fit on all points), mlp+ridge+rf"),
    "patch_speedup": (">=", 50.0, 50.0, "sliding windows at STRIDE = patch / POOL=patch, "
                                        "time per output pixel"),
}


# ---------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    import timm
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(),
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "timm": timm.__version__, "rasterio": rasterio.__version__,
            "gdal": rasterio.__gdal_version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")(),
            "device": str(device), "gpu": None,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return info


class CpuMeter:
    """Share of the machine's CPU time used by other processes while we run."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.busy0 = self._busy()
        self.own0 = self._own()
        self.load0 = os.getloadavg()

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return None

    @staticmethod
    def _own():
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def report(self) -> dict:
        wall = time.perf_counter() - self.t0
        out = {"wall_s": round(wall, 1), "loadavg_start": [round(x, 2) for x in self.load0],
               "loadavg_end": [round(x, 2) for x in os.getloadavg()],
               "own_cpu_cores": round((self._own() - self.own0) / wall, 2)}
        busy = self._busy()
        if busy is not None and self.busy0 is not None:
            other = max(0.0, (busy - self.busy0) - (self._own() - self.own0))
            out["other_processes_cpu_cores"] = round(other / wall, 2)
        return out


# ---------------------------------------------------------------------------
# Generated rasters
# ---------------------------------------------------------------------------
def _texture_pool(seed: int, n: int = 12, block: int = 256) -> np.ndarray:
    """(n, 3, block, block) uint8 blocks with smooth structure and fine grain, which
    compress (deflate) and decode about like real imagery."""
    rng = np.random.default_rng(seed)
    pool = np.empty((n, 3, block, block), np.uint8)
    yy, xx = np.mgrid[0:block, 0:block] / block
    for i in range(n):
        low = rng.normal(0, 1, (3, 8, 8))
        up = np.kron(low, np.ones((block // 8, block // 8)))
        f1, f2 = rng.uniform(2, 12, 2)
        ridge = np.sin(2 * np.pi * (f1 * xx + f2 * yy + rng.uniform()))
        grain = rng.normal(0, 1, (3, block, block))
        v = 120 + 25 * up + 20 * ridge + 9 * grain + rng.uniform(-30, 30, (3, 1, 1))
        pool[i] = np.clip(v, 1, 255).astype(np.uint8)
    return pool


def write_raster(path: Path, width: int, height: int, kind: str = "texture", seed: int = 0,
                 block: int = 256) -> Path:
    """A tiled deflate GeoTIFF, 3-band uint8, written block by block (bounded memory).

    ``texture``: blocks drawn from a pool of textured blocks (realistic decode cost).
    ``flat``: low-entropy blocks (a 20k x 20k raster is a few MB and written in seconds).
    """
    path = Path(path)
    tmp = path.with_suffix(".part.tif")
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                   crs=CRS, transform=from_origin(500000.0, 2900000.0, 1.5, 1.5), tiled=True,
                   blockxsize=block, blockysize=block, compress="deflate", interleave="pixel",
                   BIGTIFF="IF_SAFER")
    rng = np.random.default_rng(seed)
    if kind == "texture":
        pool = _texture_pool(seed, block=block)
    else:
        yy, xx = np.mgrid[0:block, 0:block]
        flat = ((xx // 8 + yy // 8) % 4 * 40 + 60).astype(np.uint8)
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(tmp, "w", **profile) as ds:
        for r in range(0, height, block):
            h = min(block, height - r)
            for c in range(0, width, block):
                w = min(block, width - c)
                if kind == "texture":
                    arr = pool[rng.integers(len(pool))][:, :h, :w]
                    arr = np.ascontiguousarray(np.rot90(arr, int(rng.integers(4)), (1, 2))
                                               [:, :h, :w]) if h == w else arr
                else:
                    k = (r // block * 7 + c // block * 13) % 50
                    b = flat[:h, :w]
                    arr = np.stack([b + k, b + 2 * k, b // 2 + k])
                ds.write(arr, window=Window(c, r, w, h))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_loop(step, device, seconds: float, min_iters: int = 2, warmup: int = 1) -> tuple:
    """Run ``step`` (after ``warmup`` calls) until ``seconds`` and ``min_iters``: (iters, s)."""
    for _ in range(warmup):
        step()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        _sync(device)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= min_iters:
            return n, dt


class ForwardMeter:
    """Model-only forward on a fixed random batch already in memory, through the same
    :func:`embed` as extract_features and with the backbone it runs (``low_precision_copy``:
    the bf16 copy for bf16 on CPU; ``bf16-autocast``: the fp32 model under plain autocast).
    Accumulates images and seconds over calls."""

    def __init__(self, backbone, device, dt, batch, tile, seed=0):
        g = torch.Generator().manual_seed(seed)
        # on the host, as the reader's batches: embed moves it to the device
        self.x = torch.randn(batch, backbone.in_chans, tile, tile, generator=g)
        self.amp = dt_amp(dt)
        self.backbone = backbone if dt == "bf16-autocast" else \
            F.low_precision_copy(backbone, device, self.amp)
        self.device = device
        self.images, self.seconds = 0, 0.0
        self.warm = False

    def step(self):
        return F.embed(self.backbone, self.x, self.device, self.amp, "cls")

    def run(self, seconds: float) -> None:
        """Batches for ``seconds`` (at least one; a first call also warms up)."""
        n, dt = timed_loop(self.step, self.device, seconds, min_iters=1,
                           warmup=0 if self.warm else 1)
        self.warm = True
        self.images += n * self.x.shape[0]
        self.seconds += dt

    def reset(self) -> None:
        self.images, self.seconds = 0, 0.0

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    def features(self) -> np.ndarray:
        return self.step()


def forward_clock(model, device) -> tuple:
    """Hooks that add up the time spent inside ``model.forward_features`` (patch embedding
    to final norm); they are plain closures, so a deep copy of the model (the bf16 copy)
    reports into the same total.  -> (state dict, remove())."""
    state = {"seconds": 0.0, "calls": 0, "t0": 0.0}

    def start(module, inputs):
        _sync(device)
        state["t0"] = time.perf_counter()

    def stop(module, inputs, output):
        _sync(device)
        state["seconds"] += time.perf_counter() - state["t0"]
        state["calls"] += 1

    hooks = [model.patch_embed.register_forward_pre_hook(start),
             model.norm.register_forward_hook(stop)]
    return state, lambda: [h.remove() for h in hooks]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def centred_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair after removing the mean feature (the fp32 tiles' mean from
    both): what separates tiles, not the large shared component."""
    mean = np.asarray(a, np.float64).mean(0)
    return cosine_rows(np.asarray(a, np.float64) - mean, np.asarray(b, np.float64) - mean)


def _rnd(v, nd=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return round(float(v), nd)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------
class NaiveLoop:
    """What a first script does, reading as SoilSSL reads: the same :class:`TileSource`
    reads (clipped to the raster, padded, validity mask) and normalisation, the same grid,
    but one tile at a time in the main thread, forwarded alone (fp32, batch 1, no_grad),
    features collected and written at the end.  Runs in slices (``run``) so that it can be
    interleaved with the other runs."""

    def __init__(self, scene: Path, model, device, norm: dict, tile: int):
        self.src = TileSource(str(scene))
        self.model, self.device, self.tile = model, device, tile
        self.norm = Normalization.from_dict(norm)
        self.grid = TileGrid(self.src.width, self.src.height, tile, tile)
        self.n_tiles = len(self.grid)
        self.index, self.feats, self.tiles, self.seconds = 0, [], 0, 0.0
        with torch.no_grad():  # one warm-up forward, as the other runs get
            model.forward_features(torch.zeros(1, self.src.channels, tile, tile, device=device))

    def run(self, seconds: float) -> None:
        t0 = time.perf_counter()
        while True:
            win = self.grid.window(self.index % self.n_tiles)
            arr, valid = self.src.read(win)
            x = torch.from_numpy(self.norm.apply(arr, valid))[None].to(self.device)
            with torch.no_grad():
                f = self.model.forward_features(x)[:, 0]
            self.feats.append(f.cpu().numpy()[0])
            self.index += 1
            self.tiles += 1
            if time.perf_counter() - t0 >= seconds:
                break
        self.seconds += time.perf_counter() - t0

    def finish(self, out: Path) -> dict:
        t0 = time.perf_counter()
        profile = dict(driver="GTiff", width=len(self.feats), height=1,
                       count=len(self.feats[0]), dtype="float32", crs=self.src.crs,
                       transform=self.src.transform)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(np.stack(self.feats).T[:, None, :])
        self.src.close()
        self.seconds += time.perf_counter() - t0
        return {"tiles": self.tiles, "seconds": _rnd(self.seconds, 1),
                "fps": _rnd(self.tiles / self.seconds, 2)}


def bench_extract(args, device, backbone, data: Path, out: Path, dtypes, main_dtype) -> dict:
    """Model-only and end-to-end rates per precision, naive loop, bf16 agreement.

    Each precision's extract_features run is one continuous call on the whole scene; after
    each of its batches (its progress callback) one model-only batch and a slice of the
    naive loop run, timed apart and taken out of the run's time.  So the three rates come
    from the same seconds of the machine, whatever the other processes do.  (Tile reads
    are queued at the start of a batch's forward, so the pauses hide no reading.)"""
    tile, batch = args.tile, args.batch
    res = {"tile": tile, "batch": batch, "workers": args.workers, "model_fps": {},
           "extract_fps": {}, "extract_seconds": {}, "extract_ratio_by_dtype": {},
           "naive_fps_by_run": {}, "extract_forward_share": {}, "other_cpu_during_run": {}}
    # bf16 without bf16 instructions (AVX2) runs at a sixth of fp32: its end-to-end run
    # (and its interleaved model-only batches) took most of the benchmark's time for a
    # figure that is not judged there.  Such CPUs only get the model-only comparison
    # below, on smaller batches; the main precision always runs end to end.
    native_bf16 = bf16_hardware(device)
    runs = [dt for dt in dtypes if native_bf16 or dt != "bf16" or dt == main_dtype]
    res["end_to_end_dtypes"] = runs
    meters = {dt: ForwardMeter(backbone, device, dt, batch, tile) for dt in runs}

    # size the scene from a first, short model-only measurement of the main precision
    first = meters[main_dtype]
    first.run(args.calibrate_seconds)
    n_target = max(batch, int(first.rate * args.e2e_seconds))
    first.reset()
    if args.e2e_tiles:
        n_target = args.e2e_tiles
    n_target = min(n_target, args.e2e_max_tiles)
    # whole batches only: a partial last batch runs at a lower model rate (a small-scene
    # artefact, not pipeline overhead); about square, cols a multiple of the batch
    n_batches = max(1, math.ceil(n_target / batch))
    k = max(1, int(math.sqrt(n_batches * batch)) // batch)
    cols, rows = k * batch, math.ceil(n_batches / k)
    scene = data / f"scene_{cols * tile}x{rows * tile}.tif"
    t0 = time.perf_counter()
    if not scene.exists():
        write_raster(scene, cols * tile, rows * tile, "texture", seed=1)
    res["scene"] = {"path": str(scene), "width": cols * tile, "height": rows * tile,
                    "tiles": cols * rows, "mb_on_disk": round(scene.stat().st_size / 2 ** 20, 1),
                    "generate_s": round(time.perf_counter() - t0, 1)}
    with TileSource(str(scene)) as src:
        norm = src.compute_normalization(n_windows=16).to_dict()
    res["scene"]["normalization"] = norm
    naive = NaiveLoop(scene, backbone.model, device, norm, tile)

    feats = {}
    for dt in runs:
        m = meters[dt]
        m.run(0.0)  # warm-up (its time is dropped)
        m.reset()
        naive_before = (naive.tiles, naive.seconds)
        clock, unhook = forward_clock(backbone.model, device)
        paused = {"seconds": 0.0, "last": 0.0, "forward": 0.0}

        def between_batches(_percent, m=m, paused=paused, clock=clock):
            t, c = time.perf_counter(), clock["seconds"]
            m.run(0.0)
            naive.run(args.naive_share * (t - paused["last"]))
            paused["forward"] += clock["seconds"] - c  # hooked forwards of the pause
            paused["last"] = time.perf_counter()
            paused["seconds"] += paused["last"] - t

        path = out / f"features_{dt}.tif"
        with TileSource(str(scene)) as src:
            load = CpuMeter()
            t0 = paused["last"] = time.perf_counter()
            s = F.extract_features(src, backbone, str(path), tile=tile, batch_size=batch,
                                 device=str(device), amp=dt_amp(dt), workers=args.workers,
                                 normalization=norm,
                                 progress=Progress(on_progress=between_batches))
            wall = time.perf_counter() - t0
        unhook()
        forward_s = clock["seconds"] - paused["forward"]
        dt_s = wall - paused["seconds"]
        n_tiles = naive.tiles - naive_before[0]
        res["naive_fps_by_run"][dt] = _rnd(n_tiles / (naive.seconds - naive_before[1]), 2)
        # share of the run spent inside the model's forward (pipeline overhead = the rest)
        res["extract_forward_share"][dt] = _rnd(forward_s / dt_s, 3)
        res["model_fps"][dt] = _rnd(m.rate, 2)
        res["extract_fps"][dt] = _rnd(s["tiles"] / dt_s, 2)
        res["extract_seconds"][dt] = _rnd(dt_s, 1)
        res["extract_ratio_by_dtype"][dt] = _rnd(s["tiles"] / dt_s / m.rate, 3)
        res["other_cpu_during_run"][dt] = load.report().get("other_processes_cpu_cores")
        with rasterio.open(path) as ds:
            feats[dt] = ds.read().reshape(ds.count, -1).T
        print(f"  {dt}: extract_features {s['tiles'] / dt_s:.2f} tiles/s ({s['tiles']} tiles in "
              f"{dt_s:.1f} s), model-only {m.rate:.2f} img/s, naive "
              f"{res['naive_fps_by_run'][dt]:.2f} tiles/s ({n_tiles} tiles), interleaved",
              flush=True)

    res["naive"] = naive.finish(out / "features_naive.tif")
    res["extract_ratio"] = res["extract_ratio_by_dtype"][main_dtype]
    best = max(runs, key=lambda d: res["extract_fps"][d])
    res["best_dtype"] = best
    res["best_fps"] = res["extract_fps"][best]
    # naive measured in the same seconds as the best run (information, as before)
    res["naive_fps"] = res["naive_fps_by_run"][best]
    res["naive_speedup"] = _rnd(res["best_fps"] / res["naive_fps"], 3)
    # batching alone: SoilSSL fp32 vs the naive fp32 loop timed in the same seconds
    res["batch_speedup_fp32"] = _rnd(res["extract_fps"]["fp32"] / res["naive_fps_by_run"]["fp32"],
                                     3)

    # bf16 agreement: the two end-to-end feature rasters, tile by tile
    if "bf16" in feats and "fp32" in feats:
        ok = np.isfinite(feats["fp32"]).all(1) & np.isfinite(feats["bf16"]).all(1)
        cos = cosine_rows(feats["fp32"][ok], feats["bf16"][ok])
        # the random-init backbone's agreement (information; the target is taken on a
        # DINO-trained backbone, see bench_cosine: random ViT features barely differ)
        res["bf16_cosine_random_init"] = _rnd(cos.min(), 5)
        res["bf16_cosine_centred_random_init"] = _rnd(centred_cosine(feats["fp32"][ok],
                                                                     feats["bf16"][ok]).min(), 5)
    if "bf16" in dtypes and "fp32" in dtypes:
        # speed-up: fp32, the bf16 copy (what extract_features runs) and, on CPU, plain
        # autocast, one batch each in turn (the runs above happened at different times)
        if all(dt in meters for dt in ("fp32", "bf16")):
            trio = {"fp32": meters["fp32"], "bf16": meters["bf16"]}
        else:  # no native bf16: smaller batches, the same for both
            tb = max(1, batch // 8)
            res["bf16_batch"] = tb
            trio = {dt: ForwardMeter(backbone, device, dt, tb, tile) for dt in ("fp32", "bf16")}
        res["bf16_cosine_model"] = _rnd(cosine_rows(trio["fp32"].features(),
                                                    trio["bf16"].features()).min(), 5)
        if device.type == "cpu":
            trio["bf16-autocast"] = ForwardMeter(backbone, device, "bf16-autocast",
                                                 trio["fp32"].x.shape[0], tile)
        for mt in trio.values():
            mt.run(0.0)  # warm-up
            mt.reset()
        t0, rounds = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.bf16_seconds or rounds < 2:
            for mt in trio.values():
                mt.run(0.0)
            rounds += 1
        res["bf16_speedup_model"] = _rnd(trio["bf16"].rate / trio["fp32"].rate, 3)
        res["bf16_speedup"] = res["bf16_speedup_model"]
        res["bf16_interleaved_fps"] = {k: _rnd(mt.rate, 2) for k, mt in trio.items()}
        if "bf16-autocast" in trio:
            ac = trio["bf16-autocast"]
            res["bf16_autocast_speedup_model"] = _rnd(ac.rate / trio["fp32"].rate, 3)
            res["bf16_autocast_cosine_model"] = _rnd(cosine_rows(trio["fp32"].features(),
                                                                 ac.features()).min(), 5)
    print(f"  batched fp32 vs naive fp32 loop: {res['batch_speedup_fp32']:.2f}x; bf16 vs fp32 "
          f"model-only: {res.get('bf16_speedup', float('nan')):.2f}x", flush=True)
    return res


def dt_amp(dt: str) -> str:
    return {"fp32": "none", "bf16": "bf16", "bf16-autocast": "bf16", "fp16": "fp16"}[dt]


def _vmhwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(cfg: dict) -> dict:
    """Body of a fresh subprocess: one extract_features run, its peak RSS.  The floor
    (VmHWM before extract_features) already holds torch, timm, GDAL and the model."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    kw = {"patch_size": cfg["patch"]} if cfg.get("patch") else {}
    torch.manual_seed(0)
    dev = resolve_device(cfg["device"])
    bb = load_backbone(None, arch=cfg["arch"], in_chans=3, tile_size=cfg["tile"],
                       device=str(dev), **kw)
    if dev.type == "cuda":  # CUDA's context, kernels and cuBLAS's host memory: the floor
        F.embed(bb, torch.zeros(cfg["batch"], 3, cfg["tile"], cfg["tile"]), dev, "none")
    norm = {"mean": [120.0] * 3, "std": [40.0] * 3}
    with TileSource(cfg["raster"]) as src:
        base = _vmhwm_kb()
        t0 = time.perf_counter()
        s = F.extract_features(src, bb, cfg["output"], tile=cfg["tile"], stride=cfg["tile"],
                             batch_size=cfg["batch"], device=cfg["device"], amp="none",
                             workers=cfg["workers"], normalization=norm)
        dt = time.perf_counter() - t0
    peak = _vmhwm_kb()
    os.remove(cfg["output"])
    return {"peak_mb": round(peak / 1024, 1), "before_extract_mb": round(base / 1024, 1),
            "extract_mb": round((peak - base) / 1024, 1), "seconds": round(dt, 1),
            "tiles": s["tiles"], "width": src.width, "height": src.height}


def bench_rss(args, device, data: Path, out: Path) -> dict:
    res = {"arch": args.rss_arch, "patch": args.rss_patch, "tile": args.rss_tile,
           "batch": args.rss_batch, "workers": args.workers}
    for name, size in (("small", args.rss_small), ("large", args.rss_large)):
        raster = data / f"flat_{size}.tif"
        t0 = time.perf_counter()
        if not raster.exists():
            write_raster(raster, size, size, "flat")
        gen = time.perf_counter() - t0
        cfg = {"raster": str(raster), "output": str(out / f"rss_{name}.tif"),
               "arch": args.rss_arch, "patch": args.rss_patch, "tile": args.rss_tile,
               "batch": args.rss_batch, "workers": args.workers, "device": str(device),
               "threads": args.threads}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--rss-child",
                               json.dumps(cfg)], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(PKG_DIR)))
        if proc.returncode != 0:
            raise RuntimeError(f"RSS child failed: {proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["generate_s"] = round(gen, 1)
        r["mb_on_disk"] = round(raster.stat().st_size / 2 ** 20, 1)
        res[name] = r
        print(f"  {name} {size} x {size}: peak RSS {r['peak_mb']:.0f} MB "
              f"({r['before_extract_mb']:.0f} MB before extracting), {r['tiles']} tiles in "
              f"{r['seconds']:.1f} s", flush=True)
    res["rss_small_mb"] = res["small"]["peak_mb"]
    res["rss_large_mb"] = res["large"]["peak_mb"]
    res["rss_ratio"] = _rnd(res["rss_large_mb"] / res["rss_small_mb"], 3)  # with imports
    # the extraction's own memory: peak minus the floor reached after the torch/timm
    # imports and the model load (VmHWM just before extract_features)
    res["extract_small_mb"] = res["small"]["extract_mb"]
    res["extract_large_mb"] = res["large"]["extract_mb"]
    res["import_floor_mb"] = res["large"]["before_extract_mb"]
    res["extract_rss_ratio"] = _rnd(res["extract_large_mb"] / max(res["extract_small_mb"], 1.0), 3)
    print(f"  extraction's own memory: {res['extract_large_mb']:.0f} MB (large) vs "
          f"{res['extract_small_mb']:.0f} MB (small) above a {res['import_floor_mb']:.0f} MB "
          f"import floor", flush=True)
    return res


def model_child(cfg: dict) -> dict:
    """Body of the standalone model-only process of bench_e2e: load the same checkpoint,
    forward ``tiles`` random tiles in batches of ``batch`` at the same precision through
    :func:`embed`; wall-clock milestones (time.time) for the breakdown."""
    t = {"main": time.time()}
    dev = resolve_device(cfg["device"])
    bb = load_backbone(cfg["backbone"], device=cfg["device"])
    run = F.low_precision_copy(bb, dev, cfg["amp"])
    t["model_loaded"] = time.time()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["batch"], bb.in_chans, bb.tile_size, bb.tile_size, generator=g).numpy()
    for start in range(0, cfg["tiles"], cfg["batch"]):
        F.embed(run, x[:min(cfg["batch"], cfg["tiles"] - start)], dev, cfg["amp"], "cls")
    t["forward_done"] = time.time()
    return t


CLOCK_MARKS = ("python_start", "engine_imported", "load_backbone_start", "load_backbone_end",
               "extract_start", "extract_end")


def bench_e2e(args, device, data: Path, out: Path, model_fps=None) -> dict:
    """A real ``scripts/qgis_process run soilssl:extractfeatures`` on a generated RGB
    scene, timed from outside, against a standalone model-only process (same checkpoint,
    batch, precision and tile count), also timed from outside.  Both processes record
    wall-clock milestones (the QGIS one through a sitecustomize probe), which say where
    the difference goes: start-up, model load, extraction, exit."""
    dt = args.dtype
    tile, batch = args.tile, args.batch
    torch.manual_seed(0)
    bb = load_backbone(None, arch=args.arch, in_chans=3, tile_size=tile, device="cpu")
    if not model_fps:  # size the scene from a short model-only measurement
        m = ForwardMeter(bb, device, dt, batch, tile)
        m.run(args.calibrate_seconds)
        model_fps = m.rate
    n = args.e2e_tiles or max(batch, int(model_fps * args.e2e_run_seconds))
    cols = max(1, int(math.sqrt(n)))
    rows = max(1, round(n / cols))
    scene = data / f"e2e_{cols * tile}x{rows * tile}.tif"
    if not scene.exists():
        write_raster(scene, cols * tile, rows * tile, "texture", seed=4)
    with TileSource(str(scene)) as src:
        norm = src.compute_normalization(n_windows=16).to_dict()
    ckpt = str(data / f"e2e_{bb.arch}_{tile}.pth")
    save_backbone(ckpt, bb.model, bb.arch, 3, tile, normalization=norm)
    del bb
    site = bench_plants.write_sitecustomize(out / "e2e_site")
    probe = out / "e2e_probe.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [site] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        SOILSSL_BENCH_PROBE=str(probe))
    output = out / "e2e_features.tif"
    qgis = [str(ROOT / "scripts" / "qgis_process"), "run", "soilssl:extractfeatures", "--",
            f"INPUT={scene}", f"BACKBONE={ckpt}", f"OUTPUT={output}", f"BATCH_SIZE={batch}",
            f"DEVICE={device.type}", f"AMP={dt_amp(dt)}"] + \
        ([f"WORKERS={args.workers}"] if args.workers is not None else [])
    child = {"backbone": ckpt, "tiles": cols * rows, "batch": batch, "device": str(device),
             "amp": dt_amp(dt)}
    model_cmd = [sys.executable, str(Path(__file__).resolve()), "--model-child",
                 json.dumps(child)]

    def timed(cmd, environ):
        if probe.exists():
            probe.unlink()
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=environ)
        t1 = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): "
                               f"{(proc.stdout + proc.stderr)[-3000:]}")
        return t0, t1, proc

    res = {"dtype": dt, "tile": tile, "batch": batch, "workers": args.workers,
           "scene": {"path": str(scene), "width": cols * tile, "height": rows * tile,
                     "tiles": cols * rows}, "rounds": []}
    for _ in range(max(1, args.e2e_rounds)):
        rnd = {}
        if not res["rounds"]:  # model-only, then (qgis_process, model-only) x rounds
            t0, t1, proc = timed(model_cmd, dict(os.environ, PYTHONPATH=str(PKG_DIR)))
            res["model_first_s"] = _rnd(t1 - t0, 2)
        t0, t1, proc = timed(qgis, env)
        rnd["e2e_s"] = t1 - t0
        marks = json.loads(probe.read_text()) if probe.exists() else {}
        rnd["e2e_marks"] = {k: _rnd(v - t0 if k in CLOCK_MARKS else v, 2)
                            for k, v in marks.items()}
        rnd["e2e_marks"]["exit"] = _rnd(t1 - t0, 2)
        t0, t1, proc = timed(model_cmd, dict(os.environ, PYTHONPATH=str(PKG_DIR)))
        rnd["model_s"] = t1 - t0
        marks = json.loads(proc.stdout.strip().splitlines()[-1])
        rnd["model_marks"] = {k: _rnd(v - t0, 2) for k, v in marks.items()}
        rnd["model_marks"]["exit"] = _rnd(t1 - t0, 2)
        res["rounds"].append(rnd)
    with rasterio.open(output) as ds:
        res["output_bands"] = ds.count
        res["output_valid_tiles"] = int(np.isfinite(ds.read(1)).sum())
    os.remove(output)
    # each qgis_process run against the mean of the model-only runs just before and after
    models = [res["model_first_s"]] + [r["model_s"] for r in res["rounds"]]
    e2e = sum(r["e2e_s"] for r in res["rounds"])
    model = sum((models[i] + models[i + 1]) / 2 for i in range(len(res["rounds"])))
    for r in res["rounds"]:
        r["e2e_s"], r["model_s"] = _rnd(r["e2e_s"], 2), _rnd(r["model_s"], 2)
    q, m = res["rounds"][-1]["e2e_marks"], res["rounds"][-1]["model_marks"]
    try:  # where the time goes (last round), seconds from each process's start
        res["breakdown"] = {
            "qgis_process": {"to_model_loaded": q["load_backbone_end"],
                             "extract": _rnd(q["extract_end"] - q["extract_start"], 2),
                             "inside_forward": _rnd(q.get("embed_seconds"), 2),
                             "exit": _rnd(q["exit"] - q["extract_end"], 2)},
            "model_only": {"to_model_loaded": m["model_loaded"],
                           "forward": _rnd(m["forward_done"] - m["model_loaded"], 2),
                           "exit": _rnd(m["exit"] - m["forward_done"], 2)}}
    except KeyError:
        res["breakdown"] = None
    res["e2e_seconds"] = _rnd(e2e, 2)
    res["model_seconds"] = _rnd(model, 2)
    res["extract_ratio_e2e"] = _rnd(model / e2e, 3)
    print(f"  qgis_process extractfeatures {e2e:.1f} s vs model-only process {model:.1f} s "
          f"({cols * rows} tiles, {dt}); breakdown {res['breakdown']}", flush=True)
    return res


def structured_points(n: int, dim: int, seed: int = 0) -> tuple:
    """Coordinates, features and a target with spatial structure (like cached ViT
    features of soil points): a smooth latent field of the coordinates, seen through a
    random projection with noise; the target depends on the latent field."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 30_000, (n, 2))
    freqs = rng.normal(0, 1 / 6000, (12, 2))
    latent = np.sin(coords @ freqs.T + rng.uniform(0, 2 * np.pi, 12))
    units = np.argmin(((coords[:, None] - rng.uniform(0, 30_000, (6, 2))) ** 2).sum(-1), 1)
    onehot = np.eye(6)[units]
    z = np.hstack([latent, onehot])
    feats = z @ rng.normal(0, 1, (z.shape[1], dim)) + 0.7 * rng.normal(0, 1, (n, dim))
    y = 8.0 + latent[:, :4] @ np.array([0.4, -0.3, 0.2, 0.1]) + 0.3 * onehot @ rng.normal(
        0, 1, 6) + 0.1 * rng.normal(0, 1, n)
    return coords, feats.astype(np.float32), y


def bench_cv(args) -> dict:
    """fitpoints' spatial CV of each feature head (mlp, rf_features with its out-of-bag
    grid search, ridge) against the reference: the final fit of the same head on all
    points that fitpoints makes after the CV, timed just before and just after it (same
    machine load).  ``cv_ratio`` = CV seconds / (folds x reference seconds); the folds
    train on (k-1)/k of the points, so an efficient CV sits a little under 1."""
    from soilssl.core import cv as cv_mod
    from soilssl.core.heads import make_regressor  # fitpoints' final fit; not cv's name
    k = 6
    coords, feats, y = structured_points(args.cv_points, args.cv_dim)
    t0 = time.perf_counter()
    folds = cv_mod.spatial_folds(coords, k, "kmeans", 0)
    res = {"points": args.cv_points, "dim": args.cv_dim, "folds": k,
           "folds_seconds": _rnd(time.perf_counter() - t0, 3), "seconds": {}, "ref_seconds": {},
           "ratio": {}, "rmse": {}, "r2": {}}

    def reference(m):
        t = time.perf_counter()
        make_regressor(m, seed=0).fit(feats, y)
        return time.perf_counter() - t

    for m in cv_mod.FEATURE_METHODS:
        ref = reference(m)
        t0 = time.perf_counter()
        cv = cv_mod.cross_validate({cv_mod.FEATURES: feats}, y, folds, [m], target_names=["pH"],
                                   seed=0, keep_models=True)
        took = time.perf_counter() - t0
        ref = min(ref, reference(m))  # the less disturbed of the two
        res["seconds"][m] = _rnd(took, 2)
        res["ref_seconds"][m] = _rnd(ref, 3)
        res["ratio"][m] = _rnd(took / (k * ref), 3)
        row = cv.table()[0]
        res["rmse"][m] = _rnd(row["rmse_mean"], 3)
        res["r2"][m] = _rnd(row["r2_pooled"], 3)
        print(f"  {m}: CV {took:.2f} s vs final fit {ref:.2f} s ({took / (k * ref):.2f} of "
              f"{k} fits; RMSE {row['rmse_mean']:.3f}, pooled R² {row['r2_pooled']:.2f})",
              flush=True)
    res["cv_seconds"] = _rnd(sum(res["seconds"].values()), 2)
    res["ref_fit_seconds"] = _rnd(sum(res["ref_seconds"].values()), 3)
    res["cv_ratio"] = _rnd(res["cv_seconds"] / (k * res["ref_fit_seconds"]), 3)
    res["cv_seconds_1000"] = _rnd(res["folds_seconds"] + res["cv_seconds"], 2)  # absolute
    return res


def bench_pretrain(args, device, data: Path, out: Path) -> dict:
    """DINO loop rate (core.pretrain, one epoch of ``--pretrain-steps`` steps; the first
    step is warm-up) vs forward+backward of the same student backbone on the same crops,
    the reference run between the loop's steps."""
    from soilssl.core.backbone import create_model
    from soilssl.core.dino import MultiCropAugmentation, default_local_size
    from soilssl.core.pretrain import PretrainConfig, pretrain
    arch, tile, bs = args.pretrain_arch or args.arch, args.pretrain_tile, args.pretrain_batch
    steps, locs = args.pretrain_steps, args.pretrain_local_crops
    if args.pretrain_dtype == "auto":
        args.pretrain_dtype = "fp16" if device.type == "cuda" else "fp32"
    amp = dt_amp(args.pretrain_dtype)
    raster = data / f"pretrain_{bs * tile}x{steps * tile}.tif"
    if not raster.exists():
        write_raster(raster, bs * tile, steps * tile, "texture", seed=2)
    # The run also makes the DINO-trained backbone of bench_cosine: a learning rate that
    # moves a random ViT in a few steps (1e-3 for the batch, with DINO's gradient clipping)
    # and a teacher that follows the student closely (momentum 0.5 -> 1 over the run).
    # Neither changes the compute that pretrain_ratio times.
    cfg = PretrainConfig(input=str(raster), output=str(out / "pretrain.pth"), arch=arch,
                         init="random", epochs=1, batch_size=bs, tile_size=tile,
                         device=str(device), amp=amp, out_dim=args.pretrain_out_dim,
                         local_crops_number=locs, workers=args.workers, warmup_epochs=0,
                         lr=args.pretrain_lr * 256 / bs, momentum_teacher=0.5)

    # the reference: the same student backbone, forward+backward on the same crops
    torch.manual_seed(0)
    student = create_model(arch, 3, tile, drop_path_rate=cfg.drop_path_rate,
                           dynamic_img_size=True).to(device).train()
    patch = int(student.patch_embed.patch_size[0])
    local_size = default_local_size(tile, patch)
    aug = MultiCropAugmentation(tile, 3, locs, local_size=local_size, patch_size=patch)
    crops = aug(torch.randn(bs, 3, tile, tile), torch.Generator().manual_seed(0))
    crops = [c.to(device) for c in crops]
    groups = [torch.cat(crops[:2])] + ([torch.cat(crops[2:])] if locs else [])
    # what DINO adds whatever the implementation: the teacher's forward of the 2 global
    # crops (no grad); it bounds the ratio at fwd_bwd / (fwd_bwd + teacher)
    teacher = create_model(arch, 3, tile, dynamic_img_size=True).to(device).eval()

    def step():
        with F.autocast(device, amp):
            out_ = torch.cat([student(g) for g in groups])
        loss = out_.float().square().mean()
        student.zero_grad(set_to_none=True)
        loss.backward()

    def teacher_step():
        with torch.no_grad(), F.autocast(device, amp):
            teacher(groups[0])

    # The reference runs between the loop's steps (from the progress callback that
    # pretrain calls after each step), so that both see the same machine load; the loop's
    # time is the time between callbacks, the reference's own time taken out.
    ref, tea, loop = [0, 0.0], [0, 0.0], [0, 0.0]
    step()  # warm-up of both
    teacher_step()
    _sync(device)
    last = [None]

    def on_progress(p):
        if p <= 5.0 + 1e-6:  # tile sampling, before the loop's sub-span
            return
        t_end = time.perf_counter()
        if last[0] is not None:  # the first step (warm-up) is not counted
            loop[0] += 1
            loop[1] += t_end - last[0]
        n, dt = timed_loop(step, device, 0.0, min_iters=1, warmup=0)
        ref[0] += n
        ref[1] += dt
        n, dt = timed_loop(teacher_step, device, 0.0, min_iters=1, warmup=0)
        tea[0] += n
        tea[1] += dt
        last[0] = time.perf_counter()

    t0 = time.perf_counter()
    summary = pretrain(cfg, progress=Progress(on_progress=on_progress))
    total = time.perf_counter() - t0
    if loop[0] < 1:
        raise RuntimeError("pretraining ran fewer than 2 steps: raise --pretrain-steps")
    loop_fps = loop[0] * bs / loop[1]
    ref_fps, teacher_fps = ref[0] * bs / ref[1], tea[0] * bs / tea[1]
    ceiling = (1 / ref_fps) / (1 / ref_fps + 1 / teacher_fps)
    res = {"arch": arch, "tile": tile, "batch": bs, "local_crops": locs,
           "local_size": local_size, "out_dim": args.pretrain_out_dim,
           "dtype": args.pretrain_dtype, "steps": summary["steps"],
           "loop_fps": _rnd(loop_fps, 3), "step_fps_reported": _rnd(summary["tiles_per_s"], 3),
           "fwd_bwd_fps": _rnd(ref_fps, 3), "teacher_fwd_fps": _rnd(teacher_fps, 3),
           "ratio_ceiling_with_teacher": _rnd(ceiling, 3), "run_seconds": _rnd(total, 1),
           "pretrain_ratio": _rnd(loop_fps / ref_fps, 3), "pretrain_steps": loop[0],
           "checkpoint": cfg.output, "final_loss": _rnd(summary.get("final_loss"), 4)}
    print(f"  DINO loop {loop_fps:.2f} img/s vs student forward+backward {ref_fps:.2f} img/s "
          f"({arch}, batch {bs}, 2 x {tile} + {locs} x {local_size} px; teacher forward alone "
          f"caps the ratio at {ceiling:.2f})", flush=True)
    return res


def bench_cosine(args, device, data: Path, out: Path, checkpoint: str) -> dict:
    """bf16 vs fp32 features of the DINO-trained backbone of bench_pretrain: two
    extract_features runs (AMP none, AMP bf16) over a textured scene of ``--cosine-tiles``
    tiles; the centred cosine (mean fp32 feature removed from both) of each tile."""
    bb = load_backbone(checkpoint, device=str(device))
    tile = bb.tile_size
    # without bf16 instructions the bf16 run is ~6x slower than fp32: half the tiles
    n = args.cosine_tiles if bf16_hardware(device) else max(16, args.cosine_tiles // 2)
    side = max(1, int(math.sqrt(n)))
    rows = math.ceil(n / side)
    scene = data / f"cosine_{side * tile}x{rows * tile}.tif"
    if not scene.exists():
        write_raster(scene, side * tile, rows * tile, "texture", seed=3)
    feats = {}
    for dt in ("fp32", "bf16"):
        path = out / f"cosine_{dt}.tif"
        with TileSource(str(scene)) as src:
            F.extract_features(src, bb, str(path), batch_size=args.batch, device=str(device),
                               amp=dt_amp(dt), workers=args.workers)
        with rasterio.open(path) as ds:
            feats[dt] = ds.read().reshape(ds.count, -1).T
        os.remove(path)
    ok = np.isfinite(feats["fp32"]).all(1) & np.isfinite(feats["bf16"]).all(1)
    a, b = feats["fp32"][ok], feats["bf16"][ok]
    cen = centred_cosine(a, b)
    # how different the tiles are: centred cosine between each tile and the next one
    spread = centred_cosine(a, np.roll(a, 1, axis=0))
    res = {"checkpoint": checkpoint, "arch": bb.arch, "tile": tile, "tiles": int(ok.sum()),
           "bf16_cosine_centred": _rnd(cen.min(), 5), "centred_p01": _rnd(np.quantile(cen, 0.01), 5),
           "centred_mean": _rnd(cen.mean(), 5), "uncentred_min": _rnd(cosine_rows(a, b).min(), 5),
           "neighbour_tiles_centred_mean": _rnd(spread.mean(), 4)}
    print(f"  bf16 vs fp32 on the DINO-trained {bb.arch}: centred cosine min "
          f"{res['bf16_cosine_centred']:.4f} (mean {res['centred_mean']:.4f}; uncentred min "
          f"{res['uncentred_min']:.5f}; two neighbouring tiles: {res['neighbour_tiles_centred_mean']:.3f})",
          flush=True)
    return res


# ---------------------------------------------------------------------------
# Patch features (issue 14 part 4)
# ---------------------------------------------------------------------------
def bench_patches(args, device, data: Path, out: Path) -> dict:
    """``patch_speedup``: time per output pixel of sliding windows at STRIDE = patch size
    over that of POOL=patch, on the same raster, model, tile, batch and precision (equal
    output resolution: one pixel per patch).  The patch run is end to end
    (extract_patch_features, written); sliding windows cost one forward per output pixel
    whatever the row, so they are timed on ``--patch-rows`` grid rows of the same raster
    (half before, half after the patch run, so that both see the same load)."""
    from soilssl.core.features import prepare
    from soilssl.core.patches import FeatureRows, extract_patch_features, patch_size
    torch.manual_seed(0)
    bb = load_backbone(args.backbone, arch=args.arch if not args.backbone else None,
                       in_chans=3, tile_size=args.tile, device=str(device))
    side = args.patch_raster
    scene = write_raster(data / f"patches_{side}.tif", side, side, "texture", seed=5)
    amp = dt_amp(args.dtype)
    compute = dict(batch_size=args.batch, amp=amp, workers=args.workers)
    p = patch_size(bb)
    res = {"arch": bb.arch, "tile": args.tile, "patch": p, "raster": side, "amp": amp}
    with TileSource(str(scene)) as src:
        tile, norm = prepare(src, bb, args.tile)
        sliding = FeatureRows.create(src, bb, norm, "cls", tile, stride=p, device=device,
                                     **compute)
        rows = max(2, args.patch_rows)
        starts = [0, sliding.units // 2]

        def slide(start, n):
            t0 = time.perf_counter()
            px = sum(len(f) for _, f in sliding.rows(range(start, start + n)))
            _sync(device)
            return px, time.perf_counter() - t0

        slide(0, 1) if device.type == "cuda" else None  # CUDA warm-up (kernels, cudnn)
        a = slide(starts[0], rows // 2)
        t0 = time.perf_counter()
        s = extract_patch_features(src, bb, str(out / "patch_features.tif"), tile,
                                   device=str(device), normalization=norm.to_dict(), **compute)
        _sync(device)
        t_patch = time.perf_counter() - t0
        b = slide(starts[1], rows - rows // 2)
    px_slide, t_slide = a[0] + b[0], a[1] + b[1]
    px_patch = s["width"] * s["height"]
    per_slide, per_patch = t_slide / px_slide, t_patch / px_patch
    res.update({
        "margin": s["margin"], "core": s["core"], "patch_tiles": s["tiles"],
        "patch_pixels": px_patch, "patch_seconds": _rnd(t_patch, 2),
        "sliding_pixels_timed": px_slide, "sliding_seconds": _rnd(t_slide, 2),
        "sliding_ms_per_pixel": _rnd(1000 * per_slide, 3),
        "patch_ms_per_pixel": _rnd(1000 * per_patch, 4),
        "sliding_seconds_whole_raster": _rnd(per_slide * px_patch, 1),
        "patch_speedup": _rnd(per_slide / per_patch, 1),
        "ideal_speedup": s["core"] ** 2})
    print(f"  patch features: {px_patch} px in {t_patch:.1f} s ({s['tiles']} tiles, "
          f"{s['core']}x{s['core']} patches kept); sliding windows at stride {p}: "
          f"{1000 * per_slide:.1f} ms/px ({px_slide} px timed) -> "
          f"{per_slide * px_patch:.0f} s for the raster: speed-up {per_slide / per_patch:.0f}x "
          f"(ideal: {s['core'] ** 2})", flush=True)
    return res


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def bf16_hardware(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively (CUDA, or a CPU with AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def judge(key: str, value, gpu: bool, note: str = "", judged: bool = True) -> dict:
    op, cpu_t, gpu_t, what = TARGETS[key]
    target = (gpu_t if gpu else cpu_t) if judged else None
    ok = None
    if value is not None and target is not None:
        ok = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
    return {"value": value, "target": "n/a" if target is None else f"{op} {target:g}",
            "pass": ok, "what": what + (f" ({note})" if note else "")}


def table(result: dict) -> str:
    r = result
    ex, e2e, rs, cv, pt, co = (r.get(k) or {} for k in ("extract", "e2e", "rss", "cv",
                                                         "pretrain", "cosine"))
    main = r["config"]["dtype"]

    def f(v, fmt="{:.2f}"):
        return "n/a" if v is None else fmt.format(v)

    raw = {
        "extract_ratio": f"{f(ex.get('extract_fps', {}).get(main))} / "
                         f"{f(ex.get('model_fps', {}).get(main))} img/s ({main})",
        "extract_ratio_e2e": f"model-only {f(e2e.get('model_seconds'), '{:.1f}')} s / "
                             f"qgis_process {f(e2e.get('e2e_seconds'), '{:.1f}')} s "
                             f"({e2e.get('scene', {}).get('tiles', '?')} tiles, {main})",
        "batch_speedup_fp32": f"{f(ex.get('extract_fps', {}).get('fp32'))} / "
                              f"{f(ex.get('naive_fps_by_run', {}).get('fp32'))} img/s",
        "bf16_speedup": " ".join(f"{k} {f(v)}" for k, v in
                                 ex.get("bf16_interleaved_fps", {}).items()) + " img/s",
        "extract_rss_ratio": f"{f(rs.get('extract_large_mb'), '{:.0f}')} / "
                             f"{f(rs.get('extract_small_mb'), '{:.0f}')} MB above "
                             f"{f(rs.get('import_floor_mb'), '{:.0f}')} MB",
        "bf16_cosine_centred": f"mean {f(co.get('centred_mean'), '{:.4f}')}, uncentred min "
                               f"{f(co.get('uncentred_min'), '{:.5f}')}, {co.get('tiles', '?')} "
                               f"tiles",
        "pretrain_ratio": f"{f(pt.get('loop_fps'))} / {f(pt.get('fwd_bwd_fps'))} img/s "
                          f"(ceiling {f(pt.get('ratio_ceiling_with_teacher'))})",
        "pretrain_steps": f"batch {pt.get('batch', '?')}",
        "cv_ratio": " ".join(f"{m} {v:.1f}s/{cv['ref_seconds'][m]:.2f}s" for m, v in
                             cv.get("seconds", {}).items()),
        "patch_speedup": "" if not r.get("patches") else
                         f"{r['patches']['sliding_ms_per_pixel']:.1f} / "
                         f"{r['patches']['patch_ms_per_pixel']:.2f} ms per output pixel",
    }
    lines = [f"{'metric':<20} {'value':>8} {'target':>8}  {'':4}  raw"]
    for key in TARGETS:
        j = r["targets"][key]
        v = "n/a" if j["value"] is None else f"{j['value']:.3f}"
        p = "----" if j["pass"] is None else ("PASS" if j["pass"] else "FAIL")
        lines.append(f"{key:<20} {v:>8} {j['target']:>8}  {p}  {raw[key]}")
    return "\n".join(lines)


SECTIONS = ("extract", "e2e", "rss", "cv", "pretrain", "cosine", "patches")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="vit_small_patch16_224", help="timm ViT name")
    p.add_argument("--backbone", default=None,
                   help="local checkpoint file for the weights (default: random init)")
    p.add_argument("--tile", type=int, default=224, help="tile size (px)")
    p.add_argument("--batch", type=int, default=32, help="batch size of SoilSSL's runs")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="precision of extract_ratio (auto: fp32 on CPU, fp16 on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: torch's default, the physical cores)")
    p.add_argument("--workers", type=int, default=None,
                   help="tile-reading threads (default: SoilSSL's automatic choice, 2 on the CPU, "
                        "up to 8 with a GPU)")
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE", "default"),
                   help="OMP_WAIT_POLICY of this process and its children (an environment "
                        "value wins; default: libgomp's own, spinning)")
    p.add_argument("--calibrate-seconds", type=float, default=3.0,
                   help="model-only timing that sizes the end-to-end scene")
    p.add_argument("--e2e-seconds", type=float, default=30.0,
                   help="target duration of the in-process end-to-end run (sizes the scene)")
    p.add_argument("--e2e-run-seconds", type=float, default=30.0,
                   help="model-only seconds of the qgis_process scene (sizes it)")
    p.add_argument("--e2e-rounds", type=int, default=1,
                   help="qgis_process runs, each bracketed by model-only processes")
    p.add_argument("--e2e-tiles", type=int, default=0, help="force the scene's tile count")
    p.add_argument("--e2e-max-tiles", type=int, default=20_000)
    p.add_argument("--naive-share", type=float, default=0.5,
                   help="naive-loop seconds run after each end-to-end batch, per second "
                        "that batch took")
    p.add_argument("--bf16-seconds", type=float, default=15.0,
                   help="model-only fp32 vs bf16 (and autocast on CPU), interleaved")
    p.add_argument("--rss-small", type=int, default=2000, help="small raster side (px)")
    p.add_argument("--rss-large", type=int, default=20000, help="large raster side (px)")
    p.add_argument("--rss-arch", default="vit_tiny_patch16_224")
    p.add_argument("--rss-patch", type=int, default=64, help="patch size override (0: arch's)")
    p.add_argument("--rss-tile", type=int, default=448)
    p.add_argument("--rss-batch", type=int, default=4,
                   help="small enough that the 2k x 2k run (25 tiles) reaches the pipeline's "
                        "steady state (prefetch) too")
    p.add_argument("--cv-points", type=int, default=1000)
    p.add_argument("--cv-dim", type=int, default=768)
    p.add_argument("--pretrain-arch", default=None, help="default: --arch")
    p.add_argument("--pretrain-tile", type=int, default=224)
    p.add_argument("--pretrain-batch", type=int, default=4)
    p.add_argument("--pretrain-steps", type=int, default=11,
                   help="steps of the one epoch (the first is warm-up, not timed)")
    p.add_argument("--pretrain-lr", type=float, default=1e-3,
                   help="learning rate of the batch (the run trains bench_cosine's backbone)")
    p.add_argument("--cosine-tiles", type=int, default=64,
                   help="tiles of the bf16 vs fp32 comparison on the DINO-trained backbone")
    p.add_argument("--pretrain-local-crops", type=int, default=8)
    p.add_argument("--pretrain-out-dim", type=int, default=4096)
    p.add_argument("--pretrain-dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: fp32 on CPU (pretrain's AMP auto), fp16 on CUDA")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test in a minute or two: vit_tiny, short timings, small rasters")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS,
                   help="sections to leave out (cosine needs pretrain)")
    p.add_argument("--plant", default="",
                   help="comma-separated regressions to plant (= SOILSSL_BENCH_PLANT): "
                        + "; ".join(f"{k} -> {v[0]}" for k, v in bench_plants.PLANTS.items()))
    p.add_argument("--patch-raster", type=int, default=2048,
                   help="patches: raster side (px) of the POOL=patch run")
    p.add_argument("--patch-rows", type=int, default=2,
                   help="patches: grid rows of sliding windows timed (stride = patch size)")
    p.add_argument("--out", default=str(ROOT / "bench_out"), help="output folder")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.calibrate_seconds, args.e2e_seconds, args.bf16_seconds = \
            "vit_tiny_patch16_224", 1.0, 4.0, 2.0
        args.e2e_run_seconds = 8.0
        args.rss_large, args.cv_points, args.pretrain_batch = 6000, 300, 2
        args.patch_raster = 1024
        args.pretrain_arch = args.pretrain_arch or "vit_tiny_patch16_224"
        args.cosine_tiles = 32
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        print(json.dumps(rss_child(json.loads(args.rss_child))))
        return 0
    if args.model_child:
        print(json.dumps(model_child(json.loads(args.model_child))))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if args.dtype == "auto":
        args.dtype = "fp16" if gpu else "fp32"
    dtypes = ["fp32", "bf16"] + (["fp16"] if gpu else [])
    if args.dtype not in dtypes:
        raise SystemExit(f"--dtype {args.dtype} needs CUDA")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    data.mkdir(exist_ok=True)
    meter = CpuMeter()
    result = {"arch": args.arch, "config": vars(args).copy(), "machine": machine_info(device)}
    result["config"].pop("rss_child", None)
    print(f"SoilSSL bench: {args.arch} at {args.tile} px, batch {args.batch}, {device} "
          f"({result['machine']['cpu']}, {result['machine']['cores']} cores, "
          f"{torch.get_num_threads()} torch threads"
          f"{', ' + result['machine']['gpu'] if gpu else ''})", flush=True)

    errors = {}

    def section(name, fn, *a):
        if name in args.skip:
            return None
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        try:
            r = fn(*a)
            r["section_seconds"] = _rnd(time.perf_counter() - t0, 1)
            return r
        except Exception as exc:  # keep the other sections' numbers
            import traceback
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            return None

    if "extract" not in args.skip:
        torch.manual_seed(0)
        backbone = load_backbone(args.backbone, arch=args.arch if not args.backbone else None,
                                 in_chans=3, tile_size=args.tile, device=str(device))
        result["arch"] = backbone.arch
        result["extract"] = section("extract", bench_extract, args, device, backbone, data, out,
                                    dtypes, args.dtype)
        del backbone
    fps = ((result.get("extract") or {}).get("model_fps") or {}).get(args.dtype)
    result["e2e"] = section("e2e", bench_e2e, args, device, data, out, fps)
    result["rss"] = section("rss", bench_rss, args, device, data, out)
    result["cv"] = section("cv", bench_cv, args)
    result["pretrain"] = section("pretrain", bench_pretrain, args, device, data, out)
    result["patches"] = section("patches", bench_patches, args, device, data, out)
    ckpt = (result.get("pretrain") or {}).get("checkpoint")
    if ckpt and os.path.exists(ckpt):
        result["cosine"] = section("cosine", bench_cosine, args, device, data, out, ckpt)
    elif "cosine" not in args.skip:
        errors["cosine"] = "needs the DINO-trained backbone of the pretrain section"

    ex, e2e, rs, cv, pt, co = (result.get(k) or {} for k in ("extract", "e2e", "rss", "cv",
                                                             "pretrain", "cosine"))
    keys = {"extract_ratio": ex.get("extract_ratio"),
            "extract_ratio_e2e": e2e.get("extract_ratio_e2e"),
            "batch_speedup_fp32": ex.get("batch_speedup_fp32"),
            "bf16_speedup": ex.get("bf16_speedup"),
            "extract_rss_ratio": rs.get("extract_rss_ratio"),
            "bf16_cosine_centred": co.get("bf16_cosine_centred"),
            "pretrain_ratio": pt.get("pretrain_ratio"),
            "pretrain_steps": pt.get("pretrain_steps"),
            "cv_ratio": cv.get("cv_ratio"),
            "patch_speedup": (result.get("patches") or {}).get("patch_speedup")}
    result.update(keys)
    # raw numbers beside the ratios (and the retired figures, as information)
    result.update({
        "model_fps": ex.get("model_fps"), "extract_fps": ex.get("extract_fps"),
        "naive_fps": ex.get("naive_fps"), "best_fps": ex.get("best_fps"),
        "naive_speedup": ex.get("naive_speedup"),
        "bf16_autocast_speedup": ex.get("bf16_autocast_speedup_model"),
        "rss_ratio": rs.get("rss_ratio"),
        "rss_small_mb": rs.get("rss_small_mb"), "rss_large_mb": rs.get("rss_large_mb"),
        "cv_seconds_1000": cv.get("cv_seconds_1000"), "cv_seconds": cv.get("seconds"),
        "pretrain_fps": pt.get("loop_fps"), "fwd_bwd_fps": pt.get("fwd_bwd_fps")})
    result["planted"] = bench_plants.requested()
    hw = bf16_hardware(device)
    result["machine"]["bf16_hardware"] = hw
    result["targets"] = {}
    for k, v in keys.items():
        if k == "bf16_speedup" and not hw:
            result["targets"][k] = judge(k, v, gpu, "no bf16 hardware here: reported, not "
                                                    "judged", judged=False)
        else:
            result["targets"][k] = judge(k, v, gpu)
    result["load"] = meter.report()
    result["errors"] = errors
    with open(out / "bench.json", "w") as f:
        json.dump(result, f, indent=2)
    print()
    print(table(result))
    ld = result["load"]
    print(f"\n{ld['wall_s']:.0f} s; load average {ld['loadavg_start']} -> {ld['loadavg_end']}; "
          f"other processes used {ld.get('other_processes_cpu_cores', '?')} of "
          f"{result['machine']['cores']} cores on average. Wrote {out / 'bench.json'}")
    if result["planted"]:
        print("Planted: " + "; ".join(f"{p} (must fail {bench_plants.PLANTS[p][0]})"
                                      for p in result["planted"]))
    if errors:
        print("Errors: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        return 1
    failed = [k for k, j in result["targets"].items() if j["pass"] is False]
    if failed:
        print("Failed targets: " + ", ".join(failed))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
