"""The ``uniform`` codec: KIVI-style asymmetric min/max integer quantization.

Each group of scalars gets a zero point ``z = min`` and a step ``s = (max - min) / (2^b - 1)``, both
stored as float16; a scalar is stored as the ``b``-bit integer ``round((x - z) / s)`` and decoded as
``z + s * code``. The float16 side information is rounded outwards (``z`` down, ``s`` up) so every
value of the group maps into ``0 .. 2^b - 1`` without clipping.

Grouping (KIVI: keys per channel, values per token):

* ``axis="token"``: groups of ``group_size`` consecutive channels within each vector
  (default ``group_size = head_dim``: one group per vector). ``group_size`` must divide ``head_dim``.
* ``axis="channel"``: for an input ``(..., S, head_dim)``, each channel is split into groups of
  ``group_size`` consecutive tokens along dim -2 (default 32). **Padding rule:** when ``S`` is not a
  multiple of ``group_size``, the token axis is padded to the next multiple by repeating the last
  token (edge padding, so the padding never widens a group's min/max range). The padded tokens'
  codes are stored and counted in ``nbytes``; decode drops them.

Storage: field ``"codes"`` ``uint8`` with each token's ``head_dim`` codes bit-packed LSB-first
(:mod:`.packing`), ``ceil(head_dim * b / 8)`` bytes per token; fields ``"zeros"`` and ``"scales"``
float16, shape ``(..., head_dim / group_size)`` (token axis) or ``(..., ceil(S / group_size), head_dim)``
(channel axis). ``bits_per_scalar`` is the exact stored rate for whole groups (for
``axis="channel"``: when ``S`` is a multiple of ``group_size``).

There is no randomness: ``seed`` is accepted for the common interface and ignored.
"""

from __future__ import annotations

import math

import torch

from .base import Codec, CodecError, PackedTensor, check_int
from .packing import pack_bits, packed_nbytes, unpack_bits

_AXES = ("token", "channel")
_DEFAULT_CHANNEL_GROUP = 32
_FP16_MAX = float(torch.finfo(torch.float16).max)


class UniformCodec(Codec):
    """Asymmetric min/max ``bits``-bit integers (1..8) in per-token or per-channel groups."""

    name = "uniform"

    def __init__(self, head_dim: int, bits: float | None = None, seed: int = 0, axis: str = "token",
                 group_size: int | None = None) -> None:
        super().__init__(head_dim, bits, seed)
        bits = self.bits
        if not (float(bits).is_integer() and 1 <= bits <= 8):
            raise CodecError(f"uniform: bits must be an integer in 1..8, got {bits}")
        if not isinstance(axis, str) or axis not in _AXES:
            raise CodecError(f"uniform: axis must be one of {_AXES}, got {axis!r}")
        if group_size is None:
            group_size = head_dim if axis == "token" else _DEFAULT_CHANNEL_GROUP
        group_size = check_int(group_size, "group_size", "uniform", 1)
        if axis == "token" and head_dim % group_size:
            raise CodecError(f"uniform: group_size {group_size} must divide head_dim {head_dim} "
                             "for axis='token'")
        self.int_bits = int(bits)
        self.axis = axis
        self.group_size = group_size
        self._code_bytes = packed_nbytes((self.int_bits,) * head_dim)

    @property
    def bits_per_scalar(self) -> float:
        code_bits = 8.0 * self._code_bytes / self.head_dim
        side_bits = 32.0 / self.group_size  # one float16 zero + one float16 scale per group
        return code_bits + side_bits

    def options(self) -> dict:
        return {"axis": self.axis, "group_size": self.group_size}

    def label(self, dtype: torch.dtype | None = None) -> str:
        return f"uniform-{self.int_bits}b" + ("-channel" if self.axis == "channel" else "")

    def field_layout(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                     ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        shape = tuple(shape)
        if self.axis == "token":
            lead = shape[:-1]
            side = (*lead, self.head_dim // self.group_size)
            codes = (*lead, self._code_bytes)
        else:
            if len(shape) < 2:
                raise CodecError(f"uniform: axis='channel' needs (..., tokens, {self.head_dim}) input, "
                                 f"got shape {shape}")
            groups = -(-shape[-2] // self.group_size)
            codes = (*shape[:-2], groups * self.group_size, self._code_bytes)
            side = (*shape[:-2], groups, self.head_dim)
        return {"codes": (codes, torch.uint8), "zeros": (side, torch.float16), "scales": (side, torch.float16)}

    # ---- encode ----------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> PackedTensor:
        xf = x.float()
        if self.axis == "token":
            groups = xf.reshape(*xf.shape[:-1], self.head_dim // self.group_size, self.group_size)
            codes, zeros, scales = self._quantize_groups(groups, dim=-1)
            codes = codes.reshape(xf.shape)
            zeros, scales = zeros.squeeze(-1), scales.squeeze(-1)
        else:
            if xf.dim() < 2:
                raise CodecError(f"uniform: axis='channel' needs (..., tokens, {self.head_dim}) input, "
                                 f"got shape {tuple(x.shape)}")
            padded = self._pad_tokens(xf)
            n_groups = padded.shape[-2] // self.group_size
            groups = padded.reshape(*padded.shape[:-2], n_groups, self.group_size, self.head_dim)
            codes, zeros, scales = self._quantize_groups(groups, dim=-2)
            codes = codes.reshape(padded.shape)
            zeros, scales = zeros.squeeze(-2), scales.squeeze(-2)
        fields = {"codes": pack_bits(codes, self.int_bits), "zeros": zeros, "scales": scales}
        return PackedTensor(self.name, tuple(x.shape), x.dtype, fields, self.packed_meta())

    def _pad_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Edge-pad dim -2 to a multiple of ``group_size`` (see the module docstring)."""
        tokens = x.shape[-2]
        missing = -tokens % self.group_size
        if missing == 0 or tokens == 0:
            return x
        last = x[..., -1:, :].expand(*x.shape[:-2], missing, self.head_dim)
        return torch.cat([x, last], dim=-2)

    def _quantize_groups(self, groups: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
        """Codes (same shape as ``groups``) and float16 zero points / steps (``dim`` kept as size 1)."""
        levels = (1 << self.int_bits) - 1
        lo = groups.amin(dim=dim, keepdim=True)  # group axes are never empty (group_size >= 1)
        hi = groups.amax(dim=dim, keepdim=True)
        if lo.numel() and max(float(-lo.min()), float(hi.max())) > _FP16_MAX:
            raise CodecError(f"uniform: |x| exceeds {_FP16_MAX:g}, the float16 range of the stored "
                             "zero point")
        zeros = _fp16_round(lo, up=False)
        steps_needed = (hi - zeros.float()) / levels
        if steps_needed.numel() and float(steps_needed.max()) > _FP16_MAX:
            raise CodecError(f"uniform: a group's range {float(steps_needed.max()) * levels:g} needs a "
                             f"step beyond the float16 range at {self.int_bits} bits")
        scales = _fp16_round(steps_needed, up=True)
        safe = torch.where(scales > 0, scales.float(), 1.0)
        codes = torch.round((groups - zeros.float()) / safe).clamp_(0, levels).to(torch.int32)
        return codes, zeros, scales

    # ---- decode ----------------------------------------------------------------------------------
    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        shape = packed.shape
        codes = unpack_bits(packed.fields["codes"], self.int_bits, self.head_dim).float()
        zeros, scales = packed.fields["zeros"].float(), packed.fields["scales"].float()
        if self.axis == "token":
            groups = codes.reshape(*shape[:-1], self.head_dim // self.group_size, self.group_size)
            return (zeros.unsqueeze(-1) + scales.unsqueeze(-1) * groups).reshape(shape)
        n_groups = codes.shape[-2] // self.group_size
        groups = codes.reshape(*codes.shape[:-2], n_groups, self.group_size, self.head_dim)
        values = zeros.unsqueeze(-2) + scales.unsqueeze(-2) * groups
        return values.reshape(codes.shape)[..., : shape[-2], :]


def _fp16_round(values: torch.Tensor, up: bool) -> torch.Tensor:
    """float16 nearest to ``values`` that is ``>=`` (``up``) or ``<=`` them: outward rounding."""
    rounded = values.to(torch.float16)
    wrong_side = rounded.float() < values if up else rounded.float() > values
    target = torch.full_like(rounded, math.inf if up else -math.inf)
    return torch.where(wrong_side, torch.nextafter(rounded, target), rounded)
