"""The ``fp8`` codec: a plain float8 e4m3 cast, the 8-bit baseline users already know.

Two modes:

* ``scale="none"``: every scalar is cast to ``torch.float8_e4m3fn`` (round to nearest even). The
  format's largest finite value is 448; larger magnitudes would become NaN (e4m3fn has no Inf), so
  they are refused with a :class:`CodecError` instead of being silently saturated. Magnitudes
  below 2^-10 round to zero (the smallest subnormal is 2^-9). Rate: exactly 8 bits per scalar.
* ``scale="vector"``: each vector is divided by ``s = max|x| / 448`` (stored as float16, rounded
  up so that ``|x| / s <= 448``) before the cast, so any magnitude fits and the full e4m3 range is
  used. Rate: ``8 + 16 / head_dim`` bits per scalar.

There is no randomness: ``seed`` is accepted for the common interface and ignored.
"""

from __future__ import annotations

import torch

from .base import Codec, CodecError, PackedTensor

#: Largest finite magnitude of float8 e4m3fn.
E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)
_FP16_MAX = float(torch.finfo(torch.float16).max)
_SCALE_MODES = ("none", "vector")


class FP8Codec(Codec):
    """float8 e4m3 cast, optionally with a per-vector float16 absmax scale."""

    name = "fp8"

    default_bits = 8

    def __init__(self, head_dim: int, bits: float | None = 8, seed: int = 0, scale: str = "none") -> None:
        super().__init__(head_dim, bits, seed)
        if self.bits != 8:
            raise CodecError(f"fp8: bits must be 8 (e4m3 stores one byte per scalar), got {bits}")
        if not isinstance(scale, str) or scale not in _SCALE_MODES:
            raise CodecError(f"fp8: scale must be one of {_SCALE_MODES}, got {scale!r}")
        self.scale = scale

    @property
    def bits_per_scalar(self) -> float:
        return 8.0 + (16.0 / self.head_dim if self.scale == "vector" else 0.0)

    def options(self) -> dict:
        return {"scale": self.scale}

    def label(self, dtype: torch.dtype | None = None) -> str:
        return "fp8-e4m3" + ("-vector" if self.scale == "vector" else "")

    def field_layout(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                     ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        layout = {"values": (tuple(shape), torch.float8_e4m3fn)}
        if self.scale == "vector":
            layout["scales"] = (tuple(shape[:-1]), torch.float16)
        return layout

    def _encode(self, x: torch.Tensor) -> PackedTensor:
        xf = x.float()
        if self.scale == "none":
            peak = float(xf.abs().max()) if xf.numel() else 0.0
            if peak > E4M3_MAX:
                raise CodecError(f"fp8: |x| reaches {peak:g}, beyond e4m3's largest value {E4M3_MAX:g}; "
                                 "use scale='vector' (per-vector scaling) for such inputs")
            fields = {"values": xf.to(torch.float8_e4m3fn)}
        else:
            scales = _absmax_scales(xf)
            scaled = xf / torch.where(scales > 0, scales.float(), 1.0).unsqueeze(-1)
            fields = {"values": scaled.to(torch.float8_e4m3fn), "scales": scales}
        return PackedTensor(self.name, tuple(x.shape), x.dtype, fields, self.packed_meta())

    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        values = packed.fields["values"].float()
        if self.scale == "vector":
            values = values * packed.fields["scales"].float().unsqueeze(-1)
        return values


def _absmax_scales(x: torch.Tensor) -> torch.Tensor:
    """Per-vector float16 scales ``s >= max|x| / 448``, the smallest such float16 (0 for zero vectors)."""
    absmax = x.abs().amax(dim=-1)
    peak = float(absmax.max()) if absmax.numel() else 0.0
    if peak / E4M3_MAX > _FP16_MAX:
        raise CodecError(f"fp8: |x| reaches {peak:g}; its scale {peak / E4M3_MAX:g} overflows the "
                         f"float16 scale field (max {_FP16_MAX:g})")
    scales = (absmax / E4M3_MAX).to(torch.float16)
    # float16 rounding may have gone down: step up one ulp wherever |x| / s would exceed 448.
    too_small = (scales.float() * E4M3_MAX < absmax) & (absmax > 0)
    bumped = torch.nextafter(scales, torch.full_like(scales, float("inf")))
    return torch.where(too_small, bumped, scales)
