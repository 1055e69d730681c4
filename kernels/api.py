"""Public entry points of the kernels package: encode, decode and attention over compressed K/V."""

from __future__ import annotations

from .interpreter_compat import apply as _apply_interpreter_compat

_apply_interpreter_compat()

import torch  # noqa: E402

from octopus_diffusers.codecs import Codec, CodecError, PackedTensor  # noqa: E402

from . import ops  # noqa: E402
from .spec import KERNEL_HEAD_DIMS, check_packed, kernel_spec  # noqa: E402
from .dispatch import choose_method  # noqa: E402


def supports(codec: Codec) -> bool:
    """Whether the kernels implement ``codec`` (OCTOPUS / TurboQuant-mse, head_dim 64 or 128).

    Also builds the codec's kernel spec and registers it with the ops: call it once per codec outside
    any ``torch.compile`` region (e.g. when installing processors), so compiled code only reads caches.

    Args:
        codec: a reference codec (``octopus_diffusers.codecs.get_codec``).

    Returns:
        True when :func:`encode`, :func:`decode` and :func:`attention` run Triton kernels for it on CUDA.
    """
    try:
        kernel_spec(codec)
    except CodecError:
        return False
    ops.register_codec(codec)
    return True


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
    key = ops.register_codec(codec)
    swapped = not x.is_contiguous() and x.dim() == 4 and x.transpose(1, 2).is_contiguous()
    # A (B, H, S, D) view of a contiguous (B, S, H, D) tensor (diffusers' layout) is encoded row by row
    # in place, not copied: the codes come back as the same kind of view.
    src = x.transpose(1, 2) if swapped else x.contiguous()
    codes, norms = torch.ops.octopus_diffusers.encode(src, key, fused_rotation, check_finite)
    if swapped:
        codes, norms = codes.transpose(1, 2), norms.transpose(1, 2)
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
    key = ops.register_codec(codec)
    return torch.ops.octopus_diffusers.decode(packed.fields["codes"], packed.fields["norms"], key, packed.dtype)


def attention(q: torch.Tensor, k_packed: PackedTensor, v_packed: PackedTensor, codec_k: Codec, codec_v: Codec,
              attn_mask: torch.Tensor | None = None, scale: float | None = None, layout: str = "BHSD",
              method: str = "auto") -> torch.Tensor:
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
        layout: ``"BHSD"`` or ``"BSHD"``.
        method: ``"auto"`` (:func:`.dispatch.choose_method`: the measured crossover), ``"fused"`` or
            ``"decoded"``.

    Returns:
        The output in ``q``'s shape, layout and dtype; on the CPU the reference
        (:func:`.reference.packed_attention`).
    """
    if layout not in ("BHSD", "BSHD"):
        raise CodecError(f"attention: layout must be 'BHSD' or 'BSHD', got {layout!r}")
    if method not in ("auto", "fused", "decoded"):
        raise CodecError(f"attention: method must be 'auto', 'fused' or 'decoded', got {method!r}")
    k_spec, v_spec = kernel_spec(codec_k), kernel_spec(codec_v)
    check_packed(codec_k, k_packed, k_spec)
    check_packed(codec_v, v_packed, v_spec)
    if q.dim() != 4 or q.shape[-1] != k_spec.head_dim or v_spec.head_dim != k_spec.head_dim:
        raise CodecError(f"attention: q {tuple(q.shape)} must be 4-D with head_dim {k_spec.head_dim} (the "
                         f"codecs' head_dims: K {k_spec.head_dim}, V {v_spec.head_dim})")
    h_axis, n_axis = (1, 2) if layout == "BHSD" else (2, 1)
    if tuple(k_packed.shape) != tuple(v_packed.shape) or k_packed.shape[0] != q.shape[0]:
        raise CodecError(f"attention: K {k_packed.shape} and V {v_packed.shape} must match each other and "
                         f"q's batch {q.shape[0]}")
    if method == "auto":
        rows = q.shape[n_axis] * (q.shape[h_axis] // k_packed.shape[h_axis])
        method = choose_method(rows, k_spec, v_spec, q.device)
    return torch.ops.octopus_diffusers.attention(
        q, k_packed.fields["codes"], k_packed.fields["norms"], v_packed.fields["codes"], v_packed.fields["norms"],
        ops.register_codec(codec_k), ops.register_codec(codec_v), attn_mask, scale, layout, method)


__all__ = ["KERNEL_HEAD_DIMS", "attention", "decode", "encode", "supports"]
