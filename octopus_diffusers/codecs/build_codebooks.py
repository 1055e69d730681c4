"""Generate every shipped codebook: ``python -m octopus_diffusers.codecs.build_codebooks``.

Families (sorted float32 centroids, Lloyd-Max to convergence, see :mod:`.lloyd`):

* ``turboquant`` (per head_dim, bits 1..8): a coordinate of a uniform unit vector in R^d, on its exact
  finite-d density f(t) ∝ (1-t²)^((d-3)/2) on [-1, 1] (2^20-point midpoint grid).
* ``octopus_dir`` (per head_dim, bits 1..8): the shared xi/eta codebook, and ``octopus_rho`` (bits
  0..8): the triplet norm. Both fitted to Monte-Carlo samples of the real encoder's pipeline
  (:func:`octopus_marginal_samples`: uniform unit vectors, contiguous triplets with the zero-padded
  last one, the octahedral map, in float32 as the codec computes), pooled over all triplets, through
  a 2^18-bin histogram. The rotation is left out: it maps uniform unit vectors to uniform unit
  vectors, so it does not change these marginals.
* ``polar_level`` (levels 2..6, bits 1..6, independent of d): PolarQuant angles with density
  ∝ sin^(2^(l-1)-1)(2ψ) on [0, π/2].

Everything is seeded (torch.Generator on the CPU), so rerunning writes the same files (bit-identical
on the same platform; tests/codecs/test_codebooks.py regenerates a small head_dim and compares).
Output: ``codebooks.safetensors`` (keys ``"{family}.d{d}.b{b}"`` / ``"polar_level.l{l}.b{b}"``) and
``index.json`` (format version, generation settings, what is in the file).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .lloyd import grid_points, histogram_points, lloyd_max
from .octahedral import octahedral_encode, to_triplets

CODEBOOK_FORMAT_VERSION = 1
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "codebooks"
SHIPPED_HEAD_DIMS = (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 72, 80, 96, 112, 128, 160, 192, 256)
SETTINGS = {
    "turboquant_bits": [1, 8],
    "octopus_dir_bits": [1, 8],
    "octopus_rho_bits": [0, 8],
    "polar_levels": [2, 6],
    "polar_bits": [1, 6],
    "density_grid_points": 1 << 20,
    "histogram_bins": 1 << 18,
    "mc_triplets_per_head_dim": 4_000_000,
    "mc_seed": 20260521,
    "lloyd_tol": 1e-10,
    "lloyd_max_iter": 100_000,
}


def turboquant_key(head_dim: int, bits: int) -> str:
    return f"turboquant.d{head_dim}.b{bits}"


def octopus_key(part: str, head_dim: int, bits: int) -> str:
    return f"octopus_{part}.d{head_dim}.b{bits}"


def polar_key(level: int, bits: int) -> str:
    return f"polar_level.l{level}.b{bits}"


def _bits_range(name: str) -> range:
    lo, hi = SETTINGS[name]
    return range(lo, hi + 1)


def _lloyd(points, bits: int) -> torch.Tensor:
    c = lloyd_max(points, 1 << bits, tol=SETTINGS["lloyd_tol"], max_iter=SETTINGS["lloyd_max_iter"])
    return torch.from_numpy(c).to(torch.float32)


def coordinate_density(head_dim: int):
    """Unnormalised density of one coordinate of a uniform unit vector in R^d on (-1, 1)."""
    exponent = (head_dim - 3) / 2

    def f(t: np.ndarray) -> np.ndarray:
        return np.exp(exponent * np.log1p(-t * t))

    return f


def polar_density(level: int):
    """Unnormalised density of a PolarQuant level-l (>= 2) angle on [0, pi/2]."""
    power = 2 ** (level - 1) - 1

    def f(psi: np.ndarray) -> np.ndarray:
        return np.sin(2 * psi) ** power

    return f


def octopus_marginal_samples(head_dim: int, n_triplets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples of (xi and eta pooled, rho) as the OCTOPUS encoder produces them for uniform unit vectors.

    Draws ``ceil(n_triplets / ceil(d/3))`` vectors, so every triplet position (the padded one included)
    is represented in its true proportion.
    """
    gen = torch.Generator().manual_seed(seed + head_dim)
    per_vector = -(-head_dim // 3)
    n_vectors = -(-n_triplets // per_vector)
    dirs, rhos = [], []
    for start in range(0, n_vectors, 1 << 16):  # chunks keep memory small
        g = torch.randn(min(1 << 16, n_vectors - start), head_dim, generator=gen, dtype=torch.float32)
        u = g / torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        t = to_triplets(u)
        rho = torch.linalg.vector_norm(t, dim=-1)
        xi, eta = octahedral_encode(t)
        dirs.append(torch.stack([xi, eta], -1).flatten().double().numpy())
        rhos.append(rho.flatten().double().numpy())
    return np.concatenate(dirs), np.concatenate(rhos)


def build_head_dim(head_dim: int) -> dict[str, torch.Tensor]:
    """All per-head_dim codebooks (turboquant, octopus_dir, octopus_rho) for one head_dim."""
    out = {}
    grid = grid_points(coordinate_density(head_dim), -1.0, 1.0, SETTINGS["density_grid_points"])
    for b in _bits_range("turboquant_bits"):
        out[turboquant_key(head_dim, b)] = _lloyd(grid, b)
    dirs, rhos = octopus_marginal_samples(head_dim, SETTINGS["mc_triplets_per_head_dim"], SETTINGS["mc_seed"])
    dir_points = histogram_points(dirs, SETTINGS["histogram_bins"])
    rho_points = histogram_points(rhos, SETTINGS["histogram_bins"])
    for b in _bits_range("octopus_dir_bits"):
        out[octopus_key("dir", head_dim, b)] = _lloyd(dir_points, b)
    for b in _bits_range("octopus_rho_bits"):
        out[octopus_key("rho", head_dim, b)] = _lloyd(rho_points, b)
    return out


def build_polar() -> dict[str, torch.Tensor]:
    """PolarQuant level-angle codebooks (levels 2..6, bits 1..6)."""
    out = {}
    for level in _bits_range("polar_levels"):
        grid = grid_points(polar_density(level), 0.0, math.pi / 2, SETTINGS["density_grid_points"])
        for b in _bits_range("polar_bits"):
            out[polar_key(level, b)] = _lloyd(grid, b)
    return out


def build_all(head_dims=SHIPPED_HEAD_DIMS, log=print) -> dict[str, torch.Tensor]:
    tensors = build_polar()
    for d in head_dims:
        t0 = time.perf_counter()
        tensors.update(build_head_dim(d))
        log(f"head_dim {d}: {time.perf_counter() - t0:.1f} s")
    return tensors


def write(tensors: dict[str, torch.Tensor], head_dims, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    index = {
        "format_version": CODEBOOK_FORMAT_VERSION,
        "generated_by": "python -m octopus_diffusers.codecs.build_codebooks",
        "file": "codebooks.safetensors",
        "head_dims": sorted(head_dims),
        "settings": SETTINGS,
        "n_codebooks": len(tensors),
    }
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(out / "codebooks.safetensors"),
              metadata={"format_version": str(CODEBOOK_FORMAT_VERSION)})
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(SHIPPED_HEAD_DIMS),
                        help="head_dims to generate (default: the shipped list)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    bad = [d for d in args.head_dims if d < 4]
    if bad:
        parser.error(f"head_dim must be >= 4 (OCTOPUS needs a full triplet), got {bad}")
    t0 = time.perf_counter()
    tensors = build_all(sorted(set(args.head_dims)))
    write(tensors, sorted(set(args.head_dims)), args.out)
    print(f"wrote {len(tensors)} codebooks to {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
