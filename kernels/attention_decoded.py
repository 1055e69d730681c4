"""Decode-then-attend: one decode pass to ``gamma * y_hat`` in the rotated basis, then the fastest SDPA.

For full-sequence self-attention in a bidirectional DiT the work is compute-bound and every KV tile
is read by ``Nq / BLOCK_M`` query tiles; decoding once (0.3 ms for a Wan-14B layer, performance.md)
and handing plain fp16/bf16 tensors to cuDNN / FlashAttention beats re-decoding in every tile.

Because ``q . k_hat = (q @ R_k.T) . (gamma_k y_hat_k)``, SDPA runs entirely in the rotated bases:
Q is rotated once, K/V are never rotated back, and ``R_v`` is applied once to the output. GQA goes
to SDPA's ``enable_gqa`` (no repeat). :func:`attention_decoded_reference` is the reference meaning.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from octopus_diffusers.codecs import CodecError, PackedTensor

from .codec_spec import KernelSpec, OctopusSpec
from .octopus_decode import octopus_decode_rows
from .turboquant_codec import tq_decode_rows

#: SDPA backends in the order tried; SDPA falls through to the next one that supports the inputs.
#: Measured on the H100 (docs/kernels, run 1): cuDNN is fastest with many queries (Wan-14B self 37.6 vs
#: 60.0 ms for flash; 1,560 queries vs 32,760 keys 0.858 vs 1.505 ms) and flash with few
#: (16 queries: 0.092 vs 0.419 ms). FEW_QUERIES is the switch point between the measured 16 and 1,560.
BACKEND_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH]
FEW_QUERIES_PRIORITY = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH]
FEW_QUERIES = 256


def backend_priority(n_q: int) -> list[SDPBackend]:
    """SDPA backend order for ``n_q`` query rows (see the measurements above)."""
    return FEW_QUERIES_PRIORITY if n_q <= FEW_QUERIES else BACKEND_PRIORITY


#: Codebook reads of the decode pass, per codec kind: compare-select chains (True) or ``tl.gather``.
DECODE_SELECT = {"octopus": True, "turboquant": False}


def decode_rotated(packed: PackedTensor, spec: KernelSpec, out_dtype: torch.dtype,
                   select_lookup: bool | None = None) -> torch.Tensor:
    """``gamma * y_hat`` (rotated basis) of every vector of ``packed``, same shape, ``out_dtype``."""
    select = DECODE_SELECT[spec.kind] if select_lookup is None else select_lookup
    if isinstance(spec, OctopusSpec):
        return octopus_decode_rows(packed.fields["codes"], packed.fields["norms"], spec, out_dtype=out_dtype,
                                   scale_by_norm=True, exact=False, select_lookup=select)
    return tq_decode_rows(packed.fields["codes"], packed.fields["norms"], spec, out_dtype=out_dtype,
                          scale_by_norm=True, select_lookup=select)


_SIGNS: dict[tuple, torch.Tensor | None] = {}


def sign_matrix(spec: KernelSpec, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """``sqrt(d) * R`` (entries exactly +-1) in ``dtype`` for a Hadamard rotation and a half-precision
    ``dtype``; None otherwise (the caller then rotates in float32)."""
    key = (spec, device, dtype)
    if key not in _SIGNS:
        signs = (spec.rotation.double() * spec.head_dim ** 0.5).round()
        ok = dtype in (torch.float16, torch.bfloat16) and bool(signs.abs().eq(1).all()) and torch.allclose(
            signs / spec.head_dim ** 0.5, spec.rotation.double(), rtol=1e-6, atol=0)
        _SIGNS[key] = signs.to(device=device, dtype=dtype) if ok else None
    return _SIGNS[key]


def decoded_attention(q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec,
                      v_spec: KernelSpec, attn_mask: torch.Tensor | None = None, scale: float | None = None,
                      layout: str = "BHSD", backends: list[SDPBackend] | None = None) -> torch.Tensor:
    """Same contract as :func:`.attention_fused.fused_attention`; output in ``q``'s dtype and layout."""
    if layout not in ("BHSD", "BSHD"):
        raise CodecError(f"attention: layout must be 'BHSD' or 'BSHD', got {layout!r}")
    dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.float32
    k_rot = decode_rotated(k, k_spec, dtype)
    v_rot = decode_rotated(v, v_spec, dtype)
    d = q.shape[-1]
    signs_k, signs_v = sign_matrix(k_spec, q.device, dtype), sign_matrix(v_spec, q.device, dtype)
    if signs_k is not None and signs_v is not None:
        # Half-precision GEMMs with the exact +-1 matrices H diag(s) (fp32 accumulation); 1/sqrt(d) goes
        # into the softmax scale for Q and is applied after the GEMM for the output.
        q_rot = q @ signs_k.T
        extra_scale = d ** -0.5
    else:
        q_rot = (q.float() @ k_spec.rotation.to(q.device).T).to(dtype)
        extra_scale = 1.0
    if layout == "BSHD":
        q_rot, k_rot, v_rot = (t.transpose(1, 2) for t in (q_rot, k_rot, v_rot))
    if q_rot.shape[1] % k_rot.shape[1]:
        raise CodecError(f"attention: {q_rot.shape[1]} query heads is not a multiple of {k_rot.shape[1]} "
                         "KV heads")
    scale = (1.0 / math.sqrt(d) if scale is None else float(scale)) * extra_scale
    if attn_mask is not None and attn_mask.is_floating_point():
        # cuDNN SDPA (torch 2.11, H100) returns NaN for a float32 additive mask with fp16 queries, with
        # no error; the mask in the queries' dtype is correct there (docs/kernels/sweeps/mask_probe.py;
        # tests/processors/test_gpu_path.py covers it on the GPU).
        attn_mask = attn_mask.to(q_rot.dtype)
    ctx = sdpa_kernel(backends or backend_priority(q_rot.shape[2]), set_priority=True) if q.is_cuda else nullcontext()
    with ctx:
        o_rot = torch.nn.functional.scaled_dot_product_attention(
            q_rot, k_rot, v_rot, attn_mask=attn_mask, scale=scale,
            enable_gqa=q_rot.shape[1] != k_rot.shape[1])
    if signs_v is not None and signs_k is not None:
        out = (o_rot @ signs_v) * d ** -0.5
    else:
        out = (o_rot.float() @ v_spec.rotation.to(q.device)).to(q.dtype)
    return out if layout == "BHSD" else out.transpose(1, 2)


def attention_decoded_reference(q: torch.Tensor, k_hat: torch.Tensor, v_hat: torch.Tensor,
                                attn_mask: torch.Tensor | None = None, scale: float | None = None
                                ) -> torch.Tensor:
    """float32 SDPA on the reference-decoded K/V (BHSD), GQA by repeating KV heads."""
    from .attention_fused import attention_fused_reference

    return attention_fused_reference(q, k_hat, v_hat, attn_mask, scale)
