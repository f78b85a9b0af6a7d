#!/usr/bin/env bash
# SoilSSL in the real QGIS desktop (issue 10): builds dist/soilssl.zip, starts /usr/bin/qgis
# under Xvfb with openbox and a fresh profile, and runs tests/desktop/desktop_run.py in it
# twice: 1. a new user's QGIS without torch (install from the ZIP, the missing-packages
# warning, "cannot be run", Plugins > SoilSSL > Install dependencies…: results_fresh.json);
# 2. with the venv's packages: the whole chain as the dialogs run it, checks, screenshots.
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

export SOILSSL_ZIP="$OUT/soilssl.zip" SOILSSL_DEMO="$ROOT/resources/demo"
export SOILSSL_DESKTOP_OUT="$OUT" SOILSSL_TIMEOUT="${SOILSSL_TIMEOUT:-300}"
export XDG_RUNTIME_DIR="$PROFILES/run" HOME="$PROFILES/home"  # nothing of the user's is read
mkdir -p "$XDG_RUNTIME_DIR" "$HOME" && chmod 700 "$XDG_RUNTIME_DIR"
unset QT_QPA_PLATFORM QGIS_PLUGINPATH QGIS_CUSTOM_CONFIG_PATH  # the real desktop, xcb
# Mesa's software OpenGL (llvmpipe: libLLVM) as on a desktop without GPU drivers.
export LIBGL_ALWAYS_SOFTWARE=1

qgis_desktop() {  # PROFILES_DIR LOG TIME_LIMIT: /usr/bin/qgis on Xvfb with openbox
  timeout -k 10 "$3" xvfb-run -a -s "-screen 0 1600x1000x24" \
    bash -c 'openbox >/dev/null 2>&1 & sleep 1; exec /usr/bin/qgis --profiles-path "$0" \
      --nologo --noversioncheck --code "$1"' "$1" "$ROOT/tests/desktop/desktop_run.py" >"$2" 2>&1
}

# Phase 1, a new user: Debian's QGIS and Python only (no venv: torch must not import), a
# fresh profile, the plugin from the ZIP; screenshots of the missing-packages path.
unset PYTHONPATH
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "desktop test: the system python3 has torch: phase 1 needs a QGIS without it" >&2; exit 2
fi
mkdir -p "$PROFILES/fresh"
SOILSSL_PHASE=fresh SOILSSL_TIMEOUT=120 qgis_desktop "$PROFILES/fresh" "$OUT/qgis_fresh.log" 180
rc=$?
grep -E "^\[desktop\]|died on signal|Traceback|Error" "$OUT/qgis_fresh.log" | head -60
if [ $rc -ne 0 ]; then
  echo "desktop test: phase 1 (no torch): QGIS exit status $rc; results in $OUT"; exit $rc
fi

# Phase 2: the packages present (the venv's), the whole chain.
export PYTHONPATH="$SITE"                  # torch, timm, rasterio, scikit-learn for QGIS
qgis_desktop "$PROFILES" "$OUT/qgis.log" "$((SOILSSL_TIMEOUT + 120))"
rc=$?
grep -E "^\[desktop\]|died on signal|Traceback|Error" "$OUT/qgis.log" | head -120
echo "desktop test: QGIS exit status $rc; results in $OUT"
exit $rc
