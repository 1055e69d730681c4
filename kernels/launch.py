"""Host-side steps that every codec-kernel launcher shares (OCTOPUS and TurboQuant alike).

An encode launcher is: :func:`encode_prologue` (the input refused or prepared: the reference's own
float32 norm and rotation, op for op, for bit-exact codes, or the raw rows for an in-kernel rotation),
one kernel launch, :func:`encode_epilogue` (the :class:`PackedTensor` the reference codec would
return, and its NaN/Inf check). A decode launcher is :func:`decode_rows_prologue`, one launch, and
for the original basis :func:`decode_epilogue` (the reference's inverse rotation and norm).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from octopus_diffusers.codecs import Codec, CodecError, PackedTensor

from .spec import KernelSpec, check_packed, kernel_spec, packed_meta
from .tl.helpers import LOOKUP_GATHER


@dataclass(frozen=True)
class EncodeConfig:
    """Launch choices of the encode kernels (OCTOPUS and TurboQuant); none changes the codes.

    ``block_rows`` rows per program; ``lookup`` a ``tl.helpers.LOOKUP_*`` codebook read (OCTOPUS joint
    rounding only: TurboQuant's encode compares against thresholds and refuses another mode);
    ``pack8``: gather-free packing (``tl.helpers.pack_groups8``; TurboQuant: one width only);
    ``num_warps`` per program."""

    block_rows: int = 16
    lookup: int = LOOKUP_GATHER
    pack8: bool = False
    num_warps: int = 4


def default_config(cfg: EncodeConfig | None, gpu_config: EncodeConfig) -> EncodeConfig:
    """``cfg``, else the measured GPU launch or, under the interpreter, the same launch with 16 rows."""
    if cfg is not None:
        return cfg
    return gpu_config if torch.cuda.is_available() else replace(gpu_config, block_rows=16)


class EncodeInput(NamedTuple):
    """What an encode kernel reads and writes: ``src`` rows (rotated unit vectors, or raw ``x`` for an
    in-kernel rotation), the norms (computed, or an empty buffer the kernel fills), the ``codes``
    buffer, and the sign matrix in the dtype the kernel's product takes."""

    src: torch.Tensor
    norms: torch.Tensor
    codes: torch.Tensor
    sign_matrix: torch.Tensor


def encode_prologue(codec: Codec, x: torch.Tensor, fused_rotation: bool, sign_matrix: torch.Tensor,
                    is_hadamard: bool) -> tuple[KernelSpec, EncodeInput]:
    """Check ``x`` and prepare an encode launch of ``codec`` (see the module docstring).

    Without ``fused_rotation`` the norm and rotation are the reference's float32 operations
    (``NormSplitRotationCodec._encode``), so the kernel sees exactly the values the reference
    quantizes. ``fused_rotation`` needs a Hadamard rotation and half-precision input (a float32
    tensor-core product would round ``x`` to tf32)."""
    spec = kernel_spec(codec)
    codec.check_input(x, finite=False)  # NaN/Inf show in the kernel's norms: checked by encode_epilogue
    xf = x.reshape(-1, spec.head_dim)
    n, dev = xf.shape[0], x.device
    norms_dtype = getattr(codec, "norm_dtype", torch.float16)
    codes = torch.empty((n, spec.nbytes), dtype=torch.uint8, device=dev)
    if fused_rotation:
        if not is_hadamard:
            raise CodecError(f"{codec.name} kernel: fused rotation needs a Hadamard rotation")
        if x.dtype == torch.float32:
            raise CodecError(f"{codec.name} kernel: fused rotation takes float16/bfloat16 input (a float32 "
                             "tensor-core product would round x to tf32); use fused_rotation=False")
        return spec, EncodeInput(xf.contiguous(), torch.empty(n, dtype=norms_dtype, device=dev), codes,
                                 sign_matrix.to(x.dtype))
    x32 = xf.to(torch.float32)
    gamma = torch.linalg.vector_norm(x32, dim=-1)
    src = (codec.rotation.forward(x32) / torch.where(gamma > 0, gamma, 1.0)[..., None]).contiguous()
    return spec, EncodeInput(src, gamma.to(norms_dtype), codes, sign_matrix)


def encode_epilogue(codec: Codec, x: torch.Tensor, spec: KernelSpec, inputs: EncodeInput,
                    check_finite: bool) -> PackedTensor:
    """The reference codec's :class:`PackedTensor` of the kernel's codes and norms. ``check_finite``:
    raise :class:`CodecError` on NaN/Inf norms (NaN/Inf input or an fp16 norm overflow; a host sync),
    else leave it to the caller (:meth:`Codec.count_nonfinite_side_info`)."""
    lead = x.shape[:-1]
    packed = PackedTensor(codec.name, tuple(x.shape), x.dtype,
                          {"codes": inputs.codes.reshape(*lead, spec.nbytes), "norms": inputs.norms.reshape(lead)},
                          packed_meta(codec))
    if check_finite:
        codec.check_side_info(packed)
    return packed


def decode_rows_prologue(codes: torch.Tensor, norms: torch.Tensor, spec: KernelSpec,
                         out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes, norms, out)`` as ``(rows, nbytes)``, ``(rows,)`` and a new ``(rows, d)`` ``out_dtype``
    output for a rotated-basis decode launch."""
    if codes.dtype != torch.uint8 or codes.shape[-1] != spec.nbytes:
        raise CodecError(f"{spec.kind} kernel: expected uint8 codes (..., {spec.nbytes}), got {codes.dtype} "
                         f"{tuple(codes.shape)}")
    c2, n2 = codes.reshape(-1, spec.nbytes), norms.reshape(-1)
    return c2, n2, torch.empty((c2.shape[0], spec.head_dim), device=codes.device, dtype=out_dtype)


def decode_epilogue(codec: Codec, packed: PackedTensor, y_hat: torch.Tensor) -> torch.Tensor:
    """``codec.decode(packed)`` from the kernel's float32 rotated unit vectors: the reference's own
    ``rotation.inverse(y_hat) * gamma`` (``NormSplitRotationCodec._decode``), so both agree bit for bit."""
    gamma = packed.fields["norms"].to(torch.float32)
    return (codec.rotation.inverse(y_hat) * gamma[..., None]).to(packed.dtype)


def checked_spec(codec: Codec, packed: PackedTensor) -> KernelSpec:
    """``codec``'s kernel spec after refusing ``packed`` data of another codec or configuration."""
    spec = kernel_spec(codec)
    check_packed(codec, packed, spec)
    return spec
