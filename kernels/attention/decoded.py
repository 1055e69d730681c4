"""Decode-then-attend: one decode pass to ``gamma * y_hat`` in the rotated basis, then the fastest SDPA.

For full-sequence self-attention in a bidirectional DiT the work is compute-bound and every KV tile
is read by ``Nq / BLOCK_M`` query tiles; decoding once (0.14-0.23 ms for a Wan-14B layer's K at 2-4
bits, against 38 ms of cuDNN attention) and handing plain fp16/bf16 tensors to cuDNN / FlashAttention
beats re-decoding in every tile (docs/kernels/results.csv: codec and attention, 2026-11-23, d69f2f6).

Because ``q . k_hat = (q @ R_k.T) . (gamma_k y_hat_k)``, SDPA can run in the rotated bases: Q is
rotated once, K/V are never rotated back, and ``R_v`` is applied once to the output. When K/V have
fewer vectors than Q (cross-attention to a short prompt) they are rotated back instead and SDPA sees
the original Q, as in fp16. GQA goes to SDPA's ``enable_gqa`` (no repeat).
The reference is :func:`..reference.attention_on_decoded`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from octopus_diffusers.codecs import CodecError, PackedTensor

from ..layout import Layout
from ..octopus.decode import octopus_decode_rows
from ..spec import KernelSpec, OctopusSpec
from ..tl.helpers import LOOKUP_GATHER, LOOKUP_LOAD
from ..turboquant.decode import tq_decode_rows

#: SDPA backends in the order tried; SDPA falls through to the next one that supports the inputs.
#: cuDNN is fastest with many queries (Wan-14B self 38.2 vs 60.5 ms for flash; 1,560 queries 0.87 vs
#: 1.53) and flash with few (16 queries: 0.094 vs 0.426 ms); FEW_QUERIES lies between 16 and 1,560.
#: Source: docs/kernels/results.csv, attention, 2026-11-23, d69f2f6 (H100; H200 rows at d433c21 agree).
BACKEND_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH]
FEW_QUERIES_PRIORITY = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH]
FEW_QUERIES = 256


def backend_priority(n_q: int) -> list[SDPBackend]:
    """SDPA backend order for ``n_q`` query rows (see the measurements above)."""
    return FEW_QUERIES_PRIORITY if n_q <= FEW_QUERIES else BACKEND_PRIORITY


#: Codebook reads of the decode pass per codec kind (``tl.helpers.LOOKUP_*``): OCTOPUS table loads (4 bits
#: 1,079 vs 692 GB/s for select chains: the H100 sweep of docs/kernels/codec_pass.md), TurboQuant
#: ``tl.gather`` on byte groups (92-95 % of copy bandwidth: results.csv, codec, 2026-11-23, d69f2f6).
DECODE_LOOKUP = {"octopus": LOOKUP_LOAD, "turboquant": LOOKUP_GATHER}


def basis_permutation(spec: KernelSpec) -> torch.Tensor | None:
    """The coordinate order decode-then-attend decodes ``spec``'s vectors in, which the rotations of Q
    and the output follow: OCTOPUS x/y/z planes (whole-row stores: measured faster, see
    docs/kernels/codec_pass.md), None (the codec's order) for TurboQuant."""
    return spec.basis_permutation()


def decode_rotated(packed: PackedTensor, spec: KernelSpec, out_dtype: torch.dtype,
                   lookup: int | None = None, plane_order: bool = False) -> torch.Tensor:
    """``gamma * y_hat`` (rotated basis) of every vector of ``packed``, same shape, ``out_dtype``;
    ``plane_order`` (OCTOPUS only): coordinates in :func:`basis_permutation`'s order."""
    mode = DECODE_LOOKUP[spec.kind] if lookup is None else lookup
    if isinstance(spec, OctopusSpec):
        return octopus_decode_rows(packed.fields["codes"], packed.fields["norms"], spec, out_dtype=out_dtype,
                                   scale_by_norm=True, exact=False, lookup=mode, plane_order=plane_order)
    if plane_order:
        raise CodecError("decode: plane order exists only for OCTOPUS codes")
    return tq_decode_rows(packed.fields["codes"], packed.fields["norms"], spec, out_dtype=out_dtype,
                          scale_by_norm=True, lookup=mode)


def sign_matrix(spec: KernelSpec, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """``sqrt(d) * R`` (entries exactly +-1) in ``dtype`` for a Hadamard rotation and a half-precision
    ``dtype``; None otherwise (the caller then rotates in float32). Cached on the spec."""

    def build() -> torch.Tensor | None:
        signs = spec.hadamard_signs() if dtype in (torch.float16, torch.bfloat16) else None
        return signs.to(device=device, dtype=dtype) if signs is not None else None

    return spec.cached(("signs", device, dtype), build)


def _rotation_rows(spec: KernelSpec, device: torch.device, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, float]:
    """``(M, alpha)`` with ``R = alpha * M``, rows in :func:`basis_permutation`'s order: the +-1 sign
    matrix for a Hadamard rotation in half precision, else float32 ``R``. Cached on the spec."""

    def build() -> tuple[torch.Tensor, float]:
        signs = sign_matrix(spec, device, dtype)
        m, alpha = (signs, spec.head_dim ** -0.5) if signs is not None else (spec.rotation.to(device), 1.0)
        perm = basis_permutation(spec)
        return (m if perm is None else m[perm.to(device)].contiguous(), alpha)

    return spec.cached(("rotation_rows", device, dtype), build)


def decoded_attention(q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec,
                      v_spec: KernelSpec, attn_mask: torch.Tensor | None = None, scale: float | None = None,
                      layout: Layout | str = Layout.BHSD, backends: list[SDPBackend] | None = None) -> torch.Tensor:
    """Same contract as :func:`.fused_launch.fused_attention`; output in ``q``'s dtype and layout."""
    layout = Layout.of(layout)
    dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.float32
    k_rot = decode_rotated(k, k_spec, dtype, plane_order=basis_permutation(k_spec) is not None)
    v_rot = decode_rotated(v, v_spec, dtype, plane_order=basis_permutation(v_spec) is not None)
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    # Rotate whichever side has fewer vectors: Q in and the output back (self-attention, long caches), or
    # K and V back to the original basis (cross-attention to a short prompt: 2 x 512 vectors per head
    # instead of 2 x 32,760).
    unrotate_kv = k_rot.numel() < q.numel()
    if unrotate_kv:
        q_att, k_att, v_att = q, rotate(k_rot, k_spec, inverse=True), rotate(v_rot, v_spec, inverse=True)
    else:
        q_att, k_att, v_att = rotate(q.to(dtype), k_spec), k_rot, v_rot
    q_att, k_att, v_att = (layout.to_bhsd(t) for t in (q_att, k_att, v_att))
    if q_att.shape[1] % k_att.shape[1]:
        raise CodecError(f"attention: {q_att.shape[1]} query heads is not a multiple of {k_att.shape[1]} "
                         "KV heads")
    if attn_mask is not None and attn_mask.is_floating_point():
        # cuDNN SDPA (torch 2.11, H100) returns NaN for a float32 additive mask with fp16 queries, with
        # no error; the mask in the queries' dtype is correct there (``git show
        # c81c26b:docs/kernels/sweeps/mask_probe.py``;
        # tests/processors/test_gpu_path.py covers it on the GPU).
        attn_mask = attn_mask.to(q_att.dtype)
    ctx = sdpa_kernel(backends or backend_priority(q_att.shape[2]), set_priority=True) if q.is_cuda else nullcontext()
    with ctx:
        out = torch.nn.functional.scaled_dot_product_attention(
            q_att, k_att, v_att, attn_mask=attn_mask, scale=scale, enable_gqa=q_att.shape[1] != k_att.shape[1])
    out = layout.from_bhsd(out)
    return out.to(q.dtype) if unrotate_kv else rotate(out, v_spec, inverse=True).to(q.dtype)


def rotate(x: torch.Tensor, spec: KernelSpec, inverse: bool = False) -> torch.Tensor:
    """``x`` into the basis :func:`decode_rotated` gives ``spec``'s vectors in (``x @ R.T``, columns in
    :func:`basis_permutation`'s order), or (``inverse``) from it back (``x @ R``), in ``x``'s dtype. A
    Hadamard rotation in half precision is one GEMM with the exact +-1 matrix and ``1/sqrt(d)`` in its
    fp32 epilogue; anything else runs in float32."""
    m, alpha = _rotation_rows(spec, x.device, x.dtype)
    m = m if inverse else m.T
    if m.dtype != x.dtype:
        return (x.float() @ m).to(x.dtype)
    rows = x.reshape(-1, x.shape[-1])
    return torch.addmm(rows.new_zeros(()), rows, m, beta=0, alpha=alpha).view(x.shape)
