"""Similarity map (core/similarity.py) without QGIS, and soilssl:similaritymap through
processing.run."""
import os

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import write_geometries, write_raster

ORIGIN = (500000.0, 2900000.0)
PX = 10.0


def features(tmp_path, d=6, h=7, w=9, seed=0):
    """A small feature raster (tagged as one) with a NaN nodata tile at (0, 0)."""
    rng = np.random.default_rng(seed)
    f = rng.normal(0, 1, (d, h, w)).astype(np.float32)
    f[:, 0, 0] = np.nan
    path = write_raster(tmp_path / "f.tif", f, transform=from_origin(*ORIGIN, PX, PX),
                        nodata=float("nan"))
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(soilssl_product="features")
    return path, f


def point(row, col):
    return {"type": "Point", "coordinates": (ORIGIN[0] + (col + 0.5) * PX,
                                             ORIGIN[1] - (row + 0.5) * PX)}


def by_hand(f, ref, centre):
    x = f.reshape(f.shape[0], -1).T.astype(np.float64)
    out = np.full(len(x), -9999.0)
    for i, v in enumerate(x):
        if np.isfinite(v).all():
            a, b = v - centre, ref - centre
            out[i] = a @ b / np.sqrt((a @ a) * (b @ b))
    return out.reshape(f.shape[1:])


@pytest.mark.parametrize("centred", [True, False])
def test_cosine_to_mean_of_points_by_hand(tmp_path, centred):
    from soilssl.core.similarity import similarity_map
    path, f = features(tmp_path)
    refs = [point(2, 3), point(5, 7)]
    ref = (f[:, 2, 3] + f[:, 5, 7]) / 2
    valid = np.isfinite(f).all(axis=0)
    centre = f[:, valid].mean(axis=1) if centred else np.zeros(f.shape[0])
    s = similarity_map(path, str(tmp_path / "s.tif"), refs, "EPSG:32637", centre=centred)
    assert s["reference_tiles"] == 2 and s["tiles"] == valid.sum()
    with rasterio.open(s["output"]) as ds:
        got = ds.read(1)
        assert ds.transform == from_origin(*ORIGIN, PX, PX) and ds.nodata == -9999.0
    assert np.allclose(got, by_hand(f, ref, centre), atol=1e-5)
    assert got[0, 0] == -9999.0


def test_polygon_reference_touches_tiles_and_reprojects(tmp_path):
    from rasterio.warp import transform_geom
    from soilssl.core.similarity import similarity_map
    path, f = features(tmp_path)
    # a small field inside tile (4, 4) and crossing into tile (4, 5), given in lon/lat
    x0, y0 = ORIGIN[0] + 4 * PX + 6, ORIGIN[1] - 4 * PX - 6
    poly = {"type": "Polygon", "coordinates": [[(x0, y0), (x0 + 6, y0), (x0 + 6, y0 - 2),
                                                (x0, y0 - 2), (x0, y0)]]}
    lonlat = transform_geom("EPSG:32637", "EPSG:4326", poly)
    s = similarity_map(path, str(tmp_path / "s.tif"), [lonlat], "EPSG:4326",
                       threshold=0.99, mask_output=str(tmp_path / "m.tif"), centre=False)
    assert s["reference_tiles"] == 2
    ref = (f[:, 4, 4] + f[:, 4, 5]) / 2
    with rasterio.open(s["output"]) as ds:
        assert np.allclose(ds.read(1), by_hand(f, ref, np.zeros(6)), atol=1e-5)
    with rasterio.open(s["mask"]) as ds:
        m = ds.read(1)
    with rasterio.open(s["output"]) as ds:
        sim = ds.read(1)
    assert m[0, 0] == 255 and set(np.unique(m)) <= {0, 1, 255}
    assert np.array_equal(m[1:, 1:] == 1, sim[1:, 1:] >= 0.99)
    assert s["above_threshold"] == int((m == 1).sum())


def test_similarity_errors_write_nothing(tmp_path):
    from soilssl.core.errors import InputError
    from soilssl.core.similarity import similarity_map
    path, _ = features(tmp_path)
    far = {"type": "Point", "coordinates": (0.0, 0.0)}
    with pytest.raises(InputError, match="outside the feature raster"):
        similarity_map(path, str(tmp_path / "s.tif"), [far], None)
    with pytest.raises(InputError, match="only on nodata tiles"):
        similarity_map(path, str(tmp_path / "s.tif"), [point(0, 0)], None)
    with pytest.raises(InputError, match="needs a THRESHOLD"):
        similarity_map(path, str(tmp_path / "s.tif"), [point(1, 1)], None,
                       mask_output=str(tmp_path / "m.tif"))
    with pytest.raises(InputError, match="between -1 and 1"):
        similarity_map(path, str(tmp_path / "s.tif"), [point(1, 1)], None, threshold=2.0)
    assert os.listdir(tmp_path) == ["f.tif"]


def write_points(path, geoms, crs="EPSG:32637"):
    return write_geometries(path, geoms, "refs", crs)


def test_processing_run_similaritymap(qgis_app, tmp_path):
    import processing
    from qgis.core import QgsProcessingException
    path, f = features(tmp_path)
    refs = write_points(tmp_path / "refs.gpkg", [point(3, 3)])
    out = processing.run("soilssl:similaritymap", {
        "INPUT": path, "REFERENCES": refs, "THRESHOLD": 0.5,
        "OUTPUT": str(tmp_path / "sim.tif"), "OUTPUT_MASK": str(tmp_path / "mask.tif")})
    with rasterio.open(out["OUTPUT"]) as ds:
        sim = ds.read(1)
    assert sim[3, 3] == pytest.approx(1.0, abs=1e-5)  # the reference tile itself
    with rasterio.open(out["OUTPUT_MASK"]) as ds:
        assert ds.read(1)[3, 3] == 1
    assert out["REFERENCE_TILES"] == 1 and out["SIMILAR_TILES"] >= 1
    assert os.path.exists(str(tmp_path / "sim.qml"))  # styled: sidecar style
    from qgis.core import QgsRasterLayer
    sim_layer = QgsRasterLayer(out["OUTPUT"], "sim")  # the renderer lives with its layer
    styled = sim_layer.renderer()
    assert styled.type() == "singlebandpseudocolor"
    valid = sim[sim > -9999]
    assert styled.classificationMin() == pytest.approx(valid.min(), abs=1e-4)
    assert styled.classificationMax() == pytest.approx(valid.max(), abs=1e-4)
    mask_layer = QgsRasterLayer(out["OUTPUT_MASK"], "mask")
    mask = mask_layer.renderer()
    assert mask.type() == "paletted" and [c.value for c in mask.classes()] == [0, 1]
    with pytest.raises(QgsProcessingException, match="needs a THRESHOLD"):
        processing.run("soilssl:similaritymap", {
            "INPUT": path, "REFERENCES": refs, "OUTPUT": str(tmp_path / "sim2.tif"),
            "OUTPUT_MASK": str(tmp_path / "mask2.tif")})
    assert not [n for n in os.listdir(tmp_path) if "2." in n]
