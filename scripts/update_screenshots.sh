#!/usr/bin/env bash
# Copies the README's screenshots from the desktop test's output (bash tests/desktop/run.sh,
# or make desktop) into docs/screenshots/: the new-user path without torch (phase 1).
#   bash scripts/update_screenshots.sh [DESKTOP_OUT]     (default .build/desktop)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${1:-$ROOT/.build/desktop}
DEST=$ROOT/docs/screenshots
mkdir -p "$DEST"
for shot in fresh_toolbox_soilssl fresh_cannot_run fresh_install_dependencies; do
  [ -s "$SRC/$shot.png" ] || { echo "update_screenshots: $SRC/$shot.png missing (run make desktop)" >&2; exit 1; }
  # 8-bit palette PNG, at most 700 px wide: small files for the README
  convert "$SRC/$shot.png" -resize '700x>' -strip -colors 128 "PNG8:$DEST/$shot.png"
  size=$(stat -c %s "$DEST/$shot.png")
  [ "$size" -lt 153600 ] || { echo "update_screenshots: $shot.png is $size bytes (> 150 KB)" >&2; exit 1; }
  echo "docs/screenshots/$shot.png: $size bytes"
done
