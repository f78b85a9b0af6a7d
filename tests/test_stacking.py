"""The stack METHOD=all maps with: convex weights, the stacked head, its model-file form."""
import numpy as np
import pytest

from soilssl.core.classes import ForestClassifier, LogisticHead, load_head
from soilssl.core.errors import InputError
from soilssl.core.heads import ForestHead, RidgeHead, load_regressor
from soilssl.core.importance import native_importances
from soilssl.core.stacking import (MIN_WEIGHT, SHRINK_GRID, StackedHead, describe,
                                   member_columns, one_se_choice, shrink, shrunk_weights,
                                   simplex_weights, union_blocks)


def test_weights_recover_a_known_convex_mix_and_drop_a_useless_member():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(3, 200))
    y = 0.7 * a + 0.3 * b
    w = simplex_weights(np.c_[a, b, c], y)
    np.testing.assert_allclose(w, [0.7, 0.3, 0.0], atol=1e-6)
    # noisy: still on the simplex, and no worse than the best member
    y2 = y + rng.normal(0, 0.5, 200)
    w2 = simplex_weights(np.c_[a, b, c], y2)
    assert (w2 >= 0).all() and w2.sum() == pytest.approx(1)
    assert ((w2 > 0) & (w2 < MIN_WEIGHT)).sum() == 0
    mse = lambda p: np.mean((p - y2) ** 2)  # noqa: E731
    assert mse(np.c_[a, b, c] @ w2) <= min(mse(a), mse(b), mse(c)) + 1e-9


def test_weights_follow_sample_weights_and_skip_missing_rows():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 100))
    y = np.where(np.arange(100) < 50, a, b)  # a is right on the first half, b on the second
    s = np.where(np.arange(100) < 50, 1.0, 0.0)
    np.testing.assert_allclose(simplex_weights(np.c_[a, b], y, s), [1, 0], atol=1e-6)
    P = np.c_[a, b]
    P[:50, 1] = np.nan  # rows with a missing prediction are left out: only b's half is left
    np.testing.assert_allclose(simplex_weights(P, y), [0, 1], atol=1e-6)
    with pytest.raises(InputError, match="No point with out-of-fold predictions"):
        simplex_weights(np.full((5, 2), np.nan), np.zeros(5))


def test_class_weights_minimise_the_brier_score():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 150)
    right = np.eye(3)[y] * 0.8 + 0.2 / 3
    guess = rng.dirichlet(np.ones(3), 150)
    w = simplex_weights(np.stack([guess, right], axis=1), y)
    np.testing.assert_allclose(w, [0, 1], atol=1e-6)
    half = 0.5 * right + 0.5 * np.eye(3)[(y + 1) % 3]  # half right, half a wrong class
    w = simplex_weights(np.stack([half, right], axis=1), y)
    assert w[1] == pytest.approx(1, abs=1e-6)


def test_shrinkage_is_chosen_by_leaving_out_one_group_at_a_time():
    rng = np.random.default_rng(3)
    n = 60
    groups = np.repeat(np.arange(5), n // 5)
    y = rng.normal(size=n)
    base = y + rng.normal(0, 0.6, n)          # the baseline: right, with noise
    lucky = np.where(groups == 0, y, rng.normal(size=n))  # right on one group only
    other = y + rng.normal(0, 0.8, n)
    P = np.c_[base, lucky, other]
    prior = np.array([1.0, 0.0, 0.0])
    w, lam = shrunk_weights(P, y, groups, prior)
    assert lam in SHRINK_GRID
    # the definition, recomputed by hand: weights of the other groups, shrunk by each λ,
    # scored on the left-out group; the largest λ within one (paired) standard error of
    # the lowest summed loss; it shrinks the weights of all rows
    loss = np.zeros((5, len(SHRINK_GRID)))
    for g in range(5):
        wg = simplex_weights(P[groups != g], y[groups != g])
        for i, x in enumerate(SHRINK_GRID):
            loss[g, i] = np.sum((P[groups == g] @ shrink(wg, prior, x) - y[groups == g]) ** 2)
    best = int(np.argmin(loss.sum(axis=0)))
    excess = loss - loss[:, [best]]
    within = excess.mean(axis=0) <= excess.std(axis=0, ddof=1) / np.sqrt(5)
    assert lam == SHRINK_GRID[np.flatnonzero(within).max()] >= SHRINK_GRID[best]
    np.testing.assert_allclose(w, shrink(simplex_weights(P, y), prior, lam))
    assert (w >= 0).all() and w.sum() == pytest.approx(1)
    # a member right on two groups only: its weight does not carry over to the others,
    # and the stack is pulled toward the baseline
    lucky = np.where(groups <= 1, y, rng.normal(size=n))
    w, lam = shrunk_weights(np.c_[base, lucky], y, groups, [1, 0])
    full = simplex_weights(np.c_[base, lucky], y)
    assert lam > 0 and 0 <= w[1] < full[1]
    # a member right on every group is kept whole: nothing to shrink
    w, lam = shrunk_weights(np.c_[base, y + rng.normal(0, 0.01, n)], y, groups, [1, 0])
    assert lam == 0 and w[1] > 0.99
    # one group: no way to check the weights, no shrinkage
    assert shrunk_weights(P, y, np.zeros(n), prior)[1] == 0
    with pytest.raises(InputError, match="prior weights"):
        shrunk_weights(P, y, groups, [0.5, 0.2, 0.0])
    with pytest.raises(InputError, match="one group per point"):
        shrunk_weights(P, y, groups[:-1], prior)


def test_shrinking_drops_members_left_below_the_minimum_weight():
    # toward the baseline alone: what the dropped member had goes to the baseline
    np.testing.assert_allclose(shrink([0.0, 0.7, 0.3], [1, 0, 0], 0.9), [0.93, 0.07, 0.0])
    np.testing.assert_allclose(shrink([0.0, 0.7, 0.3], [1, 0, 0], 0.5), [0.5, 0.35, 0.15])
    np.testing.assert_allclose(shrink([0.0, 0.7, 0.3], [1, 0, 0], 0.98), [1.0, 0.0, 0.0])
    # toward equal weights: to the kept members, in proportion to the prior
    third = np.full(3, 1 / 3)
    w = shrink([0.9, 0.1, 0.0], third, 0.1)
    np.testing.assert_allclose(w, [0.81 + 0.1 / 3 + 0.1 / 6, 0.09 + 0.1 / 3 + 0.1 / 6, 0.0])
    assert w.sum() == pytest.approx(1) and MIN_WEIGHT == 0.05


def test_one_standard_error_rule_prefers_the_prior_unless_the_gain_is_steady():
    grid = np.array([0.0, 0.5, 1.0])
    # λ = 0 is lowest in sum, but only thanks to one group: within one SE, take λ = 1
    noisy = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.5, 1.2]])
    assert one_se_choice(noisy, grid) == 1.0
    # the same total gain, spread evenly over the groups: steady, keep λ = 0
    steady = np.array([[1.0, 1.1, 1.3]] * 4)
    assert one_se_choice(steady, grid) == 0.0
    # λ = 0.5 steadily better than λ = 1, λ = 0 no better than λ = 0.5: take 0.5
    mid = np.array([[1.0, 1.0, 1.2], [1.1, 1.0, 1.3], [0.9, 0.9, 1.1]])
    assert one_se_choice(mid, grid) == 0.5


def test_class_shrinkage_is_chosen_by_the_kappa_of_the_class_map():
    """For class probabilities the weights minimise the Brier score but λ is chosen by what
    the class map is judged by: Cohen's kappa of the most probable class on the left-out
    group.  A member that always gives the class frequencies has the better Brier score
    here, yet any share of it turns the rare classes of the map into the common one."""
    rng = np.random.default_rng(0)
    n = 120
    groups = np.repeat(np.arange(6), n // 6)
    y = rng.choice(3, n, p=[0.6, 0.2, 0.2])
    y[groups == 0] = 0                      # one group of one class: kappa undefined there
    unsure = np.full((n, 3), 0.32)          # the baseline: right, but barely
    unsure[np.arange(n), y] = 0.36
    prior_freq = np.tile([0.6, 0.2, 0.2], (n, 1))
    P = np.stack([unsure, prior_freq], axis=1)
    brier = [np.mean(((P[:, m] - np.eye(3)[y]) ** 2).sum(axis=1)) for m in range(2)]
    assert brier[1] < brier[0] and simplex_weights(P, y)[1] > 0.5
    w, lam = shrunk_weights(P, y, groups, [1, 0])
    assert lam == 1.0 and w[1] == 0
    assert (np.tensordot(P, w, axes=([1], [0])).argmax(axis=1) == y).all()


def test_layout_of_members_in_the_union_of_their_blocks():
    union = union_blocks([("pixels",), ("pixels", "context"), ("features",),
                          ("pixels", "features")])
    assert union == ("pixels", "context", "features")
    widths = {"pixels": 2, "context": 4, "features": 3}
    np.testing.assert_array_equal(member_columns(("pixels", "features"), union, widths),
                                  [0, 1, 6, 7, 8])
    np.testing.assert_array_equal(member_columns(("context",), union, widths), [2, 3, 4, 5])
    assert describe({"ridge": 0.25, "rf_pixels": 0.75}) == "0.75 rf_pixels + 0.25 ridge"


def _data(n=120, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = X[:, 0] * 2 + np.sin(X[:, 3]) + rng.normal(0, 0.1, n)
    return X, y


def test_stacked_head_predicts_the_weighted_mean_and_survives_its_state():
    X, y = _data()
    members = [("ridge", RidgeHead(), np.array([0, 1])),
               ("rf", ForestHead(n_estimators=20, search_estimators=10), np.array([2, 3, 4]))]
    head = StackedHead(members, [3, 1], n_features=5).fit(X, y)
    assert head.weights.tolist() == [0.75, 0.25]
    ridge = RidgeHead().fit(X[:, :2], y)
    np.testing.assert_allclose(head.predict(X[:7])[:3], (0.75 * ridge.predict(X[:7, :2]) + 0.25 *
                                                         members[1][1].predict(X[:7, 2:]))[:3])
    again = load_regressor(head.state_dict())
    assert isinstance(again, StackedHead) and again.weight_map == head.weight_map
    np.testing.assert_array_equal(again.predict(X), head.predict(X))
    np.testing.assert_array_equal(load_head(head.state_dict()).predict(X), head.predict(X))
    assert head.feature_importances_ is None  # the ridge has none
    with pytest.raises(InputError, match=r"expects \(N, 5\)"):
        head.predict(X[:, :4])
    with pytest.raises(InputError, match="non-negative weights"):
        StackedHead(members, [1, -1], n_features=5)
    with pytest.raises(InputError, match="columns 0..4"):
        StackedHead([("ridge", RidgeHead(), np.array([5]))], [1], n_features=5)


def test_stack_of_forests_has_weighted_impurity_importances_on_its_columns():
    X, y = _data()
    a, b = ForestHead(n_estimators=20, search_estimators=10), \
        ForestHead(n_estimators=20, search_estimators=10)
    head = StackedHead([("a", a, np.array([0, 1])), ("b", b, np.array([1, 2, 3, 4]))],
                       [0.5, 0.5], n_features=5).fit(X, y)
    imp = head.feature_importances_
    expected = np.zeros(5)
    expected[[0, 1]] += 0.5 * native_importances(a, 2)
    expected[[1, 2, 3, 4]] += 0.5 * native_importances(b, 4)
    np.testing.assert_allclose(imp, expected)
    assert imp[0] > imp[2]  # column 0 carries the signal


def test_class_stack_averages_probabilities_and_round_trips():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(90, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)  # 3 classes
    members = [("logistic", LogisticHead(n_classes=3), np.array([0, 1])),
               ("rf", ForestClassifier(n_classes=3, n_estimators=20, search_estimators=10),
                np.array([0, 1, 2, 3]))]
    head = StackedHead(members, [0.4, 0.6], n_features=4, kind="classification").fit(X, y)
    p = head.predict_proba(X)
    expected = 0.4 * members[0][1].predict_proba(X[:, :2]) + \
        0.6 * members[1][1].predict_proba(X)
    np.testing.assert_allclose(p, expected)
    np.testing.assert_allclose(p.sum(axis=1), 1)
    np.testing.assert_array_equal(head.predict(X), p.argmax(axis=1))
    assert head.n_classes == 3
    again = load_head(head.state_dict())
    np.testing.assert_allclose(again.predict_proba(X), p)
    assert again.kind == "classification"


def test_nested_stack_of_a_class_target_mixes_probabilities_with_inner_weights():
    from soilssl.core.classes import class_metrics
    from soilssl.core.cv import FEATURES, PIXELS, SELECTED, MethodSpec, cross_validate
    from soilssl.core.selection import class_inner, inner_predictions, nested_selection
    rng = np.random.default_rng(5)
    n = 72
    sets = {PIXELS: rng.normal(size=(n, 3)), FEATURES: rng.normal(size=(n, 6))}
    y = (sets[PIXELS][:, 0] > 0).astype(float) + (sets[FEATURES][:, 1] > 0.6)
    folds = np.repeat(np.arange(3), n // 3)
    rng.shuffle(folds)
    fast = {"rf": {"n_estimators": 15, "search_estimators": 8}}
    rows = ["rf_pixels", "ridge"]
    cv = cross_validate(sets, y, folds, rows, target_names=["soil"], head_options=fast,
                        keep_models=True, kinds=["classification"],
                        classes={"soil": ["a", "b", "c"]})
    extra = class_inner(3)
    out = nested_selection(cv, sets, rows, head_options=fast, inner={"soil": extra})
    specs = [MethodSpec(r) for r in rows]
    inner = inner_predictions(sets, y, folds, specs, head_options=fast,
                              factory=extra["factory"], proba=True)
    assert inner.shape == (3, n, 2, 3)
    m = out.labels.index(SELECTED)
    for k in range(3):
        test = folds == k
        wk, _ = shrunk_weights(inner[k, ~test], y[~test], folds[~test], [1, 0])
        mix = np.tensordot(cv.probabilities["soil"][:, test].transpose(1, 0, 2), wk, (1, 0))
        np.testing.assert_allclose(out.probabilities["soil"][m, test], mix)
        np.testing.assert_array_equal(out.predictions[0, m, test], mix.argmax(axis=1))
        np.testing.assert_allclose(out.class_fold_metrics[0, m, k],
                                   class_metrics(y[test], mix.argmax(axis=1)))
        stack = out.fold_models[("soil", SELECTED)][k]
        X = np.hstack([sets[PIXELS], sets[FEATURES]])
        np.testing.assert_allclose(stack.predict_proba(X[test]), mix, rtol=1e-9)
    row = [r for r in out.table() if r["method"] == SELECTED][0]
    assert row["kind"] == "classification" and 0 <= row["accuracy"] <= 1
    assert sum(out.stacks["soil"].values()) == pytest.approx(1)
