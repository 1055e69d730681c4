"""Codebooks of the mixed-radix codecs: build with ``python -m octopus_diffusers.codecs.vq_codebooks``.

Two families, both data-oblivious (fitted to the exact distribution of a uniformly random unit vector
of R^d, which the randomized rotation makes every input direction look like):

* ``group_vq`` (for :mod:`.triplet_vq`): a k-dimensional Lloyd (k-means) codebook for one group of
  k = 1, 2 or 3 consecutive coordinates of the rotated unit vector. The distribution is symmetric
  under each coordinate's sign, so the codebook is stored *sign-symmetric*: ``n`` codewords in the
  positive orthant, fitted to the folded samples ``|t|``, and the full codebook is those ``n`` times
  the 2^k sign patterns (``K = 2^k n`` codewords). Samples: Monte Carlo of uniform unit vectors in
  R^d (Gaussian vectors normalised, every group of every vector used, seeded ``torch.Generator``),
  ``SETTINGS["train_samples"]`` training groups, initial codewords a seeded random subset, a fixed
  number of Lloyd iterations (nearest codeword by brute force, cell means accumulated in float64).
  The stored distortion ``E||t - t^||²`` of each codebook is measured on an independent sample.
* ``scalar_lloyd`` (for :mod:`.turboquant_mr`): Lloyd-Max with ``L`` levels (any integer, not only
  powers of two) on the exact coordinate density f(t) ∝ (1-t²)^((d-3)/2), with its exact distortion.

Files: ``data/codebooks/vq_codebooks.safetensors`` (keys ``group_vq.d{d}.k{k}.n{n}`` -> float32
``(n, k)`` and ``scalar_lloyd.d{d}.L{L}`` -> sorted float32 ``(L,)``) and ``vq_codebooks.json``
(format version, settings, seed, sample counts, and per key the level count and distortion).
Rerunning the script writes the same numbers on the same platform (tests/codecs/test_triplet_vq.py
refits one codebook and compares). Codebooks are only loaded at run time, never fitted.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .base import CodecError
from .build_codebooks import coordinate_density
from .codebooks import read_index
from .lloyd import grid_points, lloyd_max

VQ_CODEBOOK_VERSION = 1
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "codebooks"
FILE_STEM = "vq_codebooks"


def _half_bit_grid(max_n: int) -> list[int]:
    """Octant sizes ``round(2^(j/2))`` up to ``max_n`` (half-bit steps), deduplicated."""
    out = sorted({round(2 ** (j / 2)) for j in range(0, 64) if round(2 ** (j / 2)) <= max_n})
    return out


SETTINGS: dict = {
    "head_dims": [32, 64, 128],
    #: Octant codebook sizes per group size k (codewords per orthant; K = 2^k n in all).
    "octant_sizes": {"3": _half_bit_grid(4096), "2": _half_bit_grid(1024), "1": _half_bit_grid(128)},
    #: Sizes K of the full (not sign-symmetric) codebooks per group size k, for low rates, where a
    #: sign bit per coordinate is more than the best codebook spends.
    "full_sizes": {"3": _half_bit_grid(256)[1:], "2": _half_bit_grid(64)[1:], "1": _half_bit_grid(16)[1:]},
    "seed": 20261202,
    "train_samples": 1 << 18,
    "test_samples": 1 << 17,
    #: Lloyd iterations: ``iterations_small`` for n <= 512 codewords per orthant, else ``iterations_large``.
    "iterations_small": 30,
    "iterations_large": 16,
    "scalar_levels": [2, 64],
    "scalar_grid_points": 1 << 18,
    "scalar_tol": 1e-9,
    "scalar_max_iter": 200_000,
}
#: Distance computations per chunk of the brute-force nearest-codeword search (bounds memory).
SEARCH_CHUNK = 1 << 22


def group_sizes(head_dim: int) -> list[int]:
    """Group sizes the triplet codec uses for ``head_dim``: triplets, then the ``d mod 3`` remainder."""
    return [3] + ([head_dim % 3] if head_dim % 3 else [])


def group_key(head_dim: int, k: int, n: int) -> str:
    return f"group_vq.d{head_dim}.k{k}.n{n}"


def full_key(head_dim: int, k: int, levels: int) -> str:
    return f"group_full.d{head_dim}.k{k}.K{levels}"


def scalar_key(head_dim: int, levels: int) -> str:
    return f"scalar_lloyd.d{head_dim}.L{levels}"


# ---- nearest codeword ------------------------------------------------------------------------------
def nearest_codeword(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index (int64) of the nearest row of ``codebook (n, k)`` for each row of ``x (m, k)``, exactly.

    On the CPU a k-d tree (``scipy.spatial.cKDTree``, float64 distances) when scipy is installed, else
    (and on every other device) brute force ``argmin ||c||² - 2 x·c`` in chunks of about
    :data:`SEARCH_CHUNK` distances. Both return the exact nearest codeword (they can differ only on
    exact ties).
    """
    if x.device.type == "cpu" and codebook.shape[0] > 16:
        try:
            from scipy.spatial import cKDTree
        except ImportError:
            pass
        else:
            tree = cKDTree(codebook.double().numpy())
            _, idx = tree.query(x.double().numpy(), k=1)
            return torch.from_numpy(np.asarray(idx, dtype=np.int64))
    c = codebook.to(device=x.device, dtype=torch.float32)
    c_sq = (c * c).sum(-1)
    rows = max(1, SEARCH_CHUNK // max(c.shape[0], 1))
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], rows):
        xs = x[start:start + rows].to(torch.float32)
        out[start:start + rows] = torch.addmm(c_sq, xs, c.T, alpha=-2.0).argmin(-1)
    return out


# ---- fitting --------------------------------------------------------------------------------------
def group_samples(head_dim: int, k: int, n: int, seed: int, fold: bool = True) -> torch.Tensor:
    """``n`` samples (float32, (n, k)) of k consecutive coordinates of a uniform unit vector of R^d,
    folded to ``|t|`` unless ``fold=False`` (every disjoint group of each Gaussian vector used; all
    groups are exchangeable)."""
    if not 1 <= k <= head_dim:
        raise CodecError(f"vq_codebooks: group size {k} must be in 1..head_dim={head_dim}")
    gen = torch.Generator().manual_seed(seed * 1009 + head_dim * 7 + k)
    per_vector = head_dim // k
    n_vectors = -(-n // per_vector)
    g = torch.randn(n_vectors, head_dim, generator=gen, dtype=torch.float64)
    u = (g / torch.linalg.vector_norm(g, dim=-1, keepdim=True))[:, :per_vector * k]
    t = u.reshape(-1, k)[:n]
    return (t.abs() if fold else t).to(torch.float32)


def lloyd_codebook(samples: torch.Tensor, n: int, iterations: int, seed: int) -> torch.Tensor:
    """k-means with ``n`` codewords: seeded random-subset start, ``iterations`` Lloyd steps (cell
    means in float64 by ``np.bincount``, an empty cell keeps its codeword)."""
    gen = torch.Generator().manual_seed(seed + n)
    c = samples[torch.randperm(samples.shape[0], generator=gen)[:n]].clone()
    x64 = samples.double().numpy()
    for _ in range(iterations):
        idx = nearest_codeword(samples, c).numpy()
        count = np.bincount(idx, minlength=n)
        sums = np.stack([np.bincount(idx, weights=x64[:, j], minlength=n) for j in range(samples.shape[1])], -1)
        keep = count > 0
        new = c.double().numpy()
        new[keep] = sums[keep] / count[keep, None]
        c = torch.from_numpy(new).to(torch.float32)
    order = torch.argsort(c.double().norm(dim=-1), stable=True)  # deterministic, readable order
    return c[order].contiguous()


def group_distortion(codebook: torch.Tensor, samples: torch.Tensor) -> float:
    """``E||t - t^||²`` per group over folded ``samples`` (sign-symmetric codebook: same as unfolded)."""
    idx = nearest_codeword(samples, codebook)
    return float((samples.double() - codebook.double()[idx]).pow(2).sum(-1).mean())


def fit_group_codebook(head_dim: int, k: int, n: int, settings: dict = SETTINGS) -> tuple[torch.Tensor, float]:
    """One ``group_vq`` codebook and its test distortion, exactly as the shipped file holds it."""
    seed = settings["seed"]
    train = group_samples(head_dim, k, settings["train_samples"], seed)
    iterations = settings["iterations_small"] if n <= 512 else settings["iterations_large"]
    cb = lloyd_codebook(train, n, iterations, seed) if n > 1 else train.double().mean(0, keepdim=True).float()
    test = group_samples(head_dim, k, settings["test_samples"], seed + 1)
    return cb, group_distortion(cb, test)


def fit_full_codebook(head_dim: int, k: int, levels: int, settings: dict = SETTINGS) -> tuple[torch.Tensor, float]:
    """One ``group_full`` codebook (k-means on unfolded samples) and its test distortion."""
    seed = settings["seed"]
    train = group_samples(head_dim, k, settings["train_samples"], seed, fold=False)
    cb = lloyd_codebook(train, levels, settings["iterations_small"], seed)
    test = group_samples(head_dim, k, settings["test_samples"], seed + 1, fold=False)
    return cb, group_distortion(cb, test)


def fit_scalar_codebook(head_dim: int, levels: int, settings: dict = SETTINGS) -> tuple[torch.Tensor, float]:
    """Lloyd-Max ``levels`` centroids on the exact coordinate density, and their exact distortion."""
    points = grid_points(coordinate_density(head_dim), -1.0, 1.0, settings["scalar_grid_points"])
    c = lloyd_max(points, levels, tol=settings["scalar_tol"], max_iter=settings["scalar_max_iter"])
    return torch.from_numpy(c).to(torch.float32), points.distortion(c)


def build(head_dims, settings: dict = SETTINGS, log=print, cached: tuple[dict, dict] | None = None
          ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Every codebook of ``head_dims``; ``cached`` (tensors, entries) from a file written with the same
    settings are reused instead of refitted (each fit depends only on its key and the settings)."""
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    old_tensors, old_entries = cached or ({}, {})

    def fit(key: str, fn, *args) -> tuple[torch.Tensor, float]:
        if key in old_tensors and key in old_entries:
            return old_tensors[key], old_entries[key]["distortion"]
        return fn(*args)

    lo, hi = settings["scalar_levels"]
    for d in head_dims:
        t0 = time.perf_counter()
        for k in group_sizes(d):
            for n in settings["octant_sizes"][str(k)]:
                key = group_key(d, k, n)
                cb, dist = fit(key, fit_group_codebook, d, k, n, settings)
                tensors[key] = cb
                entries[key] = {"head_dim": d, "group": k, "octant_codewords": n, "levels": n << k,
                                "distortion": dist}
            for levels in settings["full_sizes"][str(k)]:
                key = full_key(d, k, levels)
                cb, dist = fit(key, fit_full_codebook, d, k, levels, settings)
                tensors[key] = cb
                entries[key] = {"head_dim": d, "group": k, "levels": levels, "distortion": dist}
        for levels in range(lo, hi + 1):
            key = scalar_key(d, levels)
            cb, dist = fit(key, fit_scalar_codebook, d, levels, settings)
            tensors[key] = cb
            entries[key] = {"head_dim": d, "levels": levels, "distortion": dist}
        log(f"head_dim {d}: {time.perf_counter() - t0:.0f} s")
    return tensors, entries


def write(tensors: dict[str, torch.Tensor], entries: dict[str, dict], head_dims, settings: dict,
          out: Path) -> None:
    """Write both files next to each other (the json last, so a half-written pair fails to load)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(out / f"{FILE_STEM}.safetensors"),
              metadata={"version": str(VQ_CODEBOOK_VERSION)})
    meta = {"version": VQ_CODEBOOK_VERSION, "generated_by": "python -m octopus_diffusers.codecs.vq_codebooks",
            "file": f"{FILE_STEM}.safetensors", "head_dims": sorted(head_dims), "settings": settings,
            "codebooks": dict(sorted(entries.items()))}
    (out / f"{FILE_STEM}.json").write_text(json.dumps(meta, indent=1) + "\n")


# ---- loading --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def vq_index() -> dict:
    """The parsed ``vq_codebooks.json`` (version checked)."""
    return read_index(DEFAULT_DIR / f"{FILE_STEM}.json", "version", VQ_CODEBOOK_VERSION, "vq codebooks",
                      "vq_codebooks")


@lru_cache(maxsize=1)
def _tensors() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(DEFAULT_DIR / vq_index()["file"]))


def check_vq_head_dim(head_dim: int, who: str) -> None:
    dims = vq_index()["head_dims"]
    if head_dim not in dims:
        others = " ".join(str(d) for d in sorted(set(dims) | {head_dim}))
        raise CodecError(f"{who}: no shipped codebooks for head_dim {head_dim} (shipped: {dims}); build "
                         f"them with `python -m octopus_diffusers.codecs.vq_codebooks --head-dims {others}`")


@dataclass(frozen=True)
class GroupOption:
    """One shipped codebook for a group: its key, radix (codewords in all), distortion per group."""

    key: str
    radix: int
    distortion: float
    sign_symmetric: bool
    levels: int


def group_options(head_dim: int, k: int) -> list[GroupOption]:
    """The efficient shipped codebooks for groups of ``k`` at ``head_dim`` (sign-symmetric and full),
    sorted by radix, keeping only those with lower distortion than every smaller one."""
    check_vq_head_dim(head_dim, "triplet_vq")
    opts = []
    for key, e in vq_index()["codebooks"].items():
        if e.get("group") != k or e["head_dim"] != head_dim:
            continue
        sym = key.startswith("group_vq.")
        opts.append(GroupOption(key, e["levels"], e["distortion"], sym,
                                e["octant_codewords"] if sym else e["levels"]))
    out: list[GroupOption] = []
    for o in sorted(opts, key=lambda o: (o.radix, o.distortion)):
        if not out or o.distortion < out[-1].distortion:
            out.append(o)
    return out


def scalar_options(head_dim: int) -> list[tuple[int, float]]:
    """(levels L, distortion per coordinate) of every shipped ``scalar_lloyd`` codebook, by L."""
    check_vq_head_dim(head_dim, "turboquant_mr")
    entries = vq_index()["codebooks"]
    return sorted((e["levels"], e["distortion"]) for k, e in entries.items()
                  if k.startswith("scalar_lloyd.") and e["head_dim"] == head_dim)


def load_vq(key: str) -> torch.Tensor:
    """A fresh float32 CPU copy of one shipped codebook."""
    tensors = _tensors()
    if key not in tensors:
        raise CodecError(f"vq codebooks: no codebook {key!r} in {DEFAULT_DIR / vq_index()['file']}")
    return tensors[key].clone()


def _load_cache(folder: Path, settings: dict) -> tuple[dict, dict] | None:
    """(tensors, entries) of an earlier build in ``folder`` if its fitting settings equal ``settings``
    (the size lists and head_dims may differ: they only say which keys exist)."""
    from safetensors.torch import load_file

    path = folder / f"{FILE_STEM}.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    same = ("seed", "train_samples", "test_samples", "iterations_small", "iterations_large",
            "scalar_grid_points", "scalar_tol", "scalar_max_iter")
    if meta.get("version") != VQ_CODEBOOK_VERSION or any(meta["settings"].get(k) != settings[k] for k in same):
        return None
    return load_file(str(folder / meta["file"])), meta["codebooks"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dims", type=int, nargs="+", default=SETTINGS["head_dims"])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help=f"output folder (default {DEFAULT_DIR})")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="folder of an earlier build whose codebooks are kept where their settings match "
                             "(a cache: every codebook depends only on its key and the settings)")
    args = parser.parse_args(argv)
    if any(d < 4 for d in args.head_dims):
        parser.error("head_dim must be >= 4")
    dims = sorted(set(args.head_dims))
    settings = {**SETTINGS, "head_dims": dims}
    t0 = time.perf_counter()
    cached = _load_cache(args.reuse, settings) if args.reuse else None
    tensors, entries = build(dims, settings, cached=cached)
    write(tensors, entries, dims, settings, args.out)
    print(f"wrote {len(tensors)} codebooks to {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
