#!/usr/bin/env bash
# Installs what SoilSSL needs on a fresh Debian 12 machine, skipping what is there:
# QGIS (apt) and .venv (Debian's Python with system site-packages, so PyQGIS is visible).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

if ! [ -x /usr/bin/qgis_process.bin ] || ! /usr/bin/python3 -c "import qgis.core, matplotlib" 2>/dev/null; then
  echo "== installing QGIS from Debian's packages"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    python3-qgis qgis-providers qgis python3-venv python3-matplotlib >/dev/null
fi

# The desktop test (tests/test_desktop.py) runs the real QGIS on a virtual X display:
# Xvfb, a window manager (openbox), ImageMagick's `import` for screenshots, X11 utilities.
if ! command -v xvfb-run >/dev/null || ! command -v openbox >/dev/null \
    || ! command -v import >/dev/null || ! command -v xwininfo >/dev/null; then
  echo "== installing Xvfb, openbox, ImageMagick (desktop test)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    xvfb xauth openbox imagemagick x11-utils >/dev/null
fi

if ! .venv/bin/python -c "import torch, timm, rasterio, sklearn, pytest" 2>/dev/null; then
  echo "== creating .venv (torch, timm, rasterio, scikit-learn)"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi

# The package is imported as `soilssl` whatever this folder is called.
mkdir -p .build/plugins
ln -sfn "$ROOT" .build/plugins/soilssl
echo "== set-up complete"
