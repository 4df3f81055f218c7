"""What a machine's sensors should read at its current operating point, learned online per machine.

Vibration, pressure and power all follow the load and the speed: a pump at full load shakes harder and
pushes more pressure than at half load, and a load swing moves them far more than an early fault does.
`OperatingPointRegression` learns, per (machine, mode), a linear regression of such *targets* (e.g. log
vibration) on *regressors* that measure the operating point (log speed, log power) and returns each
window's residual: the part of the reading that the operating point does not explain. A worn bearing
raises vibration at the same speed and power, so it shows in the residual at the measurement-noise
level instead of being buried under the load swings - this is the learned generalisation of a ratio
such as vibration per rpm.

The fit keeps exponentially weighted means and (co)variances (rate ``max(alpha, 1/(n+1))``: a plain running
fit over the first ``1/alpha`` windows, then a forgetting one that follows slow, healthy drift) and solves a
ridge regression per window. The ridge term ``ridge * variance + ridge_floor`` keeps a regressor that barely
moves (the fixed-speed motor of a conveyor) from fitting noise and keeps the two nearly collinear regressors
of a pump (speed and power both follow load) stable. Residuals are NaN until a stream has learned
`min_windows` windows (a slope from fewer says little). A NaN regressor (a spindle standing still)
contributes nothing; a NaN target gives a NaN residual and is not learned.

A straight fit is least trustworthy far from the operating points it learned from (a machine's response
flattens out at low load): `distance` gives the squared Mahalanobis distance of an operating point from
them, with which the caller can discount residuals out there.

>>> import numpy as np
>>> fit = OperatingPointRegression(n_targets=1, target_regressors=[[True]], alpha=0.1, min_windows=5)
>>> fit.grow(1)
>>> one = np.zeros(1, dtype=np.int64)
>>> load = np.linspace(0.0, 1.0, 40)
>>> for u in np.r_[load, load[::-1]]:  # target = 2 + 3 * regressor, no noise
...     fit.learn(one, one, np.array([[2.0 + 3.0 * u]]), np.array([[u]]))
>>> round(float(fit.residuals(one, one, np.array([[2.0 + 3.0 * 0.3]]), np.array([[0.3]]))[0, 0]), 2)
0.0
>>> round(float(fit.residuals(one, one, np.array([[2.5 + 3.0 * 0.3]]), np.array([[0.3]]))[0, 0]), 2)  # 0.5 above the fit
0.5
>>> mean, sd = fit.mean_x[0, 0, 0], np.sqrt(fit.cov_xx[0, 0, 0, 0])  # of the learned operating points
>>> two = np.zeros(2, dtype=np.int64)
>>> fit.distance(two, two, np.array([[mean], [mean + 3 * sd]])).round(1).tolist()  # 3 sd: 9, less the ridge
[0.0, 8.9]
"""

from __future__ import annotations

import numpy as np


class OperatingPointRegression:
    """Per (machine, mode) ridge regressions of `n_targets` targets on a few regressors, with forgetting."""

    def __init__(
        self,
        n_targets: int,
        target_regressors: list[list[bool]],
        *,
        n_modes: int = 1,
        alpha: float = 0.01,
        min_windows: int = 10,
        ridge: float = 0.01,
        ridge_floor: float = 1e-4,
    ) -> None:
        masks = np.asarray(target_regressors, dtype=bool)
        if masks.ndim != 2 or masks.shape[0] != n_targets or masks.shape[1] < 1:
            raise ValueError(
                f"operating_point: target_regressors must be {n_targets} rows of booleans, got {masks.tolist()}"
            )
        if not 0 < alpha <= 1:
            raise ValueError(f"operating_point: alpha must be in (0, 1], got {alpha!r}")
        if min_windows < 1 or ridge < 0 or ridge_floor <= 0:
            raise ValueError(f"operating_point: need min_windows >= 1, ridge >= 0, ridge_floor > 0; got "
                             f"{min_windows!r}, {ridge!r}, {ridge_floor!r}")
        self.masks = masks
        # (regressors used, targets that use exactly them), one entry per distinct mask
        self._groups = [
            (np.flatnonzero(mask), np.flatnonzero((masks == mask).all(axis=1)))
            for mask in np.unique(masks, axis=0)
            if mask.any()
        ]
        self.n_targets, self.n_regressors, self.n_modes = n_targets, masks.shape[1], n_modes
        self.alpha, self.min_windows, self.ridge, self.ridge_floor = alpha, min_windows, ridge, ridge_floor
        k, t = self.n_regressors, n_targets
        self.count = np.zeros((0, n_modes), dtype=np.int64)
        self.mean_x = np.zeros((0, n_modes, k))
        self.mean_y = np.zeros((0, n_modes, t))
        self.cov_xx = np.zeros((0, n_modes, k, k))
        self.cov_xy = np.zeros((0, n_modes, k, t))

    def grow(self, n_machines: int) -> None:
        """Make room for machines up to index `n_machines - 1` (capacity at least doubles)."""
        if n_machines <= len(self.count):
            return
        extra = max(n_machines, 2 * len(self.count), 16) - len(self.count)
        for name in ("count", "mean_x", "mean_y", "cov_xx", "cov_xy"):
            current = getattr(self, name)
            setattr(self, name, np.concatenate((current, np.zeros((extra, *current.shape[1:]), current.dtype))))

    def residuals(self, machines: np.ndarray, modes: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Residuals [rows x targets] of targets `y` given regressors `x` [rows x regressors].

        NaN where the target is NaN or the stream has learned fewer than `min_windows` windows.
        """
        count = self.count[machines, modes]
        mean_x, mean_y = self.mean_x[machines, modes], self.mean_y[machines, modes]
        dx = np.where(np.isnan(x), 0.0, x - mean_x)
        slopes = self._slopes(machines, modes)  # [rows x regressors x targets]
        predicted = mean_y + np.einsum("rk,rkt->rt", dx, slopes)
        residual = y - predicted
        residual[count < self.min_windows] = np.nan
        return residual

    def distance(self, machines: np.ndarray, modes: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of operating points `x` from what each stream has learned (0 where a
        regressor is NaN or barely moves: the same ridge as the fit)."""
        dx = np.where(np.isnan(x), 0.0, x - self.mean_x[machines, modes])
        system = self._ridged_cov_xx(machines, modes)
        return np.einsum("rk,rk->r", dx, np.linalg.solve(system, dx[:, :, None])[:, :, 0])

    def learn(self, machines: np.ndarray, modes: np.ndarray, y: np.ndarray, x: np.ndarray) -> None:
        """Update the fits of (`machines`, `modes`) - each pair at most once - with one window each."""
        count = self.count[machines, modes]
        rate = np.maximum(self.alpha, 1.0 / (count + 1))[:, None]
        mean_x, mean_y = self.mean_x[machines, modes], self.mean_y[machines, modes]
        dx = np.where(np.isnan(x), 0.0, x - mean_x)
        seen = ~np.isnan(y)
        dy = np.where(seen, y - mean_y, 0.0)
        keep = (1.0 - rate)[:, :, None]
        self.mean_x[machines, modes] = mean_x + rate * dx
        self.mean_y[machines, modes] = mean_y + rate * dy
        outer_xx = dx[:, :, None] * dx[:, None, :]
        self.cov_xx[machines, modes] = keep * (self.cov_xx[machines, modes] + rate[:, :, None] * outer_xx)
        cov_xy = self.cov_xy[machines, modes]
        updated = keep * (cov_xy + rate[:, :, None] * dx[:, :, None] * dy[:, None, :])
        self.cov_xy[machines, modes] = np.where(seen[:, None, :], updated, cov_xy)
        self.count[machines, modes] = count + 1

    def _ridged_cov_xx(self, machines: np.ndarray, modes: np.ndarray) -> np.ndarray:
        """The regressors' covariance of each stream plus its ridge penalty on the diagonal."""
        cov_xx = self.cov_xx[machines, modes]
        penalty = self.ridge * np.diagonal(cov_xx, axis1=1, axis2=2) + self.ridge_floor
        return cov_xx + penalty[:, :, None] * np.eye(self.n_regressors)

    def _slopes(self, machines: np.ndarray, modes: np.ndarray) -> np.ndarray:
        cov_xy = self.cov_xy[machines, modes]
        rows, k = len(machines), self.n_regressors
        slopes = np.zeros((rows, k, self.n_targets))
        if rows == 0:
            return slopes
        ridged = self._ridged_cov_xx(machines, modes)
        for used, targets in self._groups:
            system = ridged[:, used[:, None], used[None, :]]
            solved = np.linalg.solve(system, cov_xy[:, used[:, None], targets[None, :]])
            slopes[:, used[:, None], targets[None, :]] = solved
        return slopes
