"""Held-out coverage of SoilSSL's prediction intervals (issue 13) on the demo and real sets.

For each set: a seeded random-initialised ViT (no weights can be downloaded here), fit_points
METHOD=all on 6 K-means spatial folds, then for the method mapped per target the coverage
of the conformal intervals on held-out folds (profile and quantile from the other folds),
locally scaled by the DI error profile and, for comparison, with a constant scale.

  .venv/bin/python scripts/trust_coverage.py [--sets demo dk_vindum] [--level 0.9]
"""
import argparse
import json
import os
import sys

from evaluate import read_points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".build", "plugins"))
ARCH = "vit_tiny_patch16_224"
SETS = {
    "demo": (os.path.join(ROOT, "resources", "demo", "rgb.tif"),
             os.path.join(ROOT, "resources", "demo", "points.geojson"), ["ph_h2o", "si"]),
    "dk_vindum": (os.path.join(ROOT, "eval", "data", "dk_vindum", "rgb.tif"),
                  os.path.join(ROOT, "eval", "data", "dk_vindum", "points.gpkg"),
                  ["clay", "silt", "sand", "humus"]),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--tile", type=int, default=64)
    args = ap.parse_args()
    import torch
    from soilssl.core.backbone import create_model, load_backbone, save_backbone
    from soilssl.core.errorprofile import aoa_state, train_di
    from soilssl.core.intervals import heldout_coverage
    from soilssl.core.raster import TileSource
    from soilssl.core.soil import fit_points
    import tempfile
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "init.pth")
        torch.manual_seed(0)
        save_backbone(ckpt, create_model(ARCH, 3, args.tile), ARCH, 3, args.tile)
        vit = load_backbone(ckpt, tile_size=args.tile)
        for name in args.sets:
            image, pts, fields = SETS[name]
            with TileSource(image) as src:
                fit = fit_points(src, read_points(pts, fields), vit, method="all", n_folds=6,
                                 seed=0, cache=os.path.join(tmp, "cache"), device="cpu")
            model = fit.model
            for t in fit.cv.target_names:
                label = fit.chosen[t]
                res = fit.cv.residuals(t, label)
                state = aoa_state(model, t)
                di = train_di(state)
                scaled = heldout_coverage(di, res, fit.folds, args.level, state["threshold"])
                plain = heldout_coverage(None, res, fit.folds, args.level)
                out[f"{name}/{t}"] = {"method": label, "n": scaled["n"],
                                      "coverage_di": scaled["coverage"],
                                      "width_di": scaled["mean_width"],
                                      "coverage_constant": plain["coverage"],
                                      "width_constant": plain["mean_width"],
                                      "per_fold_di": scaled["per_fold"]}
                print(f"{name:10s} {t:8s} {label:12s} n={scaled['n']:4d} coverage "
                      f"{scaled['coverage']:.3f} (DI-scaled, width {scaled['mean_width']:.3f}) "
                      f"{plain['coverage']:.3f} (constant, width {plain['mean_width']:.3f})",
                      flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
