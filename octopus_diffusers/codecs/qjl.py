"""QJL: one-bit Johnson-Lindenstrauss sketches with an unbiased inner-product estimator (arXiv 2406.03482).

:class:`SignSketch` is the shared piece: a seeded Gaussian ``S`` (m x dim, N(0, 1) entries, built on
the CPU so identical everywhere). For a vector r it stores ``sign(S r)`` (1 bit per row, sgn(0) = +1)
and ``||r||``; the estimate ``r~ = sqrt(pi/2) / m * ||r|| * S^T sign(S r)`` is unbiased:
for a Gaussian row s, ``E[<s, q> sign(<s, r>)] = sqrt(2/pi) <q, r> / ||r||``, hence
``E_S[<q, r~>] = <q, r>`` for every q. :class:`QJLCodec` applies it to K itself; TurboQuant-prod and
OCTOPUS+QJL apply it to their quantization residual.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import (Codec, CodecError, PackedTensor, check_int, dtype_name, refuse_tiny_norms,
                   resolve_norm_dtype)
from .packing import pack_bits, packed_nbytes, unpack_bits

#: Offset added to a codec's seed for its sketch, so that S is independent of the codec's rotation.
SKETCH_SEED_OFFSET = 0x5EED_0F_51


class SignSketch:
    """Seeded Gaussian sign sketch of ``dim``-vectors with ``m`` rows (see module docstring)."""

    def __init__(self, dim: int, m: int, seed: int) -> None:
        if m < 1 or dim < 1:
            raise CodecError(f"qjl: sketch needs m >= 1 and dim >= 1, got m={m}, dim={dim}")
        self.dim, self.m, self.seed = dim, m, int(seed)
        gen = torch.Generator().manual_seed(self.seed + SKETCH_SEED_OFFSET)
        self.matrix = torch.randn(m, dim, generator=gen, dtype=torch.float32)
        self._cache: dict[torch.device, torch.Tensor] = {}
        #: bytes of packed signs per vector
        self.sign_nbytes = packed_nbytes([1] * m)

    def matrix_on(self, device: torch.device) -> torch.Tensor:
        device = torch.device(device)
        if device not in self._cache:
            self._cache[device] = self.matrix.to(device)
        return self._cache[device]

    def signs(self, r: torch.Tensor) -> torch.Tensor:
        """Packed ``sign(S r)`` bits (1 for >= 0): ``uint8 (..., ceil(m/8))``; r is float32."""
        proj = r @ self.matrix_on(r.device).T
        return pack_bits((proj >= 0).to(torch.int32), [1] * self.m)

    def estimate(self, packed_signs: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Unbiased estimate ``sqrt(pi/2)/m * ||r|| * S^T sign(S r)`` (float32 ``(..., dim)``)."""
        bits = unpack_bits(packed_signs, [1] * self.m).to(torch.float32)
        pm1 = 2.0 * bits - 1.0
        scale = math.sqrt(math.pi / 2) / self.m * norms.to(torch.float32)
        return (pm1 @ self.matrix_on(packed_signs.device)) * scale[..., None]

    def encode_fields(self, r: torch.Tensor, norm_dtype: torch.dtype, prefix: str = "qjl_"
                      ) -> dict[str, torch.Tensor]:
        """PackedTensor fields ``{prefix}signs`` and ``{prefix}norms`` sketching float32 ``r``."""
        return {f"{prefix}signs": self.signs(r),
                f"{prefix}norms": torch.linalg.vector_norm(r, dim=-1).to(norm_dtype)}

    def decode_fields(self, fields: dict[str, torch.Tensor], prefix: str = "qjl_") -> torch.Tensor:
        """The unbiased estimate of the vector sketched into ``fields`` by :meth:`encode_fields`."""
        return self.estimate(fields[f"{prefix}signs"], fields[f"{prefix}norms"])

    def rate_bits(self, norm_dtype: torch.dtype) -> int:
        """Stored bits per sketched vector: packed signs plus the norm."""
        return 8 * self.sign_nbytes + 8 * torch.empty(0, dtype=norm_dtype).element_size()


class QJLCodec(Codec):
    """``sign(S k)`` with ``m = bits * head_dim`` rows plus ``||k||`` (fp16); decode returns the
    unbiased estimator vector, so ``<q, decode(encode(k))>`` is an unbiased estimate of ``<q, k>``
    (its squared error is large: QJL is built for inner products, not reconstruction)."""

    name = "qjl"
    min_head_dim = 1

    default_bits = 1

    def __init__(self, head_dim: int, bits: float | None = 1, seed: int = 0, m: int | None = None,
                 norm_dtype: torch.dtype | str = torch.float16) -> None:
        super().__init__(head_dim, bits, seed)
        if m is None:
            m_float = self.bits * head_dim
            if m_float < 1 or m_float != int(m_float):
                raise CodecError(f"qjl: bits * head_dim must be a positive integer number of sketch rows, "
                                 f"got {bits} * {head_dim} = {m_float}")
            m = int(m_float)
        self.m = check_int(m, "m", "qjl", 1)
        self.norm_dtype = resolve_norm_dtype(norm_dtype, "qjl")
        self.sketch = SignSketch(head_dim, self.m, self.seed)

    @property
    def bits_per_scalar(self) -> float:
        return self.sketch.rate_bits(self.norm_dtype) / self.head_dim

    def options(self) -> dict[str, Any]:
        return {"m": self.m, "norm_dtype": dtype_name(self.norm_dtype)}

    def field_layout(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
                     ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        lead = tuple(shape[:-1])
        return {"signs": ((*lead, self.sketch.sign_nbytes), torch.uint8), "norms": (lead, self.norm_dtype)}

    def _encode(self, x: torch.Tensor) -> PackedTensor:
        xf = x.to(torch.float32)
        refuse_tiny_norms(torch.linalg.vector_norm(xf, dim=-1), self.norm_dtype, self.name)
        fields = self.sketch.encode_fields(xf, self.norm_dtype, prefix="")
        return PackedTensor(self.name, tuple(x.shape), x.dtype, fields, self.packed_meta())

    def _decode(self, packed: PackedTensor) -> torch.Tensor:
        return self.sketch.decode_fields(packed.fields, prefix="")
