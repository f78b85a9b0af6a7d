#!/usr/bin/env python3
"""Write the small, synthetic SoilSSL demo scene (seeded and deterministic).

The scene imitates a 1.5 km x 1.5 km patch of AlUla (Saudi Arabia, UTM 37N).
A hidden smooth "soil field" drives both the imagery and the sample values:

* Five landscape units (from the argmax of smooth random fields, plus two
  centre-pivot fields): dunes, lava field, sandstone plateau, wadi (alluvium)
  and cropland.  Each unit has a colour palette AND a texture.  Dunes and wadi
  share the SAME palette and differ only in texture (periodic oblique dune
  ridges vs. streaky/mottled alluvium), yet their pH differs by ~1 unit.
* Inside every unit, a smooth field ``c`` shifts the brightness (colour) and a
  smooth field ``t`` scales the texture contrast without changing the mean
  colour; pH depends on both.  So a model that sees texture around a point
  (a ViT on a tile) can beat one that sees only the pixel value (RF on RGB).
* Elevation is correlated with the units and a regional trend that also
  lowers pH.

Outputs (in --out): rgb.tif, dem.tif, truth_ph.tif, points.geojson, README.md.
Only numpy, scipy, rasterio and the standard library are used.

    python scripts/make_demo.py [--out DIR] [--seed 42] [--size 1024]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from scipy import ndimage

CRS = "EPSG:32637"                 # WGS 84 / UTM zone 37N (AlUla)
X0, Y0 = 390_000.0, 2_943_000.0    # top-left corner of the image (m)
RES = 1.5                          # image pixel size (m)
MARGIN = 96                        # extra pixels simulated around the image
DEM_RES, DEM_SHIFT = 2.0, (-100.3, 99.1)   # DEM pixel size and origin offset (m)
N_POINTS, N_OUTSIDE, N_NULL = 300, 5, 6

# name, palette (R, G, B), texture contrast (DN), base pH H2O, KCl offset,
# base Si %, elevation offset (m)
UNITS = [
    ("dunes",      (214, 184, 140), 16, 9.55, 0.00, 91, 4),
    ("lava_field", (78, 70, 66),    34, 8.10, 0.15, 50, 30),
    ("sandstone",  (176, 112, 82),  18, 8.75, 0.05, 80, 18),
    ("wadi",       (214, 184, 140), 16, 8.35, -0.05, 68, -10),
    ("cropland",   (96, 124, 62),   14, 7.80, -0.10, 60, -10),
]
TEX_TINT = np.array([1.0, 0.93, 0.82])   # texture changes brightness, little hue


def smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise, rescaled to zero mean and unit std."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (f - f.mean()) / f.std()


def simulate(rng, n):
    """All hidden fields on the image grid plus MARGIN pixels on each side."""
    w = n + 2 * MARGIN
    shape = (w, w)
    yy, xx = np.mgrid[0:w, 0:w].astype(np.float64)

    # Landscape units: argmax of 4 smooth fields (patches of ~100-400 m).
    unit = np.argmax(np.stack([smooth_noise(rng, shape, 70) for _ in range(4)]), axis=0)
    # Two centre-pivot fields (cropland) placed on wadi pixels away from the edges.
    inner = np.zeros(shape, bool)
    inner[MARGIN + 80:w - MARGIN - 80, MARGIN + 80:w - MARGIN - 80] = True
    cand = np.flatnonzero((unit == 3) & inner)
    if cand.size == 0:
        cand = np.flatnonzero(inner)
    pivots = [np.unravel_index(i, shape) for i in rng.choice(cand, 2, replace=False)]
    rings = np.zeros(shape)
    for cy, cx in pivots:
        d = np.hypot(yy - cy, xx - cx)
        unit[d < 55] = 4
        rings = np.where(d < 55, np.cos(2 * np.pi * d / 8.0), rings)

    # Smooth covariates: colour shift c, texture strength t, regional trend r.
    c = np.tanh(smooth_noise(rng, shape, 45))
    t = np.tanh(smooth_noise(rng, shape, 45))
    r = smooth_noise(rng, shape, 250) + (xx - yy) / w   # broad NW-SE gradient

    # One texture per unit, each roughly zero-mean / unit-std.
    warp = smooth_noise(rng, shape, 40)
    theta = np.deg2rad(35)
    dunes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 14.0 + 2.5 * warp)
    dunes = 1.3 * dunes + 0.3 * smooth_noise(rng, shape, 0.7)
    lava = np.tanh(2.0 * smooth_noise(rng, shape, 0.8))                   # blocky speckle
    sand = 0.8 * smooth_noise(rng, shape, 4) + 0.5 * smooth_noise(rng, shape, 1)  # blotches
    wadi = 0.9 * smooth_noise(rng, shape, (0.8, 7)) + 0.6 * smooth_noise(rng, shape, 1.2)
    crop = rings + 0.4 * smooth_noise(rng, shape, 1)
    texture = np.choose(unit, [dunes, lava, sand, wadi, crop])

    palette = np.array([u[1] for u in UNITS], float)[unit]            # (w, w, 3)
    contrast = np.array([u[2] for u in UNITS], float)[unit]
    amp = contrast * (1.0 + 0.45 * t)                 # texture contrast, mean unchanged
    rgb = palette * (1.0 + 0.08 * c)[..., None] + (amp * texture)[..., None] * TEX_TINT
    rgb = np.clip(np.rint(rgb), 1, 255).astype(np.uint8)  # 0 is reserved for nodata

    def unit_value(col, blur):
        """Per-unit constant from UNITS column ``col``, blurred across unit edges."""
        return ndimage.gaussian_filter(np.array([u[col] for u in UNITS], float)[unit], blur)

    ph = unit_value(3, 6) + 0.28 * c + 0.35 * t - 0.15 * r
    ph = np.clip(ph, 7.32, 10.40)
    kcl = np.minimum(7.02 + 0.854 * (ph - 7.32) + unit_value(4, 6), ph - 0.1)  # KCl < H2O
    si = unit_value(5, 6) + 5.0 * t - 3.0 * c
    z = 700.0 + unit_value(6, 25) + 8.0 * r + np.where(unit == 0, 1.2 * dunes, 0.0)
    return dict(unit=unit, rgb=rgb, ph=ph, kcl=kcl, si=si, z=z)


def write_tif(path, arr, transform, nodata, **extra):
    """Deterministic deflated GeoTIFF, 256 px tiles (GDAL writes no timestamp by default)."""
    arr = arr if arr.ndim == 3 else arr[None]
    profile = dict(driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                   count=arr.shape[0], dtype=arr.dtype.name, crs=CRS,
                   transform=transform, nodata=nodata, compress="deflate", zlevel=9, **extra)
    if min(arr.shape[1:]) >= 256:       # small rasters (truth_ph.tif) stay striped
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(arr)
    return path


def make(out: Path, seed: int = 42, n: int = 1024):
    rng = np.random.default_rng(seed)
    f = simulate(rng, n)
    img = np.s_[MARGIN:MARGIN + n, MARGIN:MARGIN + n]
    world_x0, world_y0 = X0 - MARGIN * RES, Y0 + MARGIN * RES
    out.mkdir(parents=True, exist_ok=True)

    # --- rgb.tif: image grid, with a triangular nodata corner (~3 %) bottom-left.
    rgb = f["rgb"][img].transpose(2, 0, 1).copy()
    row, col = np.mgrid[0:n, 0:n]
    corner = col + (n - 1 - row) < n // 4
    rgb[:, corner] = 0
    write_tif(out / "rgb.tif", rgb, from_origin(X0, Y0, RES, RES), 0,
              photometric="RGB", predictor=2)

    # --- dem.tif: 2 m grid, shifted origin, whole image + ~100 m margin.
    dx0, dy0 = X0 + DEM_SHIFT[0], Y0 + DEM_SHIFT[1]
    nd = int(np.ceil((n * RES + 2 * 100.0) / DEM_RES))
    cy, cx = np.mgrid[0:nd, 0:nd] + 0.5
    wrow = (world_y0 - (dy0 - cy * DEM_RES)) / RES - 0.5   # world-grid pixel coords
    wcol = (dx0 + cx * DEM_RES - world_x0) / RES - 0.5
    dem = ndimage.map_coordinates(f["z"], [wrow, wcol], order=1, mode="nearest")
    dem = np.round(dem, 2).astype(np.float32)
    dem[:12, -12:] = -9999.0          # small void in the margin (top-right corner)
    write_tif(out / "dem.tif", dem, from_origin(dx0, dy0, DEM_RES, DEM_RES), -9999.0,
              predictor=3)

    # --- truth_ph.tif: hidden pH H2O, 8x coarser (block means), same origin.
    k = 8
    truth = f["ph"][img][: n // k * k, : n // k * k]
    truth = truth.reshape(n // k, k, n // k, k).mean(axis=(1, 3)).astype(np.float32)
    write_tif(out / "truth_ph.tif", np.round(truth, 3), from_origin(X0, Y0, RES * k, RES * k),
              -9999.0, predictor=3)

    # --- points.geojson: jittered grid inside the valid image + a few outside.
    g = int(np.ceil(np.sqrt(N_POINTS * 1.15)))
    cells = rng.permutation(g * g)
    pts = []
    for cell in cells:
        r_, c_ = divmod(int(cell), g)
        pr = MARGIN + (r_ + rng.uniform(0.15, 0.85)) * n / g
        pc = MARGIN + (c_ + rng.uniform(0.15, 0.85)) * n / g
        if (pc - MARGIN) + (n - 1 - (pr - MARGIN)) < n // 4 + 8:   # skip nodata corner
            continue
        pts.append((pr, pc))
        if len(pts) == N_POINTS - N_OUTSIDE:
            break
    for i in range(N_OUTSIDE):        # 15-80 m beyond one of the four edges
        off = MARGIN - rng.uniform(10, 53)
        along = MARGIN + rng.uniform(0.2, 0.8) * n
        pts.append([(off, along), (along, off), (2 * MARGIN + n - off, along),
                    (along, 2 * MARGIN + n - off)][i % 4])
    pts = np.array(pts)
    xs = world_x0 + pts[:, 1] * RES
    ys = world_y0 - pts[:, 0] * RES
    lon, lat = warp_transform(CRS, "EPSG:4326", xs, ys)
    ir, ic = np.floor(pts[:, 0]).astype(int), np.floor(pts[:, 1]).astype(int)
    ph = np.clip(f["ph"][ir, ic] + rng.normal(0, 0.08, len(pts)), 7.32, 10.40)
    kcl = f["kcl"][ir, ic] + rng.normal(0, 0.08, len(pts))
    kcl = np.clip(kcl, 7.02, np.minimum(9.65, ph - 0.05))          # pH KCl < pH H2O
    si = np.clip(f["si"][ir, ic] + rng.normal(0, 2.0, len(pts)), 41, 99)
    null_si = set(rng.choice(len(pts), N_NULL, replace=False).tolist())
    features = []
    for i in range(len(pts)):
        props = {"id": i + 1, "ph_h2o": round(float(ph[i]), 2),
                 "ph_kcl": round(float(kcl[i]), 2),
                 "si": None if i in null_si else round(float(si[i]), 1),
                 "landcover": UNITS[int(f["unit"][ir[i], ic[i]])][0]}
        geom = {"type": "Point", "coordinates": [round(lon[i], 7), round(lat[i], 7)]}
        features.append(json.dumps({"type": "Feature", "properties": props, "geometry": geom}))
    with open(out / "points.geojson", "w", encoding="utf-8", newline="\n") as fh:
        fh.write('{"type": "FeatureCollection", "name": "points",\n'
                 '"crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::4326"}},\n'
                 '"features": [\n' + ",\n".join(features) + "\n]}\n")

    write_readme(out, n, nd, seed, ph, kcl, si)


def write_readme(out, n, nd, seed, ph, kcl, si):
    text = f"""# SoilSSL demo scene (synthetic)

Made by `python scripts/make_demo.py --seed {seed} --size {n}` (seeded, deterministic: rerunning
gives byte-identical files). Synthetic data imitating AlUla, Saudi Arabia; no real measurements.

- `rgb.tif`: {n}x{n} px RGB uint8, 1.5 m pixels, EPSG:32637 (WGS 84 / UTM 37N), nodata 0
  (triangular nodata corner at the bottom-left, ~3 % of the image). Deflate, 256 px tiles.
- `dem.tif`: {nd}x{nd} px float32 elevation (m), 2 m pixels on a shifted grid covering the
  image plus ~100 m, EPSG:32637, nodata -9999 (small void in its top-right margin); it has to be
  warped onto the image grid.
- `points.geojson`: {N_POINTS} soil samples in EPSG:4326 (lon/lat); {N_OUTSIDE} lie just outside
  the image. Fields: `id`, `ph_h2o` ({ph.min():.2f}-{ph.max():.2f}),
  `ph_kcl` ({kcl.min():.2f}-{kcl.max():.2f}), `si` (% Si, {si.min():.1f}-{si.max():.1f};
  {N_NULL} values are null), `landcover` (text: dunes, lava_field, sandstone, wadi, cropland).
- `truth_ph.tif`: the hidden pH H2O field (float32) at 12 m (8x coarser than rgb.tif), same origin.

A hidden soil field drives the image: each landscape unit has its own palette and texture; pH
also follows a smooth brightness shift (seen in pixel colour) and a smooth change of texture
contrast (seen only in the texture around a point). Dunes and wadi share one palette but differ
in pH by ~1 unit. Elevation follows the units and a regional trend that also lowers pH.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


def main():
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=repo / "resources" / "demo")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    # No .aux.xml side files, no timestamps or software tags that could differ between runs.
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        make(a.out, a.seed, a.size)
    print(f"wrote demo scene to {a.out}")


if __name__ == "__main__":
    main()
