"""Do the CV folds test the map? W of kmeans, random and kNNDM folds on the demo and eval/data.

For each data set, the points fitpoints would use (inside the image, on valid pixels) and
the map's locations (core.knndm.prediction_locations: 2000 valid pixels of the image, seed
0): W, the Wasserstein distance between the CV test-to-train and the prediction-to-sample
nearest-neighbour distance distributions, of FOLD_MODE kmeans, random and knndm
(FOLDS=6, SEED=0), as fitpoints logs and reports it.

On the demo, where the true pH map is known (truth_ph.tif), it also checks what W means
for the error: a random forest on the pixel values (rf_pixels) is cross-validated with each
fold mode, and its CV RMSE is compared with its true RMSE over the map's locations (the
forest refitted on all points). Once with all points, once with a clustered subset (the
points within 200 m of 6 of them, drawn with seed 0).

  .venv/bin/python scripts/geodist.py [--folds 6] [--sets demo eberg ...] [--json out.json]
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "plugins"))
if not os.path.exists(os.path.join(ROOT, ".build", "plugins", "soilssl")):
    os.makedirs(os.path.join(ROOT, ".build", "plugins"), exist_ok=True)
    os.symlink(ROOT, os.path.join(ROOT, ".build", "plugins", "soilssl"))

from soilssl.core.cv import PIXELS, cross_validate  # noqa: E402
from soilssl.core.features import pixel_values  # noqa: E402
from soilssl.core.heads import make_regressor  # noqa: E402
from soilssl.core.knndm import fold_distances, prediction_locations  # noqa: E402
from soilssl.core.raster import TileSource  # noqa: E402
from soilssl.core.soil import Points, locate  # noqa: E402

DEMO = os.path.join(ROOT, "resources", "demo")
DATA = os.path.join(ROOT, "eval", "data")
SETS = {
    "demo": (os.path.join(DEMO, "rgb.tif"), os.path.join(DEMO, "points.geojson"), "ph_h2o"),
    "dk_vindum": (os.path.join(DATA, "dk_vindum", "rgb.tif"),
                  os.path.join(DATA, "dk_vindum", "points.gpkg"), "clay"),
    "dk_faardrup": (os.path.join(DATA, "dk_faardrup", "rgb.tif"),
                    os.path.join(DATA, "dk_faardrup", "points.gpkg"), None),
    "dk_jyndevad": (os.path.join(DATA, "dk_jyndevad", "rgb.tif"),
                    os.path.join(DATA, "dk_jyndevad", "points.gpkg"), None),
    "eberg": (os.path.join(DATA, "eberg", "terrain_ndvi_25m.tif"),
              os.path.join(DATA, "eberg", "points.gpkg"), "sand"),
}


def read_points(path, field=None):
    """(xs, ys, crs wkt, values) of a point layer (GDAL/OGR, as QGIS reads it)."""
    from osgeo import ogr
    ds = ogr.Open(path)
    layer = ds.GetLayer()
    xs, ys, vals = [], [], []
    for f in layer:
        g = f.GetGeometryRef()
        xs.append(g.GetX())
        ys.append(g.GetY())
        v = f.GetField(field) if field else None
        vals.append(np.nan if v is None else float(v))
    srs = layer.GetSpatialRef()
    crs = srs.ExportToWkt() if srs is not None else "EPSG:4326"
    if path.endswith(".geojson"):
        crs = "EPSG:4326"  # RFC 7946: lon/lat
    return np.array(xs), np.array(ys), crs, np.array(vals)


def usable(src, path, field):
    """Map coordinates, pixel values and target of the points fitpoints would use."""
    xs, ys, crs, vals = read_points(path, field)
    pts = Points(xs, ys, crs, vals[:, None], ["y"])
    cols, rows, keep = locate(src, pts)
    pix = np.full((len(cols), src.channels), np.nan, np.float32)
    pix[keep] = pixel_values(src, cols[keep], rows[keep])
    keep &= np.isfinite(pix).all(axis=1)
    x, y = src.transform @ (cols[keep], rows[keep])
    return np.column_stack([x, y]), pix[keep], vals[keep]


def w_row(name, xy, pred, folds, seed):
    gd = fold_distances(xy, pred, folds, seed)
    return gd, {"set": name, "n": len(xy), **{f"W_{k}": round(v, 2) for k, v in gd.W.items()},
                "W_sample": round(gd.W_sample, 2),
                "median_pred_to_sample": round(float(np.median(gd.prediction)), 2),
                "median_sample_to_sample": round(float(np.median(gd.sample)), 2)}


def cv_rmse(xy, pix, y, pred, folds, seed, modes):
    """Pooled CV RMSE of rf_pixels (the image bands at the point) with each fold mode."""
    from soilssl.core.cv import spatial_folds
    out = {}
    for mode in modes:
        f = spatial_folds(xy, folds, mode, seed, pred)
        cv = cross_validate({PIXELS: pix}, y, f, ["rf_pixels"], seed=seed)
        res = cv.residuals(cv.target_names[0], "rf_pixels")
        out[f"cv_rmse_{mode}"] = round(float(np.sqrt(np.nanmean(res ** 2))), 3)
    return out


def honesty(name, src, xy, pix, y, pred, folds, seed):
    """CV RMSE of rf_pixels with each fold mode vs its true RMSE at the map's locations."""
    truth = TileSource(os.path.join(DEMO, "truth_ph.tif"), bands=[1])
    tc, tr = truth.points_to_pixels(pred[:, 0], pred[:, 1])
    true_ph = pixel_values(truth, tc, tr)[:, 0]
    pc, pr = src.points_to_pixels(pred[:, 0], pred[:, 1])
    pred_pix = pixel_values(src, pc, pr)
    ok = np.isfinite(true_ph) & np.isfinite(pred_pix).all(axis=1) & np.isfinite(y).all()
    head = make_regressor("rf_pixels", seed=seed)
    head.fit(pix, y)
    true_rmse = float(np.sqrt(np.mean((head.predict(pred_pix[ok]) - true_ph[ok]) ** 2)))
    gd = fold_distances(xy, pred, folds, seed)
    row = {"set": name, "n": len(xy), "true_map_rmse": round(true_rmse, 3),
           **cv_rmse(xy, pix, y, pred, folds, seed, gd.cv)}
    row.update({f"W_{mode}": round(w, 2) for mode, w in gd.W.items()})
    return row


def clustered_subset(xy, radius=200.0, centres=6, seed=0):
    rng = np.random.default_rng(seed)
    c = xy[rng.choice(len(xy), centres, replace=False)]
    d = np.sqrt(((xy[:, None, :] - c[None]) ** 2).sum(-1)).min(axis=1)
    return d <= radius


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--json")
    args = ap.parse_args()
    rows, checks = [], []
    for name in args.sets:
        image, points, field = SETS[name]
        if not os.path.exists(points):
            print(f"{name}: {points} missing, skipped")
            continue
        with TileSource(image) as src:
            xy, pix, y = usable(src, points, field)
            pred = prediction_locations(src, seed=args.seed)
            gd, row = w_row(name, xy, pred, args.folds, args.seed)
            if field and name != "demo":
                ok = np.isfinite(y)
                row.update(target=field, **cv_rmse(xy[ok], pix[ok], y[ok], pred, args.folds,
                                                   args.seed, gd.cv))
            rows.append(row)
            print(json.dumps(row))
            if name == "demo":
                sub = clustered_subset(xy, seed=args.seed)
                _, row = w_row("demo, clustered subset", xy[sub], pred, args.folds, args.seed)
                rows.append(row)
                print(json.dumps(row))
                for label, sel in (("demo", np.ones(len(xy), bool)),
                                   ("demo, clustered subset", sub)):
                    checks.append(honesty(label, src, xy[sel], pix[sel], y[sel], pred,
                                          args.folds, args.seed))
                    print(json.dumps(checks[-1]))
    print("\n| set | points | W kmeans | W random | W knndm | sample-to-sample W | "
          "rf_pixels CV RMSE kmeans / random / knndm |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rmse = " / ".join(str(r.get(f"cv_rmse_{m}", "—")) for m in ("kmeans", "random", "knndm"))
        print(f"| {r['set']} | {r['n']} | {r.get('W_kmeans', '—')} | {r.get('W_random', '—')} | "
              f"{r.get('W_knndm', '—')} | {r['W_sample']} | "
              f"{r.get('target', '')} {rmse if 'target' in r else ''} |")
    if checks:
        print("\n| demo (true pH map) | points | true map RMSE | CV RMSE kmeans | random | knndm |")
        print("|---|---|---|---|---|---|")
        for r in checks:
            print(f"| {r['set']} | {r['n']} | {r['true_map_rmse']} | {r.get('cv_rmse_kmeans')} | "
                  f"{r.get('cv_rmse_random')} | {r.get('cv_rmse_knndm')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"geodist": rows, "demo_truth": checks}, f, indent=1)


if __name__ == "__main__":
    main()
