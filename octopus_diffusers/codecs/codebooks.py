"""Load the shipped Lloyd-Max codebooks (``octopus_diffusers/data/codebooks/``).

The files are written by :mod:`.build_codebooks` (``python -m octopus_diffusers.codecs.build_codebooks``):
one ``codebooks.safetensors`` with every codebook and an ``index.json`` with the format version and the
generation settings. Loaded once per process (a few milliseconds), never recomputed at run time.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from .base import CodecError
from .build_codebooks import (
    CODEBOOK_FORMAT_VERSION, DEFAULT_OUT, SETTINGS, octopus_key, polar_key, turboquant_key)

CODEBOOK_DIR = DEFAULT_OUT
FAMILIES = ("turboquant", "octopus_dir", "octopus_rho", "polar_level")
_BITS_SETTING = {"turboquant": "turboquant_bits", "octopus_dir": "octopus_dir_bits",
                 "octopus_rho": "octopus_rho_bits", "polar_level": "polar_bits"}


def read_index(path: Path, version_key: str, version: int, who: str, builder: str) -> dict:
    """The parsed JSON index ``path`` of shipped codebooks, whose ``version_key`` must be ``version``;
    a :class:`CodecError` (named ``who``) giving the ``builder`` module to run when it is missing or
    of another version. Shared by these codebooks and the ``triplet_vq`` ones (:mod:`.vq_codebooks`)."""
    command = f"`python -m octopus_diffusers.codecs.{builder}`"
    if not path.exists():
        raise CodecError(f"{who}: {path} is missing; generate it with {command}")
    index = json.loads(path.read_text())
    if index.get(version_key) != version:
        raise CodecError(f"{who}: {path} has {version_key} {index.get(version_key)!r}, this library reads "
                         f"{version}; regenerate with {command}")
    return index


@lru_cache(maxsize=1)
def codebook_index() -> dict:
    """The parsed ``index.json`` (format version checked)."""
    return read_index(CODEBOOK_DIR / "index.json", "format_version", CODEBOOK_FORMAT_VERSION, "codebooks",
                      "build_codebooks")


@lru_cache(maxsize=1)
def _all_codebooks() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(CODEBOOK_DIR / codebook_index()["file"]))


def shipped_head_dims() -> list[int]:
    """head_dims with shipped per-head_dim codebooks."""
    return list(codebook_index()["head_dims"])


def generate_command(head_dim: int) -> str:
    """The command that regenerates the package's codebooks with ``head_dim`` added."""
    dims = " ".join(str(d) for d in sorted(set(shipped_head_dims()) | {head_dim}))
    return f"python -m octopus_diffusers.codecs.build_codebooks --head-dims {dims}"


def check_head_dim(head_dim: int, who: str) -> None:
    """Raise a :class:`CodecError` naming ``head_dim``, the shipped list and the fix if it is not shipped."""
    if head_dim not in shipped_head_dims():
        raise CodecError(f"{who}: no shipped codebook for head_dim {head_dim}; shipped head_dims: "
                         f"{shipped_head_dims()}. Generate it with `{generate_command(head_dim)}`")


def load_codebook(family: str, bits: int, head_dim: int | None = None, level: int | None = None
                  ) -> torch.Tensor:
    """Sorted float32 centroids (CPU, a fresh copy) of one shipped codebook.

    ``family`` is ``"turboquant"``, ``"octopus_dir"`` or ``"octopus_rho"`` (these need ``head_dim``)
    or ``"polar_level"`` (needs ``level``, 2..6; independent of head_dim).
    """
    if family not in FAMILIES:
        raise CodecError(f"codebooks: unknown family {family!r}; known: {', '.join(FAMILIES)}")
    lo, hi = SETTINGS[_BITS_SETTING[family]]
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise CodecError(f"codebooks: {family} bits must be an int in {lo}..{hi}, got {bits!r}")
    if family == "polar_level":
        lo_l, hi_l = SETTINGS["polar_levels"]
        if not isinstance(level, int) or not lo_l <= level <= hi_l:
            raise CodecError(f"codebooks: polar_level needs level in {lo_l}..{hi_l}, got {level!r}")
        key = polar_key(level, bits)
    else:
        if head_dim is None:
            raise CodecError(f"codebooks: family {family!r} needs head_dim")
        check_head_dim(head_dim, f"codebooks ({family})")
        key = (turboquant_key(head_dim, bits) if family == "turboquant"
               else octopus_key(family.removeprefix("octopus_"), head_dim, bits))
    return _all_codebooks()[key].clone()


def nearest_index(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index (int64) of the nearest of the sorted ``centroids`` for each value; ties go to the lower one."""
    return torch.bucketize(values, 0.5 * (centroids[1:] + centroids[:-1]))
