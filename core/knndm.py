"""kNNDM folds and geodist: do the CV folds test the map the way it will be used?

A map predicts every pixel of the prediction area; the cross-validation predicts each
sample from the other folds.  The CV error is an honest estimate of the map's error when
the distances it predicts over look like the map's: the nearest-neighbour distance (NND)
from each held-out point to the training points of its fold (CV distances) should follow
the same distribution as the NND from the prediction locations to the samples
(prediction-to-sample).  With clustered samples, random folds test much shorter
distances than the map needs, and K-means folds may test longer ones.

:func:`knndm_folds` is kNNDM (k-fold Nearest Neighbour Distance Matching; Linnenbrink et
al. 2024, GMD 17, 5897-5912; the CAST package's ``knndm``, geographical space, Euclidean
distances): the sample coordinates are clustered (Ward hierarchical clustering, or
K-means) into ``nk`` clusters for about 100 values of ``nk`` from k to N-2; the clusters,
ordered along the coordinates' first principal component, are merged into k folds (a
cluster holding at least N/k points keeps a fold of its own, the rest are dealt out in
turn), and the configuration whose ECDF of CV distances is closest to the ECDF of
prediction-to-sample distances wins.  Closeness is W, the Wasserstein distance between
the two ECDFs (the integral of their absolute difference, CAST's
``twosamples::wass_stat``), in map units.  As CAST does, when the sample-to-sample NNDs
are not significantly shorter than the prediction-to-sample ones (one-sided
Kolmogorov-Smirnov test, p >= 0.05) the samples are not clustered for the prediction
area, and random folds are returned.

:func:`geodist` gives CAST's ``geodist``: the three distributions (sample-to-sample,
prediction-to-sample, CV distances of each fold assignment) and W of each against the
prediction-to-sample one; :func:`prediction_locations` draws the prediction locations: a
seeded sample of the raster's valid pixel centres.

    pred = prediction_locations(source, 2000, seed=0)
    res = knndm_folds(coords, pred, k=6)
    print(res.folds, res.W, res.nk)
    gd = geodist(coords, pred, {"kmeans": km_folds, "random": rnd_folds, "knndm": res.folds})
    print(gd.W)   # {"kmeans": ..., "random": ..., "knndm": ...}
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import ks_2samp, wasserstein_distance

from .cv import FOLD_MODES, MIN_FOLD_POINTS, spatial_folds
from .errors import InputError
from .progress import Progress, ensure

CLUSTERINGS = ("hierarchical", "kmeans")
N_PREDICTION = 2000      # prediction locations drawn from the raster (CAST: 1000 / 2000)
N_CANDIDATES = 100       # CAST's nk_len: numbers of clusters tried
MAXP = 0.5               # largest share of the points one fold may hold (CAST's maxp)
MAX_HIERARCHICAL = 10000  # Ward holds the N²/2 distances (400 MB): K-means above
KS_ALPHA = 0.05
RANDOM_NOTE = ("kNNDM folds are random folds here: the samples are not clustered for this "
               "map (their nearest-neighbour distances are not shorter than the map's; "
               "one-sided Kolmogorov-Smirnov test, p >= 0.05, as CAST).")


# ----------------------------------------------------------------------------- distances

def _coords(coords, what: str) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"{what} must be an (N, 2) array of coordinates, got shape "
                         f"{coords.shape}.")
    if not np.isfinite(coords).all():
        raise InputError(f"Some {what.lower()} are NaN/inf.")
    return coords


def sample_distances(coords) -> np.ndarray:
    """(N,) distance from each sample to its nearest other sample (0 for duplicates)."""
    coords = _coords(coords, "Sample coordinates")
    if len(coords) < 2:
        raise InputError("Nearest-neighbour distances need at least 2 samples.")
    d, _ = cKDTree(coords).query(coords, k=2)
    return d[:, 1]


def prediction_distances(coords, prediction) -> np.ndarray:
    """(P,) distance from each prediction location to its nearest sample."""
    coords = _coords(coords, "Sample coordinates")
    prediction = _coords(prediction, "Prediction locations")
    d, _ = cKDTree(coords).query(prediction, k=1)
    return d


def cv_distances(coords, folds) -> np.ndarray:
    """(N,) distance from each sample to the nearest sample outside its fold: what the CV
    predicts over (CAST's ``cv_distances``, Gj* of kNNDM)."""
    coords = _coords(coords, "Sample coordinates")
    folds = np.asarray(folds).reshape(-1)
    if folds.shape[0] != len(coords):
        raise InputError(f"{len(coords)} samples but {folds.shape[0]} fold ids.")
    out = np.empty(len(coords))
    for f in np.unique(folds):
        test = folds == f
        if test.all():
            raise InputError("CV distances need at least 2 folds.")
        out[test], _ = cKDTree(coords[~test]).query(coords[test], k=1)
    return out


def wasserstein(a, b) -> float:
    """W: the integral of the absolute difference of the two ECDFs (map units)."""
    return float(wasserstein_distance(np.asarray(a, float), np.asarray(b, float)))


# ----------------------------------------------------------------------------- prediction area

def prediction_locations(source, n: int = N_PREDICTION, seed: int = 0,
                         candidates: int = 4) -> np.ndarray:
    """(P <= n, 2) map coordinates of a seeded sample of valid pixel centres of ``source``
    (a raster.TileSource): up to ``candidates`` × n pixels drawn uniformly without
    replacement are checked in their drawn order (in chunks, each read in raster order)
    until n valid ones are found (valid as TileSource.read says)."""
    from .features import pixel_values
    n = int(n)
    if n < 1:
        raise InputError(f"The number of prediction locations must be positive, got {n}.")
    rng = np.random.default_rng(seed)
    width = int(source.width)
    total = width * int(source.height)
    draw = rng.choice(total, size=min(total, candidates * n), replace=False)
    found, start, rate = [], 0, 1.0
    while start < len(draw) and sum(len(f) for f in found) < n:
        need = n - sum(len(f) for f in found)
        chunk = draw[start:start + int(need / max(rate, 0.05) * 1.1) + 16]
        start += len(chunk)
        order = np.argsort(chunk)  # read in raster order (block cache), keep drawn order
        rows, cols = np.divmod(chunk[order], width)
        ok = np.empty(len(chunk), bool)
        ok[order] = np.isfinite(pixel_values(source, cols, rows)).all(axis=1)
        rate = max(ok.mean(), 0.01)
        found.append(chunk[ok])
    picked = np.concatenate(found)[:n]
    if len(picked) == 0:
        raise InputError(f"No valid pixel among {start} drawn from '{source.path}': is the "
                         "raster all nodata?")
    rows, cols = np.divmod(np.sort(picked), width)
    xs, ys = source.transform @ (cols + 0.5, rows + 0.5)
    return np.column_stack([xs, ys]).astype(np.float64)


# ----------------------------------------------------------------------------- kNNDM

@dataclass
class KNNDMResult:
    """kNNDM folds and the distances they were matched on (CAST's knndm object)."""

    folds: np.ndarray        # (N,) fold id 0..k-1
    W: float                 # Wasserstein distance of Gjstar to Gij
    nk: Optional[int]        # number of clusters merged into the folds; None: random folds
    Gij: np.ndarray          # (P,) prediction-to-sample NNDs
    Gj: np.ndarray           # (N,) sample-to-sample NNDs
    Gjstar: np.ndarray       # (N,) CV distances of the chosen folds
    clustered: bool          # whether the samples are clustered for the prediction area
    candidates: Dict[int, float] = field(default_factory=dict)  # nk -> W of valid configs

    @property
    def method(self) -> str:
        return "random CV" if self.nk is None else f"{self.nk} clusters"


def _candidate_counts(k: int, n: int, count: int) -> np.ndarray:
    """CAST's grid of cluster numbers: log-spaced from k to N-2, small numbers denser."""
    hi = max(n - 2, k)
    return np.unique(np.round(np.exp(np.linspace(np.log(k), np.log(hi), count))).astype(int))


def _merge(labels: np.ndarray, coords: np.ndarray, axis: np.ndarray, k: int) -> np.ndarray:
    """nk clusters -> k folds, as CAST: clusters ordered along the first principal
    component; one of at least N/k points keeps its own fold, the rest are dealt out in
    turn to the remaining folds."""
    ids, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(ids), 2))
    np.add.at(sums, inverse, coords)
    order = np.argsort((sums / sizes[:, None]) @ axis, kind="stable")
    fold_of = np.full(len(ids), -1, np.int64)
    big = [c for c in order if sizes[c] >= len(labels) / k]
    fold_of[big] = np.arange(len(big))
    rest = [c for c in order if fold_of[c] < 0]
    free = np.arange(len(big), k)
    if rest:
        fold_of[rest] = np.resize(free, len(rest))
    return fold_of[inverse]


def knndm_folds(coords, prediction, k: int = 6, maxp: Optional[float] = None,
                clustering: str = "hierarchical", n_candidates: int = N_CANDIDATES,
                min_size: int = MIN_FOLD_POINTS, seed: int = 0,
                progress: Optional[Progress] = None) -> KNNDMResult:
    """kNNDM fold id (0..k-1) of each sample at ``coords`` (N, 2) for a map predicted at
    ``prediction`` (P, 2), both in the same projected CRS.

    ``maxp``: the largest share of the points a fold may hold (default 0.5; 0.6 for k = 2,
    where it must exceed 1/k); ``clustering``: hierarchical (Ward, CAST's default) or kmeans;
    ``n_candidates``: numbers of clusters tried; ``min_size``: the fewest points of a fold.
    Configurations with an empty or too small fold, or one over ``maxp``, are skipped.
    Progress is reported and cancel checked for each configuration.
    """
    progress = ensure(progress)
    coords = _coords(coords, "Sample coordinates")
    prediction = _coords(prediction, "Prediction locations")
    n, k = len(coords), int(k)
    if clustering not in CLUSTERINGS:
        raise InputError(f"Unknown clustering '{clustering}': use one of "
                         f"{', '.join(CLUSTERINGS)}.")
    if k < 2:
        raise InputError(f"kNNDM needs at least 2 folds, got {k}.")
    if n < min_size * k:
        raise InputError(f"{n} points are too few for {k} kNNDM folds: at least "
                         f"{min_size * k} are needed. Use fewer FOLDS (or add points).")
    if len(prediction) == 0:
        raise InputError("kNNDM needs prediction locations: none were given.")
    maxp = float(maxp) if maxp is not None else (MAXP if k > 2 else 0.6)
    if not 1.0 / k < maxp < 1.0:
        raise InputError(f"maxp must lie strictly between 1/k = {1 / k:.3f} and 1, got {maxp}.")
    gj = sample_distances(coords)
    gij = prediction_distances(coords, prediction)
    # CAST: samples clustered for the area when their NNDs are shorter than the map's
    with warnings.catch_warnings():  # large samples: scipy switches to the asymptotic p
        warnings.simplefilter("ignore", RuntimeWarning)
        clustered = bool(ks_2samp(gj, gij, alternative="greater").pvalue < KS_ALPHA)
    if not clustered:
        folds = spatial_folds(coords, k, "random", seed)
        star = cv_distances(coords, folds)
        return KNNDMResult(folds, wasserstein(star, gij), None, gij, gj, star, False)

    centred = coords - coords.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]  # first principal component
    if clustering == "hierarchical" and n > MAX_HIERARCHICAL:
        clustering = "kmeans"
    tree = None
    if clustering == "hierarchical":
        from scipy.cluster.hierarchy import fcluster, linkage
        tree = linkage(coords, method="ward")
    best, scores = None, {}
    counts = _candidate_counts(k, n, int(n_candidates))
    for i, nk in enumerate(counts):
        progress.check()
        progress.set(i / len(counts))
        if tree is not None:
            labels = fcluster(tree, t=int(nk), criterion="maxclust")
        else:
            from sklearn.cluster import KMeans
            with warnings.catch_warnings():  # duplicated points: fewer distinct clusters
                warnings.simplefilter("ignore")
                labels = KMeans(n_clusters=int(nk), n_init=1, max_iter=50,
                                random_state=seed).fit_predict(coords)
        folds = _merge(labels, coords, axis, k)
        sizes = np.bincount(folds, minlength=k)
        if len(sizes) != k or sizes.min() < min_size or sizes.max() > maxp * n:
            continue
        star = cv_distances(coords, folds)
        w = wasserstein(star, gij)
        scores[int(nk)] = w
        if best is None or w < best[0]:
            best = (w, int(nk), folds, star)
    if best is None:
        raise InputError(f"kNNDM found no way to make {k} folds of at least {min_size} points "
                         f"with none over {maxp:.0%} of the {n} points: use fewer FOLDS.")
    w, nk, folds, star = best
    progress.set(1.0)
    return KNNDMResult(folds.astype(np.int64), w, nk, gij, gj, star, True, scores)


# ----------------------------------------------------------------------------- geodist

@dataclass
class GeoDist:
    """CAST's geodist: nearest-neighbour distance distributions and their W statistics.

    ``sample``: sample-to-sample NNDs (N,); ``prediction``: prediction-to-sample (P,);
    ``cv``: fold assignment name -> CV distances (N,); ``W``: name -> W of its CV distances
    against the prediction-to-sample ones; ``W_sample``: W of sample-to-sample against
    prediction-to-sample; ``used``: the fold assignment the CV used."""

    sample: np.ndarray
    prediction: np.ndarray
    cv: Dict[str, np.ndarray]
    W: Dict[str, float]
    W_sample: float
    used: str = ""
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        """One log line: W of each fold assignment (lower = closer to the map)."""
        parts = [f"{name} {w:.4g}" for name, w in self.W.items()]
        return ("Nearest-neighbour distance match to the map (W, map units; lower is closer): "
                + ", ".join(parts) + f"; sample-to-sample {self.W_sample:.4g}."
                + "".join(" " + n for n in self.notes))

    def table(self) -> list:
        """Rows for JSON/reports: fold assignment, W, median CV distance, used."""
        return [{"folds": name, "W": float(self.W[name]),
                 "median_cv_distance": float(np.median(d)), "used": name == self.used}
                for name, d in self.cv.items()]


def geodist(coords, prediction, folds: Mapping[str, np.ndarray], used: str = "") -> GeoDist:
    """The three distance distributions for samples at ``coords`` (N, 2), a map at
    ``prediction`` (P, 2) and each fold assignment in ``folds`` (name -> (N,) ids)."""
    coords = _coords(coords, "Sample coordinates")
    s2s = sample_distances(coords)
    p2s = prediction_distances(coords, prediction)
    cv = {name: cv_distances(coords, f) for name, f in folds.items()}
    return GeoDist(s2s, p2s, cv, {name: wasserstein(d, p2s) for name, d in cv.items()},
                   wasserstein(s2s, p2s), used)


def fold_distances(coords, prediction, k: int, seed: int = 0,
                   given: Optional[Mapping[str, np.ndarray]] = None, used: str = "",
                   progress: Optional[Progress] = None) -> GeoDist:
    """geodist of every FOLD_MODE's folds (cv.spatial_folds with ``k`` folds and ``seed``):
    ``given`` folds (mode -> ids, e.g. the ones the CV used) are taken as they are; a mode
    that cannot make its folds on these points (too small a fold) is left out."""
    folds = dict(given or {})
    for mode in FOLD_MODES:
        if mode not in folds:
            try:
                folds[mode] = spatial_folds(coords, k, mode, seed, prediction, progress)
            except InputError:
                continue
    order = {m: i for i, m in enumerate(FOLD_MODES)}
    folds = dict(sorted(folds.items(), key=lambda kv: order.get(kv[0], len(order))))
    gd = geodist(coords, prediction, folds, used or next(iter(given or {}), ""))
    if "knndm" in folds and "random" in folds and np.array_equal(folds["knndm"],
                                                                 folds["random"]):
        gd.notes.append(RANDOM_NOTE)
    return gd
