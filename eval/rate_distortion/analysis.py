"""Rate–distortion analysis: Pareto frontiers and matched-rate comparisons against TurboQuant.

Every comparison is at matched *true* bits per scalar (all overheads counted). The benchmark
measures TurboQuant at exactly the other codec's true rate wherever TurboQuant can store it (it
takes any whole number of code bits per vector), so the reference is then a measurement
(``exact_match``); elsewhere its measured curve is interpolated linearly in log-distortion between
the two measured neighbours. Outside its measured range nothing is extrapolated (``None``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: E||u − û||² of a uniform unit vector from ``codecs.md`` §4, keyed by head_dim and bits.
TURBOQUANT_REFERENCE: dict[int, dict[int, float]] = {
    128: {1: 0.3609, 2: 0.1160, 3: 0.0340, 4: 0.0093},
    64: {1: 0.3584, 2: 0.1145, 3: 0.0334, 4: 0.0091},
}
#: OCTOPUS (b+1, b+1, b−1) at d = 128 from ``codecs.md`` §4: nearest and joint rounding.
OCTOPUS_REFERENCE: dict[int, dict[bool, dict[int, float]]] = {
    128: {False: {2: 0.0897, 3: 0.0260, 4: 0.0071}, True: {2: 0.0832, 3: 0.0243, 4: 0.0067}},
}
#: Relative tolerance the reproduction must meet.
REPRODUCTION_TOLERANCE = 0.03


def paper_allocation(b: int) -> tuple[int, int, int]:
    """The paper's "b-bit" OCTOPUS setting (b+1, b+1, b−1): 3b+1 bits per triplet."""
    return (b + 1, b + 1, b - 1)


def pareto_frontier(points: Sequence[dict], rate_key: str = "bits_per_scalar",
                    dist_key: str = "distortion") -> list[dict]:
    """Points no other point beats at an equal or lower rate, sorted by rate."""
    frontier: list[dict] = []
    best = math.inf
    for point in sorted(points, key=lambda p: (p[rate_key], p[dist_key])):
        if point[dist_key] < best:
            frontier.append(point)
            best = point[dist_key]
    return frontier


def log_interpolate(rates: Sequence[float], distortions: Sequence[float], rate: float) -> float | None:
    """Distortion at ``rate`` on the curve through (rates, distortions), linear in log-distortion.

    The curve is first reduced to its Pareto frontier (so it is decreasing); ``None`` when ``rate``
    lies outside the measured range.
    """
    frontier = pareto_frontier([{"r": r, "d": d} for r, d in zip(rates, distortions)], "r", "d")
    if not frontier:
        return None
    xs = np.array([p["r"] for p in frontier])
    ys = np.log(np.array([p["d"] for p in frontier]))
    if rate < xs[0] - 1e-9 or rate > xs[-1] + 1e-9:
        return None
    return float(np.exp(np.interp(rate, xs, ys)))


def matched_comparison(rate: float, distortion: float, reference_rates: Sequence[float],
                       reference_distortions: Sequence[float]) -> dict:
    """Compare one point with the reference curve at the same true rate.

    ``ratio`` = distortion / reference distortion (< 1: the point wins); ``gain_pct`` =
    (1 − ratio)·100; ``gain_db`` = 10·log10(1/ratio). All ``None`` outside the reference range.
    """
    ref = log_interpolate(reference_rates, reference_distortions, rate)
    exact = any(abs(r - rate) < 1e-9 for r in reference_rates)
    if ref is None or distortion <= 0:
        return {"reference_distortion": ref, "exact_match": exact, "ratio": None, "gain_pct": None,
                "gain_db": None}
    ratio = distortion / ref
    return {"reference_distortion": ref, "exact_match": exact, "ratio": ratio,
            "gain_pct": 100.0 * (1.0 - ratio), "gain_db": 10.0 * math.log10(1.0 / ratio)}


def best_under_budget(points: Sequence[dict], budget: float, rate_key: str = "bits_per_scalar",
                      dist_key: str = "distortion") -> dict | None:
    """The lowest-distortion point whose true rate does not exceed ``budget`` (``None`` if none)."""
    feasible = [p for p in points if p[rate_key] <= budget + 1e-9]
    return min(feasible, key=lambda p: p[dist_key]) if feasible else None
