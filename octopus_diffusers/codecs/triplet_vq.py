"""Triplet vector quantization: rotated triplets, a 3-D Lloyd codebook per triplet, mixed-radix packing.

An OCTOPUS variant built for rate: the same norm split and rotation (``gamma = ||x||`` stored as
float16, ``y = R x / gamma``), the same contiguous triplets of ``y`` (the ``d mod 3`` leftover
coordinates form one pair or one single group, not a zero-padded triplet), but each triplet is
quantized to the nearest codeword of a full 3-D Lloyd codebook fitted to the exact distribution of a
rotated unit vector's triplet (data-oblivious; :mod:`.vq_codebooks`), instead of the octahedral
(xi, eta, rho) product code. Codebooks are sign-symmetric: ``n`` codewords in the positive octant and
3 sign bits, ``K = 8 n`` codewords per triplet with any ``n`` on a half-bit grid (1 ... 4096); at low
rates, where a sign bit per coordinate is more than the best codebook spends, full (not
sign-symmetric) 3-D Lloyd codebooks with K = 2 ... 256 codewords take over (the allocator picks the
family from the shipped distortions).

Rate: ``bits`` is the target true rate per scalar, norm included (``get_codec("triplet_vq", 128, 3)``
stores exactly 48 bytes per vector). The codec picks two neighbouring codebook sizes for the
triplets (``m`` of them on the larger) and one for the leftover group, minimising the shipped
distortion estimates under the byte budget, and packs the group indices mixed radix
(:mod:`.mixed_radix`, chunks of <= 63 bits) so that non-power-of-two codebook sizes cost their
``log2 K`` bits (under one bit lost per chunk, plus byte padding; :meth:`config` reports both).

Encoder: the sign of each coordinate, then the exact nearest of the ``n`` octant codewords to
``|t|`` (the nearest of all ``8 n`` codewords always lies in t's octant), or the exact nearest of
the K full codewords: a k-d tree on the CPU, brute force ``||c||² - 2 t·c`` otherwise, i.e.
``3 n`` (or ``3 K``) multiply-adds and an argmin per triplet (n <= 4096, K <= 256). Decoder: one
table lookup of 3 values (and 3 sign flips) per triplet.

Norms: float16 by default (16 bits per vector, counted in the rate). The shared norm-split base
refuses, with a :class:`CodecError`, a norm above float16's 65504 and a nonzero norm below its smallest
normal value (6.1e-5), which float16 could not store faithfully; ``norm_dtype=torch.float32`` (32
bits) or ``torch.bfloat16`` removes those limits.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .base import CodecError
from .mixed_radix import MixedRadixCodec, Segment, best_two_level_mix, packed_bits
from .vq_codebooks import GroupOption, group_options, group_sizes, load_vq


def _segment(option: GroupOption, k: int, count: int) -> Segment:
    return Segment(k, count, option.key, option.sign_symmetric, option.levels)


@lru_cache(maxsize=256)
def triplet_allocation(head_dim: int, code_budget: int) -> tuple[Segment, ...]:
    """Segments (triplets on two neighbouring codebooks, then the leftover group) for a code budget:
    the lowest summed distortion whose mixed-radix packing fits ``code_budget`` bits."""
    n3, rest = head_dim // 3, head_dim % 3
    opts3 = group_options(head_dim, 3)
    rest_opts = group_options(head_dim, rest) if rest else [None]
    pairs = [(o.radix, o.distortion) for o in opts3]
    best = None
    for r in rest_opts:
        fixed = (r.radix,) if r is not None else ()
        found = best_two_level_mix(n3, pairs, lambda radix: radix, fixed, code_budget,
                                   r.distortion if r is not None else 0.0)
        if found is not None and (best is None or found[0] < best[0][0] - 1e-15):
            best = (found, r)
    if best is None:
        return ()
    (_, j, m, _), r = best
    segments = [_segment(opts3[min(j + 1, len(opts3) - 1)], 3, m), _segment(opts3[j], 3, n3 - m)]
    if r is not None:
        segments.append(_segment(r, rest, 1))
    return tuple(s for s in segments if s.count > 0)


def rate_range(head_dim: int, norm_bits: int = 16) -> tuple[float, float]:
    """Smallest and largest true rate (bits per scalar) the shipped codebooks can fill."""
    opts = [group_options(head_dim, k) for k in group_sizes(head_dim)]
    counts = [head_dim // 3] + ([1] if head_dim % 3 else [])
    lo = packed_bits(tuple(o[0].radix for c, o in zip(counts, opts) for _ in range(c)))
    hi = packed_bits(tuple(o[-1].radix for c, o in zip(counts, opts) for _ in range(c)))
    return 8 * -(-(lo + norm_bits) // 8) / head_dim, 8 * -(-(hi + norm_bits) // 8) / head_dim


class TripletVQCodec(MixedRadixCodec):
    """Triplet VQ codec (module docstring); ``bits`` = target true bits per scalar."""

    name = "triplet_vq"
    min_head_dim = 4

    def __init__(self, head_dim: int, bits: float = 3.0, seed: int = 0,
                 norm_dtype: torch.dtype | str = torch.float16) -> None:
        super().__init__(head_dim, bits, seed, norm_dtype)
        segments = triplet_allocation(head_dim, self.code_budget)
        if not segments:
            lo, hi = rate_range(head_dim, 8 * torch.empty(0, dtype=self.norm_dtype).element_size())
            raise CodecError(f"{self.name}: target rate {bits} bits/scalar is below the smallest this codec "
                             f"stores at head_dim {head_dim} ({lo:g}); choose bits in [{lo:g}, {hi:g}]")
        self._setup_segments(segments, load_vq)
        lo, hi = rate_range(head_dim, 8 * torch.empty(0, dtype=self.norm_dtype).element_size())
        if bits > hi + 1e-9:
            raise CodecError(f"{self.name}: target rate {bits} bits/scalar is above the largest the shipped "
                             f"codebooks fill at head_dim {head_dim} ({hi:g}); choose bits in [{lo:g}, {hi:g}]")
