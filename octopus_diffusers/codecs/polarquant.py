"""The ``polarquant`` codec (PolarQuant, arXiv 2502.02617): rotation, then a recursive polar transform.

Encoding one vector ``x`` of ``head_dim`` d, with ``L = levels`` and blocks of ``B = 2^L`` coordinates:

1. Rotate with the shared seeded rotation (:mod:`.rotation`): ``y = x @ R.T``.
2. Level 1: each coordinate pair ``(y_2i, y_2i+1)`` becomes an angle in ``[0, 2π)`` and a radius.
   Level ``l >= 2``: each pair of level ``l-1`` radii ``(r_2i, r_2i+1)`` becomes the angle
   ``atan2(r_2i+1, r_2i)`` in ``[0, π/2]`` and the radius ``hypot(r_2i, r_2i+1)``. After L levels
   one radius per block of B coordinates is left: the block's norm.
3. Level-1 angles are uniform for a rotated vector, so they get a uniform quantizer with
   ``2^b1`` cells (decoded at the cell centre). Level-l angles have density ∝ sin^(2^(l-1)-1)(2ψ) and
   get the shipped Lloyd-Max codebook ``load_codebook("polar_level", bits=b_l, level=l)``
   (nearest centroid). The block radius is stored as float16.

Rate per scalar: ``(b1·B/2 + Σ_{l=2..L} b_l·B/2^l + 16) / B``, plus byte padding of each vector's
code stream. The practical setting of the paper (L = 4, b1 = 4, b_2..4 = 2) is 3.875 bits per scalar.

**Rule for the nominal ``bits``** (an integer 1..8): ``level1_bits = bits`` and
``level_bits = max(1, bits - 2)`` at every level ``l >= 2``. Nominal 4 is therefore the paper's
3.875-bit setting (nominal 1, 2, 3, 5, 6 give 1.9375, 2.4375, 2.9375, 4.8125, 5.75 bits at L = 4 and
d = 128; where a vector's code stream is not whole bytes, e.g. odd level_bits at d = 64, its byte
padding adds up to 7 bits per vector, and ``bits_per_scalar`` counts it).
``level1_bits`` (1..16) and ``level_bits`` (one int for all levels or one per level 2..L, each within
the shipped codebooks' widths, 1..6) override the rule; ``bits_per_scalar`` always reports the true rate.

**head_dim rule:** d must be a multiple of ``2^levels`` (16 at the default 4 levels); any other d is
refused at construction (pass a smaller ``levels``). d need not be a power of two: the rotation
is then the seeded dense orthogonal one.

Storage: field ``"codes"`` ``uint8 (..., ceil(bits / 8))``: all level-1 angle indices of the vector
(pairs in coordinate order), then all level-2 indices, ..., level L, bit-packed LSB-first
(:mod:`.packing`); field ``"radii"`` float16 ``(..., d / 2^levels)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import Codec, CodecError, PackedTensor, refuse_tiny_norms
from .build_codebooks import SETTINGS as CODEBOOK_SETTINGS
from .codebooks import load_codebook, nearest_index
from .packing import MAX_WIDTH, pack_bits, packed_nbytes, unpack_bits
from .rotation import Rotation

_TWO_PI = 2.0 * math.pi
_FP16_MAX = float(torch.finfo(torch.float16).max)
#: Deepest level with shipped angle codebooks (level 1 needs none), and their bit widths.
MAX_LEVELS = CODEBOOK_SETTINGS["polar_levels"][1]
LEVEL_BITS_RANGE = tuple(CODEBOOK_SETTINGS["polar_bits"])
MAX_NOMINAL_BITS = LEVEL_BITS_RANGE[1] + 2  # the nominal rule gives levels >= 2 bits - 2


class PolarQuantCodec(Codec):
    """Rotation + recursive polar transform; uniform level-1 angles, Lloyd-Max deeper angles."""

    name = "polarquant"

    def __init__(self, head_dim: int, bits: float | None = None, seed: int = 0, levels: int = 4,
                 level1_bits: int | None = None, level_bits: int | Sequence[int] | None = None) -> None:
        super().__init__(head_dim, bits, seed)
        bits = self.bits
        if not (float(bits).is_integer() and 1 <= bits <= MAX_NOMINAL_BITS):
            raise CodecError(f"polarquant: nominal bits must be an integer in 1..{MAX_NOMINAL_BITS} "
                             f"(4 gives the paper's 3.875-bit setting), got {bits}")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
            raise CodecError(f"polarquant: levels must be an int in 1..{MAX_LEVELS}, got {levels!r}")
        block = 1 << levels
        if head_dim % block:
            raise CodecError(f"polarquant: unsupported head_dim {head_dim}; with levels={levels} it must "
                             f"be a multiple of 2^levels = {block} (pass a smaller levels)")
        self.levels = levels
        self.block = block
        self.level1_bits = _check_width(int(bits) if level1_bits is None else level1_bits,
                                        "level1_bits", 1, MAX_WIDTH)
        self.level_bits = self._deep_level_bits(int(bits), level_bits)
        self.rotation = Rotation(head_dim, self.seed)
        # Shipped Lloyd-Max centroids for levels 2..L (validated here, not at first encode).
        self._codebooks = [load_codebook("polar_level", bits=b, level=lvl)
                           for lvl, b in zip(range(2, levels + 1), self.level_bits)]
        self._device_books: dict[torch.device, list[torch.Tensor]] = {}
        self._widths = self._field_widths()

    def _deep_level_bits(self, nominal: int, level_bits: int | Sequence[int] | None) -> tuple[int, ...]:
        n = self.levels - 1
        if level_bits is None:
            return (max(1, nominal - 2),) * n
        if isinstance(level_bits, int) and not isinstance(level_bits, bool):
            level_bits = (level_bits,) * n
        level_bits = tuple(level_bits)
        if len(level_bits) != n:
            raise CodecError(f"polarquant: level_bits needs one width per level 2..{self.levels} "
                             f"({n}), got {level_bits}")
        return tuple(_check_width(b, "level_bits", *LEVEL_BITS_RANGE) for b in level_bits)

    def _field_widths(self) -> tuple[int, ...]:
        """Width of every packed field of one vector, in stream order (level 1 first)."""
        widths = [self.level1_bits] * (self.head_dim // 2)
        for lvl, b in zip(range(2, self.levels + 1), self.level_bits):
            widths += [b] * (self.head_dim >> lvl)
        return tuple(widths)

    @property
    def bits_per_scalar(self) -> float:
        code_bits = 8 * packed_nbytes(self._widths)
        radius_bits = 16 * (self.head_dim // self.block)
        return (code_bits + radius_bits) / self.head_dim

    def options(self) -> dict:
        return {"levels": self.levels, "level1_bits": self.level1_bits, "level_bits": list(self.level_bits)}

    def field_layout(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                     ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        lead = tuple(shape[:-1])
        return {"codes": ((*lead, packed_nbytes(self._widths)), torch.uint8),
                "radii": ((*lead, self.head_dim // self.block), torch.float16)}

    def _books_on(self, device: torch.device) -> list[torch.Tensor]:
        """Centroids per level 2..L on ``device`` (cached)."""
        if device not in self._device_books:
            self._device_books[device] = [c.to(device) for c in self._codebooks]
        return self._device_books[device]

    # ---- encode ----------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> PackedTensor:
        y = self.rotation.forward(x.float())
        angles, radii = polar_transform(y, self.levels)
        if radii.numel() and float(radii.max()) > _FP16_MAX:
            raise CodecError(f"polarquant: a block norm {float(radii.max()):g} exceeds the float16 "
                             f"range of the stored radius ({_FP16_MAX:g})")
        refuse_tiny_norms(radii, torch.float16, self.name, "block norm", fix="")
        cells = 1 << self.level1_bits
        indices = [torch.floor(angles[0] * (cells / _TWO_PI)).long().remainder_(cells)]
        for psi, centroids in zip(angles[1:], self._books_on(y.device)):
            indices.append(nearest_index(psi, centroids))
        codes = pack_bits(torch.cat(indices, dim=-1), self._widths)
        fields = {"codes": codes, "radii": radii.to(torch.float16)}
        return PackedTensor(self.name, tuple(x.shape), x.dtype, fields, self.packed_meta())

    # ---- decode ----------------------------------------------------------------------------------
    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        indices = unpack_bits(packed.fields["codes"], self._widths).long()
        sizes = [self.head_dim >> lvl for lvl in range(1, self.levels + 1)]
        parts = torch.split(indices, sizes, dim=-1)
        cells = 1 << self.level1_bits
        angles = [(parts[0].float() + 0.5) * (_TWO_PI / cells)]
        for idx, centroids in zip(parts[1:], self._books_on(indices.device)):
            angles.append(centroids[idx])
        y = inverse_polar_transform(angles, packed.fields["radii"].float())
        return self.rotation.inverse(y)


def polar_transform(y: torch.Tensor, levels: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Angles per level (level 1 in ``[0, 2π)``, deeper levels in ``[0, π/2]``) and block radii.

    ``y`` is ``(..., d)`` with d a multiple of ``2^levels``; level l returns ``d / 2^l`` angles.
    """
    first, second = y[..., 0::2], y[..., 1::2]
    angles = [torch.atan2(second, first).remainder(_TWO_PI)]
    radii = torch.hypot(first, second)
    for _ in range(2, levels + 1):
        first, second = radii[..., 0::2], radii[..., 1::2]
        angles.append(torch.atan2(second, first))
        radii = torch.hypot(first, second)
    return angles, radii


def inverse_polar_transform(angles: list[torch.Tensor], radii: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`polar_transform`: rebuild ``(..., d)`` from the angles and block radii."""
    for psi in reversed(angles):
        radii = torch.stack([radii * torch.cos(psi), radii * torch.sin(psi)], dim=-1).flatten(-2)
    return radii


def _check_width(value: int, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CodecError(f"polarquant: {what} must be an int in {lo}..{hi}, got {value!r}")
    return value
