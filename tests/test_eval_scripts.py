"""The evaluation scripts' own logic: issue 12's bar, and `make noise` reproducing the
baseline row of `make evaluate` from the same real data (eval/)."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import evaluate
        import noise_floor
    finally:
        sys.path.pop(0)
    return evaluate, noise_floor


def test_bar_is_never_2_percent_worse_and_better_on_half(scripts):
    evaluate, _ = scripts
    assert evaluate.bar_met([0.1, -1.9])            # better on half, never 2 % worse
    assert not evaluate.bar_met([5.0, 5.0, -2.1])   # one target more than 2 % worse
    assert not evaluate.bar_met([0.5, 0.0, 0.0])    # a tie is not better
    assert evaluate.bar_met([0.5, 0.0])
    assert not evaluate.bar_met([])
    assert evaluate.fmt_gain(None) == "–" and evaluate.fmt_gain(-0.04) == "-0.0 %"


def test_gains_sign_follows_the_metric(scripts):
    _, noise = scripts
    scores = np.array([[1.0, 0.50], [0.9, 0.55], [1.1, 0.40]])  # seeds x (rmse, kappa)
    g = noise.gains(scores, ["regression", "classification"])
    np.testing.assert_allclose(g, [[10.0, 10.0], [-10.0, -20.0]])


def test_noise_floor_seed_0_is_the_evaluation_baseline(scripts):
    """Seed 0 of `make noise` on the Cook farm (numeric and class targets, a categorical
    covariate) gives exactly the rf_pixels scores `make evaluate` got through qgis_process,
    so the spread it reports is around the table's own baseline."""
    evaluate, noise = scripts
    spec = evaluate.SETS["us_cookfarm"]
    x, y, folds, points = noise.baseline_rows("us_cookfarm", spec)
    assert points.classes and set(points.classes) == {"taxon"}
    assert len(points.classes["taxon"]) == 6
    assert x.shape[0] == y.shape[0] == folds.shape[0] == 183
    assert sorted(np.unique(folds)) == list(range(6))
    scores, kinds = noise.seed_scores(x, y, folds, points, 1)
    assert kinds == ["regression", "regression", "classification"]
    with open(os.path.join(ROOT, "eval", "results.json")) as f:
        rows = {r["target"]: r["rf_pixels"][0] for r in json.load(f)["rows"]
                if r["set"] == "us_cookfarm"}
    np.testing.assert_allclose(scores[0], [rows["ph"], rows["bld"], rows["taxon"]],
                               rtol=1e-9)
