"""Codec settings at a matched true rate: for a target number of bits per scalar (everything stored
counted: norms, scales, padding), the setting of each codec whose true rate at a head_dim is closest.

Nominal bits mean different rates for different codecs (at head_dim 16, "2 bits" is 4.0 true bits per
scalar for OCTOPUS, 3.0 for TurboQuant and 4.0 for per-token uniform), so comparisons group codecs by
a target *true* rate instead. The searched settings:

* ``octopus``: per-triplet allocations ``(b_xi, b_eta, b_rho)`` with ``b_xi``, ``b_eta`` within one bit
  and ``b_rho`` at most the larger (the rate-distortion benchmark's sweep rule);
* ``turboquant``: fractional bits in steps of ``1 / head_dim`` (some channels one bit wider);
* ``uniform``: integer bits with per-token groups of every size dividing ``head_dim`` (the per-channel
  KIVI key grouping is left out: its rate depends on the sequence length, not on the codec alone);
* other codecs: their integer widths 1..8.

The closest rate wins; at equal distance the lower rate (never buy quality with extra bits), then the
lowest relative MSE on seeded Gaussian vectors (e.g. the many OCTOPUS allocations of one rate).
A codec with no setting within :data:`RATE_TOLERANCE` of the target is not matched there.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from octopus_diffusers.codecs import CodecError, get_codec

#: Largest distance (bits per scalar) between a target and the setting chosen for it.
RATE_TOLERANCE = 0.25
#: Vectors used to break ties between settings of equal rate.
TIE_VECTORS = 256
#: Codecs with one fixed width; they are not rate-matched.
FIXED_WIDTH = ("none", "fp8")


@dataclass(frozen=True)
class Setting:
    """One codec configuration and its true rate at ``head_dim``."""

    codec: str
    bits: float
    head_dim: int
    rate: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short, file-name-safe label: ``a332`` (OCTOPUS allocation), ``2.5b``, ``2b-g8`` (uniform groups)."""
        if "allocation" in self.options:
            return "a" + "".join(str(b) for b in self.options["allocation"])
        label = f"{self.bits:g}b"
        if "group_size" in self.options:
            label += f"-g{self.options['group_size']}"
        return label


def _candidates(codec: str, head_dim: int, target: float) -> list[tuple[float, dict[str, Any]]]:
    if codec == "octopus":
        widths, rho = range(1, 9), range(0, 9)
        return [(sum(a) / 3, {"allocation": a}) for a in itertools.product(widths, widths, rho)
                if abs(a[0] - a[1]) <= 1 and a[2] <= max(a[0], a[1])]
    if codec == "turboquant":
        overhead = get_codec("turboquant", head_dim, 1).bits_per_scalar - 1.0  # the norm, per scalar
        centre = round((target - overhead) * head_dim)
        return [(k / head_dim, {}) for k in range(centre - 2, centre + 3) if head_dim <= k <= 8 * head_dim]
    if codec == "uniform":
        groups = [g for g in range(2, head_dim + 1) if head_dim % g == 0]
        return [(float(b), {"axis": "token", "group_size": g}) for b in range(1, 9) for g in groups]
    return [(float(b), {}) for b in range(1, 9)]


def _rate(codec: str, head_dim: int, bits: float, options: dict[str, Any], seed: int) -> float | None:
    try:
        return float(get_codec(codec, head_dim, bits, seed=seed, **options).bits_per_scalar)
    except (CodecError, ValueError, TypeError):
        return None


def _relative_mse(codec: str, head_dim: int, bits: float, options: dict[str, Any], seed: int) -> float:
    x = torch.randn(TIE_VECTORS, head_dim, generator=torch.Generator().manual_seed(seed))
    c = get_codec(codec, head_dim, bits, seed=seed, **options)
    return float(((c.decode(c.encode(x)) - x).pow(2).sum() / x.pow(2).sum()))


@functools.lru_cache(maxsize=256)
def match_rate(codec: str, head_dim: int, target: float, seed: int = 0,
               tolerance: float = RATE_TOLERANCE) -> Setting | None:
    """The ``codec`` setting whose true rate at ``head_dim`` is closest to ``target`` bits per scalar,
    or ``None`` when none lies within ``tolerance`` (or the codec has one fixed width). Cached: the
    answer depends on nothing else (treat the returned setting as read-only)."""
    if codec in FIXED_WIDTH:
        return None
    rated = []
    for bits, options in _candidates(codec, head_dim, target):
        rate = _rate(codec, head_dim, bits, options, seed)
        if rate is not None:
            rated.append((round(abs(rate - target), 9), rate, bits, options))
    if not rated:
        return None
    best_distance, best_rate = min((d, r) for d, r, _, _ in rated)
    if best_distance > tolerance:
        return None
    tied = [(bits, options) for d, r, bits, options in rated if d == best_distance and r == best_rate]
    if len(tied) > 1:
        with torch.inference_mode():
            tied.sort(key=lambda c: _relative_mse(codec, head_dim, c[0], c[1], seed))
    bits, options = tied[0]
    return Setting(codec, bits, head_dim, best_rate, dict(options))


__all__ = ["FIXED_WIDTH", "RATE_TOLERANCE", "Setting", "match_rate"]
