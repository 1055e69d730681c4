"""What the kernels compute, in plain PyTorch: the meaning every kernel test is checked against.

The reference codecs (``octopus_diffusers.codecs``) already define encode and decode, and the kernel
tests compare those kernels with them directly. This module holds the rest, what the kernels compute
that the codecs do not:

* :func:`reference_rotated`: the rotated-basis decode ``gamma * y_hat`` (before the inverse
  rotation), what decode-then-attend and the fused attention loop consume;
* :func:`to_planes` / :func:`from_planes`: the OCTOPUS plane layout of a rotated vector (x, y, z coordinates of the
  triplets, each padded to a power of two), in which the fused kernel keeps OCTOPUS queries and outputs;
* :func:`rotated_attention`: attention computed in the rotated bases, ``softmax(scale (q R_k^T)
  (gamma_k y_hat_k)^T) (gamma_v y_hat_v)``: the fused kernel's output before ``R_v`` is applied;
* :func:`combine_splits`: the split-KV (flash-decoding) merge of per-split outputs by their
  log-sum-exps;
* :func:`attention_on_decoded`: float32 softmax attention on decoded K/V (GQA by repeating KV heads),
  and :func:`packed_attention`, the same from packed K/V through the reference codecs (the CPU path
  of the attention op).

Why the rotated forms are the same attention: for an orthogonal ``R``, ``k_hat = R^T (gamma y_hat)``,
so ``q . k_hat = (q R^T) . (gamma y_hat)`` and ``P V_hat = (P gamma_v y_hat_v) R_v``.
"""

from __future__ import annotations

import torch

from octopus_diffusers.codecs import Codec, CodecError, PackedTensor
from octopus_diffusers.codecs.packing import unpack_bits

from .layout import Layout
from .spec import plane_width


def reference_rotated(codec: Codec, packed: PackedTensor) -> torch.Tensor:
    """The reference codec's rotated reconstruction ``gamma * y_hat`` (float32, ``packed``'s shape),
    through its public quantizer methods."""
    codes = packed.fields["codes"]
    if codec.name == "octopus":
        idx = unpack_bits(codes, list(codec.allocation) * codec.n_triplets)
        y_hat = codec.dequantize_rotated(idx.view(*idx.shape[:-1], codec.n_triplets, 3))
    elif codec.name == "turboquant":
        y_hat = codec.dequantize_fields(unpack_bits(codes, codec.code_widths))
    else:
        raise CodecError(f"kernels: no rotated reference for codec {codec.name!r}")
    return y_hat * packed.fields["norms"].to(torch.float32)[..., None]


def to_planes(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(..., d)`` in OCTOPUS plane layout ``(..., 3 TP)``: column ``c * TP + i`` holds coordinate
    ``3 i + c`` (plane c = 0, 1, 2 holds the triplets' x, y, z), zero where ``3 i + c >= d``;
    ``TP`` = :func:`.spec.plane_width` (64 for d = 128)."""
    d = x.shape[-1]
    tp = plane_width(d)
    out = x.new_zeros(*x.shape[:-1], 3 * tp)
    for c in range(3):
        idx = torch.arange(c, d, 3, device=x.device)
        out[..., c * tp: c * tp + idx.numel()] = x[..., idx]
    return out


def from_planes(planes: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The ``(..., head_dim)`` coordinates of a :func:`to_planes` layout, padding dropped. (The fused
    kernel's OCTOPUS output planes also carry the padded coordinates of the last triplet there, which
    the output rotation's zero rows drop.)"""
    tp = plane_width(head_dim)
    out = planes.new_empty(*planes.shape[:-1], head_dim)
    for c in range(3):
        idx = torch.arange(c, head_dim, 3, device=planes.device)
        out[..., idx] = planes[..., c * tp: c * tp + idx.numel()]
    return out


def attention_on_decoded(q: torch.Tensor, k_hat: torch.Tensor, v_hat: torch.Tensor,
                         attn_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """float32 softmax attention of ``q`` ``(B, Hq, Nq, D)`` over ``k_hat``/``v_hat`` ``(B, Hkv, Nkv, D)``
    (``Hq`` a multiple of ``Hkv``: KV heads repeated), ``attn_mask`` bool (True = attend) or additive,
    ``scale`` default ``1/sqrt(D)``: what both attention kernels compute."""
    group = q.shape[1] // k_hat.shape[1]
    k_hat = k_hat.float().repeat_interleave(group, 1)
    v_hat = v_hat.float().repeat_interleave(group, 1)
    return torch.nn.functional.scaled_dot_product_attention(q.float(), k_hat, v_hat, attn_mask=attn_mask,
                                                            scale=scale)


def rotated_attention(q: torch.Tensor, k_rot: torch.Tensor, v_rot: torch.Tensor, rotation_k: torch.Tensor,
                      attn_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Attention in the rotated bases, float32 ``(B, Hq, Nq, D)`` in V's rotated basis: the queries
    rotated once (``q @ R_k^T``), scored against ``k_rot`` = ``gamma_k * y_hat_k``, the probabilities
    applied to ``v_rot`` = ``gamma_v * y_hat_v`` (both from :func:`reference_rotated`, BHSD). Equals
    ``attention_on_decoded(q, k_hat, v_hat) @ R_v^T``; the fused kernel computes this and applies
    ``R_v`` last (OCTOPUS values: in :func:`to_planes` layout)."""
    q_rot = q.float() @ rotation_k.to(device=q.device, dtype=torch.float32).T
    return attention_on_decoded(q_rot, k_rot, v_rot, attn_mask, scale)


def combine_splits(o: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Merge per-split normalised outputs ``o`` ``(S, ..., D)`` by their base-2 log-sum-exps ``lse``
    ``(S, ...)``: split ``s`` weighs ``2**lse_s`` (relative to the largest); a split with no unmasked
    key (``lse = -inf``) weighs 0 and a row with none in any split gives 0."""
    m = lse.amax(0, keepdim=True)
    w = torch.exp2(lse - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    w = torch.where(torch.isfinite(lse), w, torch.zeros_like(w))
    den = w.sum(0)
    return (o * w[..., None]).sum(0) / torch.where(den > 0, den, torch.ones_like(den))[..., None]


def packed_attention(q: torch.Tensor, k: PackedTensor, v: PackedTensor, codec_k: Codec, codec_v: Codec,
                     attn_mask: torch.Tensor | None, scale: float | None, layout: Layout | str) -> torch.Tensor:
    """Attention of ``q`` over packed K/V through the reference codecs: decode, attend in float32
    (:func:`attention_on_decoded`), return ``q``'s dtype and ``layout`` (:class:`.layout.Layout`)."""
    layout = Layout.of(layout)
    k_hat, v_hat = codec_k.decode(k), codec_v.decode(v)
    q, k_hat, v_hat = (layout.to_bhsd(t) for t in (q, k_hat, v_hat))
    out = attention_on_decoded(q, k_hat, v_hat, attn_mask, scale).to(q.dtype)
    return layout.from_bhsd(out)
