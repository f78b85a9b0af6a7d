"""Regressions the benchmark can plant in SoilSSL, to show that its targets fail on them.

    SOILSSL_BENCH_PLANT=leak_windows .venv/bin/python scripts/bench.py --quick
    .venv/bin/python scripts/bench.py --plant no_bf16,unbatched

Each plant monkeypatches the real ``soilssl.core`` code path that a target measures, in
the benchmark process and in every process it starts (the RSS children through the
environment, ``qgis_process`` through a ``sitecustomize`` that patches
``soilssl.core.features`` when QGIS loads the plugin).  Nothing here is imported by the
plugin itself.
"""
from __future__ import annotations

import importlib
import os
import sys

ENV = "SOILSSL_BENCH_PLANT"

# plant -> (the target it must fail, what it does)
PLANTS = {
    "leak_windows": ("extract_rss_ratio",
                     "every tile read keeps a 16-bit copy of its window's validity mask "
                     "alive (a per-window leak that grows with the raster: 400 kB per "
                     "448 px tile)"),
    "no_cache_cap": ("extract_rss_ratio",
                     "GDAL's block cache is no longer capped while tiles are read"),
    "no_bf16": ("bf16_speedup",
                "AMP=bf16 runs in fp32: no bf16 copy of the backbone, no autocast"),
    "coarse_bf16": ("bf16_cosine_centred",
                    "the low-precision copy is an 8-bit float one: weights and each block's "
                    "output rounded through float8 e4m3"),
    "unbatched": ("batch_speedup_fp32",
                  "embed forwards a batch one tile at a time"),
    "norm_per_batch": ("extract_ratio, extract_ratio_e2e",
                       "the per-band normalisation is re-estimated from the raster for "
                       "every batch"),
    "teacher_twice": ("pretrain_ratio",
                      "the DINO teacher's forward runs twice per step"),
    "cv_refit": ("cv_ratio", "cross-validation fits every head twice on each fold"),
}

_applied: list = []
_keep: list = []  # what leak_windows leaks


def requested() -> list:
    names = [p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()]
    bad = [p for p in names if p not in PLANTS]
    if bad:
        raise SystemExit(f"{ENV}: unknown plant(s) {', '.join(bad)}; known: "
                         f"{', '.join(PLANTS)}")
    return names


def apply(pkg: str = "soilssl") -> list:
    """Apply the plants named in the environment to ``pkg``.core (once); -> their names."""
    names = [p for p in requested() if p not in _applied]
    if not names:
        return list(_applied)
    raster = importlib.import_module(f"{pkg}.core.raster")
    features = importlib.import_module(f"{pkg}.core.features")
    for name in names:
        globals()["_plant_" + name](pkg, raster, features)
        _applied.append(name)
    print(f"[bench] planted regression(s): {', '.join(names)}", file=sys.stderr, flush=True)
    return list(_applied)


# ---------------------------------------------------------------------------
# The plants
# ---------------------------------------------------------------------------
def _plant_leak_windows(pkg, raster, features):
    import numpy as np
    read = raster.TileSource.read

    def leaky_read(self, window, *a, **kw):
        arr, valid = read(self, window, *a, **kw)
        # 2 bytes a pixel: a bool copy (200 kB a 448 px tile, 39 MB over --quick's 6k
        # raster) read 1.30, at the target, within the runs' noise
        _keep.append(valid.astype(np.uint16))
        return arr, valid

    raster.TileSource.read = leaky_read


def _plant_no_cache_cap(pkg, raster, features):
    class Uncapped:
        def __init__(self, limit):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    importlib.import_module(f"{pkg}.core.batches")._CappedBlockCache = Uncapped


def _plant_no_bf16(pkg, raster, features):
    import contextlib
    autocast = features.autocast

    def fp32_autocast(device, amp="auto"):
        ctx = autocast(device, amp)
        return contextlib.nullcontext() if getattr(ctx, "fast_dtype", None) is not None \
            and str(ctx.fast_dtype) == "torch.bfloat16" else ctx

    features.autocast = fp32_autocast
    features.low_precision_copy = lambda backbone, device, amp="auto": backbone


def _plant_coarse_bf16(pkg, raster, features):
    import torch
    copy_ = features.low_precision_copy

    def coarse_copy(backbone, device, amp="auto"):
        out = copy_(backbone, device, amp)
        if out is not backbone:
            with torch.no_grad():
                for p in out.model.parameters():
                    p.copy_(p.to(torch.float8_e4m3fn).to(p.dtype))
            for blk in getattr(out.model, "blocks", []):
                blk.register_forward_hook(
                    lambda m, i, o: o.to(torch.float8_e4m3fn).to(o.dtype))
        return out

    features.low_precision_copy = coarse_copy


def _plant_unbatched(pkg, raster, features):
    import numpy as np
    embed = features.embed

    def one_by_one(backbone, batch, device, amp="auto", pool="cls"):
        return np.concatenate([embed(backbone, batch[i:i + 1], device, amp, pool)
                               for i in range(len(batch))])

    features.embed = one_by_one


def _plant_norm_per_batch(pkg, raster, features):
    batches = importlib.import_module(f"{pkg}.core.batches")
    iter_batches = batches.iter_batches

    def renormalising(source, windows, norm, *a, **kw):
        for item in iter_batches(source, windows, norm, *a, **kw):
            source.compute_normalization()
            yield item

    batches.iter_batches = renormalising
    features.iter_batches = renormalising


def _plant_teacher_twice(pkg, raster, features):
    pretrain = importlib.import_module(f"{pkg}.core.pretrain")
    build = pretrain._Run.build

    def build_twice(self, resumed):
        build(self, resumed)
        forward = self.nets.teacher.forward

        def twice(*a, **kw):
            forward(*a, **kw)
            return forward(*a, **kw)

        self.nets.teacher.forward = twice

    pretrain._Run.build = build_twice


def _plant_cv_refit(pkg, raster, features):
    cv = importlib.import_module(f"{pkg}.core.cv")
    make = cv.make_regressor

    def make_twice(*a, **kw):
        reg = make(*a, **kw)
        fit = reg.fit

        def fit_twice(*fa, **fkw):
            fit(*fa, **fkw)
            return fit(*fa, **fkw)

        reg.fit = fit_twice
        return reg

    cv.make_regressor = make_twice


# ---------------------------------------------------------------------------
# qgis_process: a sitecustomize that plants and probes when QGIS imports the engine
# ---------------------------------------------------------------------------
PROBE_ENV = "SOILSSL_BENCH_PROBE"
_marks: dict = {}


def probe(pkg: str = "soilssl", start: float = None) -> None:
    """Record wall-clock milestones (time.time) of an extraction in this process and write
    them as JSON to $SOILSSL_BENCH_PROBE when extract_features returns: python_start,
    engine_imported, load_backbone_start/_end, extract_start/_end."""
    import json
    import time
    path = os.environ.get(PROBE_ENV)
    if not path or _marks:
        return
    if start is not None:
        _marks["python_start"] = start
    _marks["engine_imported"] = time.time()
    backbone = importlib.import_module(f"{pkg}.core.backbone")
    features = importlib.import_module(f"{pkg}.core.features")

    def timed(module, name, tag, dump=False):
        fn = getattr(module, name)

        def wrapper(*a, **kw):
            _marks.setdefault(tag + "_start", time.time())
            out = fn(*a, **kw)
            _marks[tag + "_end"] = time.time()
            if dump:
                with open(path, "w") as f:
                    json.dump(_marks, f)
            return out

        setattr(module, name, wrapper)

    try:
        import torch
        _marks["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    timed(backbone, "load_backbone", "load_backbone")
    timed(features, "extract_features", "extract", dump=True)
    embed = features.embed  # seconds inside the forward (embed) of the extraction
    _marks["embed_seconds"], _marks["embed_calls"] = 0.0, 0

    def timed_embed(*a, **kw):
        t = time.perf_counter()
        out = embed(*a, **kw)
        _marks["embed_seconds"] += time.perf_counter() - t
        _marks["embed_calls"] += 1
        return out

    features.embed = timed_embed


SITECUSTOMIZE = '''\
import os, sys, time
_t0 = time.time()
if os.environ.get("{env}") or os.environ.get("{probe_env}"):
    import importlib.abc, importlib.util

    class _SoilSSLBench(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "soilssl.core.features":
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                sys.modules[name] = module
                sys.path.insert(0, {scripts!r})
                import bench_plants
                bench_plants.apply("soilssl")
                bench_plants.probe("soilssl", _t0)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _SoilSSLBench())
'''


def write_sitecustomize(folder) -> str:
    """A folder holding a sitecustomize.py that applies the plants and the probe in a
    process started with it on PYTHONPATH (qgis_process); -> the folder."""
    folder = os.path.abspath(str(folder))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE.format(env=ENV, probe_env=PROBE_ENV,
                                     scripts=os.path.dirname(os.path.abspath(__file__))))
    return folder
