"""Sampling design on the demo and the real data (eval/data): how much the AOA grows.

For each set: a randomly initialised ViT-Tiny (seeded; no weights can be downloaded here)
gives a feature raster of the set's image (tiles 32 px), then soilssl.core.sampling designs
N new sites by each METHOD (the set's covariate rasters as COVARIATES) and compares the share
of tiles inside the area of applicability (AOA) before, with the design, with 20 random
designs of N sites (mean ± std) and with cLHS on the covariates alone, for three scenarios of
existing samples: all the set's points, 60 of them at random, and the 60 nearest to one
point (a survey that covered one part of the area).  Prints a Markdown
table and writes eval_out/sampling.json.

  .venv/bin/python scripts/eval_sampling.py [--n 20] [--sets demo eberg ...]
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "plugins"))
DATA = os.path.join(ROOT, "eval", "data")
DEMO = os.path.join(ROOT, "resources", "demo")
ARCH = "vit_tiny_patch16_224"
TILE = 32

SETS = {  # image, points, covariates, stride (px)
    "demo": (os.path.join(DEMO, "rgb.tif"), os.path.join(DEMO, "points.geojson"),
             [os.path.join(DEMO, "dem.tif")], 16),
    "dk_vindum": (os.path.join(DATA, "dk_vindum", "rgb.tif"),
                  os.path.join(DATA, "dk_vindum", "points.gpkg"),
                  [os.path.join(DATA, "dk_vindum", "covariates.tif")], 8),
    "eberg": (os.path.join(DATA, "eberg", "terrain_ndvi_25m.tif"),
              os.path.join(DATA, "eberg", "points.gpkg"),
              [os.path.join(DATA, "eberg", "covariates_100m.tif")], 8),
}


def read_points(path):
    from osgeo import ogr
    ds = ogr.Open(path)
    layer = ds.GetLayer()
    xs, ys = [], []
    for feat in layer:
        g = feat.GetGeometryRef()
        if g is not None:
            xs.append(g.GetX())
            ys.append(g.GetY())
    srs = layer.GetSpatialRef()
    srs.SetAxisMappingStrategy(0)  # OAMS_TRADITIONAL_GIS_ORDER: x = lon
    return (xs, ys), srs.ExportToWkt()


def subset(xy, how, seed=0):
    """The existing samples of a scenario: all points; random:K, K of them at random (a
    sparse survey); cluster:K, the K points nearest to a random one (a survey that covered
    one part of the area)."""
    import numpy as np
    xs, ys = np.asarray(xy[0]), np.asarray(xy[1])
    if how == "all":
        return xs, ys
    kind, k = how.split(":")
    k = min(int(k), len(xs))
    rng = np.random.default_rng(seed)
    if kind == "random":
        keep = rng.choice(len(xs), k, replace=False)
    else:
        i = rng.integers(len(xs))
        keep = np.argsort(np.hypot(xs - xs[i], ys - ys[i]))[:k]
    return xs[keep], ys[keep]


def features(name, image, stride, out):
    import torch
    from soilssl.core.backbone import create_model, load_backbone, save_backbone
    from soilssl.core.features import extract_features
    from soilssl.core.raster import TileSource
    ckpt = os.path.join(out, "random_vit_tiny.pth")
    if not os.path.exists(ckpt):
        torch.manual_seed(0)
        save_backbone(ckpt, create_model(ARCH, 3, TILE), ARCH, 3, TILE)
    path = os.path.join(out, f"{name}_features.tif")
    if not os.path.exists(path):
        bb = load_backbone(ckpt, device="cpu")
        with TileSource(image) as src:
            extract_features(src, bb, path, tile=TILE, stride=stride, device="cpu",
                             batch_size=64, workers=1)
    return path


def similarity_demo(out):
    """Similarity map on the demo: for each land cover, 5 of its points as references; the
    mean similarity at its other points and at the other classes' points."""
    feats = features("demo", SETS["demo"][0], SETS["demo"][3], out)
    import numpy as np
    import rasterio
    from osgeo import ogr
    from rasterio.warp import transform
    from soilssl.core.similarity import similarity_map
    source = ogr.Open(SETS["demo"][1])  # the layer lives as long as its data source
    pts = [(f.GetGeometryRef().GetX(), f.GetGeometryRef().GetY(), f.GetField("landcover"))
           for f in source.GetLayer()]
    labels = np.array([p[2] for p in pts])
    rng = np.random.default_rng(0)
    for cls in sorted(set(labels)):
        mine = np.flatnonzero(labels == cls)
        refs = [{"type": "Point", "coordinates": pts[i][:2]}
                for i in rng.choice(mine, 5, replace=False)]
        s = similarity_map(feats, os.path.join(out, f"similarity_{cls}.tif"), refs, "EPSG:4326")
        with rasterio.open(s["output"]) as r:
            xs, ys = transform("EPSG:4326", r.crs, [p[0] for p in pts], [p[1] for p in pts])
            vals = np.array([v[0] for v in r.sample(zip(xs, ys))])
        ok = vals > -9999
        print(f"| {cls} | {vals[ok & (labels == cls)].mean():.2f} | "
              f"{vals[ok & (labels != cls)].mean():.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--scenarios", nargs="*", default=["all", "random:60", "cluster:60"])
    ap.add_argument("--methods", nargs="*", default=["coverage", "clhs"])
    ap.add_argument("--out", default=os.path.join(ROOT, "eval_out"))
    ap.add_argument("--similarity", action="store_true", help="the similarity check instead")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.similarity:
        return similarity_demo(args.out)
    from soilssl.core.progress import Progress
    from soilssl.core.sampling import ratio_text, sampling_design
    rows = []
    for name in args.sets:
        image, pts, covs, stride = SETS[name]
        feats = features(name, image, stride, args.out)
        points, crs = read_points(pts)
        for scenario, method in [(sc, m) for sc in args.scenarios for m in args.methods]:
            xy = subset(points, scenario)
            t0 = time.time()
            log = Progress(on_info=lambda m, t0=t0: print(f"  [{time.time() - t0:6.1f} s] {m}",
                                                        flush=True))
            d = sampling_design(feats, xy, crs, n=args.n, covariates=covs, method=method,
                                seed=0, progress=log)
            s = d.summary
            s.update(set=name, scenario=scenario, seconds=round(time.time() - t0, 1))
            rows.append(s)
            print(f"{name} {scenario} {method}: {s['aoa_before']:.1%} -> {s['aoa_after']:.1%}; "
                  f"random "
                  f"{s['aoa_random_mean']:.1%} ± {s['aoa_random_std']:.1%}; ratio "
                  f"{ratio_text(s)} ({s['seconds']} s)", flush=True)
    print("\n| set | existing samples | method | on valid tiles | valid tiles | AOA now | "
          "+ design | + random (20) | + cLHS covariates | growth ratio |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for s in rows:
        cov = "" if s["aoa_covariate_clhs"] is None else f"{s['aoa_covariate_clhs']:.1%}"
        print(f"| {s['set']} | {s['scenario']} | {s['method']} | {s['existing']} | "
              f"{s['valid_tiles']} | "
              f"{s['aoa_before']:.1%} | {s['aoa_after']:.1%} | {s['aoa_random_mean']:.1%} ± "
              f"{s['aoa_random_std']:.1%} | {cov} | {ratio_text(s)} |")
    with open(os.path.join(args.out, "sampling.json"), "w") as f:
        json.dump(rows, f, indent=1, default=float)


if __name__ == "__main__":
    main()
