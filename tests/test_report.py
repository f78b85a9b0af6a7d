"""The cross-validation report (core/report.py): readable plots, and no pyplot.

Issue 11 defect 8: pyplot or ``matplotlib.use`` inside a Processing worker thread switches
matplotlib for the whole QGIS process.  Issue 10: per-fold vs pooled R² explained, no
overlapping labels, plain map coordinates, a legend for the fold colours.
"""
import itertools
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT

PKG = os.path.join(ROOT, ".build", "plugins")


def small_cv():
    """A CV whose spatial folds are nearly constant: R² < 0 per fold, > 0 pooled."""
    from soilssl.core.cv import cross_validate, spatial_folds
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 20000, (60, 2)) + [500000, 2900000]
    trend = (coords[:, 0] - 500000) / 20000
    y = 7.6 + 2.2 * trend + rng.normal(0, 0.3, 60)
    features = np.c_[trend + rng.normal(0, 0.1, 60), rng.normal(size=(60, 3))]
    folds = spatial_folds(coords, 6)
    cv = cross_validate({"features": features, "pixels": features[:, :2]}, y, folds,
                        ["ridge"], target_names=["pH"])
    return cv, coords


SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
import matplotlib
matplotlib.use("svg")  # whatever backend the host application chose
from test_report import small_cv
from soilssl.core.report import write_report
cv, coords = small_cv()
write_report(sys.argv[3], cv, coords, {"pH": "ridge"})
print("BACKEND", matplotlib.get_backend(), "PYPLOT", "matplotlib.pyplot" in sys.modules)
"""


def test_report_leaves_matplotlib_alone(tmp_path):
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-c", SCRIPT, PKG, os.path.join(ROOT, "tests"),
                        str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "BACKEND svg PYPLOT False" in r.stdout
    assert out.read_text().count("data:image/png;base64,") == 2


def _overlaps(boxes):
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_report_figures_are_readable(tmp_path):
    from soilssl.core.report import R2_NOTE, figures, write_report
    cv, coords = small_cv()
    row = cv.table()[0]
    assert row["r2_mean"] < 0 < row["r2_pooled"]  # the case users asked about
    text = open(write_report(str(tmp_path / "r.html"), cv, coords, {"pH": "ridge"})).read()
    assert R2_NOTE in text and "R² per fold" in text
    figs = figures(cv, coords, {"pH": "ridge"})
    assert [h for h, _ in figs] == ["pH: observed vs predicted", "pH: folds and residuals"]
    fold_labels = sorted(f"fold {k}" for k in cv.fold_ids)
    for heading, fig in figs:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
        legends = [t.get_text() for ax in fig.axes if ax.get_legend()
                   for t in ax.get_legend().get_texts()]
        assert sorted(legends) == fold_labels, heading  # the fold colours are explained
        labels = []
        for ax in axes:
            for axis in (ax.xaxis, ax.yaxis):
                assert axis.get_offset_text().get_text() == "", heading  # no "1e6" offset
                ticks = [t for t in axis.get_ticklabels() if t.get_text()]
                assert "e" not in "".join(t.get_text() for t in ticks), heading
                labels += [t.get_window_extent(renderer) for t in ticks]
            labels += [t.get_window_extent(renderer) for t in (ax.xaxis.label, ax.yaxis.label,
                                                               ax.title) if t.get_text()]
        labels += [ax.get_legend().get_window_extent(renderer) for ax in fig.axes
                   if ax.get_legend()]
        assert not _overlaps(labels), heading
        if "folds" in heading:  # the map's coordinates, as plain metres
            ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
            assert all(t.replace("−", "-").lstrip("-").isdigit() for t in ticks), ticks
            assert any(int(t) >= 500000 for t in ticks), ticks
