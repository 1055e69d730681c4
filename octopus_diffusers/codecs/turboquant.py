"""TurboQuant (arXiv 2504.19874): rotation, then per-coordinate Lloyd-Max on the exact marginal.

* :class:`TurboQuantMSECodec`: ``gamma = ||x||``, ``y = R x / gamma``; coordinate j of y gets the
  shipped Lloyd-Max codebook of the exact finite-d coordinate density f(t) ∝ (1-t²)^((d-3)/2) at its
  width. A fractional ``bits`` b gives the first ``round(d (b - floor b))`` channels ceil(b) bits and the
  rest floor(b) (``b * head_dim`` must be a whole number of bits). Layout (docs/architecture.md): field
  ``codes`` with coordinate j at offset sum(widths[:j]), field ``norms``.
* :class:`TurboQuantProdCodec`: the mse codec at ``bits - 1`` plus a QJL sketch of the residual
  (:class:`.qjl.SignSketch`, m = head_dim Gaussian rows): x~ = x~_mse + sqrt(pi/2)/d ||r|| S^T sign(S r).
  The residual is taken in the rotated unit basis (r = y - y^, scaled by gamma on decode); S R is again
  an i.i.d. Gaussian matrix, so this is the paper's estimator and <q, x~> is unbiased over S.
"""

from __future__ import annotations

import math
import torch

from .base import CodecError
from .codebooks import check_head_dim, load_codebook, nearest_index
from .norm_split import NormSplitRotationCodec

MIN_BITS, MAX_BITS = 1, 8


def channel_widths(head_dim: int, bits: float, who: str) -> list[int]:
    """Per-channel widths for nominal ``bits``: the first channels get ceil(bits), the rest floor(bits)."""
    total = bits * head_dim
    if not MIN_BITS <= bits <= MAX_BITS:
        raise CodecError(f"{who}: per-coordinate bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    if not math.isclose(total, round(total), abs_tol=1e-9):
        raise CodecError(f"{who}: bits * head_dim must be a whole number of bits, got {bits} * {head_dim} = "
                         f"{total}")
    lo = math.floor(bits)
    n_hi = round(total) - lo * head_dim
    return [lo + 1] * n_hi + [lo] * (head_dim - n_hi)


class TurboQuantMSECodec(NormSplitRotationCodec):
    """TurboQuant-mse; ``bits`` in 1..8 per coordinate, fractional allowed (see module docstring)."""

    name = "turboquant"
    min_head_dim = 4

    default_bits = 3

    def __init__(self, head_dim: int, bits: float | None = 3, seed: int = 0,
                 norm_dtype: torch.dtype | str = torch.float16) -> None:
        super().__init__(head_dim, bits, seed, norm_dtype, qjl_residual=False)
        self._setup_channels(self.bits)

    def _setup_channels(self, mse_bits: float) -> None:
        head_dim = self.head_dim
        #: Per-coordinate bits of the Lloyd-Max stage.
        self.mse_bits = mse_bits
        self.code_widths = channel_widths(head_dim, mse_bits, self.name)
        check_head_dim(head_dim, self.name)
        #: Sorted centroids per width in use (rotated unit-vector coordinates).
        self.codebooks: dict[int, torch.Tensor] = {
            w: load_codebook("turboquant", w, head_dim) for w in sorted(set(self.code_widths))}
        #: Channels [0, n_high) use width max(widths), the others min(widths).
        self.n_high = self.code_widths.count(max(self.code_widths)) if len(self.codebooks) == 2 else head_dim
        self._device_codebooks: dict[torch.device, dict[int, torch.Tensor]] = {}

    def _codebooks_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._device_codebooks:
            self._device_codebooks[device] = {w: c.to(device) for w, c in self.codebooks.items()}
        cbs = self._device_codebooks[device]
        return cbs[max(cbs)], cbs[min(cbs)]

    def quantize_fields(self, y: torch.Tensor) -> torch.Tensor:
        hi, lo = self._codebooks_on(y.device)
        k = self.n_high
        return torch.cat([nearest_index(y[..., :k].contiguous(), hi),
                          nearest_index(y[..., k:].contiguous(), lo)], -1)

    def dequantize_fields(self, idx: torch.Tensor) -> torch.Tensor:
        hi, lo = self._codebooks_on(idx.device)
        idx = idx.long()
        k = self.n_high
        return torch.cat([hi[idx[..., :k]], lo[idx[..., k:]]], -1)


class TurboQuantProdCodec(TurboQuantMSECodec):
    """TurboQuant-prod: (bits - 1)-bit TurboQuant-mse plus a QJL residual sketch; ``bits`` in 2..9."""

    name = "turboquant_prod"

    def __init__(self, head_dim: int, bits: float | None = 3, seed: int = 0,
                 norm_dtype: torch.dtype | str = torch.float16) -> None:
        NormSplitRotationCodec.__init__(self, head_dim, bits, seed, norm_dtype, qjl_residual=True)
        if not MIN_BITS + 1 <= self.bits <= MAX_BITS + 1:
            raise CodecError(f"{self.name}: bits must be in {MIN_BITS + 1}..{MAX_BITS + 1} (bits - 1 for the "
                             f"mse stage plus about 1 for the QJL sign bits), got {bits}")
        self._setup_channels(self.bits - 1)
