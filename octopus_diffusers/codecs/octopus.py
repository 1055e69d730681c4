"""OCTOPUS (arXiv 2605.21226): triplets of the rotated unit vector, octahedral map, Lloyd-Max codes.

Encoder, per vector x of one head (codecs.md §2):
  gamma = ||x|| (stored, float16 by default); y = R x / gamma (seeded rotation, :mod:`.rotation`);
  contiguous triplets t_i of y (the last zero-padded); rho_i = ||t_i||; (xi_i, eta_i) = octahedral map
  of t_i; xi and eta quantized with the shared Lloyd-Max direction codebook of their width, rho with
  the rho codebook (codebooks fitted to samples of this encoder, :mod:`.build_codebooks`).
  Joint rounding (default on): among the 3x3 neighbours of the nearest (j_xi, j_eta), keep the
  direction n^ maximizing s = t·n^, then store the rho centroid nearest s (the least-squares scale).
Decoder: t^_i = rho^ * octahedral_decode(xi^, eta^); y^ = triplets without padding; x^ = gamma R^T y^.

Layout (docs/architecture.md): field ``codes`` uint8 ``(..., ceil(n*w/8))``, triplet i at bit offset
i*w holding (i_xi, i_eta, i_rho); field ``norms``. With ``qjl_residual=True`` the residual
r = y - y^ (rotated unit basis) is sketched by :class:`.qjl.SignSketch` (m = head_dim sign bits,
fields ``qjl_signs`` and ``qjl_norms``) and its unbiased estimate is added back, which makes
<q, x^> an unbiased estimate of <q, x> over the sketch's randomness (up to the float16 norms).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import CodecError, check_flag
from .build_codebooks import SETTINGS as CODEBOOK_SETTINGS
from .codebooks import check_head_dim, load_codebook, nearest_index
from .norm_split import NormSplitRotationCodec
from .octahedral import from_triplets, n_triplets, octahedral_decode, octahedral_encode, to_triplets

_NEIGHBOURS = torch.tensor([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)], dtype=torch.int64)


#: Widest shipped field codebooks (``build_codebooks.SETTINGS``): direction 1..8 bits, rho 0..8 bits.
MAX_DIR_BITS = CODEBOOK_SETTINGS["octopus_dir_bits"][1]
MAX_RHO_BITS = CODEBOOK_SETTINGS["octopus_rho_bits"][1]
#: Largest nominal b whose paper allocation (b+1, b+1, b-1) has shipped codebooks.
MAX_PAPER_BITS = MAX_DIR_BITS - 1


def default_allocation(bits: int) -> tuple[int, int, int]:
    """The paper's b-bit setting (b+1, b+1, b-1): 3b+1 bits per triplet."""
    return (bits + 1, bits + 1, bits - 1)


def check_allocation(allocation: Any) -> tuple[int, int, int]:
    """``allocation`` as three ints (b_xi, b_eta, b_rho) within the shipped codebooks' widths."""
    try:
        allocation = tuple(allocation)
    except TypeError:
        allocation = (allocation,)
    if (len(allocation) != 3 or not all(isinstance(a, int) and not isinstance(a, bool) for a in allocation)
            or not (1 <= allocation[0] <= MAX_DIR_BITS and 1 <= allocation[1] <= MAX_DIR_BITS
                    and 0 <= allocation[2] <= MAX_RHO_BITS)):
        raise CodecError(f"octopus: allocation must be three ints (b_xi, b_eta, b_rho) with b_xi, b_eta "
                         f"in 1..{MAX_DIR_BITS} and b_rho in 0..{MAX_RHO_BITS}, got {allocation!r}")
    return allocation  # type: ignore[return-value]


def _rate(allocation: tuple[int, int, int], head_dim: int) -> float:
    """bits per scalar of ``allocation`` at ``head_dim`` with the float16 norm (for messages)."""
    return (8 * ((n_triplets(head_dim) * sum(allocation) + 7) // 8) + 16) / head_dim


def paper_allocation(bits: float, head_dim: int) -> tuple[int, int, int]:
    """The allocation for nominal ``bits`` (an int 1..7): (b+1, b+1, b-1). Other rates raise a
    :class:`CodecError` that names the ``allocation=`` to pass instead."""
    if bits != int(bits):
        raise CodecError(
            f"octopus: fractional bits {bits} need an explicit per-triplet allocation, e.g. "
            f"get_codec('octopus', {head_dim}, {bits}, allocation=(3, 3, 2)) for 8 bits per "
            "triplet (b_xi, b_eta, b_rho); bits_per_scalar reports the true rate")
    b = int(bits)
    if b == MAX_PAPER_BITS + 1:
        top, below = (MAX_DIR_BITS,) * 3, (MAX_DIR_BITS, MAX_DIR_BITS, MAX_DIR_BITS - 1)
        raise CodecError(
            f"octopus: bits={b} would need the paper allocation {default_allocation(b)}, wider than the "
            f"shipped {MAX_DIR_BITS}-bit direction codebooks (nominal bits 1..{MAX_PAPER_BITS}). For 8-bit "
            f"KV pass allocation={top} ({sum(top)} bits per triplet, {_rate(top, head_dim):.3f} bits per "
            f"scalar at head_dim {head_dim}) or allocation={below} ({_rate(below, head_dim):.3f}), e.g. "
            f"get_codec('octopus', {head_dim}, {b}, allocation={top})")
    if not 1 <= b <= MAX_PAPER_BITS:
        raise CodecError(f"octopus: bits must be an int in 1..{MAX_PAPER_BITS} for the default allocation "
                         f"(b+1, b+1, b-1), got {bits}; pass allocation=(b_xi, b_eta, b_rho) otherwise")
    return default_allocation(b)


class OctopusCodec(NormSplitRotationCodec):
    """OCTOPUS codec; see the module docstring. ``bits`` is the nominal integer rate b whose default
    allocation is (b+1, b+1, b-1); an explicit ``allocation=(b_xi, b_eta, b_rho)`` defines the rate
    itself (``bits`` then only labels the configuration; reports use :attr:`bits_per_scalar`)."""

    name = "octopus"
    min_head_dim = 4

    default_bits = 3

    def __init__(self, head_dim: int, bits: float | None = 3, seed: int = 0,
                 allocation: tuple[int, int, int] | None = None, joint_rounding: bool = True,
                 qjl_residual: bool = False, norm_dtype: torch.dtype | str = torch.float16) -> None:
        super().__init__(head_dim, bits, seed, norm_dtype, qjl_residual)
        allocation = (paper_allocation(self.bits, self.head_dim) if allocation is None
                      else check_allocation(allocation))
        check_head_dim(self.head_dim, "octopus")
        self.allocation: tuple[int, int, int] = allocation
        self.joint_rounding = check_flag(joint_rounding, "joint_rounding", "octopus")
        self.n_triplets = n_triplets(self.head_dim)
        self.bits_per_triplet = sum(allocation)
        self.xi_codebook = load_codebook("octopus_dir", allocation[0], self.head_dim)
        self.eta_codebook = load_codebook("octopus_dir", allocation[1], self.head_dim)
        self.rho_codebook = load_codebook("octopus_rho", allocation[2], self.head_dim)
        self.code_widths = list(allocation) * self.n_triplets
        self._codebook_cache: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def options(self) -> dict[str, Any]:
        return {**super().options(), "allocation": list(self.allocation), "joint_rounding": self.joint_rounding,
                "qjl_residual": self.qjl_residual}

    def label(self, dtype: torch.dtype | None = None) -> str:
        paper = self.bits == int(self.bits) and self.allocation == default_allocation(int(self.bits))
        out = f"octopus-{int(self.bits)}b" if paper else "octopus-" + ".".join(map(str, self.allocation))
        return out + ("" if self.joint_rounding else "-nearest") + ("-qjl" if self.qjl_residual else "")

    # ---- the unit-vector quantizer (rotated basis) ---------------------------------------------------
    def _codebooks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._codebook_cache:
            self._codebook_cache[device] = tuple(
                c.to(device) for c in (self.xi_codebook, self.eta_codebook, self.rho_codebook))
        return self._codebook_cache[device]

    def quantize_rotated(self, y: torch.Tensor) -> torch.Tensor:
        """Indices ``int64 (..., n_triplets, 3)`` = (i_xi, i_eta, i_rho) of rotated unit vectors ``y``."""
        cb_xi, cb_eta, cb_rho = self._codebooks(y.device)
        t = to_triplets(y.to(torch.float32))
        rho = torch.linalg.vector_norm(t, dim=-1)
        # A zero triplet has no direction; give it the north pole so the map stays finite.
        t_dir = torch.where((rho > 0)[..., None], t, t.new_tensor([0.0, 0.0, 1.0]))
        xi, eta = octahedral_encode(t_dir)
        j_xi, j_eta = nearest_index(xi, cb_xi), nearest_index(eta, cb_eta)
        if not self.joint_rounding:
            return torch.stack([j_xi, j_eta, nearest_index(rho, cb_rho)], -1)
        nb = _NEIGHBOURS.to(y.device)
        c_xi = (j_xi[..., None] + nb[:, 0]).clamp(0, cb_xi.numel() - 1)  # (..., n, 9)
        c_eta = (j_eta[..., None] + nb[:, 1]).clamp(0, cb_eta.numel() - 1)
        dirs = octahedral_decode(cb_xi[c_xi], cb_eta[c_eta])  # (..., n, 9, 3)
        s = (dirs * t[..., None, :]).sum(-1)
        best = s.argmax(-1, keepdim=True)
        s_best = s.gather(-1, best).squeeze(-1)
        return torch.stack([c_xi.gather(-1, best).squeeze(-1), c_eta.gather(-1, best).squeeze(-1),
                            nearest_index(s_best, cb_rho)], -1)

    def dequantize_rotated(self, idx: torch.Tensor) -> torch.Tensor:
        """Rotated unit-vector reconstruction ``float32 (..., head_dim)`` from triplet indices."""
        cb_xi, cb_eta, cb_rho = self._codebooks(idx.device)
        idx = idx.long()
        t_hat = cb_rho[idx[..., 2]][..., None] * octahedral_decode(cb_xi[idx[..., 0]], cb_eta[idx[..., 1]])
        return from_triplets(t_hat, self.head_dim)

    def quantize_fields(self, y: torch.Tensor) -> torch.Tensor:
        return self.quantize_rotated(y).flatten(-2)

    def dequantize_fields(self, idx: torch.Tensor) -> torch.Tensor:
        return self.dequantize_rotated(idx.reshape(*idx.shape[:-1], self.n_triplets, 3))
