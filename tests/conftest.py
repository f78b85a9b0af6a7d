"""Test harness: imports the repo as the package ``soilssl``; small rasters and tiny ViTs.

No test downloads anything: models are tiny timm ViTs with random weights that
the tests save themselves.
"""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_DIR = os.path.join(ROOT, ".build", "plugins")
os.makedirs(PKG_DIR, exist_ok=True)
if not os.path.islink(os.path.join(PKG_DIR, "soilssl")):
    os.symlink(ROOT, os.path.join(PKG_DIR, "soilssl"))
sys.path.insert(0, PKG_DIR)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the plugin sets it (see __init__.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = "vit_tiny_patch16_224"


def _spy_class():
    from soilssl.core import heads

    class Spy(heads.Regressor):
        """Head whose feature column 0 is the point id: records what it trained on and
        what it predicted (``calls``: (ids seen in fit, ids predicted)), predicts the id."""

        method = "spy"
        calls = []

        def params(self):
            return {}

        def _fit(self, X, y, w):
            self.seen = set(X[:, 0].astype(int).tolist())

        def _predict_chunk(self, X):
            ids = X[:, 0].astype(int)
            Spy.calls.append((self.seen, ids.tolist()))
            return X[:, 0].astype(float)

        def _state(self):
            return {}

        def _load(self, state):
            pass
    return Spy


@pytest.fixture
def spy(monkeypatch):
    """The Spy head registered as method "spy", its calls cleared."""
    from soilssl.core import heads
    Spy = _spy_class()
    monkeypatch.setitem(heads.HEADS, "spy", Spy)
    return Spy


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op torch thread in tests: tiny models gain nothing from more, and on a
    shared, busy CPU extra threads make a tiny step many times slower.  The tests check
    behaviour, not speed (speed is `make bench`)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def feedback():
    """A QgsProcessingFeedback that records what the run tells the user."""
    from qgis.core import QgsProcessingFeedback

    class Recorder(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.infos, self.warnings, self.errors = [], [], []

        def pushInfo(self, info):  # noqa: N802
            self.infos.append(info)
            super().pushInfo(info)

        def pushWarning(self, warning):  # noqa: N802
            self.warnings.append(warning)
            super().pushWarning(warning)

        def reportError(self, error, fatalError=False):  # noqa: N802,N803
            self.errors.append(error)
            super().reportError(error, fatalError)

    return Recorder()


def write_raster(path, data, transform=None, crs="EPSG:32637", nodata=None, dtype=None):
    import rasterio
    from rasterio.transform import from_origin
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    transform = transform or from_origin(500000.0, 2900000.0, 1.5, 1.5)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=dtype or data.dtype, crs=crs,
                       transform=transform, nodata=nodata) as ds:
        ds.write(data.astype(dtype or data.dtype))
    return str(path)


def write_geometries(path, geoms, layer="features", crs="EPSG:32637"):
    """A GeoPackage layer of GeoJSON-like geometries (dicts), no attributes."""
    import json
    from osgeo import ogr, osr
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.SetFromUserInput(crs)
    lyr = ds.CreateLayer(layer, srs, ogr.wkbUnknown)
    for g in geoms:
        feat = ogr.Feature(lyr.GetLayerDefn())
        feat.SetGeometry(ogr.CreateGeometryFromJson(json.dumps(g)))
        lyr.CreateFeature(feat)
    ds = None
    return str(path)


@pytest.fixture
def rgb(tmp_path):
    """A 3-band uint8 UTM raster, 150 x 100 px, nodata 0 in its top-left corner."""
    rng = np.random.default_rng(1)
    a = rng.integers(1, 255, (3, 100, 150), dtype=np.uint8)
    a[:, :40, :40] = 0
    return write_raster(tmp_path / "rgb.tif", a, nodata=0)


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A random-initialised timm ViT-Tiny state dict (3 channels, built at 32 px)."""
    import torch
    from soilssl.core.backbone import create_model
    torch.manual_seed(0)
    model = create_model(TINY, 3, 32)
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def qgis_app():
    """A headless QgsApplication with Processing and the SoilSSL provider."""
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    from qgis.core import QgsApplication
    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing
    Processing.initialize()
    import soilssl
    plugin = soilssl.classFactory(None)  # as QGIS loads it
    plugin.initProcessing()
    app.soilssl_plugin = plugin
    yield app
    plugin.unload()
