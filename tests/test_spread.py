"""rf_pixels' own run-to-run spread (core/spread.py): the baseline refitted with other seeds
on the CV's folds, in the CV table, the log and the report's sentences."""
from dataclasses import replace

import numpy as np
import pytest

from soilssl.core.classes import CLASSIFICATION, KAPPA, REGRESSION
from soilssl.core.cv import BASELINE, PIXELS, cross_validate, spatial_folds
from soilssl.core.report import baseline_sentence, stack_sentence
from soilssl.core.spread import (BEYOND, baseline_spread, row_scores, spread_clause,
                                 spread_note, spread_text)

RF = {"n_estimators": 15, "search_estimators": 8, "min_samples_leaf": (1,), "n_jobs": 1}
FAST = {"rf": RF}


def data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1000, size=(n, 2))
    x = rng.normal(size=(n, 4))
    ph = x[:, 0] + 0.5 * rng.normal(size=n)
    soil = (x[:, 1] > 0).astype(float) + (x[:, 2] > 1)  # 3 classes
    ph[3] = np.nan  # a point without pH
    return {PIXELS: x}, np.column_stack([ph, soil]), spatial_folds(coords, 4, seed=0)


def test_spread_is_the_baseline_scored_with_the_next_seeds():
    sets, y, folds = data()
    kw = dict(target_names=["ph", "soil"], kinds=[REGRESSION, CLASSIFICATION],
              classes={"soil": ["a", "b", "c"]}, head_options=FAST)
    cv = cross_validate(sets, y, folds, [BASELINE, ("ridge", PIXELS, "ridge")], seed=7, **kw)
    out = baseline_spread(cv, sets, seed=7, n_seeds=2, head_options=FAST)
    assert cv.spread is None and set(out.spread) == {"ph", "soil"}
    by_hand = [row_scores(cv, BASELINE)]
    for seed in (8, 9):  # same folds, same points, only the forest's seed changes
        other = cross_validate(sets, y, folds, [BASELINE], seed=seed, **kw)
        m = 0
        by_hand.append([other.summary()[0][0, m, 0], other.class_summary()[0][1, m, KAPPA]])
    by_hand = np.array(by_hand)
    assert by_hand[0, 0] == pytest.approx(cv.summary()[0][0, 0, 0])  # RMSE for pH
    assert by_hand[0, 1] == pytest.approx(cv.class_summary()[0][1, 0, KAPPA])  # kappa
    for t, target in enumerate(["ph", "soil"]):
        s = out.spread[target]
        np.testing.assert_allclose(s["scores"], by_hand[:, t], rtol=1e-12)
        assert s["sd"] == pytest.approx(np.std(by_hand[:, t], ddof=1))
        assert s["percent"] == pytest.approx(100 * s["sd"] / abs(by_hand[:, t].mean()))
    assert np.ptp(out.spread["ph"]["scores"]) > 0  # the seed does move the forest
    # the CV table's baseline rows carry it; the other rows do not
    rows = {(r["target"], r["method"]): r for r in out.table()}
    assert rows[("ph", BASELINE)]["seed_sd_percent"] == pytest.approx(
        out.spread["ph"]["percent"])
    assert rows[("soil", BASELINE)]["seed_sd"] == pytest.approx(out.spread["soil"]["sd"])
    assert "seed_sd" not in rows[("ph", "ridge")]
    assert str(out.spread["ph"]["percent"].__round__(1)) in spread_text(out)


def test_no_baseline_row_or_no_seed_leaves_the_cv_alone():
    sets, y, folds = data()
    cv = cross_validate(sets, y[:, :1], folds, [("ridge", PIXELS)], head_options=FAST)
    assert baseline_spread(cv, sets) is cv and spread_text(cv) is None
    cv = cross_validate(sets, y[:, :1], folds, [BASELINE], head_options=FAST)
    assert baseline_spread(cv, sets, n_seeds=0) is cv


def test_gains_are_judged_against_twice_the_spread():
    sets, y, folds = data()
    cv = cross_validate(sets, y[:, :1], folds, [BASELINE], target_names=["ph"],
                        head_options=FAST)
    assert spread_clause(cv, "ph", 5.0) == ""  # no spread measured: nothing said
    cv = replace(cv, spread={"ph": {"scores": [1.0] * 5, "sd": 0.03, "percent": 3.0}})
    assert BEYOND == 2.0
    assert spread_clause(cv, "ph", 5.9) == ", within twice rf_pixels' seed spread of 3.0 %"
    assert spread_clause(cv, "ph", -6.1) == ", beyond twice rf_pixels' seed spread of 3.0 %"
    assert "over 5 random seeds" in spread_note(cv)


def test_report_sentences_say_whether_a_gain_is_beyond_the_spread(tmp_path):
    from soilssl.core.cv import FEATURES, SELECTED, MethodSpec
    rng = np.random.default_rng(1)
    sets, y, folds = data()
    sets[FEATURES] = sets[PIXELS] + 0.1 * rng.normal(size=sets[PIXELS].shape)
    cv = cross_validate(sets, y[:, :1], folds, [BASELINE, MethodSpec("ridge", FEATURES)],
                        target_names=["ph"], head_options=FAST)
    cv = baseline_spread(cv, sets, n_seeds=2, head_options=FAST)
    sentence = baseline_sentence(cv)
    pct = cv.spread["ph"]["percent"]
    assert f"twice rf_pixels' seed spread of {pct:.1f} %" in sentence
    # the stack's sentence: its nested-CV gain, within or beyond twice the spread
    from soilssl.core.selection import candidates, nested_selection
    cv = nested_selection(cv, sets, candidates(cv, FEATURES), head_options=FAST)
    assert cv.spread is not None  # nested selection keeps it
    base, sel = row_scores(cv, BASELINE)[0], row_scores(cv, SELECTED)[0]
    gain = 100 * (base - sel) / base
    text = stack_sentence(cv)
    assert f"{abs(gain):.1f} % {'lower' if gain > 0 else 'higher'}" in text
    word = "beyond" if abs(gain) > 2 * pct else "within"
    assert f", {word} twice rf_pixels' seed spread of {pct:.1f} %" in text
    # the report: both sentences, then once what the spread is
    from soilssl.core.report import write_report
    coords = np.random.default_rng(0).uniform(0, 1000, size=(len(cv.folds), 2))
    page = open(write_report(str(tmp_path / "r.html"), cv, coords, {"ph": SELECTED}),
                encoding="utf-8").read()
    note = spread_note(cv).replace("'", "&#x27;")
    assert page.count(note) == 1 and page.index(note) > page.index("nested-CV")
    # no spread measured: no note
    page = open(write_report(str(tmp_path / "r2.html"), replace(cv, spread=None), coords,
                             {"ph": SELECTED}), encoding="utf-8").read()
    assert "seed spread" not in page
