#!/usr/bin/env bash
# The SoilSSL demo: the whole pipeline through qgis_process on resources/demo (made by
# scripts/make_demo.py: an RGB scene + DEM whose textures follow a hidden soil field, and
# 300 sample points carrying that field's values plus noise). Writes into demo_out/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
QP=scripts/qgis_process
OUT=demo_out
DEMO=resources/demo
ARCH=${DEMO_ARCH:-vit_tiny_patch16_224}
TILE=${DEMO_TILE:-64}
EPOCHS=${DEMO_EPOCHS:-4}
LR=${DEMO_LR:-0.005}  # per 256 tiles: 6e-4 at batch 32; a short run needs more than the default
mkdir -p "$OUT"
run() { echo "== $1"; "$QP" run "$@" 2>&1 | grep -vE "^(QStandardPaths|<string>)" | sed 's/^/   /'; }

# 1. Baseline weights: the same ViT, randomly initialised (no ImageNet weights can be
#    downloaded here; with them, pass INIT=dino_vit...pth to pretrain and COMPARE_BACKBONE).
PYTHONPATH=.build/plugins .venv/bin/python - "$ARCH" "$TILE" "$OUT/init_random.pth" <<'PY'
import sys, torch
from soilssl.core.backbone import create_model, save_backbone
arch, tile, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
save_backbone(out, create_model(arch, 3, tile), arch, 3, tile)
print(f"== wrote {out} (random {arch}, the comparison backbone)")
PY

# 2. Self-supervised pretraining (DINO) on the demo scene. The demo points are dense (every
#    ~90 m), so the paper's 448 px buffer would exclude every tile: BUFFER=0 here.
run soilssl:pretrain -- INPUT=$DEMO/rgb.tif ARCH=$ARCH INIT=$OUT/init_random.pth \
  TILE_SIZE=$TILE STRIDE=$((TILE / 2)) EPOCHS=$EPOCHS BATCH_SIZE=32 OUT_DIM=1024 LOCAL_CROPS=4 LR=$LR \
  BUFFER=0 DEVICE=auto OUTPUT=$OUT/ssl_backbone.pth

# 3. Features of the scene and the paper's unsupervised maps.
run soilssl:extractfeatures -- INPUT=$DEMO/rgb.tif BACKBONE=$OUT/ssl_backbone.pth \
  STRIDE=$((TILE / 2)) DEVICE=auto OUTPUT=$OUT/features.tif
run soilssl:clustermap -- INPUT=$OUT/features.tif K=8 OUTPUT=$OUT/clusters.tif
run soilssl:pcamap -- INPUT=$OUT/features.tif OUTPUT=$OUT/pca.tif

# 4. Soil heads on the points: every method on the same 6 spatial folds, SSL vs random init.
run soilssl:fitpoints -- INPUT=$DEMO/rgb.tif BACKBONE=$OUT/ssl_backbone.pth \
  COMPARE_BACKBONE=$OUT/init_random.pth POINTS=$DEMO/points.geojson \
  FIELDS=ph_h2o FIELDS=ph_kcl FIELDS=si METHOD=all FOLDS=6 DEVICE=auto \
  OUTPUT_POINTS=$OUT/points_cv.gpkg OUTPUT_MODEL=$OUT/soil_model.pth OUTPUT_REPORT=$OUT/report.html \
  | grep -v "^   CV_TABLE"

# 5. Prediction map with uncertainty and area of applicability.
run soilssl:predictmap -- INPUT=$DEMO/rgb.tif MODEL=$OUT/soil_model.pth STRIDE=$((TILE / 2)) \
  DEVICE=auto OUTPUT=$OUT/prediction.tif OUTPUT_UNCERTAINTY=$OUT/uncertainty.tif \
  OUTPUT_AOA=$OUT/aoa.tif

# 6. How close is the map to the hidden truth?
PYTHONPATH=.build/plugins .venv/bin/python - "$OUT/prediction.tif" "$DEMO/truth_ph.tif" <<'PY'
import sys, numpy as np, rasterio
from rasterio.warp import reproject, Resampling
with rasterio.open(sys.argv[1]) as p, rasterio.open(sys.argv[2]) as t:
    pred = p.read(1, masked=True)
    truth = np.empty(pred.shape, np.float32)
    reproject(t.read(1), truth, src_transform=t.transform, src_crs=t.crs,
              dst_transform=p.transform, dst_crs=p.crs, resampling=Resampling.average)
ok = ~pred.mask & np.isfinite(truth)
r = np.corrcoef(pred.data[ok], truth[ok])[0, 1]
rmse = float(np.sqrt(np.mean((pred.data[ok] - truth[ok]) ** 2)))
print(f"== predicted pH H2O map vs hidden truth: r = {r:.2f}, RMSE = {rmse:.2f} ({ok.sum()} px)")
PY
echo "== demo outputs in $OUT/:"
ls -1 "$OUT" | sed 's/^/   /'
echo "   Open them in QGIS (clusters.tif and pca.tif carry their styles' intent: paletted / RGB)."
