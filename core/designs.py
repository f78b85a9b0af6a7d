"""The site-choosing algorithms of :mod:`.sampling` (which scans the candidates and
measures the AOA growth): random sites with a minimum spacing, feature-space coverage and
conditioned Latin hypercube, each keeping the existing samples.

* ``coverage``: weighted K-means in PC space with the existing samples as fixed centres
  (spcosa's ``stratify`` with prior points, Walvoort et al. 2010): only the N new centres
  move, so they go where no existing sample represents the landscape.  Candidates outside
  the area of applicability (AOA) of the existing samples weigh ``OUTSIDE_WEIGHT`` (4),
  those inside 1, so the centres are pulled towards where the map cannot be trusted (a
  weight growing with DI did worse on the evaluation sets: it chases a few outliers).
  Each centre becomes the candidate tile nearest to it in PC space (plus ``cost_weight``
  x its cost scaled 0..1, in units of the cluster's RMS radius), heaviest clusters
  first, at least ``min_distance`` (map units) from existing samples and from sites
  already placed.
* ``clhs``: conditioned Latin hypercube sampling (Minasny & McBratney 2006) on the PCs
  plus the covariates, by simulated annealing: strata are the quantiles of the
  candidates for the N + existing sample size; the existing samples are kept (as
  clhs's ``must.include``) and count in their strata; the objective is the number of
  stratum-count deviations plus half the correlation mismatch (clhs's weights) plus, with
  a cost raster, ``cost_weight`` x n_variables x the summed cost scaled 0..1 (cost-
  constrained cLHS, Roudier et al. 2012).  Swaps that break ``min_distance`` are refused.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .errors import InputError
from .progress import Progress, ensure

CLHS_ITERATIONS = 5000


# ---------------------------------------------------------------------------------------
# Spatial spacing
# ---------------------------------------------------------------------------------------
def spacing_mask(xy: np.ndarray, others: np.ndarray, min_distance: float) -> np.ndarray:
    """(m,) whether each row of ``xy`` lies at least ``min_distance`` from every row of
    ``others``."""
    if min_distance <= 0 or len(others) == 0:
        return np.ones(len(xy), bool)
    from scipy.spatial import cKDTree
    d, _ = cKDTree(others).query(xy, k=1)
    return d >= min_distance


def spacing_error(placed: int, n: int, min_distance: float) -> InputError:
    return InputError(
        f"MIN_DISTANCE {min_distance:g} (map units) is impossible: only {placed} of {n} sites "
        f"fit among the candidate tiles at that spacing from each other and from the "
        f"existing samples. Lower MIN_DISTANCE or N, or remove exclusion zones.")


def random_design(xy: np.ndarray, allowed: np.ndarray, n: int, min_distance: float,
                  rng) -> Optional[np.ndarray]:
    """n random candidates (indices) at least ``min_distance`` apart, or None."""
    order = rng.permutation(np.flatnonzero(allowed))
    if min_distance <= 0:
        return order[:n] if len(order) >= n else None
    chosen = []
    for i in order:
        if all(np.hypot(*(xy[i] - xy[j])) >= min_distance for j in chosen):
            chosen.append(i)
            if len(chosen) == n:
                return np.asarray(chosen)
    return None


def _greedy_count(xy: np.ndarray, allowed: np.ndarray, n: int, min_distance: float) -> int:
    """How many of at most n candidates fit at ``min_distance``, placed in raster order."""
    chosen = []
    for i in np.flatnonzero(allowed):
        if all(np.hypot(*(xy[i] - xy[j])) >= min_distance for j in chosen):
            chosen.append(i)
            if len(chosen) == n:
                break
    return len(chosen)


# ---------------------------------------------------------------------------------------
# Feature-space coverage (spcosa-like K-means with fixed centres)
# ---------------------------------------------------------------------------------------
def _nearest(A: np.ndarray, B: np.ndarray):
    from sklearn.metrics import pairwise_distances_argmin_min
    return pairwise_distances_argmin_min(A, B)


def coverage_design(P: np.ndarray, fixed: np.ndarray, n: int, weights: np.ndarray,
                    xy: np.ndarray, allowed: np.ndarray, min_distance: float = 0.0,
                    cost: Optional[np.ndarray] = None, cost_weight: float = 1.0,
                    seed: int = 0, max_iter: int = 50,
                    progress: Optional[Progress] = None) -> dict:
    """N sites among the candidates P (m, k) (``allowed`` ones) by weighted K-means with
    ``fixed`` (f, k) centres that do not move.  -> {"index": (n,) candidate indices in
    placement order, "centres": (n, k), "size": tiles per new cluster, "mass": weights}."""
    progress = ensure(progress)
    rng = np.random.default_rng(seed)
    m = len(P)
    w = np.asarray(weights, np.float64)
    f = len(fixed)
    # weighted k-means++ seeding against the fixed centres
    d2 = _nearest(P, fixed)[1] ** 2 if f else np.full(m, np.inf)
    centres = np.empty((n, P.shape[1]))
    for j in range(n):
        prob = w * (d2 if np.isfinite(d2).all() else 1.0)
        prob = prob / prob.sum() if prob.sum() > 0 else np.full(m, 1.0 / m)
        centres[j] = P[rng.choice(m, p=prob)]
        d2 = np.minimum(d2, ((P - centres[j]) ** 2).sum(axis=1))
    for _ in range(max_iter):
        progress.check()
        label, dist = _nearest(P, np.vstack([fixed, centres]) if f else centres)
        label = label - f
        old = centres.copy()
        for j in range(n):
            members = label == j
            if members.any() and w[members].sum() > 0:
                centres[j] = np.average(P[members], axis=0, weights=w[members])
            else:  # an empty cluster restarts at the worst-represented candidate
                centres[j] = P[int(np.argmax(w * dist ** 2))]
                dist = np.minimum(dist, np.sqrt(((P - centres[j]) ** 2).sum(axis=1)))
        if np.abs(centres - old).max() <= 1e-6 * (np.abs(P).max() + 1e-12):
            break
    label, _ = _nearest(P, np.vstack([fixed, centres]) if f else centres)
    label = label - f
    size = np.bincount(label[label >= 0], minlength=n)
    mass = np.bincount(label[label >= 0], weights=w[label >= 0], minlength=n)
    cost_n = None
    if cost is not None:
        span = np.nanmax(cost) - np.nanmin(cost)
        cost_n = (cost - np.nanmin(cost)) / span if span > 0 else np.zeros(m)
    ok = allowed.copy()
    picks = []
    for j in np.argsort(-mass, kind="stable"):
        if not ok.any():
            raise spacing_error(len(picks), n, min_distance)
        d = np.sqrt(((P - centres[j]) ** 2).sum(axis=1))
        members = label == j
        radius = math.sqrt(np.mean(d[members] ** 2)) if members.any() else float(np.median(d))
        score = d / max(radius, 1e-12)
        if cost_n is not None:
            score = score + cost_weight * cost_n
        score[~ok] = np.inf
        i = int(np.argmin(score))
        picks.append((j, i))
        ok[i] = False
        if min_distance > 0:
            ok &= np.hypot(*(xy - xy[i]).T) >= min_distance
    order = [j for j, _ in picks]
    return {"index": np.asarray([i for _, i in picks]), "centres": centres[order],
            "size": size[order], "mass": mass[order]}


# ---------------------------------------------------------------------------------------
# Conditioned Latin hypercube (annealing), must.include and cost
# ---------------------------------------------------------------------------------------
class _Clhs:
    """Strata, counts and the cLHS objective; the existing samples' counts and moment sums
    are computed once, so each evaluation costs O(n q + q^2)."""

    def __init__(self, V: np.ndarray, fixed: np.ndarray, n: int):
        self.V, self.fixed, self.n = V, fixed, n
        self.q = V.shape[1]
        self.total = total = len(fixed) + n
        qs = np.linspace(0, 1, total + 1)[1:-1]
        self.edges = [np.quantile(V[:, v], qs) for v in range(self.q)]
        self.offset = np.arange(self.q) * total
        self.S = self.strata(V)
        self.S_fixed = self.strata(fixed) if len(fixed) else np.empty((0, self.q), int)
        self.counts_fixed = self._bincount(self.S_fixed)
        self.sum_fixed = fixed.sum(axis=0)
        self.cross_fixed = fixed.T @ fixed
        self.corr_pool = self._corr(len(V), V.sum(axis=0), V.T @ V)

    def strata(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([np.clip(np.searchsorted(self.edges[v], X[:, v], side="right"),
                                        0, self.total - 1) for v in range(self.q)])

    def _bincount(self, S: np.ndarray) -> np.ndarray:
        return np.bincount((S + self.offset).ravel(),
                           minlength=self.q * self.total).reshape(self.q, self.total).astype(float)

    def _corr(self, count, total, cross) -> np.ndarray:
        if count < 2:
            return np.zeros((self.q, self.q))
        mean = total / count
        cov = cross / count - np.outer(mean, mean)
        sd = np.sqrt(np.clip(np.diag(cov), 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(cov / np.outer(sd, sd))

    def counts(self, sel) -> np.ndarray:
        return self.counts_fixed + self._bincount(self.S[sel])

    def excess(self, sel) -> np.ndarray:
        """Per selected site: how over-filled its strata are (sum over variables of count-1)."""
        c = self.counts(sel)
        return (c[np.arange(self.q)[None, :], self.S[sel]] - 1).sum(axis=1)

    def objective(self, sel, cost_term: float = 0.0) -> float:
        o1 = np.abs(self.counts(sel) - 1).sum()
        X = self.V[sel]
        corr = self._corr(len(self.fixed) + len(sel), self.sum_fixed + X.sum(axis=0),
                          self.cross_fixed + X.T @ X)
        o3 = np.abs(corr - self.corr_pool).sum()
        return float(o1 + 0.5 * o3 + cost_term)


def clhs_design(V: np.ndarray, fixed: np.ndarray, n: int, xy: np.ndarray,
                allowed: np.ndarray, min_distance: float = 0.0,
                cost: Optional[np.ndarray] = None, cost_weight: float = 1.0,
                iterations: int = CLHS_ITERATIONS, seed: int = 0,
                progress: Optional[Progress] = None) -> dict:
    """cLHS of n candidates (rows of V (m, q)) keeping the ``fixed`` (f, q) samples.
    -> {"index": (n,) candidate indices, "objective": final, "start": initial,
    "filled": per site, the variables whose empty stratum (without it) it fills}."""
    progress = ensure(progress)
    rng = np.random.default_rng(seed)
    V = np.asarray(V, np.float64)
    sd = V.std(axis=0)
    keep_vars = sd > 0
    V, fixed = V[:, keep_vars], np.asarray(fixed, np.float64).reshape(-1, len(sd))[:, keep_vars]
    if V.shape[1] == 0:
        raise InputError("Every cLHS variable is constant over the candidate tiles.")
    lhs = _Clhs(V, fixed, n)
    cost_n = np.zeros(len(V))
    if cost is not None:
        span = np.nanmax(cost) - np.nanmin(cost)
        cost_n = (cost - np.nanmin(cost)) / span if span > 0 else cost_n
    c_scale = cost_weight * lhs.q if cost is not None else 0.0
    sel = random_design(xy, allowed, n, min_distance, rng)
    if sel is None:
        raise spacing_error(_greedy_count(xy, allowed, n, min_distance), n, min_distance)
    sel = np.asarray(sel)

    def total(s):
        return lhs.objective(s, c_scale * cost_n[s].sum())

    current = start = total(sel)
    best, best_sel = current, sel.copy()
    temp = 1.0
    pool = np.flatnonzero(allowed)
    for it in range(iterations):
        if it % 200 == 0:
            progress.check()
            progress.set(it / iterations)
        pos = int(rng.integers(n))
        if rng.random() < 0.5:  # replace the site whose strata are most over-filled
            pos = int(np.argmax(lhs.excess(sel)))
        others = np.delete(sel, pos)
        cand = None
        for _ in range(20):
            i = int(pool[rng.integers(len(pool))])
            if i in sel:
                continue
            if min_distance > 0 and len(others) and \
                    np.hypot(*(xy[others] - xy[i]).T).min() < min_distance:
                continue
            cand = i
            break
        if cand is None:
            continue
        trial = sel.copy()
        trial[pos] = cand
        value = total(trial)
        delta = value - current
        if delta <= 0 or rng.random() < math.exp(-delta / max(temp, 1e-12)):
            sel, current = trial, value
            if current < best:
                best, best_sel = current, sel.copy()
        if it % 10 == 9:
            temp *= 0.95
    sel = best_sel
    c = lhs.counts(sel)
    # the strata each site holds alone (empty without it, existing samples included)
    filled = [[v for v in range(lhs.q) if c[v, lhs.S[i, v]] == 1] for i in sel]
    strata = [[int(lhs.S[i, v]) + 1 for v in range(lhs.q)] for i in sel]
    return {"index": sel, "objective": best, "start": start, "filled": filled,
            "strata": strata, "variables": np.flatnonzero(keep_vars).tolist(),
            "total": lhs.total}
