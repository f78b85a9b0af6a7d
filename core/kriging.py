"""Residual kriging: the stack's residuals, interpolated in space (regression kriging).

A soil property keeps spatial structure that the covariates miss: the residuals of a model
at neighbouring points are alike.  Kriging the residuals and adding the kriged field to the
model's prediction is regression kriging (Odeh et al. 1995; Hengl et al. 2007), the
soil mapper's everyday complement to a covariate model.  Here:

* the residuals are **out-of-fold** (a forest's in-sample residuals are shrunk toward 0, and
  kriging them would add almost nothing, or noise);
* the covariance is exponential (Matérn ν = ½) plus a nugget, fitted by maximum likelihood
  (scikit-learn's :class:`~sklearn.gaussian_process.GaussianProcessRegressor`) on the
  standardised residuals, on at most :data:`FIT_POINTS` of them; the field is then
  conditioned on every point (simple kriging of the centred residuals: a calibrated model's
  residuals have mean 0, so the mean is not added back);
* the share α of the field that is added (:data:`SHARES`, 0 = no kriging) is chosen by
  leaving out one fold at a time and kriging its residuals from the other folds, with the
  one-standard-error rule toward α = 0 (:func:`~.stacking.one_se_choice`): the field is
  added only where it steadily helps on folds it did not see.  Spatial folds are far from
  each other, so on most fields this keeps α = 0, and the stack's prediction is unchanged.

Only numeric targets are kriged; class targets keep their stack.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .errors import InputError
from .stacking import one_se_choice

NU = 0.5                          # Matérn smoothness: the exponential model
SHARES = np.linspace(0.0, 1.0, 5)  # α: the share of the kriged field added
FIT_POINTS = 500                  # the covariance is fitted on at most this many points
RESTARTS = 2                      # extra starts of the likelihood's optimiser
CHUNK = 4096                      # locations per kernel block when predicting


@dataclass
class ResidualKriging:
    """A kriged residual field: ``predict(xy)`` = α · k(xy, X) · dual.

    ``xy`` (n, 2) the points (in the raster's CRS), ``dual`` the field's weights (K⁻¹ r in
    the residuals' units), ``amplitude``, ``length_scale`` (map units) and ``nugget`` the
    covariance (in the residuals' squared units), ``alpha`` the share added."""

    xy: np.ndarray
    dual: np.ndarray
    amplitude: float
    length_scale: float
    nugget: float
    alpha: float = 1.0

    @classmethod
    def fit(cls, xy, residuals, seed: int = 0, alpha: float = 1.0) -> "ResidualKriging":
        """The field of ``residuals`` at ``xy`` (both finite; at least 3 points)."""
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        r = np.asarray(residuals, np.float64).reshape(-1)
        if len(r) != len(xy) or len(r) < 3 or not (np.isfinite(xy).all() and
                                                     np.isfinite(r).all()):
            raise InputError(f"Residual kriging needs at least 3 points with finite "
                             f"coordinates and residuals, got {len(r)}.")
        sd = float(r.std()) or 1.0
        z = (r - r.mean()) / sd
        extent = float(np.ptp(xy, axis=0).max()) or 1.0
        kernel = ConstantKernel(1.0, (1e-4, 1e4)) * \
            Matern(extent / 5, (extent / 200, extent * 5), nu=NU) + \
            WhiteKernel(1.0, (1e-5, 1e4))
        rng = np.random.default_rng(seed)
        sub = np.sort(rng.choice(len(z), FIT_POINTS, replace=False)) \
            if len(z) > FIT_POINTS else np.arange(len(z))
        with warnings.catch_warnings():  # a bound reached is a fit, not an error
            warnings.simplefilter("ignore")
            gp = GaussianProcessRegressor(kernel, n_restarts_optimizer=RESTARTS,
                                          random_state=seed).fit(xy[sub], z[sub])
            if len(sub) < len(z):  # the fitted covariance, conditioned on every point
                gp = GaussianProcessRegressor(gp.kernel_, optimizer=None).fit(xy, z)
        k = gp.kernel_
        # in the residuals' units: K = sd² K_z, so K⁻¹ r = K_z⁻¹ z / sd
        return cls(xy, gp.alpha_ / sd, float(k.k1.k1.constant_value) * sd ** 2,
                   float(k.k1.k2.length_scale), float(k.k2.noise_level) * sd ** 2,
                   float(alpha))

    def field(self, xy) -> np.ndarray:
        """The kriged residual (before α) at ``xy`` (m, 2)."""
        from sklearn.gaussian_process.kernels import Matern
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        kern = Matern(self.length_scale, nu=NU)
        out = np.empty(len(xy))
        for i in range(0, len(xy), CHUNK):
            out[i:i + CHUNK] = self.amplitude * (kern(xy[i:i + CHUNK], self.xy) @ self.dual)
        return out

    def predict(self, xy) -> np.ndarray:
        """α · the kriged residual at ``xy``: what is added to the stack's prediction."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return self.alpha * self.field(xy) if self.alpha else np.zeros(len(xy))

    def state_dict(self) -> dict:
        import torch
        return {"method": "residual_kriging", "nu": NU,
                "xy": torch.from_numpy(np.ascontiguousarray(self.xy)),
                "dual": torch.from_numpy(np.ascontiguousarray(self.dual)),
                "amplitude": self.amplitude, "length_scale": self.length_scale,
                "nugget": self.nugget, "alpha": self.alpha}

    @classmethod
    def from_state(cls, state: dict) -> "ResidualKriging":
        if state.get("method") != "residual_kriging" or float(state.get("nu", NU)) != NU:
            raise InputError("The model's residual kriging is of another kind: update the "
                             "plugin or fit the model again.")
        return cls(np.asarray(state["xy"], np.float64), np.asarray(state["dual"], np.float64),
                   float(state["amplitude"]), float(state["length_scale"]),
                   float(state["nugget"]), float(state["alpha"]))

    def describe(self) -> str:
        return (f"{self.alpha:.2f} × kriged residuals (range {self.length_scale:.4g} map "
                f"units, nugget {self.nugget / (self.nugget + self.amplitude):.0%} of the sill)")


def kriged_out_of_fold(xy, residuals, groups, seed: int = 0) -> np.ndarray:
    """Each group's residuals kriged from the other groups' (NaN where a group's others
    have fewer than 3 points)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    r = np.asarray(residuals, np.float64)
    groups = np.asarray(groups)
    out = np.full(len(r), np.nan)
    for g in np.unique(groups):
        test = groups == g
        if (~test).sum() >= 3:
            out[test] = ResidualKriging.fit(xy[~test], r[~test], seed).field(xy[test])
    return out


def choose_share(xy, residuals, groups, seed: int = 0) -> Tuple[float, np.ndarray]:
    """α in :data:`SHARES` by the one-standard-error rule toward 0 on the groups'
    left-out squared errors of ``residuals - α · kriged`` (groups × shares losses)."""
    r = np.asarray(residuals, np.float64)
    groups = np.asarray(groups)
    kriged = kriged_out_of_fold(xy, r, groups, seed)
    ids = [g for g in np.unique(groups) if np.isfinite(kriged[groups == g]).all()]
    if len(ids) < 2:
        return 0.0, np.zeros((0, len(SHARES)))
    losses = np.array([[np.sum((r[groups == g] - a * kriged[groups == g]) ** 2)
                        for a in SHARES] for g in ids])
    # one_se_choice takes the largest grid value within one SE: the grid is 1 - α
    keep = one_se_choice(losses[:, ::-1], 1.0 - SHARES[::-1])
    return float(1.0 - keep), losses


def residual_kriging(xy, residuals, groups, seed: int = 0) -> Optional[ResidualKriging]:
    """The field of ``residuals`` with its share α chosen on ``groups`` (:func:`choose_share`);
    None when α = 0 (kriging does not steadily help)."""
    alpha, _ = choose_share(xy, residuals, groups, seed)
    return ResidualKriging.fit(xy, residuals, seed, alpha) if alpha > 0 else None
