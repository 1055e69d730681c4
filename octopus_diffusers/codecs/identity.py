"""The ``none`` codec: stores K/V unchanged, the baseline every report compares against."""

from __future__ import annotations

import math

import torch

from .base import Codec, CodecError, PackedTensor, dtype_name

_SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


class IdentityCodec(Codec):
    """Keeps the input as is (a copy: neither encode nor decode hands out the caller's tensor).

    ``bits=None`` (the default) stores any supported dtype unchanged; its rate is the input's width,
    so :attr:`bits_per_scalar` is ``nan`` and the measured rate is :attr:`PackedTensor.bits_per_scalar`.
    ``bits=16`` or ``32`` declares the stored width: an input of another width is refused rather
    than labelled with a rate it does not have. :meth:`label` names the stored dtype (``none-fp32``).
    """

    name = "none"
    bits_optional = True

    def __init__(self, head_dim: int, bits: float | None = None, seed: int = 0) -> None:
        super().__init__(head_dim, bits, seed)
        if bits is not None and bits not in (16, 32):
            raise CodecError(f"none: bits must be None (store the input's dtype), 16 or 32 (the stored "
                             f"dtype's width), got {bits}")

    @property
    def bits_per_scalar(self) -> float:
        return math.nan if self.bits is None else float(self.bits)

    def label(self, dtype: torch.dtype | None = None) -> str:
        if dtype is not None:
            return f"none-{_SHORT.get(dtype, dtype_name(dtype))}"
        return "none" if self.bits is None else ("none-fp32" if self.bits == 32 else "none-16b")

    def check_input(self, x: torch.Tensor, finite: bool = True) -> None:
        super().check_input(x, finite)
        width = 8 * x.dtype.itemsize
        if self.bits is not None and width != self.bits:
            raise CodecError(f"none: bits={self.bits:g} declares {self.bits:g}-bit storage, but the input is "
                             f"{dtype_name(x.dtype)} ({width} bits) and is stored unchanged; pass bits=None "
                             f"to store any dtype as is (labelled {self.label(x.dtype)}), or bits={width}")

    def field_layout(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                     ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"values": (tuple(shape), dtype)}

    def _encode(self, x: torch.Tensor) -> PackedTensor:
        return PackedTensor(self.name, tuple(x.shape), x.dtype, {"values": x.clone()}, self.packed_meta())

    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        return packed.fields["values"].clone()
