"""One-dimensional Lloyd-Max quantizer design (float64 numpy).

Both entry points reduce to Lloyd iterations on a weighted point set sorted once, with prefix sums,
so each iteration costs O(levels * log(points)) however many points there are:

* :func:`lloyd_max_density` — a density given on a fine uniform grid (midpoint rule: each grid point
  carries weight ``f(t) * h``);
* :func:`lloyd_max_samples` — Monte-Carlo samples, first reduced to a fine histogram whose bins carry
  their sample count at the *mean of their samples* (exact first moments per bin), so millions of
  samples cost one pass.

Iteration stops when no centroid moves by more than ``tol`` (default ``1e-10`` absolute, in the
units of the data) or after ``max_iter`` steps. Initialisation is at the equal-mass quantiles.
"""

from __future__ import annotations

import warnings

import numpy as np

DEFAULT_TOL = 1e-10
DEFAULT_MAX_ITER = 100_000


def decision_thresholds(centroids: np.ndarray) -> np.ndarray:
    """Nearest-neighbour decision thresholds of sorted centroids: the midpoints (``levels - 1``)."""
    c = np.asarray(centroids, dtype=np.float64)
    return 0.5 * (c[1:] + c[:-1])


class WeightedPoints:
    """Sorted points with weights and prefix sums, the state a Lloyd step needs."""

    def __init__(self, points: np.ndarray, weights: np.ndarray) -> None:
        points = np.asarray(points, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        keep = weights > 0
        order = np.argsort(points[keep], kind="stable")
        self.points = points[keep][order]
        self.weights = weights[keep][order]
        if self.points.size == 0:
            raise ValueError("lloyd: no points with positive weight")
        self.cum_w = np.concatenate([[0.0], np.cumsum(self.weights)])
        self.cum_wx = np.concatenate([[0.0], np.cumsum(self.weights * self.points)])

    def quantiles(self, levels: int) -> np.ndarray:
        """Equal-mass initial centroids (the weighted mean of each of ``levels`` mass slices)."""
        targets = self.cum_w[-1] * np.arange(levels + 1) / levels
        edges = np.searchsorted(self.cum_w, targets, side="left").clip(0, self.points.size)
        edges[0], edges[-1] = 0, self.points.size
        return self._cell_means(edges, np.linspace(self.points[0], self.points[-1], levels))

    def _cell_means(self, edges: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        w = self.cum_w[edges[1:]] - self.cum_w[edges[:-1]]
        wx = self.cum_wx[edges[1:]] - self.cum_wx[edges[:-1]]
        # An empty cell keeps its previous centroid (cannot happen for a continuous density).
        return np.where(w > 0, wx / np.where(w > 0, w, 1.0), fallback)

    def step(self, centroids: np.ndarray) -> np.ndarray:
        """One Lloyd step: assign to the nearest centroid, move each centroid to its cell mean."""
        inner = np.searchsorted(self.points, decision_thresholds(centroids), side="left")
        edges = np.concatenate([[0], inner, [self.points.size]])
        return self._cell_means(edges, centroids)

    def distortion(self, centroids: np.ndarray) -> float:
        """Weighted mean squared error of nearest-centroid quantization of the points."""
        c = np.asarray(centroids, dtype=np.float64)
        idx = np.searchsorted(decision_thresholds(c), self.points, side="left")
        return float(np.sum(self.weights * (self.points - c[idx]) ** 2) / self.cum_w[-1])


def lloyd_max(points: WeightedPoints, levels: int, tol: float = DEFAULT_TOL,
              max_iter: int = DEFAULT_MAX_ITER) -> np.ndarray:
    """Sorted Lloyd-Max centroids (float64) of ``levels`` cells for weighted points."""
    if levels < 1:
        raise ValueError(f"lloyd: levels must be >= 1, got {levels}")
    c = points.quantiles(levels)
    if levels == 1:
        return points.step(c)
    for _ in range(max_iter):
        new = np.sort(points.step(c))
        moved = float(np.max(np.abs(new - c)))
        c = new
        if moved <= tol:
            return c
    warnings.warn(f"lloyd: {levels} levels not converged to tol {tol} in {max_iter} iterations "
                  f"(last move {moved:.3g})", RuntimeWarning, stacklevel=2)
    return c


def grid_points(density, lo: float, hi: float, n_grid: int = 1 << 20) -> WeightedPoints:
    """Midpoint-rule discretisation of ``density`` (a vectorised callable) on ``[lo, hi]``."""
    h = (hi - lo) / n_grid
    t = lo + h * (np.arange(n_grid, dtype=np.float64) + 0.5)
    return WeightedPoints(t, np.asarray(density(t), dtype=np.float64) * h)


def histogram_points(samples: np.ndarray, n_bins: int = 1 << 18) -> WeightedPoints:
    """Reduce samples to histogram bins weighted by count, located at the mean of their samples."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("lloyd: samples must be a non-empty array of finite numbers")
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return WeightedPoints(np.array([lo]), np.array([float(x.size)]))
    b = np.minimum(((x - lo) * (n_bins / (hi - lo))).astype(np.int64), n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    total = np.bincount(b, weights=x, minlength=n_bins)
    nz = count > 0
    return WeightedPoints(total[nz] / count[nz], count[nz])


def lloyd_max_density(density, lo: float, hi: float, levels: int, n_grid: int = 1 << 20,
                      tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER) -> np.ndarray:
    """Lloyd-Max centroids for an (unnormalised) density on ``[lo, hi]``, on an ``n_grid`` grid."""
    return lloyd_max(grid_points(density, lo, hi, n_grid), levels, tol, max_iter)


def lloyd_max_samples(samples: np.ndarray, levels: int, n_bins: int = 1 << 18,
                      tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER) -> np.ndarray:
    """Lloyd-Max centroids fitted to samples (through an ``n_bins`` weighted histogram)."""
    return lloyd_max(histogram_points(samples, n_bins), levels, tol, max_iter)
