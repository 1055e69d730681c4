"""The ``none`` codec: stores K/V unchanged, the baseline every report compares against."""

from __future__ import annotations

import torch

from .base import Codec, CodecError, PackedTensor


class IdentityCodec(Codec):
    """Keeps the input tensor as is; decode returns it bit-identically.

    ``bits`` must be 16 (the fp16/bf16 baseline) or 32; the measured rate of a packed object is
    the input's own element size.
    """

    name = "none"

    def __init__(self, head_dim: int, bits: float = 16, seed: int = 0) -> None:
        super().__init__(head_dim, bits, seed)
        if bits not in (16, 32):
            raise CodecError(f"none: bits must be 16 or 32 (the stored dtype's width), got {bits}")

    @property
    def bits_per_scalar(self) -> float:
        return float(self.bits)

    def _encode(self, x: torch.Tensor) -> PackedTensor:
        return PackedTensor(self.name, tuple(x.shape), x.dtype, {"values": x})

    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        return packed.fields["values"]
