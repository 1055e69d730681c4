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

#: SDPA backends in the order tried (cuDNN was fastest on the H100: 582 vs 369 TFLOP/s for flash at the
#: Wan-14B shape, performance.md); SDPA falls through to the next one that supports the inputs.
BACKEND_PRIORITY = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH]


def decode_rotated(packed: PackedTensor, spec: KernelSpec, out_dtype: torch.dtype) -> torch.Tensor:
    """``gamma * y_hat`` (rotated basis) of every vector of ``packed``, same shape, ``out_dtype``."""
    decode_rows = octopus_decode_rows if isinstance(spec, OctopusSpec) else tq_decode_rows
    return decode_rows(packed.fields["codes"], packed.fields["norms"], spec, out_dtype=out_dtype,
                       scale_by_norm=True)


def decoded_attention(q: torch.Tensor, k: PackedTensor, v: PackedTensor, k_spec: KernelSpec,
                      v_spec: KernelSpec, attn_mask: torch.Tensor | None = None, scale: float | None = None,
                      layout: str = "BHSD", backends: list[SDPBackend] | None = None) -> torch.Tensor:
    """Same contract as :func:`.attention_fused.fused_attention`; output in ``q``'s dtype and layout."""
    if layout not in ("BHSD", "BSHD"):
        raise CodecError(f"attention: layout must be 'BHSD' or 'BSHD', got {layout!r}")
    dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.float32
    k_rot = decode_rotated(k, k_spec, dtype)
    v_rot = decode_rotated(v, v_spec, dtype)
    r_k = k_spec.rotation.to(q.device)
    r_v = v_spec.rotation.to(q.device)
    q_rot = (q.float() @ r_k.T).to(dtype)
    if layout == "BSHD":
        q_rot, k_rot, v_rot = (t.transpose(1, 2) for t in (q_rot, k_rot, v_rot))
    if q_rot.shape[1] % k_rot.shape[1]:
        raise CodecError(f"attention: {q_rot.shape[1]} query heads is not a multiple of {k_rot.shape[1]} "
                         "KV heads")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    ctx = sdpa_kernel(backends or BACKEND_PRIORITY, set_priority=True) if q.is_cuda else nullcontext()
    with ctx:
        o_rot = torch.nn.functional.scaled_dot_product_attention(
            q_rot, k_rot, v_rot, attn_mask=attn_mask, scale=scale,
            enable_gqa=q_rot.shape[1] != k_rot.shape[1])
    out = (o_rot.float() @ r_v).to(q.dtype)
    return out if layout == "BHSD" else out.transpose(1, 2)


def attention_decoded_reference(q: torch.Tensor, k_hat: torch.Tensor, v_hat: torch.Tensor,
                                attn_mask: torch.Tensor | None = None, scale: float | None = None
                                ) -> torch.Tensor:
    """float32 SDPA on the reference-decoded K/V (BHSD), GQA by repeating KV heads."""
    from .attention_fused import attention_fused_reference

    return attention_fused_reference(q, k_hat, v_hat, attn_mask, scale)
