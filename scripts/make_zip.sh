#!/usr/bin/env bash
# Builds dist/soilssl.zip (or the path given) for Plugins > Manage and Install Plugins >
# Install from ZIP: one folder soilssl/ holding the plugin as users need it (metadata.txt,
# the code, resources/ with styles, icon, the modeler chain and the small demo scene),
# without tests, development scripts, docs/ (README screenshots), .venv/.build, caches, demo or bench outputs, .git.
#   make zip                       -> dist/soilssl.zip
#   bash scripts/make_zip.sh X.zip -> X.zip
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/dist/soilssl.zip}")
cd "$ROOT"

# What git tracks or would track (committed or new, not ignored); else every file.
list_files() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard
  else
    find . -type f -printf '%P\0'
  fi
}
# Development-only paths; caches, temporary and GDAL side files are excluded whatever
# .gitignore says.
EXCLUDE='^(tests|scripts|eval|docs|build|\.ci|\.build|\.venv|\.git|dist|demo_out|bench_out|eval_out)/|^(Makefile|pytest\.ini|requirements\.txt|\.gitignore)$|(^|/)__pycache__/|\.(pyc|pyo|tmp)$|\.aux\.xml$|(^|/)\.'

mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
list_files | python3 -c '
import os, re, sys, zipfile
out, exclude = sys.argv[1], re.compile(sys.argv[2])
names = sorted({n for n in sys.stdin.read().split("\0") if n and not exclude.search(n)
                and os.path.isfile(n)})
if "metadata.txt" not in names:
    sys.exit("make_zip: metadata.txt missing")
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for n in names:
        z.write(n, "soilssl/" + n)
print(f"wrote {out}: {len(names)} files, {os.path.getsize(out) / 1e6:.1f} MB")
' "$OUT" "$EXCLUDE"
