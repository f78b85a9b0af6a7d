"""Pretrain's BUFFER on dense points (issue 10): the error names the BUFFER (or STRIDE) that
leaves enough tiles, in pixels and metres; the numbers agree with the buffer rule."""
import os

import numpy as np
import pytest

from conftest import ROOT, TINY

DEMO = os.path.join(ROOT, "resources", "demo")


def test_tile_distances_agree_with_the_buffer_rule():
    from soilssl.core.pretrain_tiles import buffer_excluded, tile_distances
    from soilssl.core.raster import TileGrid
    rng = np.random.default_rng(0)
    grid = TileGrid(300, 200, 32, 16)
    cols, rows = rng.uniform(0, 300, 7), rng.uniform(0, 200, 7)
    dist = tile_distances(grid, cols, rows)
    for b in (0.0, 5.0, 17.5, 40.0, 90.0):
        assert np.array_equal(dist <= b, buffer_excluded(grid, cols, rows, b)), b
    assert np.isinf(tile_distances(grid, None, None)).all()


def test_advice_is_the_largest_buffer_that_leaves_enough_tiles():
    from soilssl.core.pretrain_tiles import buffer_advice, buffer_excluded
    from soilssl.core.raster import TileGrid
    rng = np.random.default_rng(1)
    cols, rows = rng.uniform(0, 512, 60), rng.uniform(0, 512, 60)
    text = buffer_advice(512, 512, 64, 64, cols, rows, 448.0, 16, 1.5)
    assert text.startswith("BUFFER 448 px (672 m at 1.5 m pixels) leaves 0 of the 64 tiles of "
                           "64 px every 64 px.")
    largest = int(text.split("The largest BUFFER leaving 16 tiles is ")[1].split(" px")[0])
    grid = TileGrid(512, 512, 64, 64)
    assert (~buffer_excluded(grid, cols, rows, largest)).sum() >= 16
    assert (~buffer_excluded(grid, cols, rows, largest + 1)).sum() < 16
    assert f"({largest * 1.5:g} m;" in text
    # a lone point in a corner: a smaller STRIDE leaves tiles at the same BUFFER
    text = buffer_advice(512, 512, 64, 64, [0.0], [0.0], 470.0, 4, 1.0)
    assert "Or keep BUFFER and set STRIDE 32 px" in text


def test_pretrain_on_dense_demo_points_names_the_numbers(qgis_app, tmp_path):
    import processing
    from qgis.core import QgsProcessingException
    with pytest.raises(QgsProcessingException) as err:
        processing.run("soilssl:pretrain", {
            "INPUT": os.path.join(DEMO, "rgb.tif"), "POINTS": os.path.join(DEMO, "points.geojson"),
            "ARCH": TINY, "TILE_SIZE": 64, "EPOCHS": 1, "OUT_DIM": 16, "LOCAL_CROPS": 0,
            "DEVICE": "cpu", "OUTPUT": str(tmp_path / "bb.pth")})
    text = str(err.value)
    assert "256 of the 256 tiles lie within BUFFER of a soil point" in text
    assert "BUFFER 448 px (672 m at 1.5 m pixels) leaves 0 of the 256 tiles" in text
    assert "The largest BUFFER leaving 16 tiles is " in text
    assert not os.path.exists(tmp_path / "bb.pth")


def test_help_says_buffer_in_metres(qgis_app):
    alg = qgis_app.processingRegistry().algorithmById("soilssl:pretrain")
    assert "× the input's pixel size" in alg.shortHelpString()
