"""`make evaluate`: SoilSSL against the everyday baseline on real soil data (eval/data).

For each data set, as a user would through qgis_process:
  1. a randomly initialised ViT (no ImageNet weights can be downloaded here);
  2. soilssl:pretrain (DINO) on the set's image from that initialisation;
  3. soilssl:fitpoints METHOD=all with COMPARE_BACKBONE = the random initialisation, on 6
     K-means spatial folds (rf_pixels, mlp, ridge, rf_features, and the [random] rows);
  4. on the very same folds (read back from the out-of-fold points layer), the soil
     scientist's everyday baseline that SoilSSL does not run itself yet: a random forest on
     *every* covariate band at the point (the image's bands plus the set's covariate rasters).
Writes eval_out/results.json and eval_out/table.md. Nothing is tuned per set: every set gets
the same settings below.

  .venv/bin/python scripts/evaluate.py [--epochs 4] [--sets dk_vindum eberg ...]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "eval", "data")
QP = os.path.join(ROOT, "scripts", "qgis_process")
ARCH = "vit_tiny_patch16_224"

# Same settings for every set; only what the data dictate differs (fields, covariate files).
SETS = {
    "dk_vindum": dict(image="rgb.tif", fields=["clay", "silt", "sand", "humus"],
                      covariates=["covariates.tif"]),
    "dk_faardrup": dict(image="rgb.tif", fields=["clay", "silt", "sand", "humus"],
                        covariates=["covariates.tif"]),
    "dk_jyndevad": dict(image="rgb.tif", fields=["clay", "silt", "sand", "humus"],
                        covariates=["covariates.tif"]),
    "eberg": dict(image="terrain_ndvi_25m.tif", fields=["sand", "silt", "clay"],
                  covariates=["soilmap_25m.tif", "covariates_100m.tif"]),
}
SSL_METHODS = ("mlp", "ridge", "rf_features")


def qgis_process(alg, **params):
    args = [QP, "--json", "run", f"soilssl:{alg}", "--"]
    for key, value in params.items():
        for v in (value if isinstance(value, list) else [value]):
            args.append(f"{key}={v}")
    proc = subprocess.run(args, capture_output=True, text=True)
    start = proc.stdout.find("{")
    if proc.returncode != 0 or start < 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{alg} failed ({proc.returncode})")
    return json.loads(proc.stdout[start:])["results"]


def random_init(path, tile):
    sys.path.insert(0, os.path.join(ROOT, ".build", "plugins"))
    import torch
    from soilssl.core.backbone import create_model, save_backbone
    torch.manual_seed(0)
    save_backbone(path, create_model(ARCH, 3, tile), ARCH, 3, tile)


def read_oof(path, fields):
    """Coordinates, fold and targets of the points fitpoints used, from its output layer."""
    from osgeo import ogr
    ds = ogr.Open(path)
    layer = ds.GetLayer()
    xy, folds, y = [], [], []
    for feat in layer:
        geom = feat.GetGeometryRef()
        xy.append((geom.GetX(), geom.GetY()))
        folds.append(feat.GetField("cv_fold"))
        y.append([np.nan if feat.GetField(f) is None else float(feat.GetField(f))
                  for f in fields])
    return np.array(xy), np.array(folds), np.array(y)


def sample_covariates(paths, xy, crs_points):
    """Every band of every raster at the points (nearest pixel; reprojected where needed)."""
    import rasterio
    from rasterio.warp import transform as warp
    cols = []
    for path in paths:
        with rasterio.open(path) as ds:
            xs, ys = warp(crs_points, ds.crs, xy[:, 0], xy[:, 1]) \
                if ds.crs.to_string() != crs_points else (xy[:, 0], xy[:, 1])
            vals = np.array(list(ds.sample(zip(xs, ys), masked=True)), dtype=object)
            arr = np.array([[np.nan if np.ma.is_masked(v) else float(v) for v in row]
                            for row in vals], dtype=float)
            if ds.nodata is not None and np.isfinite(ds.nodata):
                arr[arr == ds.nodata] = np.nan
            cols.append(arr)
    return np.hstack(cols)


def rf_all_covariates(X, y, folds, seed=0):
    """RMSE per fold of a random forest on all covariates, the everyday DSM baseline
    (500 trees, sklearn defaults otherwise; NaN covariates imputed by the training median)."""
    from sklearn.ensemble import RandomForestRegressor
    rmse = []
    for k in np.unique(folds):
        test, train = folds == k, folds != k
        train &= np.isfinite(y)
        test &= np.isfinite(y)
        if test.sum() == 0:
            continue
        med = np.nanmedian(X[train], axis=0)
        fill = lambda a: np.where(np.isfinite(a), a, med)  # noqa: E731
        rf = RandomForestRegressor(n_estimators=500, n_jobs=2, random_state=seed)
        rf.fit(fill(X[train]), y[train])
        pred = rf.predict(fill(X[test]))
        rmse.append(float(np.sqrt(np.mean((pred - y[test]) ** 2))))
    return float(np.mean(rmse)), float(np.std(rmse))


def evaluate(name, spec, out, epochs, tile, stride):
    folder = os.path.join(DATA, name)
    image = os.path.join(folder, spec["image"])
    points = os.path.join(folder, "points.gpkg")
    work = os.path.join(out, name)
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    init = os.path.join(work, "init_random.pth")
    random_init(init, tile)
    pre = qgis_process("pretrain", INPUT=image, ARCH=ARCH, INIT=init, TILE_SIZE=tile,
                       STRIDE=stride, EPOCHS=epochs, BATCH_SIZE=32, OUT_DIM=1024,
                       LOCAL_CROPS=4, LR=0.005, BUFFER=0, DEVICE="cpu",
                       OUTPUT=os.path.join(work, "ssl.pth"))
    fit = qgis_process("fitpoints", INPUT=image, BACKBONE=os.path.join(work, "ssl.pth"),
                       COMPARE_BACKBONE=init, POINTS=points, FIELDS=spec["fields"],
                       METHOD="all", FOLDS=6, DEVICE="cpu",
                       OUTPUT_POINTS=os.path.join(work, "oof.gpkg"),
                       OUTPUT_MODEL=os.path.join(work, "model.pth"))
    table = json.loads(fit["CV_TABLE"])
    xy, folds, y = read_oof(os.path.join(work, "oof.gpkg"), spec["fields"])
    import rasterio
    with rasterio.open(image) as ds:
        crs = ds.crs.to_string()
    X = sample_covariates([image] + [os.path.join(folder, c) for c in spec["covariates"]],
                          xy, crs)
    rows = []
    for t, field in enumerate(spec["fields"]):
        cv = {r["method"]: (r["rmse_mean"], r["rmse_std"], r["r2_pooled"])
              for r in table if r["target"] == field}
        base = rf_all_covariates(X, y[:, t], folds)
        ssl_best = min(SSL_METHODS, key=lambda m: cv[m][0])
        rnd = {m: cv[f"{m} [compare]"][0] for m in SSL_METHODS if f"{m} [compare]" in cv}
        rows.append(dict(set=name, target=field, n=int(np.isfinite(y[:, t]).sum()),
                         rf_all_covariates=base, rf_pixels=cv["rf_pixels"][:2],
                         ssl_best=ssl_best, ssl=cv[ssl_best][:2],
                         random_best=min(rnd.values()) if rnd else None,
                         all=cv))
    print(f"{name}: {len(xy)} points, {int(pre['TILES'])} pretraining tiles, "
          f"{time.time() - t0:.0f} s", flush=True)
    return rows


def markdown(rows, settings):
    lines = [f"Settings (all sets): {settings}.", "",
             "RMSE, mean ± std over 6 K-means spatial folds (same folds in every column).", "",
             "| set | target | n | RF all covariates | rf_pixels (image bands) | best SSL method "
             "| SSL vs RF all | best random-init ViT |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base, ssl = r["rf_all_covariates"][0], r["ssl"][0]
        lines.append(
            f"| {r['set']} | {r['target']} | {r['n']} | {base:.2f} ± {r['rf_all_covariates'][1]:.2f}"
            f" | {r['rf_pixels'][0]:.2f} ± {r['rf_pixels'][1]:.2f} | {r['ssl_best']} "
            f"{ssl:.2f} ± {r['ssl'][1]:.2f} | {100 * (ssl - base) / base:+.1f} % | "
            + (f"{r['random_best']:.2f}" if r["random_best"] is not None else "–") + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--out", default=os.path.join(ROOT, "eval_out"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for name in args.sets:
        rows += evaluate(name, SETS[name], args.out, args.epochs, args.tile, args.stride)
    settings = (f"{ARCH} from random weights, DINO {args.epochs} epochs on the set's image "
                f"(tiles {args.tile} px, stride {args.stride}, BUFFER 0), CPU")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(settings=settings, rows=rows), f, indent=1)
    table = markdown(rows, settings)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
