"""TurboQuant with mixed-radix packing: the strongest scalar peer at any true rate.

TurboQuant-mse (per-coordinate Lloyd-Max on the exact finite-d coordinate density f(t) ∝
(1-t²)^((d-3)/2), after the same norm split and rotation), but each coordinate may have any number
of levels ``L`` (2 ... 64, not only powers of two): ``m`` coordinates get ``L + 1`` levels and the
others ``L``, chosen to minimise the exact distortion under the byte budget, and the indices are
packed mixed radix (:mod:`.mixed_radix`), so a coordinate costs ``log2 L`` bits. At a power-of-two
``L`` and a matching budget this is exactly TurboQuant-mse (same centroids, same packing width).

``bits`` is the target true rate per scalar, float16 norm included (as for :mod:`.triplet_vq`).
Encoder: one bucketize per coordinate; decoder: one lookup per coordinate.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .base import CodecError
from .mixed_radix import MixedRadixCodec, Segment, best_two_level_mix
from .vq_codebooks import load_vq, scalar_key, scalar_options


@lru_cache(maxsize=256)
def scalar_allocation(head_dim: int, code_budget: int) -> tuple[Segment, ...]:
    """Segments (coordinates on two neighbouring level counts) for a code budget."""
    opts = scalar_options(head_dim)
    found = best_two_level_mix(head_dim, opts, lambda n: n, (), code_budget)
    if found is None:
        return ()
    _, j, m, _ = found
    hi, lo = opts[min(j + 1, len(opts) - 1)][0], opts[j][0]
    return tuple(s for s in (Segment(1, m, scalar_key(head_dim, hi), False, hi),
                             Segment(1, head_dim - m, scalar_key(head_dim, lo), False, lo)) if s.count > 0)


class TurboQuantMRCodec(MixedRadixCodec):
    """TurboQuant-mse with any level count per coordinate, packed mixed radix; ``bits`` = true rate."""

    name = "turboquant_mr"
    min_head_dim = 4

    def __init__(self, head_dim: int, bits: float = 3.0, seed: int = 0,
                 norm_dtype: torch.dtype | str = torch.float16) -> None:
        super().__init__(head_dim, bits, seed, norm_dtype)
        opts = scalar_options(head_dim)
        norm_bits = 8 * torch.empty(0, dtype=self.norm_dtype).element_size()
        lo = 8 * -(-(head_dim + norm_bits) // 8) / head_dim
        hi_bits = head_dim * (opts[-1][0] - 1).bit_length()
        hi = 8 * -(-(hi_bits + norm_bits) // 8) / head_dim
        if not lo - 1e-9 <= bits <= hi + 1e-9:
            raise CodecError(f"{self.name}: target rate {bits} bits/scalar outside [{lo:g}, {hi:g}] at "
                             f"head_dim {head_dim} (levels {opts[0][0]}..{opts[-1][0]} per coordinate)")
        segments = scalar_allocation(head_dim, self.code_budget)
        if not segments:
            raise CodecError(f"{self.name}: no allocation fits {self.code_budget} code bits at head_dim {head_dim}")
        self._setup_segments(segments, load_vq)
