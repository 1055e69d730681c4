"""Shared skeleton of the rotation codecs that store ``gamma = ||x||`` and quantize ``y = R x / gamma``.

OCTOPUS and TurboQuant (mse and prod) differ only in how they quantize the rotated unit vector ``y``
into integer fields; the norm split, the rotation, the bit packing (field ``codes``), the float16 norms
(field ``norms``), the optional QJL residual sketch (fields ``qjl_signs`` / ``qjl_norms``) and the rate
accounting live here once. A nonzero norm below the norm dtype's normal range (float16: 6.1e-5) is
refused rather than stored imprecisely or flushed to zero (a zero vector on decode); ``norm_dtype``
float32 or bfloat16 stores such norms, at a rate :attr:`bits_per_scalar` counts.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from .base import (NORM_DTYPES, Codec, PackedTensor, check_flag, dtype_name, refuse_tiny_norms,  # noqa: F401
                   resolve_norm_dtype)
from .packing import pack_bits, packed_nbytes, unpack_bits
from .qjl import SignSketch
from .rotation import Rotation


class NormSplitRotationCodec(Codec):
    """Base class: subclasses set ``code_widths`` and implement the two ``*_fields`` methods."""

    #: Bit width of each packed integer field of one vector (set by the subclass constructor).
    code_widths: list[int]

    def __init__(self, head_dim: int, bits: float | None, seed: int, norm_dtype: torch.dtype | str,
                 qjl_residual: bool) -> None:
        super().__init__(head_dim, bits, seed)
        self.norm_dtype = resolve_norm_dtype(norm_dtype, self.name)
        self.qjl_residual = check_flag(qjl_residual, "qjl_residual", self.name)
        self.rotation = Rotation(self.head_dim, self.seed)
        #: Gaussian sign sketch of the residual (m = head_dim rows), independent of the rotation.
        self.sketch = SignSketch(head_dim, head_dim, self.seed) if self.qjl_residual else None

    @abstractmethod
    def quantize_fields(self, y: torch.Tensor) -> torch.Tensor:
        """Integer fields ``(..., len(code_widths))`` of rotated unit vectors ``y`` (float32)."""

    @abstractmethod
    def dequantize_fields(self, idx: torch.Tensor) -> torch.Tensor:
        """Rotated unit-vector reconstruction ``float32 (..., head_dim)`` from the integer fields."""

    def options(self) -> dict[str, Any]:
        return {"norm_dtype": dtype_name(self.norm_dtype)}

    def field_layout(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                     ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        lead = tuple(shape[:-1])
        layout = {"codes": ((*lead, packed_nbytes(self.code_widths)), torch.uint8),
                  "norms": (lead, self.norm_dtype)}
        if self.sketch is not None:
            layout["qjl_signs"] = ((*lead, self.sketch.sign_nbytes), torch.uint8)
            layout["qjl_norms"] = (lead, self.norm_dtype)
        return layout

    # ---- rate -----------------------------------------------------------------------------------
    @property
    def bits_per_scalar(self) -> float:
        bits = 8 * packed_nbytes(self.code_widths) + 8 * torch.empty(0, dtype=self.norm_dtype).element_size()
        if self.sketch is not None:
            bits += self.sketch.rate_bits(self.norm_dtype)
        return bits / self.head_dim

    # ---- unit-vector path (for distortion measurements: no norm, no packing) ----------------------
    def encode_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Integer fields of unit vectors ``u`` given in the original basis."""
        return self.quantize_fields(self.rotation.forward(u.to(torch.float32)))

    def decode_unit(self, idx: torch.Tensor) -> torch.Tensor:
        """Unit-vector reconstruction in the original basis (the quantizer alone, no QJL residual)."""
        return self.rotation.inverse(self.dequantize_fields(idx))

    # ---- Codec interface -------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> PackedTensor:
        xf = x.to(torch.float32)
        gamma = torch.linalg.vector_norm(xf, dim=-1)
        refuse_tiny_norms(gamma, self.norm_dtype, self.name)
        y = self.rotation.forward(xf) / torch.where(gamma > 0, gamma, 1.0)[..., None]
        idx = self.quantize_fields(y)
        fields = {"codes": pack_bits(idx, self.code_widths), "norms": gamma.to(self.norm_dtype)}
        if self.sketch is not None:
            fields.update(self.sketch.encode_fields(y - self.dequantize_fields(idx), self.norm_dtype))
        return PackedTensor(self.name, tuple(x.shape), x.dtype, fields, self.packed_meta())

    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        y_hat = self.dequantize_fields(unpack_bits(packed.fields["codes"], self.code_widths))
        if self.sketch is not None:
            y_hat = y_hat + self.sketch.decode_fields(packed.fields)
        return self.rotation.inverse(y_hat) * packed.fields["norms"].to(torch.float32)[..., None]
