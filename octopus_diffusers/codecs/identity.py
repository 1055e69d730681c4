"""The ``none`` codec: stores K/V unchanged, the baseline every report compares against."""

from __future__ import annotations

import torch

from .base import Codec, CodecError, PackedTensor


class IdentityCodec(Codec):
    """Keeps the input tensor as is; decode returns it bit-identically.

    ``bits`` (16, the fp16/bf16 baseline, or 32) is the declared rate. The tensor is stored in its own
    dtype, so a float32 input packed by a 16-bit ``none`` codec measures 32 bits per scalar in
    :attr:`PackedTensor.bits_per_scalar`; reports use that measured rate.
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
