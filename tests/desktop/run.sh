#!/usr/bin/env bash
# SoilSSL in the real QGIS desktop (issue 10): builds dist/soilssl.zip, starts /usr/bin/qgis
# under Xvfb with openbox and a fresh profile, and runs tests/desktop/desktop_run.py in it
# (install from the ZIP, the whole chain as the dialogs run it, checks, screenshots).
#   bash tests/desktop/run.sh [OUT_DIR]     (default .build/desktop)
# Exit status: QGIS's (0 = every check passed; 1 = a check failed; 3 = time-out;
# 134/139 = QGIS crashed).  OUT_DIR gets results.json, *.png, qgis.log and the outputs.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/.build/desktop}")
for tool in xvfb-run openbox import /usr/bin/qgis; do
  command -v "$tool" >/dev/null || { echo "desktop test: $tool missing (run make setup)" >&2; exit 2; }
done
rm -rf "$OUT"
mkdir -p "$OUT"
bash "$ROOT/scripts/make_zip.sh" "$OUT/soilssl.zip" || exit 2
PROFILES=$(mktemp -d "${TMPDIR:-/tmp}/soilssl-desktop-XXXXXX")
trap 'rm -rf "$PROFILES"' EXIT
SITE=$("$ROOT/.venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

# The starting backbone, made outside QGIS (a random ViT-Tiny at 32 px; nothing can be
# downloaded): inside QGIS, torch is first imported by an algorithm's task, as for a user.
mkdir -p "$OUT/outputs" "$PROFILES/pkg" && ln -s "$ROOT" "$PROFILES/pkg/soilssl"
PYTHONPATH="$PROFILES/pkg" "$ROOT/.venv/bin/python" - "$OUT/outputs/init.pth" <<'PY' || exit 2
import sys, torch
from soilssl.core.backbone import create_model, save_backbone
torch.manual_seed(0)
save_backbone(sys.argv[1], create_model("vit_tiny_patch16_224", 3, 32), "vit_tiny_patch16_224", 3, 32)
PY

export PYTHONPATH="$SITE"                  # torch, timm, rasterio, scikit-learn for QGIS
export SOILSSL_ZIP="$OUT/soilssl.zip" SOILSSL_DEMO="$ROOT/resources/demo"
export SOILSSL_DESKTOP_OUT="$OUT" SOILSSL_TIMEOUT="${SOILSSL_TIMEOUT:-300}"
export XDG_RUNTIME_DIR="$PROFILES/run" HOME="$PROFILES/home"  # nothing of the user's is read
mkdir -p "$XDG_RUNTIME_DIR" "$HOME" && chmod 700 "$XDG_RUNTIME_DIR"
unset QT_QPA_PLATFORM QGIS_PLUGINPATH QGIS_CUSTOM_CONFIG_PATH  # the real desktop, xcb
# Mesa's software OpenGL (llvmpipe: libLLVM) as on a desktop without GPU drivers.
export LIBGL_ALWAYS_SOFTWARE=1

timeout -k 10 "$((SOILSSL_TIMEOUT + 120))" xvfb-run -a -s "-screen 0 1600x1000x24" \
  bash -c 'openbox >/dev/null 2>&1 & sleep 1; exec /usr/bin/qgis --profiles-path "$0" \
    --nologo --noversioncheck --code "$1"' "$PROFILES" "$ROOT/tests/desktop/desktop_run.py" \
  >"$OUT/qgis.log" 2>&1
rc=$?
grep -E "^\[desktop\]|died on signal|Traceback|Error" "$OUT/qgis.log" | head -120
echo "desktop test: QGIS exit status $rc; results in $OUT"
exit $rc
