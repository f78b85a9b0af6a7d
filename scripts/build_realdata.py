"""Builds eval/data/: small, real soil point data sets with covariate rasters.

This is the provenance record of the committed files, not something users run. It reads the
public source repositories (checked out or bare git mirrors) and writes GeoTIFFs and
GeoPackages that need nothing but GDAL:

  python scripts/build_realdata.py [--soilscaler <git dir>] [--plotkml <git dir>] \
                                   [--gsif <git dir> [--edgeroi <git dir>]] [--libertad <git dir>]

(each set is built from the sources given; SOURCES.txt keeps the commits of the others).

Sources (licences in eval/data/README.md):
  * anbm-dk/soilscaler (MIT): five Danish research fields (Møller et al. 2020): RGB
    orthophotos at 1.6 m, terrain covariates at 1.6 m, DUALEM EC, texture and humus at points.
  * cran/plotKML (GPL): the Ebergötzen data set (Böhner et al.; Hengl): 3,670 texture and
    soil-type observations, 25 m and 100 m covariate grids (DEM, TWI, Landsat NDVI, ASTER
    thermal band, soil map, parent material, CORINE land cover).
  * cran/GSIF (GPL): the R.J. Cook Agronomy Farm (Gasch et al. 2015): soil profiles (pH,
    bulk density, soil series) and a 10 m covariate grid (DEM, TWI, RapidEye NDRE, EC_a,
    soil map units); also the Edgeroi soil profiles (NSW, Australia; McGarry et al. 1989).
  * Envirometrix/PredictiveSoilMapping (CC BY-SA 4.0, the book by Hengl & MacMillan): the
    Edgeroi covariate grids at 100 m (Landsat thermal, gamma radiometrics, MRVBF, land use)
    and 250 m (SRTM DEM, TWI, MODIS EVI, parent material), with GSIF's profiles: au_edgeroi.
  * The same repository also gives co_libertad: the geospt organic carbon samples of La
    Libertad (Colombia) and their 30 m covariates (SRTM derivatives, Landsat, surface water).
Reading the R .rda files needs ``pip install rdata pandas`` (only here).
"""
import argparse
import io
import os
import subprocess
import tempfile

import numpy as np
import rasterio
from osgeo import ogr, osr
from rasterio.warp import Resampling, reproject

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval", "data")
DK_FIELDS = ["Vindum", "Faardrup", "Jyndevad", "Estrup", "Silstrup"]
# Estrup and Silstrup were added (2026-11-26) as the held-out check of the stacked `selected`
# method: converted before it was written, not run until it was committed.
DK_COVARIATES = ["DEM", "slope", "twi", "mrvbf", "valdepth", "sagawi"]
# Cook Farm (cran/GSIF) was added (2026-11-26) as a held-out set: converted before it was
# run, not run until the stack's weighting change was committed.
GSIF_PROJ4 = "+proj=utm +zone=11 +datum=NAD83 +units=m +no_defs"  # cookfarm$proj4string
# Edgeroi (GSIF profiles + PredictiveSoilMapping grids) was added (2026-11-26) as a held-out
# set: converted and sanity-checked only, not run.
GTIFF = dict(driver="GTiff", compress="deflate", tiled=True, blockxsize=256, blockysize=256)


def git_show(git_dir, path):
    return subprocess.run(["git", "--git-dir", git_dir, "show", f"HEAD:{path}"], check=True,
                          capture_output=True).stdout


def git_head(git_dir):
    return subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def read_rda(git_dir, name, folder="data"):
    """The object ``name`` of ``<folder>/<name>.rda`` in a git dir (an R package's data/ by
    default; needs rdata)."""
    import rdata
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name + ".rda")
        with open(path, "wb") as f:
            f.write(git_show(git_dir, f"{folder}/{name}.rda"))
        return rdata.read_rda(path)[name]


def write_tif(path, data, profile, dtype, nodata, descriptions):
    """A tiled, deflated GeoTIFF of ``data`` (bands, rows, cols) on ``profile``'s grid."""
    with rasterio.open(path, "w", count=len(data), dtype=dtype, nodata=nodata, **profile,
                       **GTIFF) as dst:
        dst.write(np.asarray(data).astype(dtype))
        dst.descriptions = tuple(descriptions)


def write_classes(path, data, profile, descriptions):
    """A uint8 class raster (codes 1..n, NaN -> 0 = nodata)."""
    write_tif(path, np.nan_to_num(data, nan=0), profile, "uint8", 0, descriptions)


def write_class_names(path, sections):
    """A classes text file: per class raster band, a "# <title>" line, then "<code>\t<name>"
    for the codes 1..n of ``names`` (``sections``: (title, names) pairs)."""
    with open(path, "w", encoding="utf-8") as f:
        for title, names in sections:
            f.write(f"# {title}\n")
            f.writelines(f"{i + 1}\t{n}\n" for i, n in enumerate(names))


def inside_grid(profile, xs, ys):
    """Which of the points (xs, ys) fall on ``profile``'s grid."""
    row, col = (np.asarray(v) for v in rasterio.transform.rowcol(profile["transform"], xs, ys))
    return (row >= 0) & (row < profile["height"]) & (col >= 0) & (col < profile["width"])


def write_points(path, epsg, xs, ys, fields):
    """A GeoPackage point layer; ``fields`` maps name -> array (float, int or str)."""
    if os.path.exists(path):
        os.remove(path)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    layer = ds.CreateLayer("points", srs, ogr.wkbPoint)
    kinds = {}
    for name, values in fields.items():
        values = np.asarray(values)
        kind = ogr.OFTString if values.dtype.kind in "OUS" else \
            ogr.OFTInteger if values.dtype.kind in "iu" else ogr.OFTReal
        kinds[name] = kind
        layer.CreateField(ogr.FieldDefn(name, kind))
    for i in range(len(xs)):
        feat = ogr.Feature(layer.GetLayerDefn())
        for name, values in fields.items():
            v = values[i]
            if v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            feat.SetField(name, str(v) if kinds[name] == ogr.OFTString else
                          int(v) if kinds[name] == ogr.OFTInteger else float(v))
        geom = ogr.Geometry(ogr.wkbPoint)
        geom.AddPoint_2D(float(xs[i]), float(ys[i]))
        feat.SetGeometry(geom)
        layer.CreateFeature(feat)
    ds = None


def on_grid(src_bytes, ref_profile, resampling=Resampling.bilinear):
    """A raster given as GeoTIFF bytes, resampled onto the reference grid (float32, NaN)."""
    with rasterio.MemoryFile(src_bytes) as mem, mem.open() as src:
        out = np.full((ref_profile["height"], ref_profile["width"]), np.nan, np.float32)
        reproject(rasterio.band(src, 1), out, dst_transform=ref_profile["transform"],
                  dst_crs=ref_profile["crs"], dst_nodata=np.nan, resampling=resampling)
        return out


def build_dk(git_dir, sites=DK_FIELDS):
    for site in sites:
        folder = os.path.join(OUT, f"dk_{site.lower()}")
        os.makedirs(folder, exist_ok=True)
        bands = []
        for colour in ("red", "green", "blue"):
            with rasterio.MemoryFile(git_show(git_dir, f"data-raw/ortho/{site}_{colour}.tif")) \
                    as mem, mem.open() as src:
                a = src.read(1).astype(np.float32)
                a[~np.isfinite(a) | (a < -1e30)] = np.nan
                bands.append(a)
                profile = dict(height=src.height, width=src.width, transform=src.transform,
                               crs=src.crs)
        rgb = np.stack(bands)
        valid = np.isfinite(rgb).all(0)
        # 8-bit like an orthophoto, 0 = nodata (outside the field).
        lo, hi = np.nanpercentile(rgb[:, valid], [0.5, 99.5])
        img = np.where(valid, np.clip((rgb - lo) / (hi - lo) * 254 + 1, 1, 255), 0)
        write_tif(os.path.join(folder, "rgb.tif"), img, profile, "uint8", 0,
                  ("red", "green", "blue"))
        cov = [on_grid(git_show(git_dir, f"data-raw/covariates/{site}/{name}.tif"), profile)
               for name in DK_COVARIATES]
        ec_name = {"Faardrup": "Faardrup"}.get(site, site)
        cov.append(on_grid(git_show(git_dir, f"data-raw/EC_raster/{ec_name}_00_25_cm2SH.tif"),
                           profile))
        write_tif(os.path.join(folder, "covariates.tif"), np.stack(cov), profile, "float32",
                  np.nan, DK_COVARIATES + ["ec_0_25cm"])
        table = np.genfromtxt(io.BytesIO(git_show(
            git_dir, f"data-raw/soil_observations/{site}_coords_tex.txt")), names=True,
            delimiter="\t")
        names = table.dtype.names  # ID, X_coordinate, Y_coordinate, clay, silt, sand_f, ...
        write_points(os.path.join(folder, "points.gpkg"), 25832, table[names[1]],
                     table[names[2]], {
                         "clay": table["clay"], "silt": table["silt"],
                         "sand": table["sand_f"] + table["sand_c"], "humus": table["humus"]})
        print(site, len(table), "points", rgb.shape)


def grid_from_table(df, columns, res, epsg=31467):
    xs, ys = df["x"].to_numpy(), df["y"].to_numpy()
    x0, y1 = xs.min() - res / 2, ys.max() + res / 2
    w = int(round((xs.max() - xs.min()) / res)) + 1
    h = int(round((ys.max() - ys.min()) / res)) + 1
    col = np.round((xs - xs.min()) / res).astype(int)
    row = np.round((ys.max() - ys) / res).astype(int)
    arrays = []
    for c in columns:
        a = np.full((h, w), np.nan, np.float32)
        a[row, col] = df[c].to_numpy(dtype=np.float32)
        arrays.append(a)
    transform = rasterio.transform.from_origin(x0, y1, res, res)
    return np.stack(arrays), dict(height=h, width=w, transform=transform,
                                  crs=f"EPSG:{epsg}")


def codes(series):
    """Category codes 1..n (0 = missing) and the names, in sorted order."""
    names = sorted(v for v in series.dropna().unique())
    lookup = {n: i + 1 for i, n in enumerate(names)}
    return series.map(lambda v: lookup.get(v, 0)).astype(np.float32), names


def build_eberg(git_dir):
    folder = os.path.join(OUT, "eberg")
    os.makedirs(folder, exist_ok=True)
    pts, g25, g100 = (read_rda(git_dir, n) for n in ("eberg", "eberg_grid25", "eberg_grid"))
    # 25 m: DEM, TWI, Landsat NDVI (continuous) as the "image"; the soil map as a category.
    img, profile = grid_from_table(g25, ["DEMTOPx", "TWITOPx", "NVILANx"], 25.0)
    write_tif(os.path.join(folder, "terrain_ndvi_25m.tif"), img, profile, "float32", np.nan,
              ("dem", "twi", "ndvi_landsat"))
    g25 = g25.copy()
    g25["soilmap"], soil_names = codes(g25["HBTSOLx"])
    cat, _ = grid_from_table(g25, ["soilmap"], 25.0)
    write_classes(os.path.join(folder, "soilmap_25m.tif"), cat, profile, ("soilmap",))
    g100 = g100.copy()
    g100["geology"], geo_names = codes(g100["PRMGEO6"])
    g100["landcover"], lc_names = codes(g100["LNCCOR6"])
    arr, prof100 = grid_from_table(g100, ["DEMSRT6", "TWISRT6", "TIRAST6", "geology",
                                          "landcover"], 100.0)
    write_tif(os.path.join(folder, "covariates_100m.tif"), arr, prof100, "float32", np.nan,
              ("dem", "twi", "thermal_aster_b14", "geology (class)", "landcover (class)"))
    write_class_names(os.path.join(folder, "classes.txt"), (
        ("soilmap_25m.tif band 1", soil_names),
        ("covariates_100m.tif band 4 (geology)", geo_names),
        ("covariates_100m.tif band 5 (landcover)", lc_names)))
    keep = pts["SNDMHT_A"].notna() & pts["CLYMHT_A"].notna()
    pts = pts[keep]
    soiltype = pts["soiltype"].astype(object).where(pts["soiltype"].notna(), None)
    write_points(os.path.join(folder, "points.gpkg"), 31467, pts["X"].to_numpy(),
                 pts["Y"].to_numpy(), {
                     "sand": pts["SNDMHT_A"].to_numpy(float),
                     "silt": pts["SLTMHT_A"].to_numpy(float),
                     "clay": pts["CLYMHT_A"].to_numpy(float),
                     "soiltype": np.array([str(v) if v is not None else None for v in soiltype],
                                          dtype=object)})
    print("eberg", int(keep.sum()), "points", img.shape)


def build_cookfarm(git_dir):
    folder = os.path.join(OUT, "us_cookfarm")
    os.makedirs(folder, exist_ok=True)
    cook = read_rda(git_dir, "cookfarm")
    proj4 = str(np.asarray(cook["proj4string"]).ravel()[0]).strip()
    assert proj4 == GSIF_PROJ4, proj4  # NAD83 / UTM zone 11N = EPSG:26911
    grids = cook["grids"].copy()
    # 10 m: DEM, TWI, mean RapidEye NDRE as the "image"; the soil map units as a category.
    img, profile = grid_from_table(grids, ["DEM", "TWI", "NDRE.M"], 10.0, epsg=26911)
    write_tif(os.path.join(folder, "image.tif"), img, profile, "float32", np.nan,
              ("dem", "twi", "ndre_mean"))
    cov, _ = grid_from_table(grids, ["NDRE.Sd", "Cook_fall_ECa", "Cook_spr_ECa"], 10.0,
                             epsg=26911)
    write_tif(os.path.join(folder, "covariates.tif"), cov, profile, "float32", np.nan,
              ("ndre_sd", "eca_fall", "eca_spring"))
    grids["soilmap"], soil_names = codes(grids["MUSYM"])
    cat, _ = grid_from_table(grids, ["soilmap"], 10.0, epsg=26911)
    write_classes(os.path.join(folder, "soilmap.tif"), cat, profile, ("soilmap",))
    write_class_names(os.path.join(folder, "classes.txt"),
                      (("soilmap.tif band 1 (MUSYM, soil map units)", soil_names),))
    # One point per profile: its topmost horizon (the first listed where two start at the
    # same depth); sites whose coordinate falls outside the grid are left out.
    prof = cook["profiles"]
    top = prof.sort_values("UHDICM", kind="stable").drop_duplicates("SOURCEID")
    top = top.sort_values("SOURCEID", kind="stable")
    inside = inside_grid(profile, top["Easting"].to_numpy(), top["Northing"].to_numpy())
    top = top[inside]
    write_points(os.path.join(folder, "points.gpkg"), 26911, top["Easting"].to_numpy(),
                 top["Northing"].to_numpy(), {
                     "ph": top["PHIHOX"].to_numpy(float),
                     "bld": top["BLD"].to_numpy(float),
                     "taxon": np.array([str(v) if isinstance(v, str) else None
                                        for v in top["TAXSUSDA"].astype(object)],
                                       dtype=object)})
    print("us_cookfarm", len(top), "points", f"({int((~inside).sum())} outside the grid)",
          img.shape)


def build_edgeroi(gsif_dir, psm_dir):
    folder = os.path.join(OUT, "au_edgeroi")
    os.makedirs(folder, exist_ok=True)
    g100 = read_rda(psm_dir, "edgeroi.grids100", "extdata").copy()
    g250 = read_rda(psm_dir, "edgeroi.grids", "extdata").copy()
    # 100 m: Landsat thermal PCs 1-2 and gamma K as the "image"; MRVBF, U/Th, Th the other
    # covariates; land use as a category. 250 m: DEM, TWI, MODIS EVI PCs; parent material.
    img, prof100 = grid_from_table(g100, ["TI1LAN6", "TI2LAN6", "PCKGAD6"], 100.0, epsg=28355)
    write_tif(os.path.join(folder, "image.tif"), img, prof100, "float32", np.nan,
              ("landsat_thermal_pc1", "landsat_thermal_pc2", "gamma_potassium_pct"))
    cov, _ = grid_from_table(g100, ["MVBSRT6", "RUTGAD6", "PCTGAD6"], 100.0, epsg=28355)
    write_tif(os.path.join(folder, "covariates.tif"), cov, prof100, "float32", np.nan,
              ("mrvbf", "gamma_u_th_ratio", "gamma_thorium_ppm"))
    cov250, prof250 = grid_from_table(g250, ["DEMSRT5", "TWISRT5", "EV1MOD5", "EV2MOD5",
                                             "EV3MOD5"], 250.0, epsg=28355)
    write_tif(os.path.join(folder, "covariates_250m.tif"), cov250, prof250, "float32", np.nan,
              ("dem", "twi", "modis_evi_pc1", "modis_evi_pc2", "modis_evi_pc3"))
    # Categories coded 1..n in sorted order, one classes_<raster>.txt per class raster.
    for df, res, prof, column, name, title in (
            (g250, 250.0, prof250, "PMTGEO5", "geology", "geology_250m"),
            (g100, 100.0, prof100, "LNUABS6", "landuse", "landuse")):
        df[name], names = codes(df[column])
        cat, _ = grid_from_table(df, [name], res, epsg=28355)
        write_classes(os.path.join(folder, f"{title}.tif"), cat, prof, (name,))
        write_class_names(os.path.join(folder, f"classes_{title}.txt"),
                          ((f"{title}.tif band 1 ({column})", names),))
    # One point per site (lon/lat on GDA94, EPSG:4283, to MGA zone 55): its topmost horizon
    # (smallest UHDICM, the lowest LSQINT where two start at the same depth); sites outside
    # either grid are left out.
    edgeroi = read_rda(gsif_dir, "edgeroi")
    sites, hor = edgeroi["sites"], edgeroi["horizons"]
    top = hor.sort_values(["UHDICM", "LSQINT"], kind="stable").drop_duplicates("SOURCEID")
    top = top.set_index(top["SOURCEID"].astype(str))
    top = top.loc[sites["SOURCEID"].astype(str).to_numpy()]  # in the sites' order
    xs, ys = rasterio.warp.transform("EPSG:4283", "EPSG:28355", sites["LONGDA94"].to_numpy(),
                                     sites["LATGDA94"].to_numpy())
    xs, ys = np.asarray(xs), np.asarray(ys)
    inside = inside_grid(prof100, xs, ys) & inside_grid(prof250, xs, ys)
    gsg = np.array([str(v) if isinstance(v, str) else None
                    for v in sites["TAXGAUC"].astype(object)], dtype=object)
    write_points(os.path.join(folder, "points.gpkg"), 28355, xs[inside], ys[inside], {
        "clay": top["CLYPPT"].to_numpy(float)[inside],
        "ph": top["PHIHO5"].to_numpy(float)[inside],
        "soc": top["ORCDRC"].to_numpy(float)[inside],
        "gsg": gsg[inside]})
    print("au_edgeroi", int(inside.sum()), "points",
          f"({int((~inside).sum())} outside the grids)", img.shape, cov250.shape)


def read_grid_rds(git_dir, path):
    """(names, values (layers, cells), cell centres (cells, 2), proj4) of an sp
    SpatialPixelsDataFrame saved with saveRDS (rdata parses it; its S4 class is read by
    hand: the slots data, coords and proj4string)."""
    import rdata

    def name(tag):  # a symbol, or a reference to one met before
        while tag is not None and tag.info.type.name == "REF":
            tag = tag.referenced_object
        return None if tag is None else tag.value.value.decode()

    def pairs(obj):  # an R pairlist -> {tag: value}
        out = {}
        while obj is not None and obj.info.type.name == "LIST":
            car, cdr = obj.value
            out[name(obj.tag)] = car
            obj = cdr if cdr.info.type.name == "LIST" else None
        return out
    slots = pairs(rdata.parser.parse_data(git_show(git_dir, path)).object.attributes)
    data = slots["data"]
    names = [x.value.decode() for x in pairs(data.attributes)["names"].value]
    values = np.stack([np.asarray(col.value, np.float64) for col in data.value])
    coords = np.asarray(slots["coords"].value, np.float64).reshape(2, -1).T  # column-major
    proj4 = pairs(slots["proj4string"].attributes)["projargs"].value[0].value.decode()
    return names, values, coords, proj4


def build_libertad(psm_dir):
    """La Libertad research centre (Meta, Colombia): the geospt package's soil organic carbon
    samples as the PSM book gives them (extdata/COSha30.rda, COSha10.rda) with its 30 m
    covariates (extdata/covs30m.rds)."""
    folder = os.path.join(OUT, "co_libertad")
    os.makedirs(folder, exist_ok=True)
    names, values, coords, proj4 = read_grid_rds(psm_dir, "extdata/covs30m.rds")
    assert "+zone=18" in proj4 and "+datum=WGS84" in proj4, proj4
    res, epsg = 30.0, 32618  # UTM 18N, WGS 84
    x0, y1 = coords[:, 0].min() - res / 2, coords[:, 1].max() + res / 2
    w = int(round((coords[:, 0].max() - coords[:, 0].min()) / res)) + 1
    h = int(round((coords[:, 1].max() - coords[:, 1].min()) / res)) + 1
    col = np.round((coords[:, 0] - coords[:, 0].min()) / res).astype(int)
    row = np.round((coords[:, 1].max() - coords[:, 1]) / res).astype(int)
    prof = dict(height=h, width=w, transform=rasterio.transform.from_origin(x0, y1, res, res),
                crs=f"EPSG:{epsg}")

    def grid(layers):
        out = np.full((len(layers), h, w), np.nan, np.float32)
        for i, name in enumerate(layers):
            out[i, row, col] = values[names.index(name)]
        return out
    # the image: Landsat NIR, red and SWIR1 (Global Forest Change 2000-2014, first
    # composite); the other covariates: SRTM DEM and its derivatives, SWIR2, tree cover 2000,
    # surface water occurrence. Left out: COSha30map_var1pred_ (a kriged map of the target
    # itself) and Landsat_bare2010 (0 everywhere).
    gfc = "GlobalForestChange2000.2014_"
    image = [gfc + "first_NIRL00", gfc + "first_REDL00", gfc + "first_SW1L00"]
    srtm = "SRTMGL1_SRTMGL1.2"
    covs = [srtm] + [f"{srtm}_{d}" for d in ("slope", "twi", "vbf", "vdepth", "cprof",
                                              "devmean", "openn", "openp")] + \
        [gfc + "first_SW2L00", gfc + "treecover2000", "GlobalSurfaceWater_occurrence"]
    write_tif(os.path.join(folder, "image.tif"), grid(image), prof, "float32", np.nan,
              ("landsat_nir", "landsat_red", "landsat_swir1"))
    write_tif(os.path.join(folder, "covariates.tif"), grid(covs), prof, "float32", np.nan,
              ("dem", "slope", "twi", "mrvbf", "valley_depth", "profile_curvature",
               "deviation_from_mean", "openness_negative", "openness_positive",
               "landsat_swir2", "tree_cover_2000", "surface_water_occurrence"))
    # one point per sample ID (the 0-30 cm and 0-10 cm tables share 118 of their 122 IDs
    # and the same coordinates); a value missing from a table is left NULL
    d30 = read_rda(psm_dir, "COSha30", "extdata")
    d10 = read_rda(psm_dir, "COSha10", "extdata")
    pts = d30.merge(d10, on="ID", how="outer", suffixes=("", "_10"))
    xs = pts["x"].fillna(pts["x_10"]).to_numpy(float)
    ys = pts["y"].fillna(pts["y_10"]).to_numpy(float)
    inside = inside_grid(prof, xs, ys)
    write_points(os.path.join(folder, "points.gpkg"), epsg, xs[inside], ys[inside], {
        "soc30": pts["COSha30"].to_numpy(float)[inside],
        "oc30": pts["CO30"].to_numpy(float)[inside],
        "bd30": pts["DA30"].to_numpy(float)[inside],
        "soc10": pts["COSha10"].to_numpy(float)[inside]})
    print("co_libertad", int(inside.sum()), "points", f"({int((~inside).sum())} outside)",
          (h, w))


SOURCE_NAMES = ("anbm-dk/soilscaler", "cran/plotKML", "cran/GSIF",
                "Envirometrix/PredictiveSoilMapping")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--soilscaler", help="git dir of anbm-dk/soilscaler (builds dk_*)")
    ap.add_argument("--plotkml", help="git dir of cran/plotKML (builds eberg)")
    ap.add_argument("--gsif", help="git dir of cran/GSIF (builds us_cookfarm)")
    ap.add_argument("--edgeroi", metavar="PSM_GIT_DIR",
                    help="git dir of Envirometrix/PredictiveSoilMapping (its Edgeroi grids; "
                         "with --gsif, whose Edgeroi profiles it needs: builds au_edgeroi)")
    ap.add_argument("--libertad", metavar="PSM_GIT_DIR",
                    help="git dir of Envirometrix/PredictiveSoilMapping (builds co_libertad)")
    ap.add_argument("--dk-fields", nargs="*", default=DK_FIELDS, choices=DK_FIELDS,
                    help="the Danish fields to (re)build (default: all five)")
    ap.add_argument("--skip-eberg", action="store_true")
    args = ap.parse_args()
    given = dict(zip(SOURCE_NAMES, (args.soilscaler, args.plotkml, args.gsif,
                                    args.edgeroi or args.libertad)))
    if not any(given.values()):
        ap.error("give at least one of --soilscaler, --plotkml, --gsif, --libertad")
    if args.edgeroi and not args.gsif:
        ap.error("--edgeroi needs --gsif (the Edgeroi profiles are in cran/GSIF)")
    if args.soilscaler:
        build_dk(args.soilscaler, args.dk_fields)
    if args.plotkml and not args.skip_eberg:
        build_eberg(args.plotkml)
    if args.gsif:
        build_cookfarm(args.gsif)
    if args.edgeroi:
        build_edgeroi(args.gsif, args.edgeroi)
    if args.libertad:
        build_libertad(args.libertad)
    # SOURCES.txt: "<repository> <commit>" per source, the ones not given this time kept.
    path = os.path.join(OUT, "SOURCES.txt")
    commits = {}
    if os.path.exists(path):
        with open(path) as f:
            commits = dict(line.split() for line in f if line.strip())
    commits.update({name: git_head(d) for name, d in given.items() if d})
    with open(path, "w") as f:
        f.writelines(f"{name} {commits[name]}\n" for name in SOURCE_NAMES if name in commits)


if __name__ == "__main__":
    main()
