"""The one door into the kernels: encode, decode, attention and the fused/decoded choice.

Two levels over the same ops (:mod:`.ops`): :func:`encode` / :func:`decode` / :func:`attention` take
and give :class:`PackedTensor` (checked, eager callers); :func:`encode_codes` / :func:`decode_codes` /
:func:`attention_codes` / :func:`roundtrip` take and give plain tensors and trace under torch.compile
without a graph break (register the codecs first, outside the compiled region: :func:`supports`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence  # noqa: E402

import torch  # noqa: E402

from octopus_diffusers.codecs import Codec, CodecError, PackedTensor  # noqa: E402

from . import ops  # noqa: E402
from .dispatch import crossover  # noqa: E402
from .layout import Layout  # noqa: E402
from .spec import KERNEL_HEAD_DIMS, check_packed, kernel_spec  # noqa: E402

#: The ``method`` values of :func:`attention` and :func:`attention_codes`.
METHODS = ("auto", "fused", "decoded")


def supports(codec: Codec) -> bool:
    """Whether the kernels implement ``codec`` (OCTOPUS / TurboQuant-mse, head_dim 64 or 128).

    Also registers the codec with the ops (every codec: :func:`roundtrip` runs any) and builds its
    kernel spec: call it once per codec outside any ``torch.compile`` region (e.g. when installing
    processors), so compiled code only reads caches.

    Args:
        codec: a reference codec (``octopus_diffusers.codecs.get_codec``).

    Returns:
        True when :func:`encode`, :func:`decode` and :func:`attention` run Triton kernels for it on CUDA.
    """
    ops.register_codec(codec)
    try:
        kernel_spec(codec)
    except CodecError:
        return False
    return True


class MethodChoice(NamedTuple):
    """What :func:`choose_method` picked and why (one line)."""

    method: str
    reason: str


def choose_method(query_shape: Sequence[int], kv_heads: int, codec_k: Codec, codec_v: Codec,
                  device: torch.device, layout: Layout | str = Layout.BHSD) -> MethodChoice:
    """``"fused"`` or ``"decoded"`` for attention of a query of ``query_shape`` over ``kv_heads`` KV heads.

    The fused kernel is taken up to the measured crossover in query rows per KV head
    (``Nq * Hq / Hkv``, :data:`.dispatch.CROSSOVER`; both codecs must favour it); CPU: ``"decoded"``
    (the reference). Traceable: the reason formats no shape.
    """
    layout = Layout.of(layout)
    if device.type != "cuda":
        return MethodChoice("decoded", f"{device.type}: the reference codecs")
    rows = query_shape[layout.seq_axis] * (query_shape[layout.head_axis] // kv_heads)
    limit = min(crossover(kernel_spec(codec_k)), crossover(kernel_spec(codec_v)))
    if rows <= limit:
        return MethodChoice("fused", f"fused kernel: at most {limit} query rows per KV head (measured crossover)")
    return MethodChoice("decoded", f"decode, then SDPA: over {limit} query rows per KV head (measured crossover)")


# ---- tensor level (traceable) ------------------------------------------------------------------
def encode_codes(codec: Codec, x: torch.Tensor, fused_rotation: bool = False,
                 check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, norms)`` of ``codec.encode(x)`` for a codec :func:`supports` (arguments as :func:`encode`;
    no input check)."""
    # A (B, H, S, D) view of a contiguous (B, S, H, D) tensor (diffusers' layout) is encoded row by row
    # in place, not copied: the codes come back as the same kind of view.
    swapped = not x.is_contiguous() and x.dim() == 4 and x.transpose(1, 2).is_contiguous()
    src = x.transpose(1, 2) if swapped else x.contiguous()
    codes, norms = torch.ops.octopus_diffusers.encode(src, ops.register_codec(codec), fused_rotation, check_finite)
    return (codes.transpose(1, 2), norms.transpose(1, 2)) if swapped else (codes, norms)


def decode_codes(codec: Codec, codes: torch.Tensor, norms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codec.decode`` of the fields :func:`encode_codes` gave, in ``dtype``."""
    return torch.ops.octopus_diffusers.decode(codes, norms, ops.register_codec(codec), dtype)


def roundtrip(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    """``codec.decode(codec.encode(x))`` of ANY codec by the reference (kernels or not, any device), as
    one custom op: NaN/Inf input raises when it runs."""
    return torch.ops.octopus_diffusers.kv_roundtrip(x, ops.register_codec(codec))


def attention_codes(q: torch.Tensor, k_codes: torch.Tensor, k_norms: torch.Tensor, v_codes: torch.Tensor,
                    v_norms: torch.Tensor, codec_k: Codec, codec_v: Codec, attn_mask: torch.Tensor | None = None,
                    scale: float | None = None, layout: Layout | str = Layout.BHSD,
                    method: str = "auto") -> torch.Tensor:
    """:func:`attention` on the fields :func:`encode_codes` gave (no packed-tensor checks)."""
    layout = Layout.of(layout)
    if method not in METHODS:
        raise CodecError(f"attention: method must be 'auto', 'fused' or 'decoded', got {method!r}")
    if method == "auto":
        method = choose_method(q.shape, k_norms.shape[layout.head_axis], codec_k, codec_v, q.device, layout).method
    return torch.ops.octopus_diffusers.attention(q, k_codes, k_norms, v_codes, v_norms, ops.register_codec(codec_k),
                                                 ops.register_codec(codec_v), attn_mask, scale, layout.value, method)


# ---- packed level ------------------------------------------------------------------------------
def encode(codec: Codec, x: torch.Tensor, fused_rotation: bool = False, check_finite: bool = True) -> PackedTensor:
    """``codec.encode(x)`` by the Triton kernels on CUDA (the reference codec on the CPU).

    Args:
        codec: a codec :func:`supports`.
        x: ``(..., head_dim)``; a ``(B, H, S, D)`` view of a contiguous ``(B, S, H, D)`` tensor is
            encoded in place (the codes come back as the same kind of view).
        fused_rotation: rotate inside the kernel (fastest; half-precision input and a Hadamard
            rotation; codes may differ from the reference at float near-ties). The default is
            bit-exact with the reference.
        check_finite: raise :class:`CodecError` on NaN/Inf norms (a host sync); False leaves it to a
            later :meth:`Codec.count_nonfinite_side_info` (the CPU path always checks).

    Returns:
        The :class:`PackedTensor` ``codec.encode(x)`` returns.
    """
    codec.check_input(x, finite=False)  # NaN/Inf input shows in the norms, checked after the kernel
    codes, norms = encode_codes(codec, x, fused_rotation, check_finite)
    return PackedTensor(codec.name, tuple(x.shape), x.dtype, {"codes": codes, "norms": norms},
                        ops.packed_meta(codec))


def decode(codec: Codec, packed: PackedTensor) -> torch.Tensor:
    """``codec.decode(packed)`` by the Triton kernels on CUDA (the reference codec on the CPU).

    Args:
        codec: a codec :func:`supports`.
        packed: what :func:`encode` or ``codec.encode`` returned for this codec configuration.

    Returns:
        The reconstruction in ``packed``'s dtype and shape, equal to ``codec.decode(packed)``.
    """
    check_packed(codec, packed, kernel_spec(codec))
    return decode_codes(codec, packed.fields["codes"], packed.fields["norms"], packed.dtype)


def attention(q: torch.Tensor, k_packed: PackedTensor, v_packed: PackedTensor, codec_k: Codec, codec_v: Codec,
              attn_mask: torch.Tensor | None = None, scale: float | None = None,
              layout: Layout | str = Layout.BHSD, method: str = "auto") -> torch.Tensor:
    """Softmax attention of ``q`` over compressed K/V, never materialising fp16 K/V in HBM (fused) or
    decoding them once in the rotated basis (decoded), whichever is faster for the shape.

    Args:
        q: ``(B, Hq, Nq, D)`` (``layout="BHSD"``) or ``(B, Nq, Hq, D)`` (``"BSHD"``), fp16/bf16 (fp32
            accepted).
        k_packed, v_packed: encoded from ``(B, Hkv, Nkv, D)`` tensors of the same layout, ``Hq`` a
            multiple of ``Hkv`` (GQA, no repeat).
        codec_k, codec_v: their codecs.
        attn_mask: bool (True = attend) or additive float, broadcastable to ``(B, Hq, Nq, Nkv)``.
        scale: softmax scale, default ``1/sqrt(D)``.
        layout: :class:`Layout` (or its string).
        method: ``"auto"`` (:func:`choose_method`: the measured crossover), ``"fused"`` or ``"decoded"``.

    Returns:
        The output in ``q``'s shape, layout and dtype; on the CPU the reference
        (:func:`.reference.packed_attention`).
    """
    k_spec, v_spec = kernel_spec(codec_k), kernel_spec(codec_v)
    check_packed(codec_k, k_packed, k_spec)
    check_packed(codec_v, v_packed, v_spec)
    if q.dim() != 4 or q.shape[-1] != k_spec.head_dim or v_spec.head_dim != k_spec.head_dim:
        raise CodecError(f"attention: q {tuple(q.shape)} must be 4-D with head_dim {k_spec.head_dim} (the "
                         f"codecs' head_dims: K {k_spec.head_dim}, V {v_spec.head_dim})")
    if tuple(k_packed.shape) != tuple(v_packed.shape) or k_packed.shape[0] != q.shape[0]:
        raise CodecError(f"attention: K {k_packed.shape} and V {v_packed.shape} must match each other and "
                         f"q's batch {q.shape[0]}")
    return attention_codes(q, k_packed.fields["codes"], k_packed.fields["norms"], v_packed.fields["codes"],
                           v_packed.fields["norms"], codec_k, codec_v, attn_mask, scale, layout, method)


__all__ = ["KERNEL_HEAD_DIMS", "METHODS", "Layout", "MethodChoice", "attention", "attention_codes", "choose_method",
           "decode", "decode_codes", "encode", "encode_codes", "kernel_spec", "roundtrip", "supports"]
